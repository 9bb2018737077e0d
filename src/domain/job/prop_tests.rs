//! Property tests: [`parse`] never panics, and whatever it returns holds the contract.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Map, Value, json};

use super::tests::{MAX, PARSE_REASONS, TestAccount, chatbot, p, wecom, wecom2};
use super::*;
use crate::domain::account::AccountView;
use crate::domain::channel::Channel;

// --- property tests -----------------------------------------------------------------------

/// Field names and message types, so generated bodies hit the validators.
#[rustfmt::skip]
const KEYS: &[&str] = &[
    "job_id", "kind", "to", "open_kfid", "message", "gate", "not_after", "not_before", "chatbot", "code",
    "service_state", "servicer_userid", "kefustate", "text", "content", "image", "media_id",
    "url", "news", "articles", "title", "description", "picurl", "miniprogrampage", "appid",
    "pagepath", "thumb_url", "thumb_media_id", "multimsg", "voice", "video", "file", "link",
    "desc", "miniprogram", "msgmenu", "head_content", "list", "tail_content", "type", "click",
    "id", "view", "location", "latitude", "longitude", "name", "address", "business_card",
    "userid", "ca_link", "link_url", "channel", "event", "kefuname", "kefuavatar",
];
/// Values that are valid somewhere, and a few that are tricky.
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "j1", "send", "event_reply", "transfer", "broadcast", "bot", "none", "wkA", "wkB", "on",
    "off", "waiterEnter", "2026-11-21T10:00:00Z", "oUser", "click", "view", "text",
    "miniprogram", "]]>", "", "{", r#"{"image":{"url":"u"}}"#,
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..6).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        (-200.0f64..200.0).prop_map(|f| json!(f)),
        prop::sample::select(WORDS).prop_map(|s| json!(s)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..6).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn arb_object(max_keys: usize) -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(prop::sample::select(KEYS), arb_json(), 0..max_keys)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// A one-key message of a real type with an arbitrary payload.
fn arb_message() -> impl Strategy<Value = Value> {
    let types: Vec<&str> = WECOM_MSGTYPES
        .iter()
        .chain(&CHATBOT_MSGTYPES)
        .copied()
        .collect();
    (prop::sample::select(types), arb_json()).prop_map(|(t, payload)| json!({ t: payload }))
}

/// Either an arbitrary object of known keys, or a valid job with a few fields overridden
/// (so the deep validation is reached, not only the first checks).
fn arb_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_object(8).prop_map(Value::Object),
        (arb_object(3), proptest::option::of(arb_message())).prop_map(|(overrides, message)| {
            let mut body = json!({"job_id": "j1", "to": "oUser", "message": {"text": "hi"}});
            if let Some(m) = message {
                body["message"] = m;
            }
            for (k, v) in overrides {
                body[k.as_str()] = v;
            }
            body
        }),
    ]
}

