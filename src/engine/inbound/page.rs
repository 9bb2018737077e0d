//! One pull: take the `(account, open_kfid)` lock, page from the stored cursor until caught
//! up (publish each page's new messages, then commit it), release. Ends in a `RunOutcome`
//! the loop ([`super::run`]) decides on.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Channel;
use crate::domain::inbound::{Inbound, SyncPage};
use crate::engine::inbound::ctx::SyncCtx;
use crate::engine::inbound::hub::{Slot, SyncHub};
use crate::engine::inbound::publish::publish_inbound;
use crate::platform::TokenManager;
use crate::policy::{self, Action, Api, CallResult};
use crate::store::inbound::{PageCommit, SyncLock};
use crate::telemetry as t;

/// Empty pages with `has_more` = 1 followed in a row before the run gives up until the next
/// wake or poll: the platform sometimes returns a few, never legitimately thousands.
const MAX_EMPTY_PAGES_IN_A_ROW: u32 = 100;

/// How one pull (a run of pages under the lock) ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RunOutcome {
    /// `has_more` reached 0.
    CaughtUp { pages: u32, stored: usize },
    /// Another process holds the lock and pulls.
    LockBusy,
    /// Shutdown was requested between pages.
    Stopped,
    /// 45009: wait at least this long.
    Throttled(Duration),
    /// A transient failure (transport, 5xx, busy, database, broker): back off and retry.
    Transient(String),
    /// A configuration or protocol problem: retry after [`super::PERMANENT_ERROR_WAIT`].
    Permanent(String),
}

/// A page request's failure, classified.
pub(super) enum PageError {
    InvalidToken,
    Throttled,
    Transient(String),
    Permanent(String),
}

pub(super) fn classify_page(res: &CallResult, api: Api) -> PageError {
    if let (CallResult::Errcode { code: 95007, .. }, Api::Business) = (res, api) {
        return PageError::InvalidToken;
    }
    let what = match res {
        CallResult::Errcode { code, msg } => format!("errcode {code}: {msg}"),
        CallResult::Http(s) => format!("HTTP {s}"),
        CallResult::Transport(e) => e.clone(),
        CallResult::Ok { .. } => "ok".into(),
    };
    match policy::classify(Channel::Wecom, api, res) {
        Action::Throttle { .. } => PageError::Throttled,
        Action::Retry { .. } | Action::RefreshToken => PageError::Transient(what),
        // gettoken refuses the credentials: the account's prober asks again; this loop
        // retries after the permanent-error wait (its token requests are answered from the
        // remembered refusal meanwhile, without calling gettoken).
        Action::Deliver
        | Action::HumanServing
        | Action::DeadLetter { .. }
        | Action::CredentialsRefused { .. } => PageError::Permanent(what),
    }
}

/// One pull: take the lock, page from the stored cursor until caught up, release.
pub(super) async fn pull(
    ctx: &SyncCtx,
    hub: &SyncHub,
    open_kfid: &str,
    shutdown: &CancellationToken,
) -> RunOutcome {
    let account = ctx.account.as_str();
    let Some(slot) = hub.slot(account, open_kfid) else {
        return RunOutcome::Permanent(format!("no sync slot for open_kfid {open_kfid}"));
    };
    let Some(tokens) = ctx.platform().tokens() else {
        return RunOutcome::Permanent("not a wecom account".into());
    };
    let mut lock = match ctx.store.try_sync_lock(account, open_kfid).await {
        Ok(Some(l)) => l,
        Ok(None) => return RunOutcome::LockBusy,
        Err(e) => return RunOutcome::Transient(format!("{e:#}")),
    };
    let puller = Puller {
        ctx,
        hub,
        slot: &slot,
        tokens,
        open_kfid,
    };
    let outcome = puller.pages(&mut lock, shutdown).await;
    lock.release().await;
    outcome
}

