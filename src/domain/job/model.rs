//! The validated job: what [`super::parse`] returns and the renderers read.

use chrono::{DateTime, Utc};

use crate::domain::chatbot_state::ChatbotState;
use crate::domain::ids::derive_job_id;

/// Whether a human agent's presence suppresses the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// `"bot"` (default): a bot reply, suppressed while a human serves the conversation
    /// (chatbot kefustate `on`; WeCom service_state 2 or 3).
    Bot,
    /// `"none"`: always sent (e.g. the human agent's own message).
    None,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Bot => "bot",
            Gate::None => "none",
        }
    }
}

/// A hand-over to or from a human. Exactly the fields of the account's channel are set.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// WeCom: the target session state, 1..=4 (service_state/trans).
    pub service_state: Option<i64>,
    /// WeCom: the human servicer; present exactly when `service_state == 3`.
    pub servicer_userid: Option<String>,
    /// Chatbot: the word sent as kefustate/change's `kefustate`: one of the four states
    /// (`asking`, `personserving`, `complete`, `needperson`) or the older `"on"` (hand to a
    /// human) / `"off"` (back to the bot), sent as given.
    pub kefustate: Option<String>,
    /// Chatbot: the state the change sets (`on` → personserving, `off` → asking), what the
    /// lane's gate remembers after the change succeeded.
    pub chatbot_state: Option<ChatbotState>,
    /// Chatbot: seconds until the platform reverts the state (kefustate/change's `expires`);
    /// `Some` exactly with one of the four states (default
    /// [`crate::domain::chatbot_state::DEFAULT_EXPIRES_SECS`]), `None` with on/off, whose
    /// request stays as it always was.
    pub expires: Option<u32>,
}

/// What the job asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Send `message` to `to` (chatbot sendmsg, WeCom kf/send_msg).
    Send,
    /// WeCom kf/send_msg_on_event with the welcome/end `code` (single use, valid 20 s).
    EventReply { code: String },
    /// Hand the conversation over (WeCom service_state/trans, chatbot kefustate/change).
    Transfer(Transfer),
    /// One `message` to many recipients; fanned out with [`fan_out`]. Recipients are kept
    /// verbatim (the broadcast module dedupes and checks each one with [`crate::domain::ids::valid_recipient`]).
    Broadcast { recipients: Vec<String> },
    /// WeCom kf/recall_msg: take back the message an earlier job of this account sent.
    Recall(Recall),
}

/// A recall: which earlier job's message to take back (WeCom only).
#[derive(Debug, Clone, PartialEq)]
pub struct Recall {
    /// The job whose message is recalled: a job id of the same account (the job format's
    /// `target_job_id`).
    pub target_job_id: String,
    /// The msgid the platform returned when it accepted the target (its row's
    /// `platform_msgid`). `None` from [`super::parse`]: the lane fills it in from the target's
    /// delivery row before calling the platform (`engine::lane::recall`).
    pub msgid: Option<String>,
}

impl JobKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Send => "send",
            JobKind::EventReply { .. } => "event_reply",
            JobKind::Transfer(_) => "transfer",
            JobKind::Broadcast { .. } => "broadcast",
            JobKind::Recall(_) => "recall",
        }
    }
}

/// A validated message: its type and the platform payload for it.
///
/// Normalised: a WeCom bare-string text becomes `{"content": s}`; a chatbot text is always the
/// bare string (`{"content": s}` is accepted too); the items of a chatbot `multimsg` are one-key
/// objects (`{"text": s}`, `{"news": {...}}`, ...), a bare string item becoming `{"text": s}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub msgtype: String,
    pub payload: serde_json::Value,
}

/// Optional chatbot sendmsg extras (the job's `chatbot` object).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatbotExtras {
    /// The sendmsg `channel` number; `None` = the account's `default_channel`.
    pub channel: Option<i64>,
    /// One of [`super::CHATBOT_EVENTS`].
    pub event: Option<String>,
    pub kefuname: Option<String>,
    pub kefuavatar: Option<String>,
    pub ans_node_name: Option<String>,
    /// The OA / mini-program appid, rendered in sendmsg's and kefustate's `<appid>` (else the
    /// account's `oa_appid`; see [`super::chatbot_appid`]). `None` when absent or empty.
    pub appid: Option<String>,
}

/// One validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The idempotency key (also WeCom's `msgid`).
    pub job_id: String,
    pub kind: JobKind,
    /// The recipient: openid (chatbot) or external_userid (WeCom); empty for a broadcast.
    pub to: String,
    /// WeCom: always `Some` after [`super::parse`] (defaulted when the account has exactly one
    /// open_kfid). Chatbot: `None`.
    pub open_kfid: Option<String>,
    /// `Some` for send, event_reply and broadcast; `None` for transfer and recall.
    pub message: Option<Message>,
    /// Chatbot accounts only; default (all `None`) on WeCom accounts.
    pub chatbot: ChatbotExtras,
    pub gate: Gate,
    /// Not sent after this instant (then the job is `expired`).
    pub not_after: Option<DateTime<Utc>>,
    /// Not sent before this instant (a scheduled send; see `engine::lane::schedule`): the lane
    /// holds the job durably in the delay tiers until then. Never after `not_after`.
    pub not_before: Option<DateTime<Utc>>,
}

/// Why a job is rejected. `reason` names the problem (its stable snake_case word becomes the AMQP
/// header x-wxdispatch-reason; see [`crate::domain::reason::Reason`]); `detail` is one human line naming the
/// field and value/limit (e.g. "message.text.content: 2100 bytes, limit 2048"); `job_id` is the
/// job id when one could be extracted and is valid even though something else is wrong (so the
/// rejection can be recorded).
///
/// When the body cannot be read at all (`body_too_large`, `invalid_utf8`, `invalid_json`),
/// `job_id` is the AMQP `message_id` if that is a valid job id: the contract lets it stand in for
/// the body's `job_id`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct JobError {
    /// The word of a [`crate::domain::reason::Reason`] (kept a `&str` while the engine's `Outcome` carries a `String`).
    pub reason: &'static str,
    pub detail: String,
    pub job_id: Option<String>,
}

/// The per-recipient `Send` job of a broadcast: derived job id, `to = recipient`, and the same
/// message, gate, not_after, not_before, open_kfid and chatbot extras.
pub fn fan_out(broadcast: &Job, recipient: &str) -> Job {
    Job {
        job_id: derive_job_id(&broadcast.job_id, recipient),
        kind: JobKind::Send,
        to: recipient.to_owned(),
        open_kfid: broadcast.open_kfid.clone(),
        message: broadcast.message.clone(),
        chatbot: broadcast.chatbot.clone(),
        gate: broadcast.gate,
        not_after: broadcast.not_after,
        not_before: broadcast.not_before,
    }
}
