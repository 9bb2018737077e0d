//! Dead-lettering one message: publish it (confirmed) to `wxdispatch.dead` with its reason
//! headers, then remember it in `dead_letters` for `dlq list` / `dlq replay`. Publishing
//! first means a crash in between can only duplicate a dead letter, never lose one.

use lapin::BasicProperties;

use crate::broker::{DeadHeaders, Publisher};
use crate::store::{DeadLetter, Store};
use crate::telemetry as t;

/// Which step of [`dead_letter`] failed.
#[derive(Debug)]
pub enum Failed {
    /// Not published: nothing happened, the message must stay with the broker.
    Publish(anyhow::Error),
    /// Published but not recorded.
    Record(anyhow::Error),
}

/// Publish `body` (with `props`) as a dead letter, count it under `metric_account`, then
/// record it. `dl.body` is what is recorded; `body` is what is published (the same bytes).
pub async fn dead_letter(
    publisher: &Publisher,
    store: &Store,
    dl: &DeadLetter,
    props: &BasicProperties,
    metric_account: &str,
) -> Result<(), Failed> {
    let headers = DeadHeaders {
        reason: &dl.reason,
        errcode: dl.errcode,
        errmsg: dl.errmsg.as_deref(),
        account: &dl.account,
        attempts: dl.attempts,
    };
    publisher
        .dead_letter(&dl.body, props, &headers)
        .await
        .map_err(Failed::Publish)?;
    metrics::counter!(t::DEAD_LETTERS, "account" => metric_account.to_owned(), "reason" => dl.reason.clone()).increment(1);
    store.record_dead_letter(dl).await.map_err(Failed::Record)
}
