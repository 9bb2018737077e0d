//! Recalling a sent WeCom message (kf/recall_msg): whether a recall job may ask the platform,
//! judged from its target's delivery row. Pure: the lane reads the row and the database's
//! clock, this decides.
//!
//! WeCom recalls only messages sent through the API, within 2 minutes of sending; a recalled
//! message still counts against the 5-message allowance (the ledger is never refunded).

use chrono::{DateTime, Utc};

use crate::domain::reason::Reason;

/// WeCom recalls a message only within 2 minutes of sending it.
pub const RECALL_WINDOW: chrono::Duration = chrono::Duration::minutes(2);

/// What the target's delivery row says (the fields a recall depends on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The row's `kind` (`send`, `event_reply`, …): only messages can be recalled.
    pub kind: &'a str,
    /// The row's `status`: only a `sent` message can be recalled.
    pub status: &'a str,
    pub recipient: &'a str,
    pub open_kfid: Option<&'a str>,
    /// The msgid the platform returned for the target.
    pub platform_msgid: Option<&'a str>,
    /// When the target was recorded `sent`.
    pub sent_at: Option<DateTime<Utc>>,
    /// The recall job that already recalled the target, if one did.
    pub recalled_by_job: Option<&'a str>,
}

/// The recall job asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asker<'a> {
    pub job_id: &'a str,
    pub target_job_id: &'a str,
    pub to: &'a str,
    pub open_kfid: Option<&'a str>,
}

/// What the recall job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Ask the platform to recall `msgid`.
    Call { msgid: &'a str },
    /// This very job recalled the target already (a redelivery after the target's row was
    /// marked): done, without asking the platform again.
    AlreadyDone,
    /// Dead-letter the recall with this reason and detail.
    Refuse { reason: Reason, detail: String },
}

/// Judge a recall: `target` is the target's row (`None`: the account has no such job), `now`
/// the clock `sent_at` was written with. Exactly [`RECALL_WINDOW`] after sending is still
/// allowed.
pub fn judge<'a>(asker: Asker<'_>, target: Option<&Target<'a>>, now: DateTime<Utc>) -> Verdict<'a> {
    let unknown = |why: String| Verdict::Refuse {
        reason: Reason::RecallTargetUnknown,
        detail: format!("target_job_id {}: {why}", asker.target_job_id),
    };
    let Some(t) = target else {
        return unknown("no such job on this account".into());
    };
    if let Some(by) = t.recalled_by_job {
        if by == asker.job_id {
            return Verdict::AlreadyDone;
        }
        return unknown(format!("already recalled by job {by}"));
    }
    if !matches!(t.kind, "send" | "event_reply") {
        return unknown(format!("a {} job sent no message", t.kind));
    }
    if t.recipient != asker.to || t.open_kfid != asker.open_kfid {
        return unknown("sent to another conversation than the recall's to/open_kfid".into());
    }
    let (Some(msgid), Some(sent_at)) = (t.platform_msgid, t.sent_at) else {
        return unknown(format!("not sent (status {})", t.status));
    };
    if t.status != "sent" {
        return unknown(format!("not sent (status {})", t.status));
    }
    let age = now - sent_at;
    if age > RECALL_WINDOW {
        return Verdict::Refuse {
            reason: Reason::RecallTooLate,
            detail: format!(
                "target_job_id {}: sent {} s ago (WeCom recalls within {} s)",
                asker.target_job_id,
                age.num_seconds(),
                RECALL_WINDOW.num_seconds()
            ),
        };
    }
    Verdict::Call { msgid }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(365)
    }

    fn asker() -> Asker<'static> {
        Asker {
            job_id: "r1",
            target_job_id: "s1",
            to: "wmU",
            open_kfid: Some("wkKF1"),
        }
    }

    fn sent() -> Target<'static> {
        Target {
            kind: "send",
            status: "sent",
            recipient: "wmU",
            open_kfid: Some("wkKF1"),
            platform_msgid: Some("s1"),
            sent_at: Some(t0()),
            recalled_by_job: None,
        }
    }

    fn reason(v: Verdict<'_>) -> Reason {
        match v {
            Verdict::Refuse { reason, .. } => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_window_closes_just_after_two_minutes() {
        let exactly = t0() + RECALL_WINDOW;
        assert_eq!(
            judge(asker(), Some(&sent()), exactly),
            Verdict::Call { msgid: "s1" }
        );
        let v = judge(
            asker(),
            Some(&sent()),
            exactly + chrono::Duration::milliseconds(1),
        );
        assert_eq!(reason(v), Reason::RecallTooLate);
    }

    #[test]
    fn unknown_unsent_and_foreign_targets_are_refused() {
        let now = t0() + chrono::Duration::seconds(10);
        assert_eq!(
            reason(judge(asker(), None, now)),
            Reason::RecallTargetUnknown
        );
        let cases = [
            Target {
                status: "dead",
                platform_msgid: None,
                sent_at: None,
                ..sent()
            },
            Target {
                status: "suppressed",
                ..sent()
            },
            Target {
                kind: "transfer",
                ..sent()
            },
            Target {
                recipient: "wmOther",
                ..sent()
            },
            Target {
                open_kfid: Some("wkKF2"),
                ..sent()
            },
            Target {
                recalled_by_job: Some("r0"),
                ..sent()
            },
        ];
        for t in cases {
            assert_eq!(
                reason(judge(asker(), Some(&t), now)),
                Reason::RecallTargetUnknown,
                "{t:?}"
            );
        }
    }

    #[test]
    fn a_redelivered_recall_that_already_marked_its_target_is_done() {
        let t = Target {
            recalled_by_job: Some("r1"),
            ..sent()
        };
        // Even after the window: the recall happened in time.
        let late = t0() + chrono::Duration::minutes(10);
        assert_eq!(judge(asker(), Some(&t), late), Verdict::AlreadyDone);
    }

    #[test]
    fn event_replies_are_messages_too() {
        let t = Target {
            kind: "event_reply",
            ..sent()
        };
        assert_eq!(
            judge(asker(), Some(&t), t0()),
            Verdict::Call { msgid: "s1" }
        );
    }
}