/// What the pages of one pull share.
struct Puller<'a> {
    ctx: &'a SyncCtx,
    hub: &'a SyncHub,
    slot: &'a Slot,
    tokens: &'a TokenManager,
    open_kfid: &'a str,
}

/// A page request's result: a page, or "ask again without the callback Token".
enum Fetched {
    Page(SyncPage),
    RetryWithoutToken,
}

impl Puller<'_> {
    /// Page until caught up (or a failure), under the lock.
    async fn pages(&self, lock: &mut SyncLock, shutdown: &CancellationToken) -> RunOutcome {
        let (account, open_kfid) = (self.ctx.account.as_str(), self.open_kfid);
        // Another process may have advanced the cursor: always read it under the lock.
        let mut cursor = match lock.cursor().await {
            Ok(c) => c,
            Err(e) => return RunOutcome::Transient(format!("{e:#}")),
        };
        let (mut pages, mut stored, mut empty_in_a_row) = (0u32, 0usize, 0u32);
        let mut token_dropped = false;
        loop {
            if shutdown.is_cancelled() {
                return RunOutcome::Stopped;
            }
            let page = match self.fetch(cursor.as_deref(), &mut token_dropped).await {
                Ok(Fetched::Page(p)) => p,
                Ok(Fetched::RetryWithoutToken) => continue,
                Err(outcome) => return outcome,
            };
            pages += 1;
            metrics::counter!(t::SYNC_PAGES, "account" => account.to_owned(),
                "outcome" => if page.msgs.is_empty() { "empty" } else { "ok" })
            .increment(1);
            let next = page.next_cursor.clone().or_else(|| cursor.clone());
            match self.store(lock, &page.msgs, next.as_deref()).await {
                Ok(n) => stored += n,
                Err(outcome) => return outcome,
            }
            cursor = next;
            if let Some(l) = page.lag_secs(chrono::Utc::now().timestamp()) {
                self.hub.set_lag(account, open_kfid, l);
            }
            if !page.has_more {
                return RunOutcome::CaughtUp { pages, stored };
            }
            if page.msgs.is_empty() {
                empty_in_a_row += 1;
                if empty_in_a_row >= MAX_EMPTY_PAGES_IN_A_ROW {
                    return RunOutcome::Transient(format!(
                        "{empty_in_a_row} empty pages with has_more = 1 in a row"
                    ));
                }
            } else {
                empty_in_a_row = 0;
            }
        }
    }

    /// Ask `sync_msg` for the page at `cursor`, with the callback Token while there is one.
    /// A rejected Token (95007) is dropped and the page asked again without it, once.
    async fn fetch(
        &self,
        cursor: Option<&str>,
        token_dropped: &mut bool,
    ) -> Result<Fetched, RunOutcome> {
        let (account, open_kfid) = (self.ctx.account.as_str(), self.open_kfid);
        let token = self.slot.token();
        let mut body = json!({
            "limit": self.ctx.sync.page_limit,
            "open_kfid": open_kfid,
            "voice_format": self.ctx.sync.voice_format.code(),
        });
        if let Some(c) = cursor {
            body["cursor"] = json!(c);
        }
        if let Some(tk) = &token {
            body["token"] = json!(tk);
        }
        let ((res, api), v) = self
            .ctx
            .platform()
            .wecom_call(self.tokens, "kf/sync_msg", &body)
            .await;
        let failed = || {
            metrics::counter!(t::SYNC_PAGES, "account" => account.to_owned(), "outcome" => "failed")
                .increment(1);
        };
        if !matches!(res, CallResult::Ok { .. }) {
            failed();
            return match classify_page(&res, api) {
                PageError::InvalidToken => {
                    if let Some(tk) = &token {
                        self.slot.drop_token(tk);
                    }
                    if token.is_some() && !*token_dropped {
                        *token_dropped = true;
                        debug!(
                            account,
                            open_kfid, "sync token rejected (95007); continuing without it"
                        );
                        return Ok(Fetched::RetryWithoutToken);
                    }
                    Err(RunOutcome::Permanent(
                        "errcode 95007 without a sync token".into(),
                    ))
                }
                PageError::Throttled => {
                    let pause = self
                        .ctx
                        .retry
                        .throttle_pause_secs
                        .map(Duration::from_secs)
                        .unwrap_or(policy::WECOM_THROTTLE_PAUSE);
                    Err(RunOutcome::Throttled(pause))
                }
                PageError::Transient(w) => Err(RunOutcome::Transient(w)),
                PageError::Permanent(w) => Err(RunOutcome::Permanent(w)),
            };
        }
        SyncPage::parse(v, open_kfid)
            .map(Fetched::Page)
            .map_err(|e| {
                failed();
                RunOutcome::Transient(format!("sync_msg answer: {e}"))
            })
    }

    /// Publish what is not stored yet, confirmed, *then* commit the page (and the cursor
    /// `next`). Returns how many messages were newly stored. A message the database refuses
    /// for its data does not fail the page: the store quarantines it and the cursor moves on
    /// (see [`crate::store::inbound`]); only an outage fails it.
    async fn store(
        &self,
        lock: &mut SyncLock,
        msgs: &[Inbound],
        next: Option<&str>,
    ) -> Result<usize, RunOutcome> {
        let account = self.ctx.account.as_str();
        let transient = |e: anyhow::Error| RunOutcome::Transient(format!("{e:#}"));
        let ids: Vec<&str> = msgs.iter().map(|m| m.msgid.as_str()).collect();
        let known = lock.stored_among(&ids).await.map_err(transient)?;
        let fresh: Vec<&Inbound> = msgs.iter().filter(|m| !known.contains(&m.msgid)).collect();
        publish_inbound(self.hub.publisher(), account, &fresh)
            .await
            .map_err(transient)?;
        let now = chrono::Utc::now().timestamp();
        let commit = lock.commit_page(msgs, next, now).await.map_err(transient)?;
        count_commit(account, msgs, &commit);
        Ok(commit.inserted.len())
    }
}

