//! The broker policies that give wxdispatch's exchange and lanes their behaviour, and the
//! management API that applies them.
//!
//! Why policies and not queue or exchange arguments: a publisher that declares exchange
//! `wxdispatch` the way every RabbitMQ tutorial does (`direct`, durable, no arguments) must
//! get an equivalent declaration, not `PRECONDITION_FAILED`; and changing
//! `broker.delivery_limit` must not make every worker's declaration inequivalent. So the
//! worker declares the exchange and the lanes with only what cannot be a policy (the queue
//! type, single active consumer), and these policies add the rest:
//!
//! | policy | applies to | pattern | sets |
//! |---|---|---|---|
//! | `wxdispatch-exchange` | exchanges | `^wxdispatch$` | `alternate-exchange` = `wxdispatch.unroutable` |
//! | `wxdispatch-lanes` | queues | the lanes and bulk queues only | `dead-letter-exchange` = `wxdispatch.dead`, `delivery-limit` = `broker.delivery_limit` |
//!
//! AMQP cannot set policies: [`Management`] uses the management plugin's HTTP API
//! (`broker.management_url`), and [`rabbitmqctl_commands`] prints the commands that do the
//! same where it is not reachable. Policies are per vhost: both apply them in the vhost of
//! `broker.url`.
//!
//! A queue's own arguments win over a policy for `dead-letter-exchange`, and for
//! `delivery-limit` the lower of the two applies (RabbitMQ 3.10, `rabbit_quorum_queue`):
//! a lane declared with arguments by an older version keeps them until it is deleted and
//! declared again (see [`super::topology`]).

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::Config;

/// Name of the policy that gives the main exchange its alternate exchange.
pub const EXCHANGE_POLICY: &str = "wxdispatch-exchange";
/// Name of the policy that gives the lanes their dead-lettering and delivery limit.
pub const LANES_POLICY: &str = "wxdispatch-lanes";
/// The priority of wxdispatch's policies. RabbitMQ applies one policy per object, the one of
/// the highest priority: 10 keeps ours above a catch-all operator policy of the default
/// priority 0 (an operator policy that must also apply to our names has to repeat our keys).
pub const PRIORITY: i64 = 10;
/// The lanes (`wxdispatch.<account>`, `wxdispatch.<account>.bulk`; account names are
/// `[a-z0-9_-]`) and nothing else of ours: not the dead-letter, unroutable or outcome queues
/// (dead-lettering those into `wxdispatch.dead` would loop), and the delay tiers have a dot
/// in their name.
pub const LANES_PATTERN: &str =
    r"^wxdispatch\.(?!(dead|unroutable|outcomes)(\.|$))[a-z0-9_-]+(\.bulk)?$";
/// Only the main exchange.
pub const EXCHANGE_PATTERN: &str = r"^wxdispatch$";
/// A management request that takes longer is abandoned: the API answers in milliseconds,
/// and a worker must not hang at start for a firewalled port.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// The management plugin's port, where `broker.management_url` is derived from `broker.url`.
const MANAGEMENT_PORT: u16 = 15672;

/// One policy as the management API, `rabbitmqctl set_policy` and `definitions.json` know it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    pub name: &'static str,
    pub pattern: &'static str,
    #[serde(rename = "apply-to")]
    pub apply_to: &'static str,
    pub priority: i64,
    pub definition: Value,
}

/// `'text'` for a POSIX shell.
pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `rabbitmqctl set_policy` commands that apply `policies` in `vhost`, ready to paste.
pub fn rabbitmqctl_commands(vhost: &str, policies: &[Policy]) -> Vec<String> {
    policies
        .iter()
        .map(|p| {
            format!(
                "rabbitmqctl set_policy -p {} --apply-to {} --priority {} {} {} {}",
                sh_quote(vhost),
                p.apply_to,
                p.priority,
                p.name,
                sh_quote(p.pattern),
                sh_quote(&p.definition.to_string())
            )
        })
        .collect()
}

/// The vhost of an AMQP URL: its path, percent-decoded; `/` when it has none.
pub fn vhost_of(amqp_url: &str) -> String {
    let path = url::Url::parse(amqp_url)
        .map(|u| u.path().to_owned())
        .unwrap_or_default();
    let path = path.strip_prefix('/').unwrap_or(&path);
    if path.is_empty() {
        return "/".to_owned();
    }
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

/// Why the management API did not apply or report the policies.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// `broker.management_url = "off"`.
    #[error("the management API is off (broker.management_url = \"off\")")]
    Off,
    /// No connection, a timeout, or an answer that is not the API's.
    #[error("management API at {url} unreachable: {cause}")]
    Unreachable { url: String, cause: String },
    /// The API answered with an error status (401: bad credentials; 403: the user lacks
    /// the `policymaker` tag or permissions on the vhost).
    #[error("management API at {url} refused {what}: HTTP {status} {body}")]
    Refused {
        url: String,
        what: String,
        status: u16,
        body: String,
    },
}

/// What applying one policy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyChange {
    /// The broker had it already, as wanted.
    Unchanged,
    /// It was missing and is now set.
    Created,
    /// It existed with another pattern, definition or priority and was replaced.
    Updated,
}

