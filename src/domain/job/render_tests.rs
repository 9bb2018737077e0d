//! Unit tests of rendering jobs into platform requests.

use serde_json::{Value, json};

use super::render::push_cdata_element;
use super::tests::{MAX, TestAccount, chatbot, ok, wecom};
use super::*;
use crate::domain::account::AccountView;
use crate::domain::channel::Channel;

#[test]
fn renders_chatbot_sendmsg_text() {
    let j = ok(
        &chatbot(),
        json!({"job_id": "j", "to": "oUser", "message": {"text": "Hi ]]> there"}}),
    );
    assert_eq!(
        chatbot_sendmsg_xml(&j, &chatbot()),
        "<xml><openid><![CDATA[oUser]]></openid>\
         <msg><![CDATA[Hi ]]]]><![CDATA[> there]]></msg><channel>7</channel></xml>",
        "channel 7, no appid on the job or the account: <appid> left out"
    );
}

#[test]
fn renders_chatbot_sendmsg_extras_and_rich() {
    let j = ok(
        &chatbot(),
        json!({"job_id": "j", "to": "oUser", "message": {"image": {"url": "https://i/1.png"}},
               "chatbot": {"channel": 0, "event": "waiterEnter", "kefuname": "Ann", "kefuavatar": "https://a.png",
                           "ans_node_name": "Billing", "appid": "wxOA"}}),
    );
    // <appid> is the job's OA appid, not the platform APPID (that is only the receive id).
    assert_eq!(
        chatbot_sendmsg_xml(&j, &chatbot()),
        "<xml><appid><![CDATA[wxOA]]></appid><openid><![CDATA[oUser]]></openid>\
         <msg><![CDATA[{\"image\":{\"url\":\"https://i/1.png\"}}]]></msg><channel>0</channel>\
         <event><![CDATA[waiterEnter]]></event><kefuname><![CDATA[Ann]]></kefuname>\
         <kefuavatar><![CDATA[https://a.png]]></kefuavatar><ans_node_name><![CDATA[Billing]]></ans_node_name></xml>"
    );
}

/// An account with a default OA appid (`oa_appid`), else as [`chatbot`].
struct WithOaAppid(TestAccount, Option<&'static str>);

impl AccountView for WithOaAppid {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn channel(&self) -> Channel {
        self.0.channel()
    }
    fn open_kfids(&self) -> &[String] {
        self.0.open_kfids()
    }
    fn appid(&self) -> Option<&str> {
        self.0.appid()
    }
    fn default_channel(&self) -> i64 {
        0
    }
    fn oa_appid(&self) -> Option<&str> {
        self.1
    }
}

/// `body` parsed for `account`, which must accept it.
fn ok_for(account: &impl AccountView, body: Value) -> Job {
    parse(body.to_string().as_bytes(), None, account, MAX).unwrap_or_else(|e| panic!("{body}: {e}"))
}

fn appid_element(xml: &str) -> Option<&str> {
    xml.split("<appid><![CDATA[")
        .nth(1)
        .and_then(|s| s.split("]]></appid>").next())
}

#[test]
fn chatbot_appid_is_the_jobs_then_the_accounts_oa_appid() {
    let with = WithOaAppid(chatbot(), Some("wxDefaultOA"));
    let without = WithOaAppid(chatbot(), None);
    let job = |extras: Value| json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "chatbot": extras});
    // The job's appid wins; else the account's oa_appid; never the platform APPID.
    let j = ok_for(&with, job(json!({"appid": "wxJobOA"})));
    assert_eq!(
        appid_element(&chatbot_sendmsg_xml(&j, &with)),
        Some("wxJobOA")
    );
    assert_eq!(chatbot_appid(&j, &with), Some("wxJobOA"));
    let j = ok_for(&with, job(json!({})));
    assert_eq!(
        appid_element(&chatbot_sendmsg_xml(&j, &with)),
        Some("wxDefaultOA")
    );
    let j = ok_for(&with, job(json!({"appid": ""})));
    assert_eq!(
        chatbot_appid(&j, &with),
        Some("wxDefaultOA"),
        "empty = absent"
    );
    // Channels 0, 5 and 6 need one: without, the job is rejected naming the missing keys.
    for channel in CHATBOT_CHANNELS_NEEDING_APPID {
        let e = parse(
            job(json!({"channel": channel})).to_string().as_bytes(),
            None,
            &without,
            MAX,
        )
        .unwrap_err();
        assert_eq!(e.reason, "missing_appid");
        assert!(
            e.detail.contains("chatbot.appid") && e.detail.contains("oa_appid"),
            "{}",
            e.detail
        );
        assert_eq!(e.job_id.as_deref(), Some("j"));
    }
    // The account's default channel (0 here) counts when the job names none.
    let e = parse(job(json!({})).to_string().as_bytes(), None, &without, MAX).unwrap_err();
    assert_eq!(e.reason, "missing_appid");
    // Channels 7 and 9 may leave <appid> out.
    for channel in [7, 9] {
        let j = ok_for(&without, job(json!({"channel": channel})));
        let xml = chatbot_sendmsg_xml(&j, &without);
        assert!(xml.starts_with("<xml><openid>"), "{xml}");
        assert_eq!(chatbot_appid(&j, &without), None);
    }
}

