//! End-to-end tests of the simulator over HTTP: start it on 127.0.0.1:0, talk to it with
//! reqwest as the worker would.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::config::{AccountConfig, Channel, Rate, Secret};
use crate::crypto::MsgCrypt;

const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const OTHER_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const BOT_TOKEN: &str = "bot-token-1";
const APPID: &str = "BOTAPPID123456";
const CORPID: &str = "ww0123456789";
const SECRET: &str = "corp-secret";
const CB_TOKEN: &str = "cb-token";
const KFID: &str = "wkAAAA";

fn fast_rate() -> Rate {
    Rate {
        per_second: Some(100_000),
        ..Rate::default()
    }
}

fn bot_account() -> AccountConfig {
    AccountConfig {
        name: "bot".into(),
        channel: Channel::Chatbot,
        base_url: None,
        rate: fast_rate(),
        appid: Some(APPID.into()),
        default_channel: 0,
        oa_appid: None,
        corpid: None,
        secret: Secret::default(),
        secret_file: None,
        open_kfids: Vec::new(),
        token: Secret::new(BOT_TOKEN),
        token_file: None,
        encoding_aes_key: Secret::new(KEY),
        encoding_aes_key_file: None,
        require_push_signature: false,
        gate_needperson: false,
        outcomes: true,
    }
}

fn kf_account() -> AccountConfig {
    AccountConfig {
        name: "kf".into(),
        channel: Channel::Wecom,
        base_url: None,
        rate: fast_rate(),
        appid: None,
        default_channel: 0,
        oa_appid: None,
        corpid: Some(CORPID.into()),
        secret: Secret::new(SECRET),
        secret_file: None,
        open_kfids: vec![KFID.into(), "wkBBBB".into()],
        token: Secret::new(CB_TOKEN),
        token_file: None,
        encoding_aes_key: Secret::new(KEY),
        encoding_aes_key_file: None,
        require_push_signature: false,
        gate_needperson: false,
        outcomes: true,
    }
}

struct Sim {
    h: SimHandle,
    http: reqwest::Client,
}

impl Sim {
    async fn start(accounts: Vec<AccountConfig>, opts: SimOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = start(accounts, opts, listener).await.unwrap();
        Self {
            h,
            http: reqwest::Client::new(),
        }
    }

    async fn new() -> Self {
        Self::start(vec![bot_account(), kf_account()], SimOptions::default()).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.h.base_url())
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post_raw(path, body.to_string()).await;
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        r.json().await.unwrap()
    }

    /// A chatbot request body: `{"encrypt": …}` of `xml` with the account's key and APPID.
    fn bot_body(xml: &str) -> String {
        let c = MsgCrypt::new(BOT_TOKEN, KEY, APPID).unwrap();
        json!({ "encrypt": c.encrypt(xml.as_bytes()) }).to_string()
    }

    async fn bot(&self, api: &str, xml: &str) -> Value {
        let (status, v) = self
            .post_raw(&format!("/openapi/{api}/{BOT_TOKEN}"), Self::bot_body(xml))
            .await;
        assert_eq!(status, 200);
        v
    }

    async fn token(&self) -> String {
        let v = self
            .get(&format!(
                "/cgi-bin/gettoken?corpid={CORPID}&corpsecret={SECRET}"
            ))
            .await;
        assert_eq!(v["errcode"], 0, "{v}");
        v["access_token"].as_str().unwrap().to_owned()
    }

    async fn kf(&self, api: &str, token: &str, body: &Value) -> Value {
        self.post(&format!("/cgi-bin/kf/{api}?access_token={token}"), body)
            .await
    }
}

fn sendmsg_xml(appid: &str, openid: &str, msg: &str) -> String {
    format!(
        "<xml><appid><![CDATA[{appid}]]></appid><openid><![CDATA[{openid}]]></openid><msg><![CDATA[{msg}]]></msg><channel>7</channel></xml>"
    )
}

fn text_msg(to: &str, msgid: Option<&str>, content: &str) -> Value {
    let mut v =
        json!({"touser": to, "open_kfid": KFID, "msgtype": "text", "text": {"content": content}});
    if let Some(id) = msgid {
        v["msgid"] = json!(id);
    }
    v
}

fn errcode(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or(i64::MIN)
}

// ---------------------------------------------------------------- chatbot

#[tokio::test]
async fn chatbot_sendmsg_is_accepted_with_the_exact_plaintext() {
    let s = Sim::new().await;
    let xml = sendmsg_xml(
        APPID,
        "oUser1",
        "Hello <a href=\"weixin://bizmsgmenu?msgmenuid=1\">yes</a> & bye",
    );
    let v = s.bot("sendmsg", &xml).await;
    assert_eq!(v, json!({"errcode": 0, "errmsg": "ok"}));

    let acc = s.h.state().accepted();
    assert_eq!(acc.len(), 1);
    let a = &acc[0];
    assert_eq!(
        (a.seq, a.account.as_str(), a.channel, a.api),
        (1, "bot", "chatbot", "sendmsg")
    );
    assert_eq!(a.recipient, "oUser1");
    assert_eq!(a.msgtype, "text");
    assert_eq!(a.plaintext.as_deref(), Some(xml.as_str()));
    assert_eq!(a.body["appid"], APPID);
    assert_eq!(a.body["channel"], 7);
    assert_eq!(
        a.body["msg"],
        "Hello <a href=\"weixin://bizmsgmenu?msgmenuid=1\">yes</a> & bye"
    );

    let news = r#"{"news":{"articles":[{"title":"T","url":"https://x"}]}}"#;
    assert_eq!(
        errcode(&s.bot("sendmsg", &sendmsg_xml(APPID, "oUser1", news)).await),
        0
    );
    assert_eq!(s.h.state().accepted()[1].msgtype, "news");
    assert_eq!(s.h.state().accepted_count(), 2);
}

