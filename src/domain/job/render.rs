//! A validated job rendered into the platform's request: the chatbot's plaintext XML (which the
//! chatbot channel encrypts) and WeCom's JSON bodies.

use serde_json::{Map, Value, json};

use super::model::{Job, JobKind, Message};
use crate::domain::account::AccountView;
use crate::domain::ids::wecom_msgid;

// The one XML writer of the tree; `]]>` inside a value is split across two CDATA sections and
// characters XML cannot carry are dropped ([`super::parse`] already rejects them in the fields
// it validates; this guards hand-built jobs).
pub(super) use crate::xml::{char_ok as xml_char_ok, push_cdata_element};

/// The sendmsg `msg` string of one chatbot message: a text is the string itself; a rich message
/// is the JSON string `{"<type>": payload}`; a multimsg is the JSON string
/// `{"multimsg": [...]}` whose items are JSON values inside the one array: a text item the bare
/// string, a rich item its object (`{"image": {...}}`), as the platform's own combined answers
/// show them (`{"multimsg": ["Hello,", {"image": {...}}, {"miniprogrampage": {...}}]}`). A rich
/// item as a JSON-encoded *string* would be shown as text.
fn chatbot_msg(msgtype: &str, payload: &Value) -> String {
    match (msgtype, payload) {
        ("text", Value::String(s)) => s.clone(),
        ("text", Value::Object(map)) => match map.get("content") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        },
        ("multimsg", Value::Array(items)) => {
            let parts: Vec<Value> = items.iter().map(multimsg_item).collect();
            json!({ "multimsg": parts }).to_string()
        }
        (ty, payload) => {
            let mut one = Map::new();
            one.insert(ty.to_owned(), payload.clone());
            Value::Object(one).to_string()
        }
    }
}

/// One rendered `multimsg` item. Validated items are one-key objects (see [`Message`]): a text
/// becomes its bare string, a rich item stays the object `{"<type>": payload}`.
fn multimsg_item(item: &Value) -> Value {
    match item {
        Value::Object(map) if map.len() == 1 => match map.iter().next() {
            Some((ty, inner)) if ty == "text" => Value::String(chatbot_msg(ty, inner)),
            _ => item.clone(),
        },
        other => other.clone(),
    }
}

/// The `<appid>` of a chatbot job's sendmsg / kefustate plaintext: the job's `chatbot.appid`,
/// else the account's `oa_appid` (the Official Account or Mini Program appid), else none (the
/// element is left out, as channels 7 and 9 allow; [`super::parse`] rejects a job for channel
/// 0, 5 or 6 that has neither). Never the platform APPID: that is the WXBizMsgCrypt receive id.
pub fn chatbot_appid<'a>(job: &'a Job, account: &'a impl AccountView) -> Option<&'a str> {
    job.chatbot.appid.as_deref().or(account.oa_appid())
}

/// Chatbot sendmsg plaintext XML:
/// `<xml>[<appid/>]<openid/><msg/><channel>N</channel>[<event/><kefuname/><kefuavatar/><ans_node_name/>]</xml>`,
/// strings in CDATA.
///
/// `<appid>`: see [`chatbot_appid`]. `channel`: `job.chatbot.channel`, else
/// `account.default_channel`.
pub fn chatbot_sendmsg_xml(job: &Job, account: &impl AccountView) -> String {
    let extras = &job.chatbot;
    let msg = job
        .message
        .as_ref()
        .map(|m| chatbot_msg(&m.msgtype, &m.payload))
        .unwrap_or_default();
    let channel = extras.channel.unwrap_or(account.default_channel());

    let mut out = String::with_capacity(128 + msg.len());
    out.push_str("<xml>");
    if let Some(appid) = chatbot_appid(job, account) {
        push_cdata_element(&mut out, "appid", appid);
    }
    push_cdata_element(&mut out, "openid", &job.to);
    push_cdata_element(&mut out, "msg", &msg);
    out.push_str(&format!("<channel>{channel}</channel>"));
    for (name, value) in [
        ("event", &extras.event),
        ("kefuname", &extras.kefuname),
        ("kefuavatar", &extras.kefuavatar),
        ("ans_node_name", &extras.ans_node_name),
    ] {
        if let Some(v) = value {
            push_cdata_element(&mut out, name, v);
        }
    }
    out.push_str("</xml>");
    out
}