#[test]
fn renders_chatbot_multimsg_rich_items_as_objects() {
    let mini = json!({"title": "Your order", "appid": "wx1234567890abcdef",
                      "pagepath": "pages/order?id=1", "thumb_media_id": "THUMB"});
    let j = ok(
        &chatbot(),
        json!({"job_id": "j", "to": "o", "message": {"multimsg": [
            "Hello,", {"image": {"media_id": "M"}}, {"text": "bye"},
            "{\"news\":{\"articles\":[{\"title\":\"t\",\"url\":\"u\"}]}}",
            {"miniprogrampage": mini}]}}),
    );
    let xml = chatbot_sendmsg_xml(&j, &chatbot());
    let msg = xml
        .split("<msg><![CDATA[")
        .nth(1)
        .and_then(|s| s.split("]]></msg>").next())
        .unwrap();
    let back: Value = serde_json::from_str(msg).unwrap();
    // Text items are strings, rich items objects inside the one array (an upstream's
    // stringified rich item is accepted, and sent as the object).
    assert_eq!(
        back,
        json!({"multimsg": ["Hello,", {"image": {"media_id": "M"}}, "bye",
                            {"news": {"articles": [{"title": "t", "url": "u"}]}},
                            {"miniprogrampage": mini}]})
    );
}

#[test]
fn cdata_split_round_trips_through_an_xml_parser() {
    let nasty = "a]]>b]]]]>c<d>&e]]";
    let mut out = String::from("<xml>");
    push_cdata_element(&mut out, "msg", nasty);
    out.push_str("</xml>");
    let mut reader = quick_xml::Reader::from_str(&out);
    let mut text = String::new();
    loop {
        match reader.read_event().unwrap() {
            quick_xml::events::Event::CData(c) => {
                text.push_str(std::str::from_utf8(&c.into_inner()).unwrap())
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(text, nasty);
    // Characters XML cannot carry are dropped from hand-built values.
    let mut out = String::new();
    push_cdata_element(&mut out, "x", "a\u{1}b\u{FFFF}c\td");
    assert_eq!(out, "<x><![CDATA[abc\td]]></x>");
}

#[test]
fn renders_kefustate_xml() {
    assert_eq!(
        chatbot_kefustate_get_xml(Some("wxOA"), "oU"),
        "<xml><appid><![CDATA[wxOA]]></appid><openid><![CDATA[oU]]></openid><type><![CDATA[all]]></type></xml>"
    );
    assert_eq!(
        chatbot_kefustate_change_xml(Some("wxOA"), "oU", "off", None),
        "<xml><appid><![CDATA[wxOA]]></appid><openid><![CDATA[oU]]></openid><kefustate><![CDATA[off]]></kefustate></xml>"
    );
    assert_eq!(
        chatbot_kefustate_change_xml(None, "oU", "needperson", Some(1800)),
        "<xml><openid><![CDATA[oU]]></openid><kefustate><![CDATA[needperson]]></kefustate><expires>1800</expires></xml>"
    );
    // Without an appid (channels 7, 9) the element is left out.
    assert_eq!(
        chatbot_kefustate_get_xml(None, "oU"),
        "<xml><openid><![CDATA[oU]]></openid><type><![CDATA[all]]></type></xml>"
    );
}

#[test]
fn renders_wecom_bodies() {
    let j = ok(
        &wecom(),
        json!({"job_id": "r-1", "to": "wmUser", "message": {"text": "Hello"}}),
    );
    let parsed = |b: Vec<u8>| serde_json::from_slice::<Value>(&b).unwrap();
    assert_eq!(
        parsed(wecom_send_body(&j)),
        json!({"touser": "wmUser", "open_kfid": "wkA", "msgid": "r-1", "msgtype": "text",
               "text": {"content": "Hello"}})
    );
    let menu = json!({"head_content": "Rate", "list": [{"type": "click", "click": {"id": "1", "content": "Good"}}]});
    let j = ok(
        &wecom(),
        json!({"job_id": "r-2", "kind": "event_reply", "code": "WELCOME", "to": "wmUser",
                                "message": {"msgmenu": menu}}),
    );
    assert_eq!(
        parsed(wecom_event_body(&j)),
        json!({"code": "WELCOME", "msgid": "r-2", "msgtype": "msgmenu", "msgmenu": menu})
    );
    let j = ok(
        &wecom(),
        json!({"job_id": "r-3", "to": "wmUser",
                                "message": {"location": {"latitude": 1.5, "longitude": 2, "name": "HQ"}}}),
    );
    assert_eq!(
        String::from_utf8(wecom_send_body(&j)).unwrap(),
        r#"{"touser":"wmUser","open_kfid":"wkA","msgid":"r-3","msgtype":"location","location":{"latitude":1.5,"longitude":2,"name":"HQ"}}"#
    );
}
