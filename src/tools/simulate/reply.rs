//! Answers in the platforms' shape: HTTP 200 with `{"errcode", "errmsg", …}`, plus the
//! HTTP-level faults. Every handler computes a [`Reply`] synchronously;
//! [`finish`](super::respond::finish) counts it and turns it into a response (holding the
//! request first for a timeout fault). A leaf: the simulator's vocabulary of answers.

use std::borrow::Cow;

use axum::http::StatusCode;
use serde_json::{Value, json};

/// The errcodes the simulator answers, with the reason each is used.
pub(crate) mod code {
    pub const OK: i64 = 0;
    /// Both platforms: system busy (the `busy` fault).
    pub const BUSY: i64 = -1;

    // ---- Dialogue Open Platform ----
    /// The `{TOKEN}` in the path is not an account's token.
    pub const BOT_TOKEN_INVALID: i64 = 1001;
    /// Required fields empty: no/invalid JSON, no `encrypt`, missing appid/openid/msg, a rich
    /// `msg` that is not a valid rich message, unparseable plaintext XML.
    pub const BOT_FIELDS: i64 = 1007;
    /// The plaintext's `appid` is not the account's APPID.
    pub const BOT_APPID: i64 = 1008;
    /// The ciphertext decrypts but carries another receive id: the encryption parameters
    /// (key / APPID) are inconsistent.
    pub const BOT_CRYPT_PARAMS: i64 = 1013;
    /// The body is not what the API expects: an `<xml><Encrypt>` envelope, signature /
    /// timestamp / nonce fields instead of `encrypt`, or a ciphertext that does not decrypt.
    pub const BOT_CIPHERTEXT: i64 = 1019;
    /// Too frequent (rate limit, `throttle` fault).
    pub const BOT_THROTTLED: i64 = 210_205;

    // ---- WeCom ----
    pub const INVALID_SECRET: i64 = 40001;
    /// `touser` missing or empty.
    pub const INVALID_USER: i64 = 40003;
    /// An empty `media_id` / `thumb_media_id`.
    pub const INVALID_MEDIA: i64 = 40007;
    /// Unknown `msgtype`, or a `msgid` that is not ≤ 32 of `[0-9a-zA-Z_-]`.
    pub const INVALID_MSGTYPE: i64 = 40008;
    pub const INVALID_CORPID: i64 = 40013;
    pub const INVALID_TOKEN: i64 = 40014;
    /// A required parameter missing or of the wrong type, a value out of range, a bad cursor.
    pub const INVALID_PARAM: i64 = 40058;
    /// `external_userid` missing or empty (service_state APIs).
    pub const INVALID_EXTERNAL_USERID: i64 = 40096;
    pub const MISSING_TOKEN: i64 = 41001;
    /// gettoken without `corpid`.
    pub const MISSING_CORPID: i64 = 41002;
    /// gettoken without `corpsecret`.
    pub const MISSING_SECRET: i64 = 41004;
    pub const TOKEN_EXPIRED: i64 = 42001;
    /// A field longer than its documented limit.
    pub const TOO_LARGE: i64 = 45002;
    /// API frequency over limit (rate limit, `throttle` fault).
    pub const WECOM_THROTTLED: i64 = 45009;
    /// The body is not JSON.
    pub const BAD_JSON: i64 = 47001;
    /// `open_kfid` not among the corp's open_kfids.
    pub const INVALID_OPEN_KFID: i64 = 95000;
    pub const QUOTA_EXCEEDED: i64 = 95001;
    pub const WINDOW_CLOSED: i64 = 95002;
    /// `open_kfid` missing or empty.
    pub const MISSING_OPEN_KFID: i64 = 95004;
    /// sync_msg `token` unknown or older than 10 minutes.
    pub const INVALID_SYNC_TOKEN: i64 = 95007;
    /// send_msg_on_event `code` unknown, used, or older than 20 s. WeCom's exact code for this
    /// is unverified; wxdispatch treats any unknown errcode as permanent, which is right here.
    pub const INVALID_EVENT_CODE: i64 = 95010;
    pub const SESSION_ENDED: i64 = 95013;
    /// service_state/trans into state 3 without a `servicer_userid`.
    pub const INVALID_SERVICER: i64 = 95014;
    /// service_state/trans outside 0→1/2/3, 1→2/3, 2→3, 3→3/4.
    pub const INVALID_TRANSITION: i64 = 95016;
    /// The session's state (2 queued, 3 human) does not allow the API to send.
    pub const STATE_FORBIDS_SEND: i64 = 95018;
}