/// Metrics and log lines of a committed page.
fn count_commit(account: &str, msgs: &[Inbound], commit: &PageCommit) {
    for m in msgs.iter().filter(|m| commit.inserted.contains(&m.msgid)) {
        metrics::counter!(t::INBOUND_MESSAGES, "account" => account.to_owned(), "kind" => m.msgtype.clone())
            .increment(1);
    }
    for f in &commit.send_failures {
        if f.jobs.is_empty() {
            info!(
                account,
                fail_type = f.fail_type,
                "msg_send_fail for a message with no `sent` delivery row"
            );
        } else {
            warn!(account, job.id = %f.jobs.join(","), fail_type = f.fail_type, "platform reported a sent message undelivered (msg_send_fail)");
        }
    }
    let failed = commit.failed_deliveries();
    if failed > 0 {
        metrics::counter!(t::SEND_FAILURES, "account" => account.to_owned()).increment(failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_errors_are_classified() {
        let e = |code| CallResult::Errcode {
            code,
            msg: String::new(),
        };
        let b = Api::Business;
        assert!(matches!(
            classify_page(&e(95007), b),
            PageError::InvalidToken
        ));
        assert!(matches!(classify_page(&e(45009), b), PageError::Throttled));
        assert!(matches!(classify_page(&e(-1), b), PageError::Transient(_)));
        assert!(matches!(
            classify_page(&CallResult::Transport("timeout".into()), b),
            PageError::Transient(_)
        ));
        assert!(matches!(
            classify_page(&e(95000), b),
            PageError::Permanent(_)
        ));
        assert!(matches!(
            classify_page(&e(40013), b),
            PageError::Permanent(_)
        ));
        // A refused gettoken is not a stale access token to retry at once.
        assert!(matches!(
            classify_page(&e(40001), Api::GetToken),
            PageError::Permanent(_)
        ));
        assert!(matches!(
            classify_page(&e(40001), b),
            PageError::Transient(_)
        ));
    }
}
