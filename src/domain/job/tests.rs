//! Unit tests of job parsing, and the test accounts the other test files of `job` share.

use serde_json::{Value, json};

use super::fields::clip_plain;
use super::*;
use crate::domain::account::AccountView;
use crate::domain::channel::Channel;
use crate::domain::chatbot_state::ChatbotState;

/// The worker's default `max_body_bytes`.
pub(super) const MAX: usize = 4 * 1024 * 1024;

/// An account as job parsing sees it (the settings' `AccountConfig` sits above the domain).
#[derive(Debug, Clone)]
pub(super) struct TestAccount {
    name: &'static str,
    channel: Channel,
    open_kfids: Vec<String>,
    appid: Option<&'static str>,
    default_channel: i64,
}

impl AccountView for TestAccount {
    fn name(&self) -> &str {
        self.name
    }
    fn channel(&self) -> Channel {
        self.channel
    }
    fn open_kfids(&self) -> &[String] {
        &self.open_kfids
    }
    fn appid(&self) -> Option<&str> {
        self.appid
    }
    fn default_channel(&self) -> i64 {
        self.default_channel
    }
}

pub(super) fn chatbot() -> TestAccount {
    TestAccount {
        name: "bot",
        channel: Channel::Chatbot,
        open_kfids: Vec::new(),
        appid: Some("PLATFORMAPPID01"),
        default_channel: 7,
    }
}
pub(super) fn wecom() -> TestAccount {
    TestAccount {
        name: "kf",
        channel: Channel::Wecom,
        open_kfids: vec!["wkA".into()],
        appid: None,
        default_channel: 0,
    }
}
pub(super) fn wecom2() -> TestAccount {
    TestAccount {
        name: "kf2",
        channel: Channel::Wecom,
        open_kfids: vec!["wkA".into(), "wkB".into()],
        appid: None,
        default_channel: 0,
    }
}

/// Every reason [`parse`] can return: the job-validation words of [`Reason`].
pub(super) const PARSE_REASONS: [Reason; 24] = [
    Reason::BodyTooLarge,
    Reason::InvalidUtf8,
    Reason::InvalidJson,
    Reason::MissingJobId,
    Reason::InvalidJobId,
    Reason::InvalidKind,
    Reason::InvalidTo,
    Reason::TooManyRecipients,
    Reason::MissingMessage,
    Reason::InvalidMessage,
    Reason::UnknownMsgtype,
    Reason::MessageOverLimit,
    Reason::MissingOpenKfid,
    Reason::InvalidOpenKfid,
    Reason::UnknownOpenKfid,
    Reason::InvalidGate,
    Reason::InvalidNotAfter,
    Reason::InvalidNotBefore,
    Reason::NotBeforeAfterNotAfter,
    Reason::InvalidChatbot,
    Reason::InvalidCode,
    Reason::InvalidTransfer,
    Reason::InvalidKefustate,
    Reason::InvalidExpires,
];

pub(super) fn p(account: &TestAccount, body: &Value) -> Result<Job, JobError> {
    parse(body.to_string().as_bytes(), None, account, MAX)
}
pub(super) fn ok(account: &TestAccount, body: Value) -> Job {
    p(account, &body).unwrap_or_else(|e| panic!("{body}: {e}"))
}

