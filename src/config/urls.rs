//! Passwords in connection URLs (`postgres://`, `amqp://`): spliced in, and masked for printing.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};
use url::Url;

/// A connection URL that may carry a password (`amqp://user:pw@host/vhost`): `broker.url`,
/// `database.url`. Its `Display`, `Debug` and `Serialize` mask the password
/// ([`redact_url_password`]), so `check-config`, `{:?}` of the settings, error contexts and
/// log lines never show it; [`SecretUrl::expose`] (or deref to `&str`) hands the real URL to
/// the client that connects.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }
    /// The URL with its password, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URL with its password masked (`amqp://user:***@host/`).
    pub fn redacted(&self) -> String {
        redact_url_password(&self.0)
    }
    /// `host:port` of the URL (`default_port` when it names none), for messages that say
    /// where a dependency is without the credentials; the masked URL when it does not parse.
    pub fn host_port(&self, default_port: u16) -> String {
        match Url::parse(&self.0) {
            Ok(u) => match u.host_str() {
                Some(h) => format!("{h}:{}", u.port().unwrap_or(default_port)),
                None => self.redacted(),
            },
            Err(_) => self.redacted(),
        }
    }
}

/// The real URL, so that `connect(&cfg.broker.url)` needs no ceremony. Formatting a
/// `SecretUrl` itself (`{}`, `{:?}`, `to_string()`) masks the password.
impl Deref for SecretUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> Self {
        Self(s)
    }
}
impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}
impl PartialEq<str> for SecretUrl {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}
impl PartialEq<&str> for SecretUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}
impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}
/// Masked: `check-config` prints what [`Config`](super::Config) serializes to.
impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}
impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

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
    fn a_secret_url_masks_its_password_however_it_is_printed() {
        let u = SecretUrl::from("amqp://user:s3cr%40t@mq:5672/%2f");
        assert_eq!(u.expose(), "amqp://user:s3cr%40t@mq:5672/%2f");
        assert_eq!(&*u, "amqp://user:s3cr%40t@mq:5672/%2f");
        assert_eq!(u.to_string(), "amqp://user:***@mq:5672/%2f");
        assert_eq!(format!("{u:?}"), "\"amqp://user:***@mq:5672/%2f\"");
        assert_eq!(
            toml::to_string(&std::collections::BTreeMap::from([("url", u.clone())])).ok(),
            Some("url = \"amqp://user:***@mq:5672/%2f\"\n".to_owned())
        );
        let back: SecretUrl = serde_json::from_str("\"postgres://u:pw@db/x\"").unwrap();
        assert_eq!(back, "postgres://u:pw@db/x");
        assert!(!format!("{back} {back:?}").contains("pw"));
    }

    #[test]
    fn host_port_names_no_credentials() {
        let u = SecretUrl::from("amqp://user:pw@mq.internal/%2f");
        assert_eq!(u.host_port(5672), "mq.internal:5672");
        let u = SecretUrl::from("postgres://u:pw@db:6432/x");
        assert_eq!(u.host_port(5432), "db:6432");
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
