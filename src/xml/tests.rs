use proptest::prelude::*;

use super::*;

#[test]
fn parses_the_wecom_envelope_and_event() {
    let env = parse(
        "<xml><ToUserName><![CDATA[ww1]]></ToUserName><AgentID><![CDATA[]]></AgentID><Encrypt><![CDATA[abc+/=]]></Encrypt></xml>",
    )
    .unwrap();
    assert_eq!(env.name, "xml");
    assert_eq!(env.field("Encrypt"), Some("abc+/="));
    assert_eq!(env.field("AgentID"), None);
    let ev = parse(
        "<?xml version=\"1.0\"?>\n<xml>\n  <MsgType>event</MsgType>\n  <Event><![CDATA[kf_msg_or_event]]></Event>\n  <Token>T&amp;1</Token>\n  <OpenKfId>wk&#65;</OpenKfId>\n</xml>\n",
    )
    .unwrap();
    assert_eq!(ev.field("Event"), Some("kf_msg_or_event"));
    assert_eq!(ev.field("Token"), Some("T&1"));
    assert_eq!(ev.field("OpenKfId"), Some("wkA"));
}

#[test]
fn nested_and_repeated_elements_keep_their_order() {
    let root = parse("<xml><a><b>1</b><b>2</b></a><c/></xml>").unwrap();
    let names: Vec<_> = root.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    let b: Vec<_> = root.children[0]
        .children
        .iter()
        .map(|c| (c.name.as_str(), c.text.as_str()))
        .collect();
    assert_eq!(b, [("b", "1"), ("b", "2")]);
    assert_eq!(root.children[1], Element::named("c".into()));
    // A field is one leaf: repeated or nested names are not fields.
    let root = parse("<xml><a>1</a><a>2</a><b><c>3</c></b><d>4</d></xml>").unwrap();
    assert_eq!(root.field("a"), None);
    assert_eq!(root.field("b"), None);
    assert_eq!(root.field("d"), Some("4"));
}

#[test]
fn bad_xml_is_an_error() {
    for bad in [
        "",
        "just text",
        "<xml><a>1</a>",
        "<xml></xml><xml></xml>",
        "<xml><a>&bogus;</a></xml>",
        "<!DOCTYPE x [<!ENTITY a \"b\">]><xml><a>&a;</a></xml>",
        "<xml><a></b></xml>",
        &format!("{}{}", "<a>".repeat(20), "</a>".repeat(20)),
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
    // The depth limit counts open elements: MAX_DEPTH of them is fine.
    let deep = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
    assert!(parse(&deep).is_ok());
}

#[test]
fn flat_documents() {
    let f = parse_flat(
        "<?xml version=\"1.0\"?>\n<xml>\n <appid><![CDATA[A1]]></appid>\n <msg>a &amp; b &#x4e2d;<![CDATA[<a href=\"x\">]]></msg><channel>0</channel><event/></xml>\n",
    )
    .unwrap();
    let f: Vec<_> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        f,
        [
            ("appid", "A1"),
            ("msg", "a & b 中<a href=\"x\">"),
            ("channel", "0"),
            ("event", "")
        ]
    );
    for bad in [
        "<root><a>1</a></root>",
        "<xml><a><b>1</b></a></xml>",
        "<xml>loose<a>1</a></xml>",
        "<xml><a>1</a></xml><xml/>",
    ] {
        assert!(parse_flat(bad).is_err(), "{bad:?} should be rejected");
    }
}

#[test]
fn cdata_split_round_trips_through_the_reader() {
    let nasty = "a]]>b]]]]>c<d>&e]]";
    let mut w = Writer::new("xml", 0);
    w.cdata("msg", nasty).text("n", 7).text("t", "a<b&c");
    let doc = w.finish();
    let root = parse(&doc).unwrap();
    assert_eq!(root.field("msg"), Some(nasty));
    assert_eq!(root.field("n"), Some("7"));
    assert_eq!(root.field("t"), Some("a<b&c"));
    assert_eq!(
        parse(&format!("<xml><m>{}</m></xml>", cdata("x]]>y")))
            .unwrap()
            .field("m"),
        Some("x]]>y")
    );
    // Characters XML cannot carry are dropped from hand-built values.
    let mut out = String::new();
    push_cdata_element(&mut out, "x", "a\u{1}b\u{FFFF}c\td");
    assert_eq!(out, "<x><![CDATA[abc\td]]></x>");
}

#[test]
fn the_writer_writes_exactly_this() {
    let mut w = Writer::new("xml", 16);
    w.cdata("appid", "APPID").text("channel", 0);
    assert_eq!(
        w.finish(),
        "<xml><appid><![CDATA[APPID]]></appid><channel>0</channel></xml>"
    );
}

proptest! {
    #[test]
    fn parse_never_panics(s in "\\PC{0,200}") {
        let _ = parse(&s);
    }

    #[test]
    fn parse_never_panics_on_xmlish(s in "[<>/a-z!\\[\\]CDAT&#;x0-9 ]{0,120}") {
        let _ = parse(&s);
    }

    #[test]
    fn written_values_read_back(v in "\\PC{0,60}") {
        let mut w = Writer::new("xml", 0);
        w.cdata("v", &v);
        let kept: String = v.chars().filter(|&c| char_ok(c)).collect();
        let flat = parse_flat(&w.finish()).unwrap();
        prop_assert_eq!(&flat[0].1, &kept);
    }
}