/// What every outcome of `parse` must satisfy, whatever the input.
fn check_outcome(r: &Result<Job, JobError>, account: &TestAccount) {
    match r {
        Ok(j) => {
            assert!(valid_job_id(&j.job_id));
            match &j.kind {
                JobKind::Broadcast { recipients } => {
                    assert!(j.to.is_empty());
                    assert!((1..=MAX_BROADCAST_RECIPIENTS).contains(&recipients.len()));
                }
                _ => assert!(valid_recipient(&j.to)),
            }
            assert_eq!(j.message.is_none(), matches!(j.kind, JobKind::Transfer(_)));
            match account.channel() {
                Channel::Wecom => {
                    let kfid = j.open_kfid.as_ref().expect("wecom job has an open_kfid");
                    assert!(account.open_kfids().contains(kfid));
                    let body: Value = serde_json::from_slice(&wecom_send_body(j)).unwrap();
                    if let Some(m) = &j.message {
                        assert!(WECOM_MSGTYPES.contains(&m.msgtype.as_str()));
                        assert_eq!(body[&m.msgtype], m.payload);
                        if m.msgtype == "text" {
                            let c = m.payload["content"].as_str().unwrap();
                            assert!(!c.is_empty() && c.len() <= WECOM_TEXT_MAX_BYTES);
                        }
                    }
                    let _: Value = serde_json::from_slice(&wecom_event_body(j)).unwrap();
                }
                Channel::Chatbot => {
                    assert_eq!(j.open_kfid, None);
                    if let Some(m) = &j.message {
                        assert!(CHATBOT_MSGTYPES.contains(&m.msgtype.as_str()));
                    }
                    let xml = chatbot_sendmsg_xml(j, account);
                    assert!(xml.starts_with("<xml><") && xml.ends_with("</xml>"));
                }
            }
        }
        Err(e) => {
            assert!(
                Reason::parse(e.reason).is_some_and(|r| PARSE_REASONS.contains(&r)),
                "unlisted reason {}",
                e.reason
            );
            assert!(
                e.detail.chars().count() <= 400,
                "detail too long: {}",
                e.detail
            );
            assert!(!e.detail.contains('\n'), "detail is one line: {}", e.detail);
            if let Some(id) = &e.job_id {
                assert!(valid_job_id(id));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..600),
                             mid in proptest::option::of("[ -~]{0,40}")) {
        for account in [chatbot(), wecom(), wecom2()] {
            let r = parse(&body, mid.as_deref(), &account, 512);
            check_outcome(&r, &account);
        }
    }

    #[test]
    fn never_panics_on_json_ish_strings(s in "[{}\\[\\]\":,0-9a-z_ .\\\\-]{0,300}") {
        for account in [chatbot(), wecom()] {
            check_outcome(&parse(s.as_bytes(), None, &account, MAX), &account);
        }
    }

    #[test]
    fn never_panics_on_structured_json(body in arb_body(), mid in proptest::option::of("j[0-9]")) {
        let text = body.to_string();
        for account in [chatbot(), wecom(), wecom2()] {
            check_outcome(&parse(text.as_bytes(), mid.as_deref(), &account, MAX), &account);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A recipient or open_kfid with an invisible character anywhere is refused, naming the
    /// field, the code point and its position; without one, the same id is accepted.
    #[test]
    fn ids_with_an_invisible_character_are_refused(
        head in "[0-9A-Za-z_中客-]{0,20}",
        tail in "[0-9A-Za-z_服-]{0,20}",
        c in prop::sample::select(vec![
            '\u{0}', '\n', '\r', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{ad}', '\u{200b}',
            '\u{200e}', '\u{202e}', '\u{2066}', '\u{2028}', '\u{2029}', '\u{feff}', '\u{e0001}',
        ]),
    ) {
        let at = head.chars().count();
        let id = format!("{head}{c}{tail}");
        let want = format!(
            "contains an invisible/format character U+{:04X} at {at}",
            u32::from(c)
        );
        let e = p(&chatbot(), &json!({"job_id": "j", "to": id, "message": {"text": "hi"}}))
            .expect_err("invisible character accepted in to");
        prop_assert_eq!(e.reason, "invalid_to");
        prop_assert_eq!(e.detail, format!("to: {want}"));
        prop_assert!(!valid_recipient(&id));
        let body = json!({"job_id": "j", "to": "wmU", "open_kfid": id, "message": {"text": "hi"}});
        let e = p(&wecom2(), &body).expect_err("invisible character accepted in open_kfid");
        prop_assert_eq!(e.reason, "invalid_open_kfid");
        prop_assert_eq!(e.detail, format!("open_kfid: {want}"));
        let visible = format!("{head}{tail}");
        if !visible.is_empty() {
            prop_assert!(valid_recipient(&visible));
        }
    }
}

/// The structured generator must actually reach the deep validation (not only fail early).
#[test]
fn structured_generator_reaches_valid_jobs() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = arb_body();
    let mut reasons = std::collections::BTreeSet::new();
    let mut oks = 0;
    for _ in 0..2_000 {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        match p(&wecom(), &body) {
            Ok(_) => oks += 1,
            Err(e) => {
                reasons.insert(e.reason);
            }
        }
    }
    assert!(oks > 0, "no generated body was accepted");
    assert!(reasons.len() >= 8, "only reached {reasons:?}");
}
