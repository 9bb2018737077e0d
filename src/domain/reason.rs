//! Why a message was dead-lettered: one word per cause, in one place.
//!
//! The word is what an operator sees and filters on: the dead letter's `x-wxdispatch-reason`
//! header, the `dead_letters.reason` column, the `reason` label of the dead-letter metric and
//! `wxdispatch dlq list --reason`. The words are stable (stored rows and dashboards use them),
//! snake_case, and the README lists them with the meanings given here.
//!
//! Three sources write them: job validation ([`crate::domain::job::parse`]), the errcode table
//! ([`crate::policy::classify`]) and the engine (retry budget, conversation allowance, panics,
//! messages for no configured account).

use std::fmt;
use std::str::FromStr;

/// Declares [`Reason`] with its words and [`Reason::ALL`] from one list, so that no variant can
/// miss its word or its place in `ALL`.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $word:literal,)+) => {
        /// Why a message was dead-lettered. See the module docs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[$doc])* $variant,)+
        }

        impl Reason {
            /// Every reason, in the order of the README's list.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)+];

            /// The stable word written into dead letters.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $word,)+
                }
            }
        }
    };
}

reasons! {
    // ---- job validation: the body breaks the job contract (CONTRACT.md §4, §6) ----
    /// The body is larger than `worker.max_body_bytes`.
    BodyTooLarge = "body_too_large",
    /// The body is not UTF-8.
    InvalidUtf8 = "invalid_utf8",
    /// The body is not JSON, or not a JSON object.
    InvalidJson = "invalid_json",
    /// Neither the body's `job_id` nor the AMQP `message_id` is set.
    MissingJobId = "missing_job_id",
    /// The job id is not 1–32 chars of `[0-9A-Za-z_-]`.
    InvalidJobId = "invalid_job_id",
    /// `kind` is not send, event_reply (WeCom only), transfer, broadcast or recall.
    InvalidKind = "invalid_kind",
    /// `to` is missing or not a plausible recipient (or, for a broadcast, not an array of them).
    InvalidTo = "invalid_to",
    /// A broadcast names more recipients than the contract allows.
    TooManyRecipients = "too_many_recipients",
    /// A send, event_reply or broadcast has no `message`.
    MissingMessage = "missing_message",
    /// `message` is malformed for its type (a missing or empty field, a wrong type, …).
    InvalidMessage = "invalid_message",
    /// The message type does not exist on the account's platform (or for event_reply).
    UnknownMsgtype = "unknown_msgtype",
    /// A field or list of the message is over the platform's limit.
    MessageOverLimit = "message_over_limit",
    /// No `open_kfid`, and the WeCom account has more than one.
    MissingOpenKfid = "missing_open_kfid",
    /// `open_kfid` is empty or not a string; or WeCom says the open_kfid is invalid (95000, 95004).
    InvalidOpenKfid = "invalid_open_kfid",
    /// `open_kfid` is not one of the account's open_kfids.
    UnknownOpenKfid = "unknown_open_kfid",
    /// `gate` is not "bot" or "none".
    InvalidGate = "invalid_gate",
    /// `not_after` is not an RFC 3339 time.
    InvalidNotAfter = "invalid_not_after",
    /// `not_before` is not an RFC 3339 time, or is set on an event_reply (which cannot wait).
    InvalidNotBefore = "invalid_not_before",
    /// `not_before` is later than `not_after`: the job could only expire.
    NotBeforeAfterNotAfter = "not_before_after_not_after",
    /// `not_before` is further ahead than a scheduled send may wait
    /// (`engine::lane::schedule::MAX_AHEAD`).
    NotBeforeTooFar = "not_before_too_far",
    /// The `chatbot` extras are malformed.
    InvalidChatbot = "invalid_chatbot",
    /// A chatbot job for sendmsg channel 0, 5 or 6 names no `chatbot.appid` and its account has
    /// no `oa_appid`: the platform needs the Official Account / Mini Program appid there.
    MissingAppid = "missing_appid",
    /// An event_reply has no usable `code`.
    InvalidCode = "invalid_code",
    /// A transfer's `service_state`/`servicer_userid`/`kefustate` are missing or inconsistent.
    InvalidTransfer = "invalid_transfer",
    /// A chatbot transfer's `kefustate` is missing or not one of asking, personserving,
    /// complete, needperson (or the older on, off).
    InvalidKefustate = "invalid_kefustate",
    /// A chatbot transfer's `expires` is not a whole number of seconds within the bounds
    /// (1..=86400), or is given with the older on/off.
    InvalidExpires = "invalid_expires",
    /// A recall on a chatbot account: recalling a sent message is a WeCom feature
    /// (kf/recall_msg); the Dialogue Open Platform has none.
    RecallWecomOnly = "recall_wecom_only",
    /// A recall's `target_job_id` is missing, not a job id, or the recall's own id.
    InvalidRecallTarget = "invalid_recall_target",

    // ---- the platform refused the request (the errcode table) ----
    /// The account's configuration is wrong (secret, token, API not enabled, IP not allowed,
    /// a 4xx status): an operator must fix it; replay afterwards.
    ConfigError = "config_error",
    /// The platform rejects the request's content as malformed.
    InvalidRequest = "invalid_request",
    /// The platform rejects the content itself (sensitive words).
    ContentRejected = "content_rejected",
    /// The recipient does not exist or cannot receive from this account.
    InvalidRecipient = "invalid_recipient",
    /// A media_id is invalid or expired.
    InvalidMedia = "invalid_media",
    /// WeCom: 5 messages were already sent since the customer's last message (95001, or counted
    /// by wxdispatch before sending).
    QuotaExhausted = "quota_exhausted",
    /// WeCom: the customer's last message is more than 48 h old (95002, or checked by
    /// wxdispatch before sending).
    WindowClosed = "window_closed",
    /// WeCom: the conversation was ended (95013).
    SessionClosed = "session_closed",
    /// WeCom: the sync_msg cursor is invalid (95007).
    InvalidSyncToken = "invalid_sync_token",
    /// An errcode the table does not know: more often a request problem than a transient one.
    UnknownErrcode = "unknown_errcode",

    // ---- the engine gave up ----
    /// A human agent serves the conversation (WeCom 95018) and the job has `gate: "none"`, so it
    /// could not be sent.
    HumanServing = "human_serving",
    /// Chatbot: `kefustate/get` answered a `status` wxdispatch does not know, so whether a bot
    /// reply may be sent cannot be judged.
    UnknownChatbotState = "unknown_chatbot_state",
    /// Transient failures lasted beyond `retry.total_budget_secs`.
    RetriesExhausted = "retries_exhausted",
    /// The job's handler panicked; the lane went on.
    InternalError = "internal_error",
    /// The message's routing key names no configured account.
    UnknownAccount = "unknown_account",
    /// The broker dead-lettered the message itself (the lane's `x-delivery-limit`, or any
    /// other dead-lettering of the broker's: it carries `x-death` and no wxdispatch reason).
    DeliveryLimit = "delivery_limit",
    /// A recall's target is not a message this account sent: no such job id on the account,
    /// not (or not yet) `sent`, no platform msgid, another conversation, or already recalled.
    RecallTargetUnknown = "recall_target_unknown",
    /// A recall came more than 2 minutes after its target was sent (WeCom recalls only
    /// within 2 minutes); checked before asking the platform.
    RecallTooLate = "recall_too_late",
}

