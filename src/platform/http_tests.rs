//! The answer head: which answers are judged how.

use super::*;

fn judge(body: &str) -> Option<CallResult> {
    Head::parse(body.as_bytes()).map(Head::result)
}

#[test]
fn answers_are_judged_by_errcode_errmsg_and_msgid() {
    assert_eq!(
        judge(r#"{"errcode":0,"errmsg":"ok","msgid":"m-1","other":[1,{"x":2}]}"#),
        Some(CallResult::Ok {
            msgid: Some("m-1".into())
        })
    );
    assert_eq!(
        judge(r#" {"errmsg":"ok"}"#),
        Some(CallResult::Ok { msgid: None }),
        "a missing errcode is success"
    );
    assert_eq!(
        judge(r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#),
        Some(CallResult::Errcode {
            code: 45009,
            msg: "api freq out of limit".into()
        })
    );
    assert_eq!(
        judge(r#"{"errcode":40003,"errmsg":7}"#),
        Some(CallResult::Errcode {
            code: 40003,
            msg: String::new()
        })
    );
}

#[test]
fn odd_answers_are_read_the_lenient_way() {
    // a repeated key: the typed parse refuses it, the Value parse keeps the last
    assert_eq!(
        judge(r#"{"errcode":0,"errcode":40001,"errmsg":"invalid credential"}"#),
        Some(CallResult::Errcode {
            code: 40001,
            msg: "invalid credential".into()
        })
    );
    // not an object: nothing says it failed
    assert_eq!(judge("[1,2,3]"), Some(CallResult::Ok { msgid: None }));
    // a string errcode or msgid is not a number / string of the right kind
    assert_eq!(
        judge(r#"{"errcode":"45009","msgid":12}"#),
        Some(CallResult::Ok { msgid: None })
    );
    assert_eq!(judge("<html>busy</html>"), None);
    assert_eq!(judge(r#"{"errcode":0"#), None);
    assert_eq!(json_of(b""), Value::Null);
    assert_eq!(json_of(br#"{"a":1}"#)["a"], 1);
}
