//! The chatbot's service state of each user, as the Dialogue Open Platform keeps it (issue
//! 20.2): one of four states, the `status` of `kefustate/get` with `type=all` (`type=simple`
//! shows only `kefustate` on/off, `on` while a human serves). `kefustate/change` sets one of
//! the four with an `expires` (seconds, default [`DEFAULT_EXPIRES`]) after which the state
//! reverts to `asking`; the older `on` / `off` set `personserving` / end it, without expiry.
//!
//! The simulator keeps its own words and rules here (it does not borrow wxdispatch's domain
//! types), so a mistake in wxdispatch's reading of the platform is not mirrored by its fake.

use std::time::{Duration, Instant};

use super::xml::Fields;

/// `expires` of a four-state change that names none (issue 20.2).
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(1800);

/// The four states, as `status` names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum KefuStatus {
    /// The bot answers (the start, and what an expired state reverts to).
    #[default]
    Asking,
    /// A human serves (`kefustate` on).
    PersonServing,
    /// A human's session ended.
    Complete,
    /// The bot caught a request for a human; none serves yet.
    NeedPerson,
}

impl KefuStatus {
    const WORDS: [(KefuStatus, &'static str); 4] = [
        (KefuStatus::Asking, "asking"),
        (KefuStatus::PersonServing, "personserving"),
        (KefuStatus::Complete, "complete"),
        (KefuStatus::NeedPerson, "needperson"),
    ];

    /// The `status` word.
    pub fn word(self) -> &'static str {
        Self::WORDS
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("asking", |(_, w)| w)
    }

    /// The state of a `status` word.
    pub fn of_word(word: &str) -> Option<Self> {
        Self::WORDS
            .iter()
            .find(|(_, w)| *w == word)
            .map(|(s, _)| *s)
    }

    /// `kefustate`: `on` only while a human serves.
    pub fn on_off(self) -> &'static str {
        if self == Self::PersonServing {
            "on"
        } else {
            "off"
        }
    }
}

/// One user's state, and when it reverts to `asking` (`None`: it does not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KefuEntry {
    pub status: KefuStatus,
    pub reverts_at: Option<Instant>,
}

impl KefuEntry {
    /// The state at `now`: `asking` once the entry's expiry has passed.
    pub fn at(&self, now: Instant) -> KefuStatus {
        match self.reverts_at {
            Some(t) if now >= t => KefuStatus::Asking,
            _ => self.status,
        }
    }

    /// Apply a change at `now`.
    pub fn apply(&mut self, change: Change, now: Instant) {
        let cur = self.at(now);
        *self = match change {
            Change::On => KefuEntry {
                status: KefuStatus::PersonServing,
                reverts_at: None,
            },
            // A human's session ends; a pending request for one is withdrawn.
            Change::Off => KefuEntry {
                status: match cur {
                    KefuStatus::PersonServing => KefuStatus::Complete,
                    KefuStatus::NeedPerson => KefuStatus::Asking,
                    s => s,
                },
                reverts_at: None,
            },
            Change::To(status, expires) => KefuEntry {
                status,
                reverts_at: Some(now + expires),
            },
        };
    }
}

/// What a kefustate/change asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    On,
    Off,
    /// One of the four states, for this long.
    To(KefuStatus, Duration),
}

/// The change of a kefustate/change request's fields (`kefustate`, `expires`), or why it is
/// refused (errcode 1007, required fields empty or invalid).
pub(crate) fn change_of(f: &Fields) -> Result<Change, String> {
    let expires = match f.non_empty("expires") {
        None => None,
        Some(e) => match e.parse::<u64>() {
            Ok(n) if n > 0 => Some(Duration::from_secs(n)),
            _ => return Err(format!("expires '{e}' is not a positive number of seconds")),
        },
    };
    match (f.get("kefustate"), expires) {
        (Some("on"), None) => Ok(Change::On),
        (Some("off"), None) => Ok(Change::Off),
        (Some(w), _) if KefuStatus::of_word(w).is_some() => Ok(Change::To(
            KefuStatus::of_word(w).unwrap_or_default(),
            expires.unwrap_or(DEFAULT_EXPIRES),
        )),
        (Some("on" | "off"), Some(_)) => Err("expires goes with one of the four states".into()),
        _ => {
            Err("kefustate must be asking, personserving, complete, needperson (or on, off)".into())
        }
    }
}

/// `type` of a kefustate/get: `all` (with `status`) or `simple` (the default when absent).
pub(crate) fn wants_all(f: &Fields) -> Result<bool, String> {
    match f.non_empty("type") {
        None | Some("simple") => Ok(false),
        Some("all") => Ok(true),
        Some(t) => Err(format!("type '{t}' is not simple or all")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(xml: &str) -> Fields {
        super::super::xml::parse(xml).unwrap_or_default()
    }

    #[test]
    fn a_state_reverts_to_asking_when_it_expires() {
        let now = Instant::now();
        let mut e = KefuEntry::default();
        e.apply(
            Change::To(KefuStatus::NeedPerson, Duration::from_secs(5)),
            now,
        );
        assert_eq!(e.at(now), KefuStatus::NeedPerson);
        assert_eq!(e.at(now + Duration::from_secs(4)), KefuStatus::NeedPerson);
        assert_eq!(e.at(now + Duration::from_secs(5)), KefuStatus::Asking);
        e.apply(Change::On, now);
        assert_eq!(
            e.at(now + Duration::from_secs(99_999)),
            KefuStatus::PersonServing
        );
        e.apply(Change::Off, now);
        assert_eq!(e.at(now), KefuStatus::Complete);
    }

    #[test]
    fn changes_are_read_from_kefustate_and_expires() {
        let c = |x: &str| change_of(&fields(&format!("<xml><openid>o</openid>{x}</xml>")));
        assert_eq!(c("<kefustate>on</kefustate>"), Ok(Change::On));
        assert_eq!(
            c("<kefustate>needperson</kefustate>"),
            Ok(Change::To(KefuStatus::NeedPerson, DEFAULT_EXPIRES))
        );
        assert_eq!(
            c("<kefustate>personserving</kefustate><expires>7</expires>"),
            Ok(Change::To(
                KefuStatus::PersonServing,
                Duration::from_secs(7)
            ))
        );
        for bad in [
            "<kefustate>maybe</kefustate>",
            "",
            "<kefustate>asking</kefustate><expires>0</expires>",
            "<kefustate>asking</kefustate><expires>x</expires>",
            "<kefustate>on</kefustate><expires>60</expires>",
        ] {
            assert!(c(bad).is_err(), "{bad}");
        }
    }
}
