//! Passwords in connection URLs (`postgres://`, `amqp://`): spliced in, and masked for printing.

use url::Url;

/// What a masked password reads as.
const MASK: &str = "***";

/// `url` with its password set to `password` (percent-encoded), or `None` when `url` does not
/// parse or names no user (then there is no userinfo to put a password into).
pub(super) fn with_password(url: &str, password: &str) -> Option<String> {
    let mut u = Url::parse(url).ok()?;
    if u.username().is_empty() && u.password().is_none() {
        return None;
    }
    // Every byte but the unreserved ones encoded, `%` included: the url crate leaves `%`
    // alone (it takes it for an escape already made), and a password may contain one.
    let encoded: String = password
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    u.set_password(Some(&encoded)).ok()?;
    Some(u.into())
}

/// `scheme://user:pw@host/…` → `scheme://user:***@host/…`; a URL without a password is
/// returned as it is. A string that does not parse as a URL but looks like one with userinfo
/// has everything between `://` and the last `@` masked, so nothing leaks either way.
pub fn redact_url_password(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => match u.set_password(Some(MASK)) {
            Ok(()) => u.into(),
            Err(()) => mask_userinfo(url),
        },
        Ok(_) => url.to_owned(),
        Err(_) => mask_userinfo(url),
    }
}

fn mask_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{MASK}{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact_url_password("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url_password("postgres://u:p%40ss@db:5432/x?sslmode=require"),
            "postgres://u:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_url_password("amqp://127.0.0.1"), "amqp://127.0.0.1");
        assert_eq!(
            redact_url_password("postgres://u@db/x"),
            "postgres://u@db/x"
        );
        assert_eq!(
            redact_url_password("postgres://u:hunter2@[::1"),
            "postgres://***@[::1"
        );
        assert_eq!(redact_url_password("not a url"), "not a url");
    }

    #[test]
    fn password_is_spliced_in_encoded() {
        assert_eq!(
            with_password("postgres://u:old@db:5432/x", "p@ss w%").as_deref(),
            Some("postgres://u:p%40ss%20w%25@db:5432/x")
        );
        assert_eq!(
            with_password("postgres://u@db/x", "a:b").as_deref(),
            Some("postgres://u:a%3Ab@db/x")
        );
        assert_eq!(with_password("postgres://db/x", "pw"), None);
        assert_eq!(with_password("nonsense", "pw"), None);
    }
}
