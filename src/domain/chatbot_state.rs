//! The Dialogue Open Platform's service states of a chatbot conversation: the `status` of
//! `kefustate/get` with `type=all`, the states `kefustate/change` sets (with `expires`), what
//! each means for a bot reply, and the bounds of `expires` (issue 20.2;
//! shared/reference/wechat-api.md "Dialogue Open Platform").
//!
//! The platform speaks words; this is the one place that knows what they mean. The older
//! on/off view (`kefustate`, and `type=simple`) maps onto the four states: `on` = a human
//! serves = `personserving`, `off` = the bot answers = `asking`.

use std::fmt;

use crate::text::clip_chars;

/// Who serves a chatbot conversation, as `kefustate/get` (`type=all`) reports it in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatbotState {
    /// `asking`: the bot answers the user (the state a conversation starts in and reverts to).
    Asking,
    /// `personserving`: a human agent serves the user; the bot must stay silent (`kefustate`
    /// `on`).
    PersonServing,
    /// `complete`: a human agent's session with the user ended; the bot answers again.
    Complete,
    /// `needperson`: the bot caught a request for a human, and no human serves yet.
    NeedPerson,
}

/// `expires` of a `kefustate/change` that names none: the platform's default (issue 20.2: "an
/// `expires`, default 1,800 s, after which the state reverts").
pub const DEFAULT_EXPIRES_SECS: u32 = 1800;
/// Shortest `expires` a transfer job may ask for: a state must last at least a second to mean
/// anything (*unverified*: the platform documents no lower bound).
pub const MIN_EXPIRES_SECS: u32 = 1;
/// Longest `expires` a transfer job may ask for: one day. *Unverified*: the platform documents
/// no upper bound; a state held longer than a day is almost certainly a unit mistake
/// (milliseconds for seconds) and would silence the bot for that long.
pub const MAX_EXPIRES_SECS: u32 = 86_400;

/// An unknown `status` is quoted in errors (a dead letter's errmsg, a log line) cut to this
/// many characters: the platform's answer is outside text, and the word alone is what helps.
const QUOTED_STATUS_CHARS: usize = 64;

/// A `kefustate/get` answer wxdispatch cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateAnswerError {
    /// `status` is not one of the four documented words.
    #[error("kefustate/get: status {0:?} is not asking, personserving, complete or needperson")]
    UnknownStatus(String),
    /// Neither a `status` nor a `kefustate` of `on`/`off`.
    #[error("kefustate/get: the answer has no status and no kefustate on/off")]
    NoState,
}

impl ChatbotState {
    /// Every state, in the order the platform's documentation lists them.
    pub const ALL: [ChatbotState; 4] = [
        Self::Asking,
        Self::PersonServing,
        Self::Complete,
        Self::NeedPerson,
    ];

    /// The platform's word for this state.
    pub fn name(self) -> &'static str {
        match self {
            Self::Asking => "asking",
            Self::PersonServing => "personserving",
            Self::Complete => "complete",
            Self::NeedPerson => "needperson",
        }
    }

    /// The state of a platform word; `None` for a word the platform does not define (on/off
    /// are not states: see [`ChatbotState::from_kefustate`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The state the on/off view stands for: `on` → `personserving`, `off` → `asking`.
    pub fn from_kefustate(word: &str) -> Option<Self> {
        match word {
            "on" => Some(Self::PersonServing),
            "off" => Some(Self::Asking),
            _ => None,
        }
    }

    /// The on/off view of the state (`type=simple`): `on` only while a human serves.
    pub fn kefustate(self) -> &'static str {
        if self == Self::PersonServing {
            "on"
        } else {
            "off"
        }
    }

    /// The state of a `kefustate/get` answer: its `status` when there is one (an unknown word
    /// is an error, never guessed at), else its on/off `kefustate`.
    pub fn from_answer(
        kefustate: Option<&str>,
        status: Option<&str>,
    ) -> Result<Self, StateAnswerError> {
        match status {
            Some(s) => Self::from_name(s)
                .ok_or_else(|| StateAnswerError::UnknownStatus(clip_chars(s, QUOTED_STATUS_CHARS))),
            None => kefustate
                .and_then(Self::from_kefustate)
                .ok_or(StateAnswerError::NoState),
        }
    }

    /// Whether a bot reply (`gate: "bot"`) is suppressed in this state: always while a human
    /// serves; in `needperson` only when the account says so (`gate_needperson`).
    pub fn gates_bot(self, gate_needperson: bool) -> bool {
        match self {
            Self::PersonServing => true,
            Self::NeedPerson => gate_needperson,
            Self::Asking | Self::Complete => false,
        }
    }
}

impl fmt::Display for ChatbotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::ChatbotState::*;
    use super::*;

    #[test]
    fn words_round_trip_and_on_off_map_onto_states() {
        for s in ChatbotState::ALL {
            assert_eq!(ChatbotState::from_name(s.name()), Some(s));
            assert_eq!(s.to_string(), s.name());
        }
        assert_eq!(ChatbotState::from_name("on"), None);
        assert_eq!(ChatbotState::from_name("Asking"), None);
        assert_eq!(ChatbotState::from_kefustate("on"), Some(PersonServing));
        assert_eq!(ChatbotState::from_kefustate("off"), Some(Asking));
        assert_eq!(ChatbotState::from_kefustate("needperson"), None);
        let on: Vec<_> = ChatbotState::ALL
            .into_iter()
            .filter(|s| s.kefustate() == "on")
            .collect();
        assert_eq!(on, [PersonServing]);
    }

    #[test]
    fn answers_are_read_from_status_first() {
        assert_eq!(
            ChatbotState::from_answer(Some("off"), Some("needperson")),
            Ok(NeedPerson)
        );
        assert_eq!(
            ChatbotState::from_answer(Some("on"), None),
            Ok(PersonServing)
        );
        assert_eq!(ChatbotState::from_answer(Some("off"), None), Ok(Asking));
        assert_eq!(
            ChatbotState::from_answer(Some("on"), Some("waiting")),
            Err(StateAnswerError::UnknownStatus("waiting".into()))
        );
        assert_eq!(
            ChatbotState::from_answer(None, None),
            Err(StateAnswerError::NoState)
        );
        assert_eq!(
            ChatbotState::from_answer(Some("maybe"), None),
            Err(StateAnswerError::NoState)
        );
        let long = "x".repeat(1000);
        match ChatbotState::from_answer(None, Some(&long)) {
            Err(StateAnswerError::UnknownStatus(w)) => assert!(w.chars().count() <= 65, "{w}"),
            other => panic!("{other:?}"),
        }
        let e = StateAnswerError::UnknownStatus("waiting".into()).to_string();
        assert!(e.contains("\"waiting\"") && e.contains("needperson"), "{e}");
    }

    #[test]
    fn personserving_always_gates_needperson_when_configured() {
        for gate_needperson in [false, true] {
            let gated: Vec<_> = ChatbotState::ALL
                .into_iter()
                .filter(|s| s.gates_bot(gate_needperson))
                .collect();
            if gate_needperson {
                assert_eq!(gated, [PersonServing, NeedPerson]);
            } else {
                assert_eq!(gated, [PersonServing]);
            }
        }
    }

    #[test]
    fn serializes_as_the_platform_word() {
        for s in ChatbotState::ALL {
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::Value::String(s.name().into()))
            );
        }
    }
}