/// The simulator's errmsg for an errcode (callers must branch on the errcode only).
pub(crate) fn describe(c: i64) -> &'static str {
    use code::*;
    match c {
        OK => "ok",
        BUSY => "system busy",
        BOT_TOKEN_INVALID => "token invalid",
        BOT_FIELDS => "required fields empty or invalid",
        BOT_APPID => "appid invalid",
        BOT_CRYPT_PARAMS => "encryption parameters inconsistent",
        BOT_CIPHERTEXT => "invalid request: API not enabled or bad ciphertext",
        BOT_THROTTLED => "too frequent",
        INVALID_SECRET => "invalid credential",
        INVALID_USER => "invalid userid",
        INVALID_MEDIA => "invalid media_id",
        INVALID_MSGTYPE => "invalid message type",
        INVALID_CORPID => "invalid corpid",
        INVALID_TOKEN => "invalid access_token",
        INVALID_PARAM => "invalid parameter",
        INVALID_EXTERNAL_USERID => "invalid external_userid",
        MISSING_TOKEN => "access_token missing",
        MISSING_CORPID => "corpid missing",
        MISSING_SECRET => "secret missing",
        TOKEN_EXPIRED => "access_token expired",
        TOO_LARGE => "content size out of limit",
        WECOM_THROTTLED => "api freq out of limit",
        BAD_JSON => "data format error",
        INVALID_OPEN_KFID => "invalid open_kfid",
        QUOTA_EXCEEDED => "send msg count out of limit",
        WINDOW_CLOSED => "send msg out of 48 hours",
        MISSING_OPEN_KFID => "open_kfid not found",
        INVALID_SYNC_TOKEN => "invalid msg token",
        INVALID_EVENT_CODE => "invalid code",
        SESSION_ENDED => "session has ended",
        INVALID_SERVICER => "invalid servicer userid",
        INVALID_TRANSITION => "service state transition not allowed",
        STATE_FORBIDS_SEND => "session state does not allow sending",
        _ => "error (scripted)",
    }
}

/// An errcode answer, with an optional detail for humans.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiErr {
    pub code: i64,
    pub hint: Option<Cow<'static, str>>,
}

impl ApiErr {
    pub fn new(code: i64) -> Self {
        Self { code, hint: None }
    }
    pub fn hint(code: i64, hint: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            hint: Some(hint.into()),
        }
    }
    pub fn errmsg(&self) -> String {
        match &self.hint {
            Some(h) => format!("{}, hint: [{h}]", describe(self.code)),
            None => describe(self.code).to_owned(),
        }
    }
}

/// What a request gets, decided before any await.
#[derive(Debug)]
pub(crate) enum Reply {
    /// errcode 0 with this body.
    Ok(Value),
    /// HTTP 200, `{"errcode": code, "errmsg": …}`.
    Err(ApiErr),
    /// A bare HTTP status (5xx faults), empty body.
    Http(StatusCode),
    /// Hold the request (timeout fault), then answer 504.
    Hold,
}

impl From<ApiErr> for Reply {
    fn from(e: ApiErr) -> Self {
        Reply::Err(e)
    }
}

impl From<Result<Value, ApiErr>> for Reply {
    fn from(r: Result<Value, ApiErr>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Err(e),
        }
    }
}

/// `{"errcode":0,"errmsg":"ok"}`.
pub(crate) fn ok() -> Value {
    json!({"errcode": 0, "errmsg": "ok"})
}

/// The value of `name` in a raw query string, percent-decoded (`+` is a space). Invalid
/// escapes are kept literally: the caller then sees a value that matches nothing.
pub(crate) fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    let q = query?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_and_decoded() {
        let q = Some("corpid=ww1&corpsecret=a%2Bb+c&x");
        assert_eq!(query_param(q, "corpid").as_deref(), Some("ww1"));
        assert_eq!(query_param(q, "corpsecret").as_deref(), Some("a+b c"));
        assert_eq!(query_param(q, "x").as_deref(), Some(""));
        assert_eq!(query_param(q, "y"), None);
        assert_eq!(query_param(None, "y"), None);
        assert_eq!(query_param(Some("a=%zz%4"), "a").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(Some("a=%41%"), "a").as_deref(), Some("A%"));
    }

    #[test]
    fn errmsg_carries_the_hint() {
        assert_eq!(
            ApiErr::new(code::INVALID_TOKEN).errmsg(),
            "invalid access_token"
        );
        assert_eq!(
            ApiErr::hint(code::TOO_LARGE, "text.content").errmsg(),
            "content size out of limit, hint: [text.content]"
        );
    }
}