#[tokio::test]
async fn chatbot_rejections_have_the_platform_errcodes() {
    let s = Sim::new().await;
    let good = sendmsg_xml(APPID, "oUser1", "hi");
    let path = format!("/openapi/sendmsg/{BOT_TOKEN}");

    // Unknown TOKEN.
    let (_, v) = s
        .post_raw("/openapi/sendmsg/nope", Sim::bot_body(&good))
        .await;
    assert_eq!(errcode(&v), 1001);

    // Another EncodingAESKey (deterministic prefix: the garbage does not unpad).
    let other = MsgCrypt::new(BOT_TOKEN, OTHER_KEY, APPID).unwrap();
    let enc = other.encrypt_with_prefix(&[7; 16], good.as_bytes());
    let (_, v) = s
        .post_raw(&path, json!({ "encrypt": enc }).to_string())
        .await;
    assert_eq!(errcode(&v), 1019, "{v}");

    // The right key, another receive id.
    let wrong_rid = MsgCrypt::new(BOT_TOKEN, KEY, "OTHERAPPID").unwrap();
    let (_, v) = s
        .post_raw(
            &path,
            json!({ "encrypt": wrong_rid.encrypt(good.as_bytes()) }).to_string(),
        )
        .await;
    assert_eq!(errcode(&v), 1013, "{v}");

    // Well encrypted, but channel 0's appid is the bot's platform APPID, not the OA appid.
    let channel0 = sendmsg_xml(APPID, "oUser1", "hi").replace("<channel>7<", "<channel>0<");
    let v = s.bot("sendmsg", &channel0).await;
    assert_eq!(errcode(&v), 1008, "{v}");

    // The callback envelope instead of {"encrypt"}.
    let c = MsgCrypt::new(BOT_TOKEN, KEY, APPID).unwrap();
    let envelope = format!(
        "<xml><Encrypt><![CDATA[{}]]></Encrypt></xml>",
        c.encrypt(good.as_bytes())
    );
    let (status, v) = s.post_raw(&path, envelope).await;
    assert_eq!((status, errcode(&v)), (200, 1019));
    let (_, v) = s
        .post_raw(
            &path,
            json!({"signature": "x", "timestamp": "1", "nonce": "2", "msg_encrypt": "y"})
                .to_string(),
        )
        .await;
    assert_eq!(errcode(&v), 1019);

    // Not JSON, no encrypt, garbage ciphertext.
    let (status, v) = s.post_raw(&path, "encrypt=abc").await;
    assert_eq!((status, errcode(&v)), (200, 1007));
    let (_, v) = s.post_raw(&path, "{}").await;
    assert_eq!(errcode(&v), 1007);
    let (_, v) = s.post_raw(&path, r#"{"encrypt": "!!notbase64"}"#).await;
    assert_eq!(errcode(&v), 1019);

    // Missing fields, bad plaintext, bad rich messages, bad event.
    for xml in [
        "<xml><appid>BOTAPPID123456</appid><openid>o</openid></xml>".to_owned(),
        "<xml><appid>BOTAPPID123456</appid><msg>hi</msg></xml>".to_owned(),
        "<xml><openid>o</openid><msg>hi</msg></xml>".to_owned(),
        "not xml at all".to_owned(),
        sendmsg_xml(APPID, "o", r#"{"news":{"articles":[]}}"#),
        sendmsg_xml(APPID, "o", r#"{"video":{"media_id":"m"}}"#),
        sendmsg_xml(APPID, "o", "{broken json"),
        "<xml><appid>BOTAPPID123456</appid><openid>o</openid><msg>hi</msg><event>waiterDance</event></xml>".to_owned(),
        "<xml><appid>BOTAPPID123456</appid><openid>o</openid><msg>hi</msg><channel>web</channel></xml>".to_owned(),
        // A rich multimsg item as a JSON-encoded string: the platform would show it as text.
        sendmsg_xml("wxOA", "o", r#"{"multimsg":["hi","{\"image\":{\"url\":\"u\"}}"]}"#),
        // Channel 6 without an appid.
        "<xml><openid>o</openid><msg>hi</msg><channel>6</channel></xml>".to_owned(),
    ] {
        assert_eq!(errcode(&s.bot("sendmsg", &xml).await), 1007, "{xml}");
    }

    assert_eq!(s.h.state().accepted_count(), 0);
    let counts = s.h.state().errcode_counts();
    assert_eq!(counts.get("?:1001"), Some(&1));
    assert_eq!(counts.get("bot:1019"), Some(&4));
    assert_eq!(counts.get("bot:1013"), Some(&1));
    assert_eq!(counts.get("bot:1008"), Some(&1));
    assert_eq!(counts.get("bot:1007"), Some(&13));
}

#[tokio::test]
async fn chatbot_kefustate_get_and_change() {
    let s = Sim::new().await;
    let get = "<xml><appid>BOTAPPID123456</appid><openid>oU</openid><type>all</type></xml>";
    let v = s.bot("kefustate/get", get).await;
    assert_eq!(
        v,
        json!({"errcode": 0, "errmsg": "ok", "kefustate": "off", "status": "asking"})
    );

    let change =
        "<xml><appid>BOTAPPID123456</appid><openid>oU</openid><kefustate>on</kefustate></xml>";
    assert_eq!(errcode(&s.bot("kefustate/change", change).await), 0);
    let v = s.bot("kefustate/get", get).await;
    assert_eq!(
        (v["kefustate"].as_str(), v["status"].as_str()),
        (Some("on"), Some("personserving"))
    );
    assert!(s.h.state().kefustate("bot", "oU"));
    let acc = s.h.state().accepted();
    assert_eq!(
        (acc[0].api, acc[0].recipient.as_str()),
        ("kefustate_change", "oU")
    );
    assert_eq!(acc[0].body["kefustate"], "on");

    s.h.state().set_kefustate("bot", "oU", false);
    let v = s.bot("kefustate/get", get).await;
    assert_eq!(
        (v["kefustate"].as_str(), v["status"].as_str()),
        (Some("off"), Some("complete"))
    );

    let bad =
        "<xml><appid>BOTAPPID123456</appid><openid>oU</openid><kefustate>maybe</kefustate></xml>";
    assert_eq!(errcode(&s.bot("kefustate/change", bad).await), 1007);
}

/// Issue 20.2: the four states, `type` simple / all, a change with `expires` that reverts.
#[tokio::test]
async fn chatbot_four_states_with_expiry() {
    let s = Sim::new().await;
    let get = |t: &str| format!("<xml><openid>oS</openid><type>{t}</type></xml>");
    let change =
        |k: &str, e: &str| format!("<xml><openid>oS</openid><kefustate>{k}</kefustate>{e}</xml>");
    assert_eq!(
        errcode(
            &s.bot(
                "kefustate/change",
                &change("needperson", "<expires>1</expires>")
            )
            .await
        ),
        0
    );
    let v = s.bot("kefustate/get", &get("all")).await;
    assert_eq!(
        (v["kefustate"].as_str(), v["status"].as_str()),
        (Some("off"), Some("needperson"))
    );
    // type=simple: on/off only.
    let v = s.bot("kefustate/get", &get("simple")).await;
    assert_eq!(
        (v["kefustate"].as_str(), v.get("status")),
        (Some("off"), None)
    );
    assert_eq!(errcode(&s.bot("kefustate/get", &get("full")).await), 1007);
    assert_eq!(s.h.state().chatbot_state("bot", "oS"), "needperson");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let v = s.bot("kefustate/get", &get("all")).await;
    assert_eq!(v["status"], "asking", "reverted after expires");

    assert_eq!(
        errcode(
            &s.bot("kefustate/change", &change("personserving", ""))
                .await
        ),
        0
    );
    let v = s.bot("kefustate/get", &get("simple")).await;
    assert_eq!(v["kefustate"], "on");
    for bad in [
        change("needperson", "<expires>0</expires>"),
        change("needperson", "<expires>soon</expires>"),
        change("waiting", ""),
    ] {
        assert_eq!(
            errcode(&s.bot("kefustate/change", &bad).await),
            1007,
            "{bad}"
        );
    }
    // The admin API sets and shows the four states too.
    s.post(
        "/_sim/chatbot/kefustate",
        &json!({"account": "bot", "openid": "oS", "status": "complete", "expires": 60}),
    )
    .await;
    let v = s.get("/_sim/chatbot/kefustate?account=bot&openid=oS").await;
    assert_eq!(
        (v["kefustate"].as_str(), v["status"].as_str()),
        (Some("off"), Some("complete"))
    );
}

// ---------------------------------------------------------------- wecom basics

#[tokio::test]
async fn gettoken_and_send_msg_succeed() {
    let s = Sim::new().await;
    let v = s
        .get(&format!(
            "/cgi-bin/gettoken?corpid={CORPID}&corpsecret={SECRET}"
        ))
        .await;
    assert_eq!((errcode(&v), v["expires_in"].as_u64()), (0, Some(7200)));
    let token = v["access_token"].as_str().unwrap().to_owned();
    // While valid, WeCom hands out the same token.
    assert_eq!(s.token().await, token);
    assert_eq!(s.h.state().gettoken_calls(CORPID), 2);

    let body = text_msg("wmUser1", Some("job-0001"), "Hello, how can I help?");
    let v = s.kf("send_msg", &token, &body).await;
    assert_eq!(
        v,
        json!({"errcode": 0, "errmsg": "ok", "msgid": "job-0001"})
    );

    let v = s
        .kf("send_msg", &token, &text_msg("wmUser1", None, "again"))
        .await;
    assert_eq!(errcode(&v), 0);
    let generated = v["msgid"].as_str().unwrap();
    assert_eq!(generated.len(), 32);

    let acc = s.h.state().accepted_for("kf");
    assert_eq!(acc.len(), 2);
    assert_eq!(
        (acc[0].channel, acc[0].api, acc[0].msgtype.as_str()),
        ("wecom", "send_msg", "text")
    );
    assert_eq!(acc[0].body, body);
    assert_eq!(acc[0].msgid.as_deref(), Some("job-0001"));
    assert_eq!(acc[1].msgid.as_deref(), Some(generated));

    // A repeated msgid is accepted and counted.
    assert_eq!(errcode(&s.kf("send_msg", &token, &body).await), 0);
    assert_eq!(s.h.state().duplicate_msgids("kf"), 1);
}

#[tokio::test]
async fn gettoken_errors() {
    let s = Sim::new().await;
    let v = s.get("/cgi-bin/gettoken?corpid=wwNOPE&corpsecret=x").await;
    assert_eq!(errcode(&v), 40013);
    let v = s
        .get(&format!(
            "/cgi-bin/gettoken?corpid={CORPID}&corpsecret=wrong"
        ))
        .await;
    assert_eq!(errcode(&v), 40001);
    let v = s.get("/cgi-bin/gettoken?corpsecret=x").await;
    assert_eq!(errcode(&v), 41002);
    let v = s.get(&format!("/cgi-bin/gettoken?corpid={CORPID}")).await;
    assert_eq!(errcode(&v), 41004);
    assert_eq!(s.h.state().gettoken_calls(CORPID), 2);
    assert_eq!(s.h.state().gettoken_calls("wwNOPE"), 1);
    assert_eq!(s.h.state().errcode_counts().get("kf:40001"), Some(&1));
}

#[tokio::test]
async fn access_token_missing_unknown_expired_revoked() {
    let s = Sim::new().await;
    let body = text_msg("wmU", None, "hi");
    let v = s.post("/cgi-bin/kf/send_msg", &body).await;
    assert_eq!(errcode(&v), 41001);
    let v = s.post("/cgi-bin/kf/send_msg?access_token=", &body).await;
    assert_eq!(errcode(&v), 41001);
    assert_eq!(errcode(&s.kf("send_msg", "made-up", &body).await), 40014);

    let t1 = s.token().await;
    assert_eq!(errcode(&s.kf("send_msg", &t1, &body).await), 0);
    s.h.state().expire_tokens();
    assert_eq!(errcode(&s.kf("send_msg", &t1, &body).await), 42001);
    let t2 = s.token().await;
    assert_ne!(t1, t2);
    assert_eq!(errcode(&s.kf("send_msg", &t2, &body).await), 0);
    assert_eq!(errcode(&s.kf("send_msg", &t1, &body).await), 42001);

    s.h.state().revoke_tokens();
    assert_eq!(errcode(&s.kf("send_msg", &t2, &body).await), 40014);
    assert_eq!(errcode(&s.kf("send_msg", &s.token().await, &body).await), 0);
}

#[tokio::test]
async fn short_token_ttl_expires() {
    let opts = SimOptions {
        token_ttl: Duration::from_millis(300),
        ..SimOptions::default()
    };
    let s = Sim::start(vec![kf_account()], opts).await;
    let v = s
        .get(&format!(
            "/cgi-bin/gettoken?corpid={CORPID}&corpsecret={SECRET}"
        ))
        .await;
    assert_eq!(v["expires_in"], 1);
    let t = v["access_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        errcode(&s.kf("send_msg", &t, &text_msg("u", None, "x")).await),
        42001
    );
}

#[tokio::test]
async fn send_msg_validation_errcodes() {
    let s = Sim::new().await;
    let t = s.token().await;
    let menu = |n: usize| {
        let list: Vec<Value> = (0..n)
            .map(|i| json!({"type": "click", "click": {"id": format!("{i}"), "content": "c"}}))
            .collect();
        json!({"touser": "u", "open_kfid": KFID, "msgtype": "msgmenu", "msgmenu": {"head_content": "h", "list": list}})
    };
    let loc = |lat: f64, lng: f64| {
        json!({"touser": "u", "open_kfid": KFID, "msgtype": "location",
               "location": {"name": "n", "address": "a", "latitude": lat, "longitude": lng}})
    };
    let cases: Vec<(Value, i64)> = vec![
        (text_msg("u", None, &"a".repeat(2048)), 0),
        (text_msg("u", None, &"a".repeat(2049)), 45002),
        (menu(10), 0),
        (menu(11), 45002),
        (loc(-90.0, 180.0), 0),
        (loc(90.0001, 0.0), 40058),
        (loc(0.0, -180.5), 40058),
        (text_msg("", None, "x"), 40003),
        (
            json!({"open_kfid": KFID, "msgtype": "text", "text": {"content": "x"}}),
            40003,
        ),
        (
            json!({"touser": "u", "open_kfid": "wkOTHER", "msgtype": "text", "text": {"content": "x"}}),
            95000,
        ),
        (
            json!({"touser": "u", "msgtype": "text", "text": {"content": "x"}}),
            95004,
        ),
        (text_msg("u", Some("has space"), "x"), 40008),
        (text_msg("u", Some(&"a".repeat(33)), "x"), 40008),
        (
            json!({"touser": "u", "open_kfid": KFID, "msgtype": "gif", "gif": {}}),
            40008,
        ),
        (
            json!({"touser": "u", "open_kfid": KFID, "msgtype": "image", "image": {"media_id": ""}}),
            40007,
        ),
        (
            json!({"touser": "u", "open_kfid": KFID, "msgtype": "link", "link": {"title": "t", "url": "u"}}),
            40007,
        ),
        (
            json!({"touser": "u", "open_kfid": KFID, "msgtype": "miniprogram", "miniprogram": {"appid": "wx", "title": "t".repeat(65), "thumb_media_id": "m", "pagepath": "p"}}),
            45002,
        ),
        (
            json!({"touser": "u", "open_kfid": KFID, "msgtype": "business_card", "business_card": {"userid": "zs"}}),
            0,
        ),
        (
            json!({"touser": "u", "open_kfid": "wkBBBB", "msgtype": "ca_link", "ca_link": {"link_url": "https://x"}}),
            0,
        ),
    ];
    let mut accepted = 0;
    for (body, want) in cases {
        let v = s.kf("send_msg", &t, &body).await;
        assert_eq!(errcode(&v), want, "{body} → {v}");
        accepted += usize::from(want == 0);
    }
    let (status, v) = s
        .post_raw(
            &format!("/cgi-bin/kf/send_msg?access_token={t}"),
            "not json",
        )
        .await;
    assert_eq!((status, errcode(&v)), (200, 47001));
    assert_eq!(s.h.state().accepted_count(), accepted);
}

#[tokio::test]
async fn session_state_blocks_sends() {
    let s = Sim::new().await;
    let t = s.token().await;
    let st = s.h.state();
    for (state, want) in [(1, 0), (2, 95018), (3, 95018), (4, 95013), (0, 0)] {
        st.set_service_state("kf", KFID, "wmU", state, Some("servicer1"));
        let v = s.kf("send_msg", &t, &text_msg("wmU", None, "x")).await;
        assert_eq!(errcode(&v), want, "state {state}");
    }
}

#[tokio::test]
async fn reply_window_when_enforced() {
    let opts = SimOptions {
        enforce_window: true,
        ..SimOptions::default()
    };
    let s = Sim::start(vec![kf_account()], opts).await;
    let t = s.token().await;
    let msg = text_msg("wmU", None, "x");
    let send = || s.kf("send_msg", &t, &msg);
    assert_eq!(errcode(&send().await), 95002);
    s.h.state().customer_message("kf", KFID, "wmU", "hello?");
    for i in 0..5 {
        assert_eq!(errcode(&send().await), 0, "send {i}");
    }
    assert_eq!(errcode(&send().await), 95001);
    s.h.state()
        .customer_message("kf", KFID, "wmU", "still there?");
    assert_eq!(errcode(&send().await), 0);
    assert_eq!(s.h.state().accepted_count(), 6);
}

// ---------------------------------------------------------------- gate

#[tokio::test]
async fn faults_at_rate_one_produce_each_fault() {
    let s = Sim::new().await;
    let st = s.h.state();
    let t = s.token().await;
    let path = format!("/cgi-bin/kf/send_msg?access_token={t}");
    let body = text_msg("u", None, "x").to_string();

    st.set_faults(Faults {
        http_5xx: 1.0,
        ..Faults::default()
    });
    let (status, _) = s.post_raw(&path, body.clone()).await;
    assert_eq!(status, 502);
    // gettoken is never faulted.
    assert_eq!(s.token().await, t);

    st.set_faults(Faults {
        busy: 1.0,
        ..Faults::default()
    });
    assert_eq!(errcode(&s.post_raw(&path, body.clone()).await.1), -1);
    assert_eq!(
        errcode(&s.bot("sendmsg", &sendmsg_xml(APPID, "o", "x")).await),
        -1
    );

    st.set_faults(Faults {
        throttle: 1.0,
        ..Faults::default()
    });
    assert_eq!(errcode(&s.post_raw(&path, body.clone()).await.1), 45009);
    assert_eq!(
        errcode(&s.bot("sendmsg", &sendmsg_xml(APPID, "o", "x")).await),
        210205
    );

    st.set_faults(Faults {
        timeout: 1.0,
        timeout_ms: 200,
        ..Faults::default()
    });
    let t0 = Instant::now();
    let (status, _) = s.post_raw(&path, body.clone()).await;
    assert_eq!(status, 504);
    assert!(t0.elapsed() >= Duration::from_millis(200));

    st.set_faults(Faults::default());
    assert_eq!(errcode(&s.post_raw(&path, body).await.1), 0);
    assert_eq!(st.accepted_count(), 1);
    let c = st.errcode_counts();
    for (k, n) in [
        ("kf:http502", 1),
        ("kf:-1", 1),
        ("bot:-1", 1),
        ("kf:45009", 1),
        ("bot:210205", 1),
        ("kf:timeout", 1),
    ] {
        assert_eq!(c.get(k), Some(&n), "{k} in {c:?}");
    }
}

#[tokio::test]
async fn timeout_fault_is_released_on_shutdown() {
    let s = Sim::new().await;
    s.h.state().set_faults(Faults {
        timeout: 1.0,
        timeout_ms: 60_000,
        ..Faults::default()
    });
    let url = s.url("/openapi/sendmsg/bot-token-1");
    let held =
        tokio::spawn(async move { reqwest::Client::new().post(url).body("{}").send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    s.h.shutdown().await;
    let r = held.await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16(), 504);
    }
}

#[tokio::test]
async fn scripted_errcodes_come_in_order_then_normal_processing() {
    let s = Sim::new().await;
    let t = s.token().await;
    s.h.state()
        .script("kf", vec![45009, 0, gate::SCRIPT_HTTP_500, 95001]);
    let path = format!("/cgi-bin/kf/send_msg?access_token={t}");
    let body = || text_msg("u", None, "x").to_string();
    assert_eq!(errcode(&s.post_raw(&path, body()).await.1), 45009);
    assert_eq!(errcode(&s.post_raw(&path, body()).await.1), 0);
    assert_eq!(s.post_raw(&path, body()).await.0, 500);
    assert_eq!(errcode(&s.post_raw(&path, body()).await.1), 95001);
    assert_eq!(errcode(&s.post_raw(&path, body()).await.1), 0);
    assert_eq!(s.h.state().accepted_count(), 2);

    s.h.state().script("bot", vec![1019]);
    assert_eq!(
        errcode(&s.bot("sendmsg", &sendmsg_xml(APPID, "o", "x")).await),
        1019
    );
    assert_eq!(
        errcode(&s.bot("sendmsg", &sendmsg_xml(APPID, "o", "x")).await),
        0
    );
}

#[tokio::test]
async fn rate_limit_gives_45009_and_can_be_disabled() {
    let mut kf = kf_account();
    kf.rate = Rate {
        per_second: Some(5),
        burst: Some(2),
        ..Rate::default()
    };
    let s = Sim::start(vec![kf.clone()], SimOptions::default()).await;
    let t = s.token().await;
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(errcode(
            &s.kf("send_msg", &t, &text_msg("u", None, "x")).await,
        ));
    }
    assert_eq!(codes, [0, 0, 0, 0, 0, 0, 0, 45009, 45009, 45009]);
    assert_eq!(s.h.state().accepted_count(), 7);
    // Another API has its own window.
    let v = s
        .kf(
            "service_state/get",
            &t,
            &json!({"open_kfid": KFID, "external_userid": "u"}),
        )
        .await;
    assert_eq!(errcode(&v), 0);
    // A second later the window has slid.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        errcode(&s.kf("send_msg", &t, &text_msg("u", None, "x")).await),
        0
    );

    let opts = SimOptions {
        enforce_rate: false,
        ..SimOptions::default()
    };
    let s = Sim::start(vec![kf], opts).await;
    let t = s.token().await;
    for _ in 0..20 {
        assert_eq!(
            errcode(&s.kf("send_msg", &t, &text_msg("u", None, "x")).await),
            0
        );
    }
}

// ---------------------------------------------------------------- admin API

#[tokio::test]
async fn admin_api() {
    let s = Sim::new().await;
    let t = s.token().await;
    for i in 0..3 {
        let id = format!("job-{i}");
        assert_eq!(
            errcode(&s.kf("send_msg", &t, &text_msg("u", Some(&id), "x")).await),
            0
        );
    }
    assert_eq!(
        errcode(&s.bot("sendmsg", &sendmsg_xml(APPID, "o", "x")).await),
        0
    );

    let all = s.get("/_sim/accepted").await;
    assert_eq!(all.as_array().map(Vec::len), Some(4));
    let kf = s.get("/_sim/accepted?account=kf&since_seq=1").await;
    let ids: Vec<&str> = kf
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["msgid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["job-1", "job-2"]);
    assert_eq!(kf[0]["body"]["text"]["content"], "x");
    let one = s.get("/_sim/accepted?limit=1&since_seq=3").await;
    assert_eq!(one[0]["account"], "bot");
    assert_eq!(one[0]["plaintext"], sendmsg_xml(APPID, "o", "x"));

    let r = s
        .http
        .put(s.url("/_sim/faults"))
        .body(r#"{"busy": 1.0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        errcode(&s.kf("send_msg", &t, &text_msg("u", None, "x")).await),
        -1
    );
    let r = s
        .http
        .put(s.url("/_sim/faults"))
        .body(r#"{"busy": 2.0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = s
        .http
        .put(s.url("/_sim/faults"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    assert_eq!(
        s.post(
            "/_sim/script",
            &json!({"account": "kf", "errcodes": [95018]})
        )
        .await["ok"],
        true
    );
    assert_eq!(
        errcode(&s.kf("send_msg", &t, &text_msg("u", None, "x")).await),
        95018
    );
    let (status, _) = s
        .post_raw(
            "/_sim/script",
            json!({"account": "nope", "errcodes": [1]}).to_string(),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s.post_raw("/_sim/script", "{").await;
    assert_eq!(status, 400);
    let v = s
        .post(
            "/_sim/script",
            &json!({"account": "kf", "api": "sync_msg", "errcodes": [95007]}),
        )
        .await;
    assert_eq!(v["ok"], true);
    let (status, _) = s
        .post_raw(
            "/_sim/script",
            json!({"account": "kf", "api": "nope", "errcodes": [1]}).to_string(),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        errcode(&s.kf("sync_msg", &t, &json!({"open_kfid": KFID})).await),
        95007
    );
    assert_eq!(
        errcode(&s.kf("sync_msg", &t, &json!({"open_kfid": KFID})).await),
        0
    );

    let stats = s.get("/_sim/stats").await;
    assert_eq!(stats["accepted_total"], 4);
    assert_eq!(stats["accepted"]["kf"], 3);
    assert_eq!(stats["accepted"]["bot"], 1);
    assert_eq!(stats["errcodes"]["kf:-1"], 1);
    assert_eq!(stats["errcodes"]["kf:95018"], 1);
    assert_eq!(stats["errcodes"]["kf:95007"], 1);
    assert_eq!(stats["gettoken_calls"][CORPID], 1);

    s.post("/_sim/tokens/expire", &json!({})).await;
    assert_eq!(
        errcode(&s.kf("send_msg", &t, &text_msg("u", None, "x")).await),
        42001
    );
    s.post("/_sim/tokens/revoke", &json!({})).await;
    assert_eq!(
        errcode(&s.kf("send_msg", &t, &text_msg("u", None, "x")).await),
        40014
    );

    s.post("/_sim/reset", &json!({})).await;
    assert_eq!(s.get("/_sim/accepted").await, json!([]));
    let stats = s.get("/_sim/stats").await;
    assert_eq!(stats["accepted_total"], 0);
    assert_eq!(stats["errcodes"], json!({}));
    // seq keeps increasing after a reset.
    let t = s.token().await;
    assert_eq!(
        errcode(&s.kf("send_msg", &t, &text_msg("u", None, "x")).await),
        0
    );
    assert_eq!(s.h.state().accepted()[0].seq, 5);
}

// ---------------------------------------------------------------- phase 2: conversations

#[tokio::test]
async fn service_state_get_and_trans() {
    let s = Sim::new().await;
    let t = s.token().await;
    let get = |u: &str| json!({"open_kfid": KFID, "external_userid": u});
    let trans = |to: i64, servicer: Option<&str>| {
        let mut b = json!({"open_kfid": KFID, "external_userid": "wmU", "service_state": to});
        if let Some(sv) = servicer {
            b["servicer_userid"] = json!(sv);
        }
        b
    };
    let v = s.kf("service_state/get", &t, &get("wmU")).await;
    assert_eq!(
        v,
        json!({"errcode": 0, "errmsg": "ok", "service_state": 0, "servicer_userid": ""})
    );

    let v = s.kf("service_state/trans", &t, &trans(1, None)).await;
    assert_eq!(v, json!({"errcode": 0, "errmsg": "ok"}));
    assert_eq!(
        errcode(&s.kf("service_state/trans", &t, &trans(3, None)).await),
        95014
    );
    let v = s.kf("service_state/trans", &t, &trans(2, None)).await;
    let queued_code = v["msg_code"]
        .as_str()
        .expect("msg_code on the first move into 2")
        .to_owned();
    let v = s
        .kf("service_state/trans", &t, &trans(3, Some("zhangsan")))
        .await;
    assert_eq!(
        (errcode(&v), v.get("msg_code")),
        (0, None),
        "only the first move into 2/3 has a code"
    );
    let v = s.kf("service_state/get", &t, &get("wmU")).await;
    assert_eq!(
        (v["service_state"].as_i64(), v["servicer_userid"].as_str()),
        (Some(3), Some("zhangsan"))
    );
    assert_eq!(
        errcode(&s.kf("send_msg", &t, &text_msg("wmU", None, "bot")).await),
        95018
    );

    let v = s.kf("service_state/trans", &t, &trans(4, None)).await;
    let end_code = v["msg_code"]
        .as_str()
        .expect("msg_code on the move into 4")
        .to_owned();
    assert_eq!(
        errcode(&s.kf("service_state/trans", &t, &trans(1, None)).await),
        95016
    );
    assert_eq!(
        errcode(&s.kf("service_state/trans", &t, &trans(7, None)).await),
        40058
    );
    assert_eq!(
        errcode(&s.kf("send_msg", &t, &text_msg("wmU", None, "bot")).await),
        95013
    );
    assert_eq!(
        errcode(&s.kf("service_state/get", &t, &get("")).await),
        40096
    );

    // msg_codes work once with send_msg_on_event.
    let ev = |code: &str, id: &str| json!({"code": code, "msgid": id, "msgtype": "text", "text": {"content": "bye"}});
    let v = s.kf("send_msg_on_event", &t, &ev(&end_code, "ev-1")).await;
    assert_eq!(v, json!({"errcode": 0, "errmsg": "ok", "msgid": "ev-1"}));
    assert_eq!(
        errcode(&s.kf("send_msg_on_event", &t, &ev(&end_code, "ev-2")).await),
        95010
    );
    assert_eq!(
        errcode(
            &s.kf("send_msg_on_event", &t, &ev(&queued_code, "ev-3"))
                .await
        ),
        0
    );
    let trans_records: Vec<_> =
        s.h.state()
            .accepted()
            .into_iter()
            .map(|a| (a.api, a.recipient))
            .collect();
    assert_eq!(
        trans_records
            .iter()
            .filter(|(api, _)| *api == "service_state_trans")
            .count(),
        4
    );
    assert_eq!(
        trans_records
            .iter()
            .filter(|(api, _)| *api == "send_msg_on_event")
            .count(),
        2
    );
    assert!(trans_records.iter().all(|(_, r)| r == "wmU"));
}

#[tokio::test]
async fn send_msg_on_event_with_welcome_code() {
    let s = Sim::new().await;
    let t = s.token().await;
    let code = s.h.state().enter_session("kf", KFID, "wmNew");
    let image = json!({"code": code, "msgtype": "image", "image": {"media_id": "m"}});
    assert_eq!(errcode(&s.kf("send_msg_on_event", &t, &image).await), 40008);
    let menu = json!({"code": code, "msgtype": "msgmenu", "msgmenu": {"head_content": "Welcome", "list": [
        {"type": "click", "click": {"id": "1", "content": "Orders"}}]}});
    let v = s.kf("send_msg_on_event", &t, &menu).await;
    assert_eq!(errcode(&v), 0);
    let a = &s.h.state().accepted()[0];
    assert_eq!(
        (a.api, a.recipient.as_str(), a.msgtype.as_str()),
        ("send_msg_on_event", "wmNew", "msgmenu")
    );
    assert_eq!(errcode(&s.kf("send_msg_on_event", &t, &menu).await), 95010);
    let unknown = json!({"code": "nope", "msgtype": "text", "text": {"content": "x"}});
    assert_eq!(
        errcode(&s.kf("send_msg_on_event", &t, &unknown).await),
        95010
    );
}

#[tokio::test]
async fn sync_msg_pages_cursors_tokens_and_empty_pages() {
    let s = Sim::new().await;
    let st = s.h.state();
    let t = s.token().await;
    let m1 = st.customer_message("kf", KFID, "wmU", "one");
    let _m2 = st.customer_message("kf", KFID, "wmU", "two");
    let cb = st.customer_message("kf", KFID, "wmV", "three");
    st.push_event("kf", KFID, json!({"event_type": "msg_send_fail", "external_userid": "wmU", "fail_msgid": "job-9", "fail_type": 4}));
    st.customer_message("kf", "wkBBBB", "wmW", "other kf");

    let page1 = s
        .kf(
            "sync_msg",
            &t,
            &json!({"token": cb, "limit": 2, "open_kfid": KFID}),
        )
        .await;
    assert_eq!((errcode(&page1), page1["has_more"].as_i64()), (0, Some(1)));
    let list = page1["msg_list"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["msgid"], m1.as_str());
    assert_eq!(list[0]["origin"], 3);
    assert_eq!(list[0]["msgtype"], "text");
    assert_eq!(list[0]["text"]["content"], "one");
    assert_eq!(list[0]["external_userid"], "wmU");
    assert_eq!(list[0]["open_kfid"], KFID);

    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = s
        .kf(
            "sync_msg",
            &t,
            &json!({"cursor": cursor, "limit": 2, "open_kfid": KFID}),
        )
        .await;
    assert_eq!(page2["has_more"], 0);
    let list = page2["msg_list"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["text"]["content"], "three");
    assert_eq!(list[1]["origin"], 4);
    assert_eq!(list[1]["event"]["event_type"], "msg_send_fail");
    assert_eq!(list[1]["event"]["fail_msgid"], "job-9");
    assert_eq!(list[1]["event"]["open_kfid"], KFID);

    let end = page2["next_cursor"].as_str().unwrap().to_owned();
    let page3 = s
        .kf("sync_msg", &t, &json!({"cursor": end, "open_kfid": KFID}))
        .await;
    assert_eq!(
        (
            page3["msg_list"].as_array().map(Vec::len),
            page3["has_more"].as_i64()
        ),
        (Some(0), Some(0))
    );

    // An injected empty page says has_more = 1 and keeps the position.
    st.inject_empty_page("kf", KFID);
    let m4 = st.customer_message("kf", KFID, "wmU", "four");
    let empty = s
        .kf("sync_msg", &t, &json!({"cursor": end, "open_kfid": KFID}))
        .await;
    assert_eq!(
        (
            empty["msg_list"].as_array().map(Vec::len),
            empty["has_more"].as_i64()
        ),
        (Some(0), Some(1))
    );
    let after = s
        .kf(
            "sync_msg",
            &t,
            &json!({"cursor": empty["next_cursor"], "open_kfid": KFID}),
        )
        .await;
    assert_eq!(after["msg_list"][0]["msgid"], m4.as_str());

    // The token alone names the open_kfid.
    let other = st.issue_callback_token("kf", "wkBBBB");
    let v = s.kf("sync_msg", &t, &json!({"token": other})).await;
    assert_eq!(v["msg_list"][0]["text"]["content"], "other kf");

    assert_eq!(
        errcode(
            &s.kf(
                "sync_msg",
                &t,
                &json!({"token": "stale", "open_kfid": KFID})
            )
            .await
        ),
        95007
    );
    assert_eq!(
        errcode(
            &s.kf("sync_msg", &t, &json!({"limit": 1001, "open_kfid": KFID}))
                .await
        ),
        40058
    );
    assert_eq!(
        errcode(
            &s.kf(
                "sync_msg",
                &t,
                &json!({"cursor": "garbage", "open_kfid": KFID})
            )
            .await
        ),
        40058
    );
    assert_eq!(
        errcode(&s.kf("sync_msg", &t, &json!({"open_kfid": "wkNOPE"})).await),
        95000
    );
    assert_eq!(errcode(&s.kf("sync_msg", &t, &json!({})).await), 95004);

    // After forgetting the conversations, an old cursor reads the new log from the start.
    st.reset_conversations();
    let m5 = st.customer_message("kf", KFID, "wmU", "five");
    let v = s
        .kf("sync_msg", &t, &json!({"cursor": end, "open_kfid": KFID}))
        .await;
    assert_eq!(v["msg_list"][0]["msgid"], m5.as_str());
    assert_eq!(v["msg_list"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn callback_request_is_signed_and_encrypted_for_the_worker() {
    let s = Sim::new().await;
    let st = s.h.state();
    let token = st.customer_message("kf", KFID, "wmU", "hi");
    let (query, body) = st.callback_request("kf", KFID, &token);

    let q = |name: &str| {
        super::reply::query_param(Some(query.as_str()), name)
            .unwrap()
            .into_owned()
    };
    let envelope = super::xml::parse(&body).unwrap();
    assert_eq!(envelope.get("ToUserName"), Some(CORPID));
    assert!(envelope.get("AgentID").is_some());
    let enc = envelope.get("Encrypt").unwrap();
    let c = MsgCrypt::new(CB_TOKEN, KEY, CORPID).unwrap();
    c.verify(&q("timestamp"), &q("nonce"), enc, &q("msg_signature"))
        .unwrap();
    let plain = String::from_utf8(c.decrypt(enc).unwrap()).unwrap();
    let inner = super::xml::parse(&plain).unwrap();
    assert_eq!(inner.get("Event"), Some("kf_msg_or_event"));
    assert_eq!(inner.get("MsgType"), Some("event"));
    assert_eq!(inner.get("Token"), Some(token.as_str()));
    assert_eq!(inner.get("OpenKfId"), Some(KFID));

    // URL verification: the worker must echo the decrypted echostr.
    let (query, echo) = st.verify_url_request("kf").unwrap();
    let enc = super::reply::query_param(Some(query.as_str()), "echostr").unwrap();
    assert_eq!(c.decrypt(&enc).unwrap(), echo.as_bytes());

    assert!(st.try_callback_request("bot", KFID, "t").is_err());
    assert!(st.try_callback_request("nope", KFID, "t").is_err());
}

#[tokio::test]
async fn admin_conversation_endpoints() {
    let s = Sim::new().await;
    let t = s.token().await;
    let v = s
        .post(
            "/_sim/wecom/customer_message",
            &json!({"account": "kf", "open_kfid": KFID, "external_userid": "wmU", "text": "hello"}),
        )
        .await;
    let token = v["token"].as_str().unwrap().to_owned();
    let page = s
        .kf("sync_msg", &t, &json!({"token": token, "open_kfid": KFID}))
        .await;
    assert_eq!(page["msg_list"][0]["msgid"], v["msgid"]);

    let cb = s
        .post(
            "/_sim/wecom/callback",
            &json!({"account": "kf", "open_kfid": KFID, "token": token}),
        )
        .await;
    assert!(cb["query"].as_str().unwrap().starts_with("msg_signature="));
    assert!(cb["body"].as_str().unwrap().contains("<Encrypt>"));

    let code = s
        .post(
            "/_sim/wecom/enter_session",
            &json!({"account": "kf", "open_kfid": KFID, "external_userid": "wmZ"}),
        )
        .await;
    let ev =
        json!({"code": code["welcome_code"], "msgtype": "text", "text": {"content": "welcome"}});
    assert_eq!(errcode(&s.kf("send_msg_on_event", &t, &ev).await), 0);

    s.post(
        "/_sim/wecom/event",
        &json!({"account": "kf", "open_kfid": KFID, "event": {"event_type": "session_status_change", "change_type": 3, "external_userid": "wmU"}}),
    )
    .await;
    s.post(
        "/_sim/wecom/service_state",
        &json!({"account": "kf", "open_kfid": KFID, "external_userid": "wmU", "service_state": 3, "servicer_userid": "ls"}),
    )
    .await;
    let v = s
        .get(&format!(
            "/_sim/wecom/service_state?open_kfid={KFID}&external_userid=wmU"
        ))
        .await;
    assert_eq!(v, json!({"service_state": 3, "servicer_userid": "ls"}));
    s.post(
        "/_sim/wecom/empty_page",
        &json!({"account": "kf", "open_kfid": KFID}),
    )
    .await;
    let page = s
        .kf(
            "sync_msg",
            &t,
            &json!({"open_kfid": KFID, "cursor": page["next_cursor"]}),
        )
        .await;
    assert_eq!(
        (
            page["msg_list"].as_array().map(Vec::len),
            page["has_more"].as_i64()
        ),
        (Some(0), Some(1))
    );
    let page = s
        .kf(
            "sync_msg",
            &t,
            &json!({"open_kfid": KFID, "cursor": page["next_cursor"]}),
        )
        .await;
    // enter_session, then the session_status_change event.
    assert_eq!(
        page["msg_list"][1]["event"]["event_type"],
        "session_status_change"
    );

    s.post(
        "/_sim/chatbot/kefustate",
        &json!({"account": "bot", "openid": "oX", "on": true}),
    )
    .await;
    assert_eq!(
        s.get("/_sim/chatbot/kefustate?account=bot&openid=oX").await["kefustate"],
        "on"
    );
    let (status, _) = s
        .post_raw(
            "/_sim/wecom/event",
            json!({"account": "kf", "open_kfid": KFID, "event": 5}).to_string(),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn concurrent_sends_are_all_recorded_in_order() {
    let s = Sim::new().await;
    let t = s.token().await;
    let url = s.url(&format!("/cgi-bin/kf/send_msg?access_token={t}"));
    let mut tasks = Vec::new();
    for i in 0..400 {
        let (http, url) = (s.http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let body = text_msg(&format!("u{}", i % 7), Some(&format!("job-{i}")), "x");
            let v: Value = http
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            errcode(&v)
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 0);
    }
    let acc = s.h.state().accepted();
    assert_eq!(acc.len(), 400);
    assert!(acc.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(s.h.state().duplicate_msgids("kf"), 0);
}

#[tokio::test]
async fn start_rejects_bad_accounts_and_shutdown_stops_serving() {
    let mut bad = bot_account();
    bad.encoding_aes_key = Secret::new("short");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = start(vec![bad], SimOptions::default(), l)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("encoding_aes_key"), "{e:#}");
    let mut twin = bot_account();
    twin.name = "bot2".into();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = start(vec![bot_account(), twin], SimOptions::default(), l)
        .await
        .unwrap_err();
    assert!(
        !format!("{e:#}").contains(BOT_TOKEN),
        "the token is never printed"
    );

    let s = Sim::new().await;
    let url = s.url("/_sim/stats");
    assert!(s.http.get(&url).send().await.is_ok());
    s.h.shutdown().await;
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
}

/// One keep-alive HTTP/1.1 connection that POSTs `body` to `path` until `deadline`; a bare
/// client so that the measurement is of the simulator, not of an HTTP client library.
async fn hammer(addr: std::net::SocketAddr, path: String, body: String, deadline: Instant) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0;
    while Instant::now() < deadline {
        conn.write_all(req.as_bytes()).await.unwrap();
        buf.clear();
        // Read the head, then the body by content-length.
        let (head_end, len) = loop {
            let mut chunk = [0u8; 2048];
            let k = conn.read(&mut chunk).await.unwrap();
            assert!(k > 0, "connection closed");
            buf.extend_from_slice(&chunk[..k]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..p]).unwrap().to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap();
                break (p + 4, len);
            }
        };
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 2048];
            let k = conn.read(&mut chunk).await.unwrap();
            assert!(k > 0, "connection closed");
            buf.extend_from_slice(&chunk[..k]);
        }
        assert!(
            buf[head_end..].starts_with(b"{\"errcode\":0"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        n += 1;
    }
    n
}

/// CPU seconds (user + system) used by this process so far, from /proc (Linux; 0 elsewhere).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // Clock ticks are 100 per second on Linux.
    f.get(11)
        .zip(f.get(12))
        .map_or(0.0, |(u, s)| (u + s) / 100.0)
}

/// Load check (not a unit test): `cargo test --release --lib simulate::tests::throughput --
/// --ignored --nocapture`. The (minimal) client runs in the same process and takes its share
/// of the two cores, so the printed rate is a lower bound of what the simulator sustains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load measurement; run explicitly"]
async fn throughput() {
    const CONNECTIONS: usize = 64;
    const RUN: Duration = Duration::from_secs(3);
    let s = Sim::new().await;
    let t = s.token().await;
    for (name, chatbot) in [("wecom send_msg", false), ("chatbot sendmsg", true)] {
        let path = if chatbot {
            format!("/openapi/sendmsg/{BOT_TOKEN}")
        } else {
            format!("/cgi-bin/kf/send_msg?access_token={t}")
        };
        // Pre-built bodies: measure the simulator, not the client's encryption.
        let body = if chatbot {
            Sim::bot_body(&sendmsg_xml(
                APPID,
                "oUser",
                "Hello, how can I help you today?",
            ))
        } else {
            text_msg("wmUser", Some("job-1"), "Hello, how can I help you today?").to_string()
        };
        let before = s.h.state().accepted_count();
        let cpu0 = process_cpu_secs();
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|_| tokio::spawn(hammer(s.h.addr(), path.clone(), body.clone(), t0 + RUN)))
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        let rate = total as f64 / t0.elapsed().as_secs_f64();
        let cpu_us = (process_cpu_secs() - cpu0) * 1e6 / total as f64;
        assert_eq!(s.h.state().accepted_count() - before, total as usize);
        println!(
            "{name}: {total} requests, {rate:.0} req/s; {cpu_us:.1} µs CPU per request (client \
             included): {:.0} req/s on 2 idle cores",
            2e6 / cpu_us
        );
    }
}

// ---------------------------------------------------------------- recall_msg

#[tokio::test]
async fn recall_msg_takes_back_a_recent_message_once_and_keeps_the_quota_used() {
    let opts = SimOptions {
        enforce_window: true,
        ..SimOptions::default()
    };
    let s = Sim::start(vec![kf_account()], opts).await;
    let st = s.h.state();
    let t = s.token().await;
    st.customer_message("kf", KFID, "wmU", "hello?");
    for i in 0..5 {
        let v = s
            .kf(
                "send_msg",
                &t,
                &text_msg("wmU", Some(&format!("m{i}")), "x"),
            )
            .await;
        assert_eq!(errcode(&v), 0, "send {i}");
    }
    let recall = |msgid: &str| json!({"open_kfid": KFID, "msgid": msgid});
    assert_eq!(
        s.kf("recall_msg", &t, &recall("m4")).await,
        json!({"errcode": 0, "errmsg": "ok"})
    );
    let recalls = st.recalls();
    assert_eq!(recalls.len(), 1);
    assert_eq!(
        (recalls[0].msgid.as_str(), recalls[0].recipient.as_str()),
        ("m4", "wmU")
    );
    assert_eq!(
        s.get("/_sim/recalls?account=kf").await["recalls"][0]["msgid"],
        "m4"
    );
    // once only; unknown msgids and missing fields are refused
    assert_eq!(errcode(&s.kf("recall_msg", &t, &recall("m4")).await), 40058);
    assert_eq!(
        errcode(&s.kf("recall_msg", &t, &recall("nope")).await),
        40058
    );
    assert_eq!(
        errcode(&s.kf("recall_msg", &t, &json!({"open_kfid": KFID})).await),
        40058
    );
    assert_eq!(
        errcode(&s.kf("recall_msg", &t, &json!({"msgid": "m3"})).await),
        95004
    );
    // the recalled message still counts: a sixth send is over the quota
    let v = s
        .kf("send_msg", &t, &text_msg("wmU", Some("m5"), "x"))
        .await;
    assert_eq!(errcode(&v), 95001);
    assert_eq!(st.recalls().len(), 1);
}

#[tokio::test]
async fn recall_msg_refuses_messages_older_than_two_minutes() {
    let s = Sim::start(vec![kf_account()], SimOptions::default()).await;
    let st = s.h.state();
    let t = s.token().await;
    for id in ["old", "edge"] {
        let v = s.kf("send_msg", &t, &text_msg("wmU", Some(id), "x")).await;
        assert_eq!(errcode(&v), 0);
    }
    st.age_sent_message("kf", "old", RECALL_WINDOW + Duration::from_secs(1));
    // a little younger than the window: still recallable
    st.age_sent_message("kf", "edge", RECALL_WINDOW - Duration::from_secs(5));
    let recall = |msgid: &str| json!({"open_kfid": KFID, "msgid": msgid});
    let v = s.kf("recall_msg", &t, &recall("old")).await;
    assert_eq!(errcode(&v), 40058);
    assert!(v["errmsg"].as_str().unwrap().contains("2 minutes"), "{v}");
    assert_eq!(errcode(&s.kf("recall_msg", &t, &recall("edge")).await), 0);
    let msgids: Vec<String> = st.recalls().into_iter().map(|r| r.msgid).collect();
    assert_eq!(msgids, ["edge"]);
}
