//! A `POST /v1/jobs` body into the jobs to publish, each validated by the lane's own parser
//! ([`crate::domain::job::parse`]) with its account's settings, so the API accepts exactly
//! what the lane would send and refuses with the word its dead letter would have.
//!
//! The body is one job object, `{"jobs": [job, …]}`, or a bare array of jobs. Every job names
//! its `account` (the routing key an AMQP producer would use) and its `job_id` (required: it
//! is what makes a retried POST harmless). A batch is all or nothing: one invalid job and none
//! is published.

use serde_json::Value;

use super::reply::{ApiError, FORBIDDEN_ACCOUNT, TOO_MANY_JOBS};
use crate::config::{ApiToken, Config};
use crate::domain::job;
use crate::domain::reason::Reason;
use crate::text::clip_chars;

/// One validated job, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub account: String,
    pub job_id: String,
    /// The job object as posted (the lane ignores the extra `account` field).
    pub body: Vec<u8>,
}

/// Why a batch is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The body is not a job, a `{"jobs": […]}` or an array (400).
    Body(ApiError),
    /// More than `http.jobs_max_batch` jobs (413).
    TooMany(ApiError),
    /// The token may not publish to a job's account (403).
    Forbidden(Vec<ApiError>),
    /// Jobs that fail validation, with their index and reason word (422).
    Invalid(Vec<ApiError>),
}

/// The jobs of `body`, all valid, or why not.
pub fn parse_batch(cfg: &Config, token: &ApiToken, body: &[u8]) -> Result<Vec<Accepted>, Refused> {
    let items = items_of(body, cfg.http.jobs_max_batch)?;
    let mut accepted = Vec::with_capacity(items.len());
    let (mut invalid, mut forbidden) = (Vec::new(), Vec::new());
    for (i, item) in items.iter().enumerate() {
        match one(cfg, token, i, item) {
            Ok(a) => accepted.push(a),
            Err(Item::Invalid(e)) => invalid.push(e),
            Err(Item::Forbidden(e)) => forbidden.push(e),
        }
    }
    if !forbidden.is_empty() {
        return Err(Refused::Forbidden(forbidden));
    }
    if !invalid.is_empty() {
        return Err(Refused::Invalid(invalid));
    }
    Ok(accepted)
}

enum Item {
    Invalid(ApiError),
    Forbidden(ApiError),
}

/// The job values of the body.
fn items_of(body: &[u8], max: usize) -> Result<Vec<Value>, Refused> {
    let bad =
        |detail: String| Refused::Body(ApiError::request(Reason::InvalidJson.as_str(), detail));
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("body: {}", clip_chars(&e.to_string(), 200))))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut o) if o.contains_key("jobs") => match o.remove("jobs") {
            Some(Value::Array(items)) => items,
            _ => return Err(bad("jobs: expected an array of jobs".into())),
        },
        v @ Value::Object(_) => vec![v],
        _ => {
            return Err(bad(
                "body: expected a job object, {\"jobs\": [...]} or an array of jobs".into(),
            ));
        }
    };
    if items.is_empty() {
        return Err(bad("body: no jobs".into()));
    }
    if items.len() > max {
        return Err(Refused::TooMany(ApiError::request(
            TOO_MANY_JOBS,
            format!("{} jobs, limit {max} (http.jobs_max_batch)", items.len()),
        )));
    }
    Ok(items)
}