impl Reason {
    /// The reason of a word, if it is one.
    pub fn parse(word: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == word)
    }
}

/// A word that is not a [`Reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a dead-letter reason: {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::parse(s).ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Reason> for String {
    fn from(r: Reason) -> String {
        r.as_str().to_owned()
    }
}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for &r in Reason::ALL {
            let w = r.as_str();
            assert!(seen.insert(w), "{w} twice");
            // `[a-z_]+`, but for the digit of `invalid_utf8`: what `dlq --reason` accepts.
            assert!(
                w.starts_with(|c: char| c.is_ascii_lowercase())
                    && w.len() <= 64
                    && w.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{w} is not [a-z][a-z0-9_]*"
            );
            assert!(
                w.bytes().filter(u8::is_ascii_digit).count() == 0 || w == "invalid_utf8",
                "{w}: only invalid_utf8 has a digit"
            );
            assert_eq!(Reason::parse(w), Some(r));
            assert_eq!(w.parse::<Reason>(), Ok(r));
            assert_eq!(r.to_string(), w);
            assert_eq!(String::from(r), w);
            assert_eq!(r, w);
        }
        assert_eq!(seen.len(), Reason::ALL.len());
    }

    #[test]
    fn unknown_words_are_refused() {
        for w in [
            "",
            "Config_error",
            "config_eror",
            "config_error ",
            "expired",
        ] {
            assert_eq!(Reason::parse(w), None, "{w:?}");
            assert_eq!(w.parse::<Reason>(), Err(UnknownReason(w.to_owned())));
        }
    }

    /// The words are stored in rows and used by dashboards: pinned.
    #[test]
    fn words_are_pinned() {
        assert_eq!(Reason::ALL.len(), 46);
        assert_eq!(Reason::ConfigError.as_str(), "config_error");
        assert_eq!(Reason::RetriesExhausted.as_str(), "retries_exhausted");
        assert_eq!(Reason::UnknownAccount.as_str(), "unknown_account");
        assert_eq!(Reason::DeliveryLimit.as_str(), "delivery_limit");
        assert_eq!(Reason::MissingAppid.as_str(), "missing_appid");
        assert_eq!(Reason::InvalidJson.as_str(), "invalid_json");
        assert_eq!(Reason::RecallTooLate.as_str(), "recall_too_late");
        assert_eq!(
            Reason::RecallTargetUnknown.as_str(),
            "recall_target_unknown"
        );
    }
}
