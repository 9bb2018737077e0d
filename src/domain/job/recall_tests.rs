//! Parsing of recall jobs (`kind: "recall"`): WeCom only, a valid `target_job_id`, no message.

use serde_json::{Value, json};

use super::tests::{MAX, chatbot, wecom};
use super::*;

fn parse_v(v: &Value, account: &impl crate::domain::account::AccountView) -> Result<Job, JobError> {
    parse(v.to_string().as_bytes(), None, account, MAX)
}

fn recall(target: Value) -> Value {
    json!({"job_id": "r1", "kind": "recall", "to": "wmU", "target_job_id": target})
}

#[test]
fn a_wecom_recall_names_its_target_and_defaults_the_open_kfid() {
    let job = parse_v(&recall(json!("s1")), &wecom()).unwrap();
    assert_eq!(
        job.kind,
        JobKind::Recall(Recall {
            target_job_id: "s1".into(),
            msgid: None,
        })
    );
    assert_eq!(job.kind.as_str(), "recall");
    assert_eq!(job.to, "wmU");
    assert_eq!(job.open_kfid.as_deref(), Some("wkA"));
    assert_eq!(job.message, None);
}

#[test]
fn a_recall_on_a_chatbot_account_is_refused_as_wecom_only() {
    let e = parse_v(&recall(json!("s1")), &chatbot()).unwrap_err();
    assert_eq!(e.reason, "recall_wecom_only");
    assert!(e.detail.contains("WeCom"), "{}", e.detail);
    // recorded under its id
    assert_eq!(e.job_id.as_deref(), Some("r1"));
}

#[test]
fn bad_targets_are_refused_with_a_reason_naming_the_field() {
    for target in [
        Value::Null,
        json!(""),
        json!("has space"),
        json!("x".repeat(129)),
        json!(42),
        json!("r1"),
    ] {
        let e = parse_v(&recall(target.clone()), &wecom()).unwrap_err();
        assert_eq!(e.reason, "invalid_recall_target", "{target}");
        assert!(e.detail.starts_with("target_job_id"), "{}", e.detail);
    }
    let mut no_target = recall(json!("s1"));
    no_target.as_object_mut().unwrap().remove("target_job_id");
    let e = parse_v(&no_target, &wecom()).unwrap_err();
    assert_eq!(e.reason, "invalid_recall_target");
}

#[test]
fn a_recall_carries_no_message_but_needs_a_recipient() {
    let mut with_message = recall(json!("s1"));
    with_message["message"] = json!({"text": "x"});
    let e = parse_v(&with_message, &wecom()).unwrap_err();
    assert_eq!(e.reason, "invalid_message");
    let mut no_to = recall(json!("s1"));
    no_to.as_object_mut().unwrap().remove("to");
    assert_eq!(parse_v(&no_to, &wecom()).unwrap_err().reason, "invalid_to");
}
