//! Chatbot transfers (kefustate/change): the four states with `expires`, the older on/off, and
//! the rejections naming `kefustate` or `expires`.

use serde_json::json;

use super::tests::{chatbot, p};
use super::*;
use crate::domain::chatbot_state::{ChatbotState, DEFAULT_EXPIRES_SECS};

fn transfer(body: serde_json::Value) -> Transfer {
    match p(&chatbot(), &body).map(|j| j.kind) {
        Ok(JobKind::Transfer(t)) => t,
        other => panic!("{body}: {other:?}"),
    }
}

#[test]
fn the_four_states_carry_expires_defaulting_to_1800() {
    for s in ChatbotState::ALL {
        let t =
            transfer(json!({"job_id": "t", "kind": "transfer", "to": "oU", "kefustate": s.name()}));
        assert_eq!(t.kefustate.as_deref(), Some(s.name()));
        assert_eq!(t.chatbot_state, Some(s));
        assert_eq!(t.expires, Some(DEFAULT_EXPIRES_SECS));
    }
    let t = transfer(
        json!({"job_id": "t", "kind": "transfer", "to": "oU", "kefustate": "needperson", "expires": 5}),
    );
    assert_eq!(
        (t.chatbot_state, t.expires),
        (Some(ChatbotState::NeedPerson), Some(5))
    );
    let t = transfer(
        json!({"job_id": "t", "kind": "transfer", "to": "oU", "kefustate": "asking", "expires": 86400}),
    );
    assert_eq!(t.expires, Some(86_400));
}

#[test]
fn on_and_off_stay_as_they_were() {
    let t = transfer(json!({"job_id": "t", "kind": "transfer", "to": "oU", "kefustate": "off"}));
    assert_eq!(t.kefustate.as_deref(), Some("off"));
    assert_eq!(t.chatbot_state, Some(ChatbotState::Asking));
    assert_eq!(t.expires, None);
}

#[test]
fn bad_states_and_expires_are_rejected_naming_the_field() {
    let c = chatbot();
    let cases = [
        (Reason::InvalidKefustate, json!({"kefustate": "NeedPerson"})),
        (Reason::InvalidKefustate, json!({"kefustate": "waiting"})),
        (Reason::InvalidKefustate, json!({"kefustate": 1})),
        (Reason::InvalidKefustate, json!({"kefustate": ""})),
        (Reason::InvalidKefustate, json!({"expires": 60})),
        (
            Reason::InvalidExpires,
            json!({"kefustate": "needperson", "expires": 0}),
        ),
        (
            Reason::InvalidExpires,
            json!({"kefustate": "needperson", "expires": -5}),
        ),
        (
            Reason::InvalidExpires,
            json!({"kefustate": "needperson", "expires": 86401}),
        ),
        (
            Reason::InvalidExpires,
            json!({"kefustate": "needperson", "expires": 1.5}),
        ),
        (
            Reason::InvalidExpires,
            json!({"kefustate": "needperson", "expires": "60"}),
        ),
        (
            Reason::InvalidExpires,
            json!({"kefustate": "needperson", "expires": 4294967297u64}),
        ),
        (
            Reason::InvalidExpires,
            json!({"kefustate": "on", "expires": 60}),
        ),
    ];
    for (reason, extra) in cases {
        let mut body = json!({"job_id": "t", "kind": "transfer", "to": "oU"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let err = p(&c, &body).expect_err(&body.to_string());
        assert_eq!(err.reason, reason.as_str(), "{body}: {}", err.detail);
        let field = if reason == Reason::InvalidExpires {
            "expires"
        } else {
            "kefustate"
        };
        assert!(err.detail.starts_with(field), "{body}: {}", err.detail);
        assert_eq!(err.job_id.as_deref(), Some("t"));
    }
}
