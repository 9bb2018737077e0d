//! The helpers tests (and the admin API) use to drive the conversation side: customer
//! messages, events, service states, kefustates, and callbacks to the worker signed and
//! encrypted as the platform would.

use std::time::{Duration, Instant};

use rand::Rng as _;
use serde_json::{Value, json};

use super::conversations::{SYNC_TOKEN_TTL, Session, push_event_locked};
use super::kefu::{self, Change, KefuStatus};
use super::state::SimState;
use super::util::{ID_LEN, lock, now_ms, random_id, url_encode};
use super::xml;
use crate::config::Channel;
use crate::crypto::MsgCrypt;

impl SimState {
    /// A customer's text message to `open_kfid`: appended to its inbound log (origin 3), the
    /// 48-hour window and 5-message quota restart, and an ended session (4) starts anew (0).
    ///
    /// Returns one string that is both the new message's `msgid` and a fresh callback `Token`
    /// (valid 10 minutes) for sync_msg / [`Self::callback_request`].
    pub fn customer_message(
        &self,
        account: &str,
        open_kfid: &str,
        external_userid: &str,
        text: &str,
    ) -> String {
        self.warn_unknown("customer_message", account);
        let id = random_id(ID_LEN);
        let mut conv = lock(&self.conv);
        conv.append(
            open_kfid,
            json!({
                "msgid": id,
                "open_kfid": open_kfid,
                "external_userid": external_userid,
                "send_time": now_ms() / 1000,
                "origin": 3,
                "msgtype": "text",
                "text": {"content": text},
            }),
        );
        let s = conv.session_mut(open_kfid, external_userid);
        if s.state == 4 {
            *s = Session::default();
        }
        s.last_customer = Some(Instant::now());
        s.sends_since_customer = 0;
        let now = Instant::now();
        conv.sync_tokens.retain(|_, (_, exp)| *exp > now);
        conv.sync_tokens
            .insert(id.clone(), (open_kfid.to_owned(), now + SYNC_TOKEN_TTL));
        id
    }

    /// A fresh callback Token (valid 10 minutes) for sync_msg on `open_kfid`.
    pub fn issue_callback_token(&self, account: &str, open_kfid: &str) -> String {
        self.warn_unknown("issue_callback_token", account);
        lock(&self.conv).issue_sync_token(open_kfid)
    }

    /// The customer opens the conversation: an `enter_session` event (origin 4) with a
    /// `welcome_code` for send_msg_on_event (single use, valid 20 s), which is returned.
    pub fn enter_session(&self, account: &str, open_kfid: &str, external_userid: &str) -> String {
        self.warn_unknown("enter_session", account);
        let mut conv = lock(&self.conv);
        let code = conv.issue_code(open_kfid, external_userid);
        let ev = json!({
            "event_type": "enter_session",
            "open_kfid": open_kfid,
            "external_userid": external_userid,
            "scene": "",
            "scene_param": "",
            "welcome_code": code,
        });
        push_event_locked(&mut conv, open_kfid, ev);
        code
    }

    /// Append a system event (origin 4) to `open_kfid`'s inbound log, e.g.
    /// `{"event_type": "msg_send_fail", "external_userid": …, "fail_msgid": …, "fail_type": 4}`.
    /// `open_kfid` is added to the event when missing. Returns the entry's msgid.
    pub fn push_event(&self, account: &str, open_kfid: &str, event: Value) -> String {
        self.warn_unknown("push_event", account);
        push_event_locked(&mut lock(&self.conv), open_kfid, event)
    }

    /// Set a WeCom session's service state (0 new, 1 bot, 2 queued, 3 human, 4 ended)
    /// directly, as a servicer's action in the admin UI would.
    pub fn set_service_state(
        &self,
        account: &str,
        open_kfid: &str,
        external_userid: &str,
        state: i64,
        servicer: Option<&str>,
    ) {
        self.warn_unknown("set_service_state", account);
        let mut conv = lock(&self.conv);
        let s = conv.session_mut(open_kfid, external_userid);
        s.state = state;
        s.servicer = servicer.filter(|v| !v.is_empty()).map(str::to_owned);
    }

    /// A WeCom session's service state and servicer (0 and none when never seen).
    pub fn service_state(&self, open_kfid: &str, external_userid: &str) -> (i64, Option<String>) {
        let conv = lock(&self.conv);
        conv.session(open_kfid, external_userid)
            .map_or((0, None), |s| (s.state, s.servicer.clone()))
    }

    /// Set a chatbot user's kefustate (`on`: a human serves, the bot must stay silent), as
    /// kefustate/change with `on` / `off` does.
    pub fn set_kefustate(&self, account: &str, openid: &str, on: bool) {
        let change = if on { Change::On } else { Change::Off };
        if let Some(i) = self.warn_unknown("set_kefustate", account) {
            lock(&self.conv).apply_kefu(i, openid, change);
        }
    }

    /// A chatbot user's kefustate (`false` when never set).
    pub fn kefustate(&self, account: &str, openid: &str) -> bool {
        self.chatbot_state(account, openid) == "personserving"
    }