/// One job of the batch: its account (configured, allowed to the token), then the lane's
/// parser.
fn one(cfg: &Config, token: &ApiToken, i: usize, item: &Value) -> Result<Accepted, Item> {
    let invalid =
        |reason: Reason, detail: String| Item::Invalid(ApiError::job(i, reason.as_str(), detail));
    let Value::Object(obj) = item else {
        return Err(invalid(
            Reason::InvalidJson,
            "job: expected a JSON object".into(),
        ));
    };
    let account = match obj.get("account") {
        Some(Value::String(a)) => a.as_str(),
        None | Some(Value::Null) => {
            return Err(invalid(
                Reason::UnknownAccount,
                "account: missing (name the account the job is for)".into(),
            ));
        }
        Some(_) => {
            return Err(invalid(
                Reason::UnknownAccount,
                "account: expected a string".into(),
            ));
        }
    };
    let Some(acfg) = cfg.account(account) else {
        return Err(invalid(
            Reason::UnknownAccount,
            format!(
                "account: '{}' is not configured",
                crate::text::escape_controls(&clip_chars(account, 64))
            ),
        ));
    };
    if !token.allows(account) {
        return Err(Item::Forbidden(ApiError::job(
            i,
            FORBIDDEN_ACCOUNT,
            format!(
                "token '{}' may not publish to account '{account}'",
                token.name
            ),
        )));
    }
    let body = serde_json::to_vec(item).unwrap_or_default();
    // No message_id: over HTTP the job_id must be in the body.
    match job::parse(&body, None, acfg, cfg.worker.max_body_bytes) {
        Ok(j) => Ok(Accepted {
            account: account.to_owned(),
            job_id: j.job_id,
            body,
        }),
        Err(e) => Err(Item::Invalid(ApiError::job(i, e.reason, e.detail))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two accounts and a token, as a settings file has them.
    fn cfg() -> Config {
        let text = r#"
[[http.api_tokens]]
name = "crm"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
accounts = ["bot"]

[[account]]
name = "bot"
channel = "chatbot"
token = "tok-secret-1"
encoding_aes_key = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
appid = "APPID123"
oa_appid = "wxOA"
rate = { per_second = 50 }

[[account]]
name = "kf"
channel = "wecom"
corpid = "ww123"
secret = "corp-secret-2"
open_kfids = ["wkKF1"]
rate = { per_second = 50 }
"#;
        match Config::from_toml_with_env(text, &[]) {
            Ok(c) => c,
            Err(e) => panic!("{e:#}"),
        }
    }

    #[test]
    fn tokens_are_read_from_the_settings_file_with_default_rates() {
        let c = cfg();
        let t = &c.http.api_tokens[0];
        assert_eq!(
            (t.name.as_str(), t.accounts.as_slice()),
            ("crm", &["bot".to_owned()][..])
        );
        assert_eq!((t.rate_per_sec, t.burst), (20, 40));
        assert!(t.digest().is_some());
    }

    fn token(accounts: &[&str]) -> ApiToken {
        ApiToken {
            name: "crm".into(),
            sha256: "0".repeat(64),
            accounts: accounts.iter().map(|a| a.to_string()).collect(),
            rate_per_sec: 1,
            burst: 1,
        }
    }

    fn reasons(r: Result<Vec<Accepted>, Refused>) -> Vec<(Option<usize>, String)> {
        let errs = match r {
            Err(Refused::Invalid(e) | Refused::Forbidden(e)) => e,
            Err(Refused::Body(e) | Refused::TooMany(e)) => vec![e],
            Ok(a) => panic!("accepted {a:?}"),
        };
        errs.into_iter().map(|e| (e.index, e.reason)).collect()
    }

    #[test]
    fn one_job_a_jobs_object_and_an_array_are_the_same_batch() {
        let job = r#"{"account":"bot","job_id":"0b9a8c8e-3f4a-4d39-9a3e-2a5d1f0c7b61","to":"oU","message":{"text":"hi"}}"#;
        for body in [
            job.to_owned(),
            format!(r#"{{"jobs":[{job}]}}"#),
            format!("[{job}]"),
        ] {
            let got = parse_batch(&cfg(), &token(&[]), body.as_bytes()).unwrap();
            assert_eq!(got.len(), 1, "{body}");
            assert_eq!(got[0].account, "bot");
            assert_eq!(got[0].job_id, "0b9a8c8e-3f4a-4d39-9a3e-2a5d1f0c7b61");
        }
    }

    #[test]
    fn invalid_jobs_are_refused_with_the_lanes_reason_words_and_their_index() {
        let body = br#"[{"account":"bot","job_id":"ok-1","to":"oU","message":{"text":"hi"}},
                        {"account":"bot","job_id":"x x","to":"oU","message":{"text":"hi"}},
                        {"job_id":"j3","to":"oU","message":{"text":"hi"}},
                        {"account":"ghost","job_id":"j4","to":"oU","message":{"text":"hi"}},
                        {"account":"bot","to":"oU","message":{"text":"hi"}},
                        {"account":"kf","job_id":"j6","to":"wmU","message":{"bogus":{}}}]"#;
        assert_eq!(
            reasons(parse_batch(&cfg(), &token(&[]), body)),
            [
                (Some(1), "invalid_job_id".to_owned()),
                (Some(2), "unknown_account".to_owned()),
                (Some(3), "unknown_account".to_owned()),
                (Some(4), "missing_job_id".to_owned()),
                (Some(5), "unknown_msgtype".to_owned()),
            ]
        );
        let r = |b: &[u8]| reasons(parse_batch(&cfg(), &token(&[]), b));
        assert_eq!(r(b"{nope"), [(None, "invalid_json".to_owned())]);
        assert_eq!(r(b"[]"), [(None, "invalid_json".to_owned())]);
        assert_eq!(r(b"42"), [(None, "invalid_json".to_owned())]);
    }

    #[test]
    fn a_token_reaches_only_its_accounts_and_a_batch_has_a_cap() {
        let body = br#"{"account":"kf","job_id":"j","to":"wmU","message":{"text":"hi"}}"#;
        assert_eq!(
            reasons(parse_batch(&cfg(), &token(&["bot"]), body)),
            [(Some(0), "forbidden_account".to_owned())]
        );
        let mut c = cfg();
        c.http.jobs_max_batch = 1;
        let two = format!("[{0},{0}]", String::from_utf8_lossy(body));
        assert_eq!(
            reasons(parse_batch(&c, &token(&[]), two.as_bytes())),
            [(None, "too_many_jobs".to_owned())]
        );
    }
}
