//! Bearer-token authentication of the job API: `Authorization: Bearer <token>`, the token's
//! SHA-256 compared with every configured digest in constant time.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::api::Token;

/// The index of the token that `headers` authenticate, `None` for a missing, malformed or
/// unknown token. Every configured digest is compared (no early exit), each in constant time,
/// so the answer's timing says nothing about how close a guess was; and what is compared is
/// the SHA-256 of the presented token, never the token against a stored value.
pub fn authenticate(tokens: &[Token], headers: &HeaderMap) -> Option<usize> {
    let presented = bearer(headers)?;
    let digest = sha2::Sha256::digest(presented.as_bytes());
    let mut found = None;
    for (i, t) in tokens.iter().enumerate() {
        let Some(want) = &t.digest else { continue };
        let equal: bool = want.as_slice().ct_eq(digest.as_slice()).into();
        if equal && found.is_none() {
            found = Some(i);
        }
    }
    found
}

/// The token of an `Authorization: Bearer <token>` header (the scheme case-insensitive, as
/// RFC 7235 says), `None` when there is none.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Admit a request: authenticate its bearer token, then take one request from that token's
/// allowance. `Ok`: the token's configured entry. `Err`: the 401 or 429 to answer (counted).
/// Both routes call it before they read anything else of the request.
pub fn admit<'a>(
    api: &'a super::api::JobApi,
    headers: &HeaderMap,
) -> Result<&'a crate::config::ApiToken, Box<axum::response::Response>> {
    let Some(i) = authenticate(&api.tokens, headers) else {
        super::reply::count("-", "unauthorized");
        return Err(Box::new(super::reply::unauthorized()));
    };
    let token = &api.tokens[i].cfg;
    if let Err(secs) = api.take(i) {
        super::reply::count(&token.name, "rate_limited");
        return Err(Box::new(super::reply::rate_limited(secs)));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiToken, Config};
    use crate::http::jobs::JobApi;

    fn api(tokens: &[(&str, &str)]) -> JobApi {
        let mut cfg = Config::default();
        cfg.http.api_tokens = tokens
            .iter()
            .map(|(name, token)| ApiToken {
                name: (*name).into(),
                sha256: hex::encode(sha2::Sha256::digest(token.as_bytes())),
                accounts: Vec::new(),
                rate_per_sec: 1,
                burst: 1,
            })
            .collect();
        JobApi::new(&cfg)
    }

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn only_a_configured_bearer_token_authenticates() {
        let a = api(&[("crm", "s3cret-1"), ("erp", "s3cret-2")]);
        assert_eq!(authenticate(&a.tokens, &with("Bearer s3cret-2")), Some(1));
        assert_eq!(authenticate(&a.tokens, &with("bearer s3cret-1")), Some(0));
        for bad in [
            "Bearer s3cret-3",
            "Bearer ",
            "Basic s3cret-1",
            "s3cret-1",
            "Bearer s3cret-1x",
        ] {
            assert_eq!(authenticate(&a.tokens, &with(bad)), None, "{bad}");
        }
        assert_eq!(authenticate(&a.tokens, &HeaderMap::new()), None);
        // The configured digest itself is not a token.
        let digest = hex::encode(sha2::Sha256::digest(b"s3cret-1"));
        assert_eq!(
            authenticate(&a.tokens, &with(&format!("Bearer {digest}"))),
            None
        );
    }

    #[test]
    fn each_token_has_its_own_rate() {
        let a = api(&[("crm", "t1"), ("erp", "t2")]);
        assert_eq!(a.take(0), Ok(()));
        assert!(a.take(0).is_err_and(|secs| secs >= 1));
        assert_eq!(a.take(1), Ok(()));
    }
}
