//! WeCom's conversation allowance: after a customer's last message, up to 5 messages within 48
//! hours (wechat-api.md).

use chrono::{DateTime, Utc};

/// WeCom allows replies only within 48 hours of the customer's last message…
pub const WECOM_WINDOW: chrono::Duration = chrono::Duration::hours(48);
/// …and at most 5 of them in that window.
pub const WECOM_WINDOW_QUOTA: i32 = 5;

/// Whether WeCom still lets wxdispatch message a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Within the window and the quota (or nothing is known of the customer's last message:
    /// the platform decides).
    Allowed,
    /// The customer's last message is older than [`WECOM_WINDOW`] (`age`).
    WindowClosed { age: chrono::Duration },
    /// [`WECOM_WINDOW_QUOTA`] messages (`sent`) already went out since the customer's last
    /// message.
    QuotaUsed { sent: i32 },
}

/// The allowance at `now` for a customer whose last message came at `last_customer_msg_at`,
/// with `sent_since` messages sent to them since. Exactly 48 h old is still allowed; the 5th
/// message is allowed, a 6th is not.
pub fn check(
    last_customer_msg_at: Option<DateTime<Utc>>,
    sent_since: i32,
    now: DateTime<Utc>,
) -> Allowance {
    let Some(last) = last_customer_msg_at else {
        return Allowance::Allowed;
    };
    let age = now - last;
    if age > WECOM_WINDOW {
        return Allowance::WindowClosed { age };
    }
    if sent_since >= WECOM_WINDOW_QUOTA {
        return Allowance::QuotaUsed { sent: sent_since };
    }
    Allowance::Allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(365)
    }

    #[test]
    fn nothing_known_is_allowed() {
        assert_eq!(check(None, 99, t0()), Allowance::Allowed);
    }

    #[test]
    fn the_window_closes_just_after_48_hours() {
        let now = t0();
        let exactly = now - WECOM_WINDOW;
        assert_eq!(check(Some(exactly), 0, now), Allowance::Allowed);
        let just_over = exactly - chrono::Duration::milliseconds(1);
        assert_eq!(
            check(Some(just_over), 0, now),
            Allowance::WindowClosed {
                age: WECOM_WINDOW + chrono::Duration::milliseconds(1)
            }
        );
    }

    #[test]
    fn the_quota_allows_five_messages() {
        let now = t0();
        let last = Some(now - chrono::Duration::hours(1));
        assert_eq!(check(last, 4, now), Allowance::Allowed);
        assert_eq!(check(last, 5, now), Allowance::QuotaUsed { sent: 5 });
        assert_eq!(check(last, 6, now), Allowance::QuotaUsed { sent: 6 });
    }

    #[test]
    fn a_closed_window_is_reported_before_a_used_quota() {
        let now = t0();
        let last = Some(now - chrono::Duration::hours(49));
        assert!(matches!(
            check(last, 5, now),
            Allowance::WindowClosed { .. }
        ));
    }

    #[test]
    fn a_message_from_the_future_is_within_the_window() {
        let now = t0();
        assert_eq!(
            check(Some(now + chrono::Duration::hours(1)), 0, now),
            Allowance::Allowed
        );
    }
}