/// The RabbitMQ management API, for the policies (AMQP cannot set them).
pub struct Management {
    /// `http://host:15672/` (no credentials in it).
    base: url::Url,
    user: String,
    password: crate::config::Secret,
    http: reqwest::Client,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("base", &self.base.as_str())
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Management {
    /// From `broker.management_url` (credentials from it, else from `broker.url`); derived
    /// from `broker.url`'s host and port 15672 when empty. `Err(Off)` when it is `"off"`.
    pub fn from_config(cfg: &Config) -> Result<Self, ManagementError> {
        let configured = cfg.broker.management_url.expose().trim();
        if configured == "off" {
            return Err(ManagementError::Off);
        }
        let amqp = url::Url::parse(cfg.broker.url.expose()).ok();
        let unparsable = |what: &str| ManagementError::Unreachable {
            url: crate::config::redact_url_password(what),
            cause: "not a URL".into(),
        };
        let mut base = if configured.is_empty() {
            let host = amqp
                .as_ref()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_else(|| "127.0.0.1".into());
            url::Url::parse(&format!("http://{host}:{MANAGEMENT_PORT}/"))
                .map_err(|_| unparsable(&host))?
        } else {
            url::Url::parse(configured).map_err(|_| unparsable(configured))?
        };
        let from = if base.username().is_empty() {
            amqp.as_ref()
        } else {
            Some(&base)
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let (user, password) = match from {
            Some(u) if !u.username().is_empty() => (
                decode(u.username()),
                decode(u.password().unwrap_or_default()),
            ),
            // AMQP's default credentials, as lapin uses them for a URL without any.
            _ => ("guest".to_owned(), "guest".to_owned()),
        };
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| ManagementError::Unreachable {
                url: base.to_string(),
                cause: e.to_string(),
            })?;
        Ok(Self {
            base,
            user,
            password: crate::config::Secret::new(password),
            http,
        })
    }

    /// Where the API is (no credentials), for messages.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    fn endpoint(&self, segments: &[&str]) -> url::Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().push("api").extend(segments);
        }
        u
    }

    async fn send(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ManagementError> {
        let resp = req
            .basic_auth(&self.user, Some(self.password.expose()))
            .send()
            .await
            .map_err(|e| ManagementError::Unreachable {
                url: self.url().to_owned(),
                cause: crate::text::one_line(&format!("{e}"), 300),
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(ManagementError::Refused {
            url: self.url().to_owned(),
            what: what.to_owned(),
            status,
            body: crate::text::one_line(&body, 200),
        })
    }

    /// The policies of `vhost`, as the API lists them.
    pub async fn policies(&self, vhost: &str) -> Result<Vec<Value>, ManagementError> {
        let what = format!("listing the policies of vhost {vhost}");
        let resp = self
            .send(&what, self.http.get(self.endpoint(&["policies", vhost])))
            .await?;
        resp.json::<Vec<Value>>()
            .await
            .map_err(|e| ManagementError::Unreachable {
                url: self.url().to_owned(),
                cause: format!("{what}: not the management API's answer: {e}"),
            })
    }

    /// Set every policy of `wanted` in `vhost` that is missing or different; say what changed.
    pub async fn apply(
        &self,
        vhost: &str,
        wanted: &[Policy],
    ) -> Result<Vec<(&'static str, PolicyChange)>, ManagementError> {
        let existing = self.policies(vhost).await?;
        let mut out = Vec::new();
        for p in wanted {
            let change = match existing.iter().find(|e| e["name"] == p.name) {
                Some(e) if same_policy(e, p) => PolicyChange::Unchanged,
                Some(_) => PolicyChange::Updated,
                None => PolicyChange::Created,
            };
            if change != PolicyChange::Unchanged {
                let body = json!({
                    "pattern": p.pattern,
                    "apply-to": p.apply_to,
                    "priority": p.priority,
                    "definition": p.definition,
                });
                let req = self
                    .http
                    .put(self.endpoint(&["policies", vhost, p.name]))
                    .json(&body);
                self.send(&format!("setting policy {} in vhost {vhost}", p.name), req)
                    .await?;
            }
            out.push((p.name, change));
        }
        Ok(out)
    }
}

/// Whether the API's `existing` policy is `p` (the definition compared as JSON: the API
/// echoes what was set).
fn same_policy(existing: &Value, p: &Policy) -> bool {
    existing["pattern"] == p.pattern
        && existing["apply-to"] == p.apply_to
        && existing["priority"] == p.priority
        && existing["definition"] == p.definition
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn vhosts_are_decoded() {
        assert_eq!(vhost_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://127.0.0.1"), "/");
        assert_eq!(vhost_of("amqp://h/prod%20a"), "prod a");
        assert_eq!(vhost_of("amqp://h/wxdt_1"), "wxdt_1");
    }

    #[test]
    fn the_management_url_is_derived_and_keeps_no_credentials() {
        let mut cfg = Config::default();
        cfg.broker.url = "amqp://app:s%40cret@mq.internal:5672/prod".into();
        let m = Management::from_config(&cfg).unwrap();
        assert_eq!(m.url(), "http://mq.internal:15672/");
        assert_eq!((m.user.as_str(), m.password.expose()), ("app", "s@cret"));
        assert!(!format!("{m:?}").contains("cret"));
        assert_eq!(
            m.endpoint(&["policies", "/", LANES_POLICY]).as_str(),
            "http://mq.internal:15672/api/policies/%2F/wxdispatch-lanes"
        );
        cfg.broker.management_url = "https://ops:pw@mgmt.example/rabbit/".into();
        let m = Management::from_config(&cfg).unwrap();
        assert_eq!(m.url(), "https://mgmt.example/rabbit/");
        assert_eq!(m.user, "ops");
        cfg.broker.management_url = "off".into();
        assert!(matches!(
            Management::from_config(&cfg),
            Err(ManagementError::Off)
        ));
    }
}
