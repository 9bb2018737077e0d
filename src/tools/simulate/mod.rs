//! The platform simulator: `wxdispatch simulate` ([`serve`]), and [`start`] for in-process tests.
//!
//! It answers the same HTTP APIs, with the same encryption and the same errcodes, as the two
//! platforms wxdispatch delivers to, for the accounts of a config file:
//!
//! * **Dialogue Open Platform** (chatbot accounts): `POST /openapi/sendmsg/{TOKEN}`,
//!   `/openapi/kefustate/get/{TOKEN}`, `/openapi/kefustate/change/{TOKEN}`. The body
//!   `{"encrypt": …}` is decrypted with the account's EncodingAESKey and checked against its
//!   APPID (the WXBizMsgCrypt receive id), the plaintext XML is parsed and validated. See
//!   [`chatbot`] for the errcode of every rejection.
//! * **WeCom customer service** (wecom accounts): `GET /cgi-bin/gettoken`, `POST /cgi-bin/kf/`
//!   `send_msg`, `send_msg_on_event`, `sync_msg`, `service_state/get`, `service_state/trans`,
//!   `recall_msg` (see [`recall`]: the 2-minute window, [`SimState::recalls`]).
//!   Access tokens are issued and checked (missing 41001, unknown 40014, expired 42001); message
//!   bodies are validated against the documented limits; sessions have service states, the
//!   48-hour / 5-message window can be enforced, and each open_kfid has an append-only inbound
//!   log read through `sync_msg` with opaque cursors. See [`wecom`].
//! * **An admin API** under `/_sim/…` (see [`admin`]) and the methods of [`SimState`]: what was
//!   accepted (the exact plaintext / JSON), counters, fault rates, scripted errcodes, token
//!   expiry, and the conversation side (customer messages, events, callbacks to the worker).
//!
//! Every business request (everything but `gettoken` and `/_sim`) first passes the *gate*
//! ([`gate`]): scripted errcodes (by default for the account's next *write* requests), then
//! randomly injected faults, then the account's configured rate. A request stopped there is
//! not processed and not accepted. Errors of every kind are counted per `account:errcode`.
//!
//! Performance: handlers are synchronous up to the response (no lock is held across an await),
//! state sits behind short per-purpose `std` locks, and accepted requests are stored compactly
//! (at most [`MAX_RETAINED_ACCEPTED`]), so the simulator is not the bottleneck of a benchmark:
//! `cargo test --release --lib simulate::tests::throughput -- --ignored --nocapture` measures it.
//!
//! # Deliberate simplifications
//!
//! * **Media** are not stored: any non-empty `media_id` / `thumb_media_id` is accepted.
//! * **Users** are not known in advance: any non-empty openid / external_userid is a valid
//!   recipient (unless `enforce_window` asks for a prior customer message).
//! * **Rate limits** are the account's own configured `rate`, checked per account *and per API*
//!   (the platforms limit each API separately) as a sliding window: at most
//!   `ceil(per-second rate) + burst` calls in any 1 s (and, for `per_minute` rates, at most
//!   `per_minute + burst` in any 60 s), with [`gate::RATE_WINDOW_SLACK`] of tolerance for network
//!   jitter. Refused calls do not count, and there is no 60-second lock-out after a 45009.
//!   The platforms' own global limits (10,000/min per corp…) are not simulated.
//! * **Access tokens**: while a corp's token is valid, `gettoken` returns the same token with the
//!   remaining lifetime (as WeCom does). Tokens are never invalidated by a newer one.
//!   `gettoken` itself is never faulted, scripted or throttled (WeCom's block after ~2000 bad
//!   calls an hour is not simulated; the calls are counted so tests can assert on them).
//! * **Chatbot** messages are accepted while a human serves the user (kefustate on): the
//!   platform's behaviour there is unverified, and gating is the caller's job.
//! * **Duplicate msgids** are accepted (whether WeCom deduplicates is unverified) and counted
//!   in the stats, so tests can assert that the worker never sends a job twice.
//! * **Sessions** change only through `service_state/trans` and the [`SimState`] helpers; a
//!   send does not move a session from state 0 to 1, and no `session_status_change` event is
//!   generated for API transfers (WeCom only reports servicer actions that way). A customer
//!   message to an ended session (4) starts a new one (state 0).
//! * **Inbound messages** exist only when a test or user creates them (customer messages,
//!   events); messages sent through the API are never returned by `sync_msg` (as on WeCom).
//!   Entries older than 3 days are not returned.
//! * **Time** is wall-clock only; the 48-hour window cannot be fast-forwarded.
//! * **Errcode messages** (`errmsg`) are the simulator's own words with a `hint`, not WeCom's
//!   exact strings: callers must branch on `errcode` only, as the platforms ask.

mod accepted;
pub mod admin;
pub mod chatbot;
mod conversations;
mod drive;
pub mod gate;
mod kefu;
pub mod kf_admin;
mod options;
mod recall;
mod recalls;
mod reply;
mod respond;
mod server;
mod state;
mod tokens;
mod util;
pub mod wecom;
pub mod wecom_msg;
mod xml;

#[cfg(test)]
mod tests;

pub use accepted::{Accepted, MAX_RETAINED_ACCEPTED};
pub use conversations::{
    EVENT_CODE_TTL, INBOUND_RETENTION, REPLY_QUOTA, REPLY_WINDOW, SYNC_TOKEN_TTL,
};
pub use options::{DEFAULT_FAULT_TIMEOUT_MS, DEFAULT_TOKEN_TTL, Faults, SimOptions};
pub use recall::RECALL_WINDOW;
pub use recalls::Recalled;
pub use server::{DEFAULT_LISTEN, SHUTDOWN_GRACE, SimHandle, router, serve, start};
pub use state::{SimState, SimStats, UNKNOWN_ACCOUNT};