/// Chatbot kefustate/get plaintext XML: appid (when there is one, see [`chatbot_appid`]),
/// openid, `type` = `all` (the answer then carries the four-state `status` besides the on/off
/// `kefustate`: see [`crate::domain::chatbot_state`]).
pub fn chatbot_kefustate_get_xml(appid: Option<&str>, openid: &str) -> String {
    let mut out = String::from("<xml>");
    if let Some(appid) = appid {
        push_cdata_element(&mut out, "appid", appid);
    }
    push_cdata_element(&mut out, "openid", openid);
    push_cdata_element(&mut out, "type", "all");
    out.push_str("</xml>");
    out
}

/// Chatbot kefustate/change plaintext XML: appid (when there is one, see [`chatbot_appid`]),
/// openid, kefustate (one of the four states, or `on` | `off`), and `expires` (seconds) when
/// given.
pub fn chatbot_kefustate_change_xml(
    appid: Option<&str>,
    openid: &str,
    kefustate: &str,
    expires: Option<u32>,
) -> String {
    let mut out = String::from("<xml>");
    if let Some(appid) = appid {
        push_cdata_element(&mut out, "appid", appid);
    }
    push_cdata_element(&mut out, "openid", openid);
    push_cdata_element(&mut out, "kefustate", kefustate);
    if let Some(secs) = expires {
        out.push_str(&format!("<expires>{secs}</expires>"));
    }
    out.push_str("</xml>");
    out
}

/// A WeCom request body serialized straight from the job: string fields, then `msgtype` and
/// the `<msgtype>` payload. (Building a `serde_json::Value` map first and cloning the payload
/// into it was ~3 % of a loaded worker.) The msgtypes are validated WeCom names, so the
/// payload's key never collides with a field name.
struct WecomBody<'a> {
    fields: &'a [(&'static str, &'a str)],
    message: Option<&'a Message>,
}

impl serde::Serialize for WecomBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.fields {
            map.serialize_entry(k, v)?;
        }
        if let Some(m) = self.message {
            map.serialize_entry("msgtype", &m.msgtype)?;
            map.serialize_entry(&m.msgtype, &m.payload)?;
        }
        map.end()
    }
}

impl WecomBody<'_> {
    fn to_vec(&self) -> Vec<u8> {
        // Strings and JSON values only: serializing them cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// WeCom kf/send_msg body: `{"touser", "open_kfid", "msgid", "msgtype", "<msgtype>": payload}`;
/// `msgid` is [`wecom_msgid`] of the job id (the id itself when it fits WeCom's 32 chars).
pub fn wecom_send_body(job: &Job) -> Vec<u8> {
    WecomBody {
        fields: &[
            ("touser", &job.to),
            ("open_kfid", job.open_kfid.as_deref().unwrap_or("")),
            ("msgid", &wecom_msgid(&job.job_id)),
        ],
        message: job.message.as_ref(),
    }
    .to_vec()
}

/// WeCom kf/send_msg_on_event body: `{"code", "msgid", "msgtype", "<msgtype>": payload}`
/// (`msgid` as in [`wecom_send_body`]).
pub fn wecom_event_body(job: &Job) -> Vec<u8> {
    let code = match &job.kind {
        JobKind::EventReply { code } => code.as_str(),
        _ => "",
    };
    WecomBody {
        fields: &[("code", code), ("msgid", &wecom_msgid(&job.job_id))],
        message: job.message.as_ref(),
    }
    .to_vec()
}
