//! Inbound messages from WeCom: the `sync_msg` cursor loop, one per account and open_kfid.
//!
//! WeCom does not push messages; its callback (`kf_msg_or_event`, see [`crate::http::callback`])
//! only says "something happened on this open_kfid" and carries a short-lived `Token`. The
//! messages themselves are read with `POST /cgi-bin/kf/sync_msg` from a cursor. [`run`] is that
//! reader for one `(account, open_kfid)`:
//!
//! * **When**: at start (catch up after a restart), on every callback ([`SyncHub::wake`]), and
//!   every `sync.poll_interval_secs` in case a callback was lost.
//! * **Who**: one puller at a time across all worker processes, through a Postgres session
//!   advisory lock per `(account, open_kfid)` taken with try-lock. A process that does not get
//!   it leaves the pull to the holder (and, if it was woken by a callback, tries again shortly,
//!   so a message that arrived just as the holder finished is not left for the next poll).
//! * **How**: page until `has_more` is 0 (an empty page with `has_more` = 1 is followed, as the
//!   platform asks). For each page: publish every message not yet stored, with publisher
//!   confirms, to exchange `wxdispatch.inbound` (routing key `<account>.<msgtype>`, `event`
//!   for events; AMQP `message_id` = the platform msgid); *then*, in one transaction, insert
//!   the page into `inbound_messages` (`ON CONFLICT (account, msgid) DO NOTHING`), apply the
//!   side effects of the newly inserted rows, and store `next_cursor` in `sync_cursors`.
//!
//! A crash between publish and commit re-reads the page from the old cursor and publishes it
//! again (consumers deduplicate by `message_id`); nothing is ever skipped. A page that was
//! committed is never published again, even when the cursor is reset, because messages
//! already in `inbound_messages` are not re-published.
//!
//! Side effects (same transaction as the insert, applied once per message in page order;
//! [`Inbound::effect`] decides them, [`crate::store::inbound`] writes them):
//!
//! | message | effect |
//! |---|---|
//! | origin 3 (customer) | `conversations`: `last_customer_msg_at = send_time`, `sent_since_customer = 0` (when not older than the stored one); an ended session (4) becomes new (0) |
//! | event `session_status_change` | `conversations.service_state` / `servicer_userid` / `state_updated_at` (see [`ServiceState::after_change`](crate::domain::service_state::ServiceState::after_change)), unless a newer state is stored |
//! | event `msg_send_fail` | the `sent` delivery with that `platform_msgid` becomes `failed` (`error = 'msg_send_fail: fail_type N'`) plus a `delivery_events` row |
//!
//! Errors: 95007 (the callback Token expired) drops the Token and goes on without it; 45009
//! pauses this loop for at least 60 s (`retry.throttle_pause_secs` overrides it for tests);
//! transport failures and other transient errors back off exponentially with jitter
//! (`retry.initial_backoff_ms` … `retry.max_backoff_ms`); configuration errors are logged and
//! retried after [`PERMANENT_ERROR_WAIT`]. An open_kfid that has not synced successfully for
//! `sync.retention_alert_secs` raises the retention alert ([`retention`]).
//!
//! The files: [`ctx`] (what a loop needs), [`hub`] (wake-ups and Tokens shared with the
//! callbacks), [`sync_loop`] (when to pull), [`page`] (one pull, page by page), [`publish`]
//! (confirmed publishing), [`retention`] (the retention alert). The messages themselves are [`crate::domain::inbound`].

pub mod ctx;
pub mod hub;
pub mod page;
pub mod publish;
pub mod retention;
pub mod sync_loop;

pub use crate::domain::inbound::{Effect, Inbound, content_id, normalize_msgid, routing_word};
pub use ctx::SyncCtx;
pub use hub::SyncHub;
pub use publish::publish_inbound;
pub use retention::{AtRisk, RetentionWatch};
pub use sync_loop::{PERMANENT_ERROR_WAIT, run};
