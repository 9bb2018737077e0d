//! WeCom's service states of a conversation (`kf/service_state/get`), their names and the moves
//! `kf/service_state/trans` allows (shared/reference/wechat-api.md; 94669 "变更会话状态").
//!
//! The platform speaks integers; this is the one place that knows what they mean.

use std::fmt;

/// Who serves a WeCom customer-service conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceState {
    /// 0: not handled yet.
    New,
    /// 1: handled by the smart assistant (the bot, i.e. wxdispatch's upstream).
    Bot,
    /// 2: waiting in the queue for a human servicer.
    Queued,
    /// 3: served by a human servicer.
    Human,
    /// 4: ended.
    Ended,
}

impl ServiceState {
    /// Every state, in the platform's numeric order.
    pub const ALL: [ServiceState; 5] =
        [Self::New, Self::Bot, Self::Queued, Self::Human, Self::Ended];

    /// The platform's integer for this state.
    pub fn code(self) -> i64 {
        match self {
            Self::New => 0,
            Self::Bot => 1,
            Self::Queued => 2,
            Self::Human => 3,
            Self::Ended => 4,
        }
    }

    /// The state of a platform integer; `None` for an integer the platform does not define.
    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The word shown to operators (`new`, `bot`, `queued`, `human`, `ended`).
    pub fn name(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Bot => "bot",
            Self::Queued => "queued",
            Self::Human => "human",
            Self::Ended => "ended",
        }
    }

    /// The state of an operator's word.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether a human has the conversation (queued for one, or served by one): bot replies
    /// are gated in these states.
    pub fn is_human(self) -> bool {
        matches!(self, Self::Queued | Self::Human)
    }

    /// Whether `service_state/trans` allows the move: 0→1/2/3, 1→2/3, 2→3, 3→3/4.
    pub fn can_move_to(self, to: Self) -> bool {
        use ServiceState::*;
        matches!(
            (self, to),
            (New, Bot | Queued | Human)
                | (Bot, Queued | Human)
                | (Queued, Human)
                | (Human, Human | Ended)
        )
    }

    /// The state after a `session_status_change` event: change_type 1 (picked up from the
    /// queue by a servicer), 2 (transferred to another servicer) and 4 (an ended session
    /// re-joined by a servicer) mean a human serves; 3 means the session ended.
    pub fn after_change(change_type: i64) -> Option<Self> {
        match change_type {
            1 | 2 | 4 => Some(Self::Human),
            3 => Some(Self::Ended),
            _ => None,
        }
    }
}

/// The name of a platform integer, `unknown` for one the platform does not define.
pub fn name_of(code: i64) -> &'static str {
    ServiceState::from_code(code).map_or("unknown", ServiceState::name)
}

/// Whether the platform's move `from` → `to` (integers) is allowed; false for unknown integers.
pub fn transition_allowed(from: i64, to: i64) -> bool {
    match (ServiceState::from_code(from), ServiceState::from_code(to)) {
        (Some(f), Some(t)) => f.can_move_to(t),
        _ => false,
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::ServiceState::*;
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for s in ServiceState::ALL {
            assert_eq!(ServiceState::from_code(s.code()), Some(s));
            assert_eq!(ServiceState::from_name(s.name()), Some(s));
        }
        assert_eq!(ServiceState::from_code(5), None);
        assert_eq!(ServiceState::from_code(-1), None);
        assert_eq!(name_of(3), "human");
        assert_eq!(name_of(9), "unknown");
    }

    #[test]
    fn the_platforms_move_table() {
        let allowed = [
            (0, 1),
            (0, 2),
            (0, 3),
            (1, 2),
            (1, 3),
            (2, 3),
            (3, 3),
            (3, 4),
        ];
        for from in -1..=5 {
            for to in -1..=5 {
                assert_eq!(
                    transition_allowed(from, to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn queued_and_human_gate_the_bot() {
        let human: Vec<_> = ServiceState::ALL
            .into_iter()
            .filter(|s| s.is_human())
            .collect();
        assert_eq!(human, [Queued, Human]);
    }

    #[test]
    fn change_types() {
        assert_eq!(ServiceState::after_change(1), Some(Human));
        assert_eq!(ServiceState::after_change(2), Some(Human));
        assert_eq!(ServiceState::after_change(4), Some(Human));
        assert_eq!(ServiceState::after_change(3), Some(Ended));
        assert_eq!(ServiceState::after_change(0), None);
        assert_eq!(ServiceState::after_change(5), None);
    }
}