    /// Set a chatbot user's state to one of the four (`asking`, `personserving`, `complete`,
    /// `needperson`) for `expires` (default 1800 s), after which it reverts to `asking`, as
    /// kefustate/change does. False (and nothing changes) for another word or account.
    pub fn set_chatbot_state(
        &self,
        account: &str,
        openid: &str,
        status: &str,
        expires: Option<Duration>,
    ) -> bool {
        let (Some(i), Some(s)) = (
            self.warn_unknown("set_chatbot_state", account),
            KefuStatus::of_word(status),
        ) else {
            return false;
        };
        lock(&self.conv).apply_kefu(
            i,
            openid,
            Change::To(s, expires.unwrap_or(kefu::DEFAULT_EXPIRES)),
        );
        true
    }

    /// A chatbot user's state now, as kefustate/get's `status` names it (`asking` when never
    /// set, or when its expiry has passed).
    pub fn chatbot_state(&self, account: &str, openid: &str) -> &'static str {
        let Some(i) = self.account_index(account) else {
            return KefuStatus::Asking.word();
        };
        lock(&self.conv)
            .kefu
            .get(&i)
            .and_then(|m| m.get(openid))
            .map(|e| e.at(Instant::now()))
            .unwrap_or_default()
            .word()
    }

    /// The next sync_msg on `open_kfid` returns an empty page with `has_more = 1` (as WeCom
    /// sometimes does); calls add up.
    pub fn inject_empty_page(&self, account: &str, open_kfid: &str) {
        self.warn_unknown("inject_empty_page", account);
        lock(&self.conv)
            .logs
            .entry(open_kfid.to_owned())
            .or_default()
            .empty_pages += 1;
    }

    /// A WeCom `kf_msg_or_event` callback for the worker: `(query, body)` where `query` is
    /// `msg_signature=…&timestamp=…&nonce=…` and `body` the `<xml><ToUserName/><AgentID/>
    /// <Encrypt/></xml>` envelope, signed and encrypted with the account's callback token and
    /// EncodingAESKey (receive id = corpid).
    ///
    /// # Panics
    /// When `account` is unknown or has no callback key: a test set-up mistake. See
    /// [`Self::try_callback_request`].
    pub fn callback_request(
        &self,
        account: &str,
        open_kfid: &str,
        token: &str,
    ) -> (String, String) {
        match self.try_callback_request(account, open_kfid, token) {
            Ok(r) => r,
            Err(e) => panic!("callback_request: {e}"),
        }
    }

    /// [`Self::callback_request`], with an error instead of a panic.
    pub fn try_callback_request(
        &self,
        account: &str,
        open_kfid: &str,
        token: &str,
    ) -> Result<(String, String), String> {
        let (crypt, corpid) = self.callback_crypt(account)?;
        let ts = (now_ms() / 1000).to_string();
        let plain = format!(
            "<xml><ToUserName>{}</ToUserName><CreateTime>{ts}</CreateTime><MsgType>{}</MsgType><Event>{}</Event><Token>{}</Token><OpenKfId>{}</OpenKfId></xml>",
            xml::cdata(corpid),
            xml::cdata("event"),
            xml::cdata("kf_msg_or_event"),
            xml::cdata(token),
            xml::cdata(open_kfid),
        );
        let enc = crypt.encrypt(plain.as_bytes());
        let query = signed_query(crypt, &enc);
        let body = format!(
            "<xml><ToUserName>{}</ToUserName><AgentID>{}</AgentID><Encrypt>{}</Encrypt></xml>",
            xml::cdata(corpid),
            xml::cdata(""),
            xml::cdata(&enc),
        );
        Ok((query, body))
    }

    /// A WeCom callback URL verification (GET) for the worker: `(query, echostr_plain)`; the
    /// query carries `msg_signature`, `timestamp`, `nonce` and the encrypted, URL-encoded
    /// `echostr`; the worker must answer `echostr_plain` as the bare body.
    pub fn verify_url_request(&self, account: &str) -> Result<(String, String), String> {
        let (crypt, _) = self.callback_crypt(account)?;
        let plain = random_id(19);
        let enc = crypt.encrypt(plain.as_bytes());
        let query = signed_query(crypt, &enc);
        Ok((format!("{query}&echostr={}", url_encode(&enc)), plain))
    }

    fn callback_crypt(&self, account: &str) -> Result<(&MsgCrypt, &str), String> {
        let i = self
            .account_index(account)
            .ok_or_else(|| format!("unknown account '{account}'"))?;
        let a = &self.accounts[i];
        if a.cfg.channel != Channel::Wecom {
            return Err(format!("account '{account}' is not a wecom account"));
        }
        let crypt = a
            .crypt
            .as_ref()
            .ok_or_else(|| format!("account '{account}' has no callback token/encoding_aes_key"))?;
        Ok((crypt, a.cfg.corpid.as_deref().unwrap_or("")))
    }
}

/// `msg_signature=…&timestamp=…&nonce=…` for a callback carrying `encrypt`.
fn signed_query(crypt: &MsgCrypt, encrypt: &str) -> String {
    let ts = (now_ms() / 1000).to_string();
    let nonce = rand::rng()
        .random_range(100_000_000u64..10_000_000_000)
        .to_string();
    let sig = crypt.signature(&ts, &nonce, encrypt);
    format!("msg_signature={sig}&timestamp={ts}&nonce={nonce}")
}
