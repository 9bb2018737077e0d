//! The job contract: what upstream publishes, validated once, at the boundary.
//!
//! [`parse`] turns one AMQP message body into a [`Job`] for one account, or into a [`JobError`]
//! whose `reason` is a stable snake_case word (a [`Reason`]; it becomes the dead letter's
//! `x-wxdispatch-reason` header) and whose `detail` is one
//! short line naming the field and the offending value or limit, e.g.
//! `message.text.content: 2100 bytes, limit 2048`.
//!
//! ```json
//! {"job_id": "r-20261121-000123", "to": "oUser-openid-or-external-userid", "open_kfid": "wkXXXX",
//!  "message": {"text": "Hello, how can I help?"}, "gate": "bot", "not_after": "2026-11-21T10:00:00Z"}
//! ```
//!
//! The rules, in the order they are checked (CONTRACT.md §4 and §6, limits from
//! `reference/wechat-api.md`):
//!
//! 1. the body fits `max_body`, is UTF-8 and a JSON object;
//! 2. `job_id` (else the AMQP `message_id`) is 1–32 chars of `[0-9A-Za-z_-]`. From here on every
//!    error carries the job id so the rejection can be recorded under it;
//! 3. `kind` (`send` by default; `event_reply` is WeCom only), `to` (a recipient, or for a
//!    broadcast an array of up to [`MAX_BROADCAST_RECIPIENTS`]), `open_kfid` (WeCom; defaulted when
//!    the account has exactly one), `message` (exactly one key, the message type, validated against
//!    the platform's own payload format and limits), `gate`, `not_after`, `not_before` (not after
//!    `not_after`; not on an event_reply), the `chatbot` extras, and
//!    the kind's own fields (`code`; `service_state`/`servicer_userid`/`kefustate`; a recall's
//!    `target_job_id`, WeCom only).
//!
//! Unknown top-level fields are ignored (forward compatibility), and so are fields that do not
//! apply to the account's channel (`chatbot` on a WeCom account, `open_kfid` on a chatbot account).
//! Unknown fields *inside* a message payload are passed through to the platform untouched.
//!
//! The renderers turn a job into the platform's request: [`chatbot_sendmsg_xml`] (the
//! plaintext the chatbot channel encrypts), [`chatbot_kefustate_get_xml`],
//! [`chatbot_kefustate_change_xml`], [`wecom_send_body`] and [`wecom_event_body`].
//!
//! Pure code: no I/O, no clock, no randomness. [`parse`] never panics, whatever the input (see the
//! property tests in `prop_tests.rs`).
//!
//! The files: `model.rs` (the validated job), `parse.rs` (the top-level fields), `wecom.rs` and
//! `chatbot.rs` (each platform's message limits and validation), `fields.rs` (the validators'
//! shared plumbing), `render.rs`. The id rules ([`valid_job_id`], [`derive_job_id`], …) live in
//! [`crate::domain::ids`] and are re-exported here.

mod chatbot;
mod fields;
mod model;
mod parse;
mod render;
mod wecom;

#[cfg(test)]
mod kefustate_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod recall_tests;
#[cfg(test)]
mod render_tests;
#[cfg(test)]
mod tests;

pub use crate::domain::ids::{
    MAX_JOB_ID_LEN, MAX_RECIPIENT_CHARS, derive_job_id, valid_job_id, valid_recipient, wecom_msgid,
};
pub use crate::domain::reason::Reason;
pub use chatbot::{
    CHATBOT_CHANNELS_NEEDING_APPID, CHATBOT_EVENTS, CHATBOT_MSGTYPES, CHATBOT_MULTIMSG_MAX_ITEMS,
    CHATBOT_NEWS_MAX_ARTICLES, CHATBOT_TEXT_MAX_BYTES,
};
pub use model::{ChatbotExtras, Gate, Job, JobError, JobKind, Message, Recall, Transfer, fan_out};
pub use parse::{MAX_BROADCAST_RECIPIENTS, parse};
pub use render::{
    chatbot_appid, chatbot_kefustate_change_xml, chatbot_kefustate_get_xml, chatbot_sendmsg_xml,
    wecom_event_body, wecom_send_body,
};
pub use wecom::{
    WECOM_EVENT_MSGTYPES, WECOM_LINK_DESC_MAX_BYTES, WECOM_LINK_TITLE_MAX_BYTES,
    WECOM_LINK_URL_MAX_BYTES, WECOM_MENU_HEAD_MAX_BYTES, WECOM_MENU_MAX_ITEMS,
    WECOM_MENU_TAIL_MAX_BYTES, WECOM_MINIPROGRAM_TITLE_MAX_BYTES, WECOM_MSGTYPES,
    WECOM_TEXT_MAX_BYTES,
};
