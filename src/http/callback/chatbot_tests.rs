use super::*;

#[test]
fn xml_pushes_become_json_objects() {
    let m = xml_object(
        xml::parse("<xml><a><b>1</b><b>2</b></a><c/></xml>")
            .unwrap()
            .children,
    );
    assert_eq!(m["a"]["b"], serde_json::json!(["1", "2"]));
    assert_eq!(m["c"], serde_json::json!(""));
}

#[test]
fn chatbot_push_fields() {
    let a = crate::config::AccountConfig {
        name: "bot".into(),
        channel: Channel::Chatbot,
        base_url: None,
        rate: Default::default(),
        appid: Some("APP".into()),
        default_channel: 0,
        oa_appid: None,
        corpid: None,
        secret: Default::default(),
        secret_file: None,
        open_kfids: vec![],
        token: Default::default(),
        token_file: None,
        encoding_aes_key: Default::default(),
        encoding_aes_key_file: None,
        require_push_signature: false,
        gate_needperson: false,
        outcomes: true,
    };
    let m = chatbot_inbound(
        &a,
        br#"{"MsgId": 42, "msgtype": "Text", "openid": "oU1", "content": "hi", "createtime": 1700000000}"#,
    )
    .unwrap();
    assert_eq!(m.msgid, "42");
    assert_eq!(m.msgtype, "text");
    assert_eq!(m.external_userid.as_deref(), Some("oU1"));
    assert_eq!(m.send_time, Some(1700000000));
    let xml = b"<xml><openid>oU2</openid><event>waiterEnter</event></xml>";
    let m = chatbot_inbound(&a, xml).unwrap();
    assert_eq!(m.msgtype, "event");
    assert_eq!(m.msgid, inbound::content_id(xml));
    assert_eq!(m.msgid, chatbot_inbound(&a, xml).unwrap().msgid);
    assert!(chatbot_inbound(&a, b"[1,2]").is_err());
    assert!(chatbot_inbound(&a, &[0xff, 0xfe]).is_err());
}