#[test]
fn job_id_validity() {
    assert!(valid_job_id("r-20261121-000123"));
    assert!(valid_job_id("a"));
    assert!(valid_job_id(&"x".repeat(32)));
    assert!(valid_job_id(&"x".repeat(128)));
    // A UUID (36 chars, hyphens), a ULID (26), namespaced ids.
    assert!(valid_job_id("0b9a8c8e-3f4a-4d39-9a3e-2a5d1f0c7b61"));
    assert!(valid_job_id("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
    assert!(valid_job_id("crm:ticket.42"));
    assert!(!valid_job_id(""));
    assert!(!valid_job_id(&"x".repeat(129)));
    assert!(!valid_job_id("a b"));
    assert!(!valid_job_id("a/b"));
    assert!(!valid_job_id("a%20"));
    assert!(!valid_job_id("é"));
}

#[test]
fn minimal_jobs_get_defaults() {
    let j = ok(
        &wecom(),
        json!({"job_id": "j1", "to": "wmU", "message": {"text": "hi"}}),
    );
    assert_eq!(j.kind, JobKind::Send);
    assert_eq!(j.kind.as_str(), "send");
    assert_eq!(
        j.open_kfid.as_deref(),
        Some("wkA"),
        "the only open_kfid is the default"
    );
    assert_eq!(j.gate, Gate::Bot);
    assert_eq!(j.not_after, None);
    assert_eq!(j.chatbot, ChatbotExtras::default());
    assert_eq!(
        j.message,
        Some(Message {
            msgtype: "text".into(),
            payload: json!({"content": "hi"})
        })
    );

    let j = ok(
        &chatbot(),
        json!({"job_id": "j1", "to": "oU", "message": {"text": "hi"},
        "open_kfid": "ignored-on-chatbot", "unknown_future_field": [1, 2]}),
    );
    assert_eq!(j.open_kfid, None);
    assert_eq!(j.message.unwrap().payload, json!("hi"));
}

#[test]
fn job_id_from_message_id_and_body_wins() {
    let body = json!({"to": "oU", "message": {"text": "hi"}}).to_string();
    let j = parse(body.as_bytes(), Some("amqp-id-1"), &chatbot(), MAX).unwrap();
    assert_eq!(j.job_id, "amqp-id-1");
    let body = json!({"job_id": "body-id", "to": "oU", "message": {"text": "hi"}}).to_string();
    let j = parse(body.as_bytes(), Some("amqp-id-1"), &chatbot(), MAX).unwrap();
    assert_eq!(j.job_id, "body-id");
}

#[test]
fn full_job_fields() {
    let j = ok(
        &wecom2(),
        json!({"job_id": "j1", "to": "wmU", "open_kfid": "wkB", "message": {"text": {"content": "x"}},
               "gate": "none", "not_after": "2026-11-21T18:00:00+08:00"}),
    );
    assert_eq!(j.open_kfid.as_deref(), Some("wkB"));
    assert_eq!(j.gate, Gate::None);
    assert_eq!(
        j.not_after.unwrap().to_rfc3339(),
        "2026-11-21T10:00:00+00:00",
        "not_after normalised to UTC"
    );
    assert_eq!(j.not_before, None, "no not_before: sent when taken");
    let j = ok(
        &wecom2(),
        json!({"job_id": "j1", "to": "wmU", "open_kfid": "wkB", "message": {"text": "x"},
               "not_before": "2026-11-21T18:00:00+08:00", "not_after": "2026-11-21T10:00:00Z"}),
    );
    assert_eq!(
        j.not_before.unwrap().to_rfc3339(),
        "2026-11-21T10:00:00+00:00",
        "not_before normalised to UTC; equal to not_after is allowed"
    );
    let j = ok(
        &chatbot(),
        json!({"job_id": "j1", "to": "oU", "message": {"text": "x"}, "chatbot": {
            "channel": 9, "event": "waiterEnter", "kefuname": "Ann", "kefuavatar": "https://a/b.png",
            "ans_node_name": "billing", "appid": "wxOA"}}),
    );
    assert_eq!(
        j.chatbot,
        ChatbotExtras {
            channel: Some(9),
            event: Some("waiterEnter".into()),
            kefuname: Some("Ann".into()),
            kefuavatar: Some("https://a/b.png".into()),
            ans_node_name: Some("billing".into()),
            appid: Some("wxOA".into()),
        }
    );
    // On a WeCom account the chatbot extras are ignored, even malformed.
    let j = ok(
        &wecom(),
        json!({"job_id": "j1", "to": "wmU", "message": {"text": "x"}, "chatbot": 5}),
    );
    assert_eq!(j.chatbot, ChatbotExtras::default());
}

#[test]
fn kinds() {
    let j = ok(
        &wecom(),
        json!({"job_id": "j1", "kind": "event_reply", "to": "wmU", "code": "C0DE",
        "message": {"msgmenu": {"head_content": "Rate us", "list": [
            {"type": "click", "click": {"id": "1", "content": "Good"}}]}}}),
    );
    assert_eq!(
        j.kind,
        JobKind::EventReply {
            code: "C0DE".into()
        }
    );
    assert_eq!(j.kind.as_str(), "event_reply");

    let j = ok(
        &wecom(),
        json!({"job_id": "j1", "kind": "transfer", "to": "wmU",
        "service_state": 3, "servicer_userid": "zhangsan"}),
    );
    assert_eq!(
        j.kind,
        JobKind::Transfer(Transfer {
            service_state: Some(3),
            servicer_userid: Some("zhangsan".into()),
            kefustate: None,
            chatbot_state: None,
            expires: None,
        })
    );
    assert_eq!(j.message, None);
    let j = ok(
        &wecom(),
        json!({"job_id": "j1", "kind": "transfer", "to": "wmU", "service_state": 4}),
    );
    assert_eq!(j.kind.as_str(), "transfer");

    let j = ok(
        &chatbot(),
        json!({"job_id": "j1", "kind": "transfer", "to": "oU", "kefustate": "on"}),
    );
    assert_eq!(
        j.kind,
        JobKind::Transfer(Transfer {
            service_state: None,
            servicer_userid: None,
            kefustate: Some("on".into()),
            chatbot_state: Some(ChatbotState::PersonServing),
            expires: None,
        })
    );

    let j = ok(
        &chatbot(),
        json!({"job_id": "B1", "kind": "broadcast", "to": ["u1", "u2", "u1", ""],
        "message": {"text": "news!"}}),
    );
    assert_eq!(
        j.kind,
        JobKind::Broadcast {
            recipients: vec!["u1".into(), "u2".into(), "u1".into(), "".into()]
        },
        "recipients kept verbatim"
    );
    assert_eq!(j.to, "");
    assert_eq!(j.kind.as_str(), "broadcast");
}

/// One concrete bad input per reason word: (account, body, expected reason, job_id expected).
#[test]
fn every_reason() {
    let c = chatbot();
    let w = wecom();
    let w2 = wecom2();
    let big_recipients: Vec<String> = (0..=MAX_BROADCAST_RECIPIENTS)
        .map(|i| format!("u{i}"))
        .collect();
    #[rustfmt::skip]
    let cases: Vec<(Reason, &TestAccount, Value)> = vec![
        (Reason::MissingJobId, &c, json!({"to": "oU", "message": {"text": "hi"}})),
        (Reason::MissingJobId, &c, json!({"job_id": null, "to": "oU", "message": {"text": "hi"}})),
        (Reason::InvalidJobId, &c, json!({"job_id": "has space", "to": "oU", "message": {"text": "hi"}})),
        (Reason::InvalidJobId, &c, json!({"job_id": "x".repeat(129), "to": "oU", "message": {"text": "hi"}})),
        (Reason::InvalidJobId, &c, json!({"job_id": 12, "to": "oU", "message": {"text": "hi"}})),
        (Reason::InvalidJobId, &c, json!({"job_id": "", "to": "oU", "message": {"text": "hi"}})),
        (Reason::InvalidKind, &c, json!({"job_id": "j", "kind": "shout", "to": "oU", "message": {"text": "hi"}})),
        (Reason::InvalidKind, &c, json!({"job_id": "j", "kind": 1, "to": "oU", "message": {"text": "hi"}})),
        (Reason::InvalidKind, &c, json!({"job_id": "j", "kind": "event_reply", "code": "c", "to": "oU", "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "to": "", "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "to": 42, "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "to": "o".repeat(129), "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "to": "oU\n", "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "to": "oU\u{200b}", "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "to": "oU\u{202e}x", "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "to": "\u{feff}oU", "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "to": ["a"], "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "kind": "broadcast", "to": "u1", "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "kind": "broadcast", "to": [], "message": {"text": "hi"}})),
        (Reason::InvalidTo, &c, json!({"job_id": "j", "kind": "broadcast", "to": ["u1", 2], "message": {"text": "hi"}})),
        (Reason::TooManyRecipients, &c, json!({"job_id": "j", "kind": "broadcast", "to": big_recipients, "message": {"text": "hi"}})),
        (Reason::MissingMessage, &c, json!({"job_id": "j", "to": "oU"})),
        (Reason::MissingMessage, &c, json!({"job_id": "j", "to": "oU", "message": null})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": "hi"})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "a", "image": {"url": "u"}}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"text": ""}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "a\u{0}b"}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"news": {"articles": []}}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"news": {"articles": [{"title": "t"}]}}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"image": {}}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"miniprogrampage": {"title": "t", "appid": "wx"}}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"miniprogrampage": {"title": "t", "appid": "wx", "pagepath": "p"}}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": []}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": [{"multimsg": ["a"]}]}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": [3]}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": ["{not json"]}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": ["{\"image\":{}}"]}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "to": "oU", "message": {"text": " {\"news\":{}}"}})),
        (Reason::InvalidMessage, &c, json!({"job_id": "j", "kind": "transfer", "to": "oU", "kefustate": "on", "message": {"text": "x"}})),
        (Reason::InvalidMessage, &w, json!({"job_id": "j", "to": "wmU", "message": {"text": 5}})),
        (Reason::InvalidMessage, &w, json!({"job_id": "j", "to": "wmU", "message": {"image": {"media_id": ""}}})),
        (Reason::InvalidMessage, &w, json!({"job_id": "j", "to": "wmU", "message": {"link": {"title": "t", "url": "u"}}})),
        (Reason::InvalidMessage, &w, json!({"job_id": "j", "to": "wmU", "message": {"location": {"latitude": 91, "longitude": 0}}})),
        (Reason::InvalidMessage, &w, json!({"job_id": "j", "to": "wmU", "message": {"location": {"latitude": 0, "longitude": "1"}}})),
        (Reason::InvalidMessage, &w, json!({"job_id": "j", "to": "wmU", "message": {"msgmenu": {"list": [{"type": "bogus"}]}}})),
        (Reason::InvalidMessage, &w, json!({"job_id": "j", "to": "wmU", "message": {"msgmenu": {}}})),
        (Reason::InvalidMessage, &w, json!({"job_id": "j", "to": "wmU", "message": {"business_card": {"userid": 7}}})),
        (Reason::UnknownMsgtype, &c, json!({"job_id": "j", "to": "oU", "message": {"link": {}}})),
        (Reason::UnknownMsgtype, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": [{"voice": {}}]}})),
        (Reason::UnknownMsgtype, &w, json!({"job_id": "j", "to": "wmU", "message": {"news": {}}})),
        (Reason::UnknownMsgtype, &w, json!({"job_id": "j", "kind": "event_reply", "code": "c", "to": "wmU", "message": {"image": {"media_id": "m"}}})),
        (Reason::MessageOverLimit, &w, json!({"job_id": "j", "to": "wmU", "message": {"text": "x".repeat(2049)}})),
        (Reason::MessageOverLimit, &w, json!({"job_id": "j", "to": "wmU", "message": {"link": {"title": "t".repeat(129), "url": "u", "thumb_media_id": "m"}}})),
        (Reason::MessageOverLimit, &w, json!({"job_id": "j", "to": "wmU", "message": {"msgmenu": {"list": vec![json!({"type": "text", "text": {"content": "a"}}); 11]}}})),
        (Reason::MessageOverLimit, &w, json!({"job_id": "j", "to": "wmU", "message": {"msgmenu": {"head_content": "h".repeat(1025)}}})),
        (Reason::MessageOverLimit, &w, json!({"job_id": "j", "to": "wmU", "message": {"miniprogram": {"appid": "wx", "title": "t".repeat(65), "thumb_media_id": "m", "pagepath": "p"}}})),
        (Reason::MessageOverLimit, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "x".repeat(4097)}})),
        (Reason::MessageOverLimit, &c, json!({"job_id": "j", "to": "oU", "message": {"news": {"articles": vec![json!({"title": "t", "url": "u"}); 9]}}})),
        (Reason::MessageOverLimit, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": vec![json!("a"); 11]}})),
        (Reason::MissingOpenKfid, &w2, json!({"job_id": "j", "to": "wmU", "message": {"text": "hi"}})),
        (Reason::InvalidOpenKfid, &w, json!({"job_id": "j", "to": "wmU", "open_kfid": 3, "message": {"text": "hi"}})),
        (Reason::InvalidOpenKfid, &w, json!({"job_id": "j", "to": "wmU", "open_kfid": "", "message": {"text": "hi"}})),
        (Reason::UnknownOpenKfid, &w, json!({"job_id": "j", "to": "wmU", "open_kfid": "wkZ", "message": {"text": "hi"}})),
        (Reason::InvalidGate, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "gate": "human"})),
        (Reason::InvalidGate, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "gate": true})),
        (Reason::InvalidNotAfter, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "not_after": "tomorrow"})),
        (Reason::InvalidNotAfter, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "not_after": 1700000000})),
        (Reason::InvalidNotBefore, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "not_before": "in an hour"})),
        (Reason::InvalidNotBefore, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "not_before": "2030-01-01T09:00:00"})),
        (Reason::InvalidNotBefore, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "not_before": 1700000000})),
        (Reason::InvalidNotBefore, &w, json!({"job_id": "j", "kind": "event_reply", "code": "c", "to": "wmU", "message": {"text": "hi"}, "not_before": "2030-01-01T00:00:00Z"})),
        (Reason::NotBeforeAfterNotAfter, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "not_before": "2030-01-01T10:00:01+08:00", "not_after": "2030-01-01T02:00:00Z"})),
        (Reason::InvalidChatbot, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "chatbot": "x"})),
        (Reason::InvalidChatbot, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "chatbot": {"event": "waiterDance"}})),
        (Reason::InvalidChatbot, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "chatbot": {"channel": "7"}})),
        (Reason::InvalidChatbot, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "chatbot": {"channel": -1}})),
        (Reason::InvalidChatbot, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "chatbot": {"kefuname": 1}})),
        (Reason::InvalidCode, &w, json!({"job_id": "j", "kind": "event_reply", "to": "wmU", "message": {"text": "hi"}})),
        (Reason::InvalidCode, &w, json!({"job_id": "j", "kind": "event_reply", "code": "", "to": "wmU", "message": {"text": "hi"}})),
        (Reason::InvalidCode, &w, json!({"job_id": "j", "kind": "event_reply", "code": 1, "to": "wmU", "message": {"text": "hi"}})),
        (Reason::InvalidTransfer, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU"})),
        (Reason::InvalidTransfer, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU", "service_state": 0})),
        (Reason::InvalidTransfer, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU", "service_state": 5})),
        (Reason::InvalidTransfer, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU", "service_state": "2"})),
        (Reason::InvalidTransfer, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU", "service_state": 3})),
        (Reason::InvalidTransfer, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU", "service_state": 2, "servicer_userid": "z"})),
        (Reason::InvalidTransfer, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU", "service_state": 3, "servicer_userid": "z\u{2028}"})),
        (Reason::InvalidKefustate, &c, json!({"job_id": "j", "kind": "transfer", "to": "oU", "kefustate": "maybe"})),
        (Reason::InvalidKefustate, &c, json!({"job_id": "j", "kind": "transfer", "to": "oU"})),
        (Reason::InvalidExpires, &c, json!({"job_id": "j", "kind": "transfer", "to": "oU", "kefustate": "needperson", "expires": 0})),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (want, account, body) in cases {
        let shown = clip_plain(&body.to_string());
        let e = p(account, &body).expect_err(&shown);
        assert_eq!(e.reason, want.as_str(), "{shown}: {e}");
        let id_expected = !matches!(want, Reason::MissingJobId | Reason::InvalidJobId);
        assert_eq!(
            e.job_id.is_some(),
            id_expected,
            "{shown}: job_id {:?}",
            e.job_id
        );
        if let Some(id) = &e.job_id {
            assert_eq!(id, "j");
        }
        assert!(
            e.detail.chars().count() < 300,
            "detail too long: {}",
            e.detail
        );
        seen.insert(want);
    }
    // The three pre-JSON reasons are covered in `unreadable_bodies`.
    for r in PARSE_REASONS {
        if ![
            Reason::BodyTooLarge,
            Reason::InvalidUtf8,
            Reason::InvalidJson,
        ]
        .contains(&r)
        {
            assert!(seen.contains(&r), "no test case for {r}");
        }
    }
}

#[test]
fn unreadable_bodies() {
    let c = chatbot();
    let good = json!({"job_id": "j1", "to": "oU", "message": {"text": "hi"}}).to_string();
    let e = parse(good.as_bytes(), Some("mid-1"), &c, good.len() - 1).unwrap_err();
    assert_eq!(e.reason, "body_too_large");
    assert_eq!(
        e.detail,
        format!("body: {} bytes, limit {}", good.len(), good.len() - 1)
    );
    assert_eq!(
        e.job_id.as_deref(),
        Some("mid-1"),
        "the message_id stands in"
    );
    assert!(
        parse(good.as_bytes(), None, &c, good.len()).is_ok(),
        "limit is inclusive"
    );

    let e = parse(b"{\"job_id\": \"j\xff\"}", None, &c, MAX).unwrap_err();
    assert_eq!(
        (e.reason, e.detail.as_str()),
        ("invalid_utf8", "body: invalid UTF-8 at byte 13")
    );
    assert_eq!(e.job_id, None);

    let e = parse(b"{\"job_id\": ", Some("not valid!"), &c, MAX).unwrap_err();
    assert_eq!(e.reason, "invalid_json");
    assert!(
        e.detail.starts_with("body: EOF while parsing"),
        "{}",
        e.detail
    );
    assert_eq!(e.job_id, None, "an invalid message_id is not used");

    let e = parse(b"[1,2]", None, &c, MAX).unwrap_err();
    assert_eq!(
        (e.reason, e.detail.as_str()),
        ("invalid_json", "body: expected a JSON object, got an array")
    );

    // A huge malformed body is not echoed.
    let junk = format!("{{\"a\": \"{}", "z".repeat(100_000));
    let e = parse(junk.as_bytes(), None, &c, 1 << 20).unwrap_err();
    assert_eq!(e.reason, "invalid_json");
    assert!(e.detail.len() < 200, "{}", e.detail);

    // A byte order mark is tolerated.
    let bom = format!("\u{feff}{good}");
    assert_eq!(parse(bom.as_bytes(), None, &c, MAX).unwrap().job_id, "j1");
}

#[test]
fn details_name_field_and_limit() {
    let detail = |a: &TestAccount, body: Value| p(a, &body).unwrap_err().detail;
    assert_eq!(
        detail(
            &wecom(),
            json!({"job_id": "j", "to": "u", "message": {"text": "x".repeat(2100)}})
        ),
        "message.text.content: 2100 bytes, limit 2048"
    );
    assert_eq!(
        detail(
            &wecom(),
            json!({"job_id": "j", "to": "u", "message": {"text": {"content": "x".repeat(2100)}}})
        ),
        "message.text.content: 2100 bytes, limit 2048"
    );
    assert_eq!(
        detail(
            &wecom(),
            json!({"job_id": "j", "to": "u", "message": {"msgmenu": {"list": [
            {"type": "click", "click": {"content": "c".repeat(129)}}]}}})
        ),
        "message.msgmenu.list[0].click.content: 129 bytes, limit 128"
    );
    assert_eq!(
        detail(
            &wecom(),
            json!({"job_id": "j", "to": "u", "message": {"location": {"latitude": -90.5, "longitude": 0}}})
        ),
        "message.location.latitude: -90.5: out of range -90..90"
    );
    assert_eq!(
        detail(
            &chatbot(),
            json!({"job_id": "j", "to": "u", "message": {"multimsg": ["a", {"news": {"articles": [{"url": "u"}]}}]}})
        ),
        "message.multimsg[1].news.articles[0].title: missing"
    );
    assert_eq!(
        detail(
            &chatbot(),
            json!({"job_id": "j", "kind": "broadcast", "to": ["a", null], "message": {"text": "x"}})
        ),
        "to[1]: expected a string, got null"
    );
    assert_eq!(
        detail(
            &wecom(),
            json!({"job_id": "j", "to": "u", "open_kfid": "wkZ", "message": {"text": "x"}})
        ),
        "open_kfid: \"wkZ\" is not one of account kf's open_kfids"
    );
    let long_kind = "k".repeat(5000);
    let d = detail(
        &chatbot(),
        json!({"job_id": "j", "kind": long_kind, "to": "u"}),
    );
    assert!(
        d.starts_with("kind: \"kkk") && d.contains('…') && d.len() < 200,
        "{d}"
    );
}

#[test]
fn accepts_every_wecom_type() {
    let cases = [
        json!({"text": "plain"}),
        json!({"text": {"content": "x".repeat(2048)}}),
        json!({"image": {"media_id": "MEDIA"}}),
        json!({"voice": {"media_id": "MEDIA"}}),
        json!({"video": {"media_id": "MEDIA"}}),
        json!({"file": {"media_id": "MEDIA"}}),
        json!({"link": {"title": "t".repeat(128), "desc": "d", "url": "https://x", "thumb_media_id": "M"}}),
        json!({"miniprogram": {"appid": "wx1", "title": "t", "thumb_media_id": "M", "pagepath": "p/i"}}),
        json!({"msgmenu": {"head_content": "Rate us", "tail_content": "Thanks", "list": [
            {"type": "click", "click": {"id": "101", "content": "Good"}},
            {"type": "view", "view": {"url": "https://x", "content": "Site"}},
            {"type": "miniprogram", "miniprogram": {"appid": "wx1", "pagepath": "p", "content": "App"}},
            {"type": "text", "text": {"content": "plain", "no_newline": 1}}]}}),
        json!({"location": {"name": "HQ", "address": "1 Rd", "latitude": 22.5, "longitude": -180}}),
        json!({"business_card": {"userid": "zhangsan"}}),
        json!({"ca_link": {"link_url": "https://work.weixin.qq.com/ca/x"}}),
    ];
    let mut types = Vec::new();
    for message in cases {
        let j = ok(
            &wecom(),
            json!({"job_id": "j", "to": "wmU", "message": message}),
        );
        let m = j.message.unwrap();
        if m.msgtype != "text" {
            assert_eq!(m.payload, message[&m.msgtype], "payload kept verbatim");
        }
        types.push(m.msgtype);
    }
    types.dedup();
    assert_eq!(types, WECOM_MSGTYPES);
    // event_reply takes text and msgmenu.
    for message in [
        json!({"text": "hi"}),
        json!({"msgmenu": {"head_content": "h"}}),
    ] {
        ok(
            &wecom(),
            json!({"job_id": "j", "kind": "event_reply", "code": "c", "to": "u", "message": message}),
        );
    }
}

#[test]
fn accepts_every_chatbot_type() {
    let news = json!({"articles": [{"title": "T", "description": "D", "url": "https://x", "picurl": "https://p"}]});
    let cases = [
        (
            json!({"text": "hi <a href=\"weixin://bizmsgmenu?msgmenucontent=Yes&msgmenuid=1\">Yes</a>"}),
            None,
        ),
        (json!({"text": {"content": "hi"}}), Some(json!("hi"))),
        (json!({"news": news}), None),
        (json!({"image": {"url": "https://img"}}), None),
        (json!({"image": {"media_id": "M"}}), None),
        (
            json!({"miniprogrampage": {"title": "T", "appid": "wx1", "pagepath": "p", "thumb_url": "https://t"}}),
            None,
        ),
        (
            json!({"multimsg": ["first", {"text": "second"}, {"news": news}, "{\"image\":{\"url\":\"u\"}}"]}),
            Some(
                json!([{"text": "first"}, {"text": "second"}, {"news": news}, {"image": {"url": "u"}}]),
            ),
        ),
    ];
    let mut types = Vec::new();
    for (message, normalized) in cases {
        let j = ok(
            &chatbot(),
            json!({"job_id": "j", "to": "oU", "message": message}),
        );
        let m = j.message.unwrap();
        let want = normalized.unwrap_or_else(|| message[&m.msgtype].clone());
        assert_eq!(m.payload, want);
        types.push(m.msgtype);
    }
    types.dedup();
    assert_eq!(types, CHATBOT_MSGTYPES);
}

#[test]
fn derive_job_id_is_stable_valid_and_distinct() {
    let a = derive_job_id("B-2026-11", "oUser1");
    assert_eq!(a, derive_job_id("B-2026-11", "oUser1"));
    // Pinned: this value must never change, or re-processing a broadcast would re-send.
    assert_eq!(a, "bcc64f1cc0d4d3a28de72142b86e2c11");
    assert_eq!(a.len(), 32);
    assert!(valid_job_id(&a));
    assert_ne!(a, derive_job_id("B-2026-11", "oUser2"));
    assert_ne!(a, derive_job_id("B-2026-12", "oUser1"));
    let ids: std::collections::HashSet<String> = (0..10_000)
        .map(|i| derive_job_id("B", &format!("u{i}")))
        .collect();
    assert_eq!(ids.len(), 10_000);
    assert!(valid_job_id(&derive_job_id("B", "")));
}

#[test]
fn fan_out_copies_everything_but_recipient_and_id() {
    let b = ok(
        &wecom2(),
        json!({"job_id": "B1", "kind": "broadcast", "to": ["u1", "u2"], "open_kfid": "wkB",
               "message": {"text": "sale"}, "gate": "none", "not_after": "2030-01-01T00:00:00Z",
               "not_before": "2029-12-31T20:00:00Z"}),
    );
    let one = fan_out(&b, "u2");
    assert_eq!(one.job_id, derive_job_id("B1", "u2"));
    assert_eq!(one.kind, JobKind::Send);
    assert_eq!(one.to, "u2");
    assert_eq!(one.open_kfid.as_deref(), Some("wkB"));
    assert_eq!(one.message, b.message);
    assert_eq!(one.gate, Gate::None);
    assert_eq!(one.not_after, b.not_after);
    assert_eq!(one.not_before, b.not_before);
    assert!(one.not_before.is_some());
    assert_eq!(one.chatbot, b.chatbot);
}

#[test]
fn invisible_characters_in_ids_are_refused_naming_the_field_the_character_and_where() {
    let c = chatbot();
    let w2 = wecom2();
    let cases: [(&TestAccount, Value, &str, &str); 6] = [
        (
            &c,
            json!({"job_id": "j", "to": "oUs\u{202e}r", "message": {"text": "hi"}}),
            "invalid_to",
            "to: contains an invisible/format character U+202E at 3",
        ),
        (
            &c,
            json!({"job_id": "j", "to": "oU\u{200b}", "message": {"text": "hi"}}),
            "invalid_to",
            "to: contains an invisible/format character U+200B at 2",
        ),
        (
            &c,
            json!({"job_id": "j", "to": "中\u{1b}[2J", "message": {"text": "hi"}}),
            "invalid_to",
            "to: contains an invisible/format character U+001B at 1",
        ),
        (
            &w2,
            json!({"job_id": "j", "to": "wmU", "open_kfid": "wkA\u{feff}", "message": {"text": "hi"}}),
            "invalid_open_kfid",
            "open_kfid: contains an invisible/format character U+FEFF at 3",
        ),
        (
            &c,
            json!({"job_id": "j\u{200b}", "to": "oU", "message": {"text": "hi"}}),
            "invalid_job_id",
            "job_id: \"j\\u{200b}\": must be 1-128 chars of [0-9A-Za-z_.:-]",
        ),
        (
            &c,
            json!({"job_id": "j", "to": "o U", "message": {"text": "hi"}}),
            "invalid_to",
            "to: \"o U\": contains whitespace",
        ),
    ];
    for (account, body, reason, detail) in cases {
        let e = p(account, &body).expect_err(&body.to_string());
        assert_eq!((e.reason, e.detail.as_str()), (reason, detail), "{body}");
    }
    // The ids the platforms hand out, CJK names and emoji stay valid.
    for to in ["oUser-openid_28chars-xxxxxxx", "wmXXXX", "客服小王", "😀"] {
        ok(
            &c,
            json!({"job_id": "j", "to": to, "message": {"text": "hi"}}),
        );
    }
}
