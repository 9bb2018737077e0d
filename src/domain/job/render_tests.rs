//! Unit tests of rendering jobs into platform requests.

use serde_json::{Value, json};

use super::render::push_cdata_element;
use super::tests::{chatbot, ok, wecom};
use super::*;

#[test]
fn renders_chatbot_sendmsg_text() {
    let j = ok(
        &chatbot(),
        json!({"job_id": "j", "to": "oUser", "message": {"text": "Hi ]]> there"}}),
    );
    assert_eq!(
        chatbot_sendmsg_xml(&j, &chatbot()),
        "<xml><appid><![CDATA[PLATFORMAPPID01]]></appid><openid><![CDATA[oUser]]></openid>\
         <msg><![CDATA[Hi ]]]]><![CDATA[> there]]></msg><channel>7</channel></xml>"
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
    // The OA appid of the extras is not rendered: <appid> is the platform APPID.
    assert_eq!(
        chatbot_sendmsg_xml(&j, &chatbot()),
        "<xml><appid><![CDATA[PLATFORMAPPID01]]></appid><openid><![CDATA[oUser]]></openid>\
         <msg><![CDATA[{\"image\":{\"url\":\"https://i/1.png\"}}]]></msg><channel>0</channel>\
         <event><![CDATA[waiterEnter]]></event><kefuname><![CDATA[Ann]]></kefuname>\
         <kefuavatar><![CDATA[https://a.png]]></kefuavatar><ans_node_name><![CDATA[Billing]]></ans_node_name></xml>"
    );
}

#[test]
fn renders_chatbot_multimsg_items_as_msg_strings() {
    let j = ok(
        &chatbot(),
        json!({"job_id": "j", "to": "o", "message": {"multimsg": ["one", {"image": {"media_id": "M"}}]}}),
    );
    let xml = chatbot_sendmsg_xml(&j, &chatbot());
    let msg = xml
        .split("<msg><![CDATA[")
        .nth(1)
        .and_then(|s| s.split("]]></msg>").next())
        .unwrap();
    assert_eq!(
        msg,
        r#"{"multimsg":["one","{\"image\":{\"media_id\":\"M\"}}"]}"#
    );
    let back: Value = serde_json::from_str(msg).unwrap();
    assert_eq!(
        back["multimsg"][1]
            .as_str()
            .map(serde_json::from_str::<Value>)
            .unwrap()
            .unwrap(),
        json!({"image": {"media_id": "M"}})
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
        chatbot_kefustate_get_xml("APPID", "oU"),
        "<xml><appid><![CDATA[APPID]]></appid><openid><![CDATA[oU]]></openid><type><![CDATA[simple]]></type></xml>"
    );
    assert_eq!(
        chatbot_kefustate_change_xml("APPID", "oU", "off"),
        "<xml><appid><![CDATA[APPID]]></appid><openid><![CDATA[oU]]></openid><kefustate><![CDATA[off]]></kefustate></xml>"
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
