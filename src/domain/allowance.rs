//! WeCom's conversation allowance: after a customer's last message, up to 5 messages within 48
//! hours (wechat-api.md).

/// WeCom allows replies only within 48 hours of the customer's last message…
pub const WECOM_WINDOW: chrono::Duration = chrono::Duration::hours(48);
/// …and at most 5 of them in that window.
pub const WECOM_WINDOW_QUOTA: i32 = 5;
