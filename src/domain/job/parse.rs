//! [`parse`]: one AMQP message body into a [`Job`] for one account, the top-level fields in the
//! order of the module docs of [`super`]; the message payloads are checked by `wecom.rs` and
//! `chatbot.rs`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::chatbot::{chatbot_extras_of, chatbot_payload, chatbot_transfer_of};
use super::fields::{R, check_visible, clip, clip_plain, reject, show, type_name};
use super::model::{ChatbotExtras, Gate, Job, JobError, JobKind, Message, Recall, Transfer};
use super::wecom::{WECOM_EVENT_MSGTYPES, WECOM_MSGTYPES, recall_target_of, wecom_payload};
use crate::domain::account::AccountView;
use crate::domain::channel::Channel;
use crate::domain::ids::{MAX_RECIPIENT_CHARS, valid_job_id, valid_recipient};
use crate::domain::reason::Reason;
use crate::domain::service_state::ServiceState;

/// Recipients of one broadcast job (CONTRACT.md §6).
pub const MAX_BROADCAST_RECIPIENTS: usize = 100_000;

/// Parse and validate one AMQP message body for `account`. `message_id` is the AMQP message_id
/// property, used as job_id when the body has none. Never panics on any input.
pub fn parse(
    body: &[u8],
    message_id: Option<&str>,
    account: &impl AccountView,
    max_body: usize,
) -> Result<Job, JobError> {
    let early = |reason: Reason, detail: String| JobError {
        reason: reason.as_str(),
        detail,
        job_id: message_id.filter(|m| valid_job_id(m)).map(str::to_owned),
    };
    if body.len() > max_body {
        let n = body.len();
        return Err(early(
            Reason::BodyTooLarge,
            format!("body: {n} bytes, limit {max_body}"),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        let at = e.valid_up_to();
        early(
            Reason::InvalidUtf8,
            format!("body: invalid UTF-8 at byte {at}"),
        )
    })?;
    // A UTF-8 byte order mark is harmless; some producers write one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Value = serde_json::from_str(text).map_err(|e| {
        early(
            Reason::InvalidJson,
            format!("body: {}", clip_plain(&e.to_string())),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(early(
            Reason::InvalidJson,
            format!("body: expected a JSON object, got {}", type_name(&value)),
        ));
    };
    let job_id = job_id_of(&obj, message_id).map_err(|r| JobError {
        reason: r.reason.as_str(),
        detail: r.detail,
        job_id: None,
    })?;
    parse_fields(&obj, &job_id, account).map_err(|r| JobError {
        reason: r.reason.as_str(),
        detail: r.detail,
        job_id: Some(job_id),
    })
}

fn job_id_of(obj: &Map<String, Value>, message_id: Option<&str>) -> R<String> {
    const RULE: &str = "must be 1-128 chars of [0-9A-Za-z_.:-]";
    match obj.get("job_id") {
        None | Some(Value::Null) => match message_id {
            None | Some("") => reject(
                Reason::MissingJobId,
                "job_id: missing (set the body's job_id or the AMQP message_id property)",
            ),
            Some(m) if valid_job_id(m) => Ok(m.to_owned()),
            Some(m) => reject(
                Reason::InvalidJobId,
                format!(
                    "message_id property (no job_id in the body): {}: {RULE}",
                    clip(m)
                ),
            ),
        },
        Some(Value::String(s)) if valid_job_id(s) => Ok(s.clone()),
        Some(Value::String(s)) => {
            reject(Reason::InvalidJobId, format!("job_id: {}: {RULE}", clip(s)))
        }
        Some(other) => reject(
            Reason::InvalidJobId,
            format!("job_id: expected a string, got {}", type_name(other)),
        ),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KindTag {
    Send,
    EventReply,
    Transfer,
    Broadcast,
    Recall,
}

fn parse_fields(obj: &Map<String, Value>, job_id: &str, account: &dyn AccountView) -> R<Job> {
    let channel = account.channel();
    let kind = kind_of(obj.get("kind"), account)?;

    let (to, recipients) = if kind == KindTag::Broadcast {
        (String::new(), recipients_of(obj.get("to"))?)
    } else {
        (recipient_of(obj.get("to"))?, Vec::new())
    };

    let open_kfid = match channel {
        Channel::Wecom => Some(open_kfid_of(obj.get("open_kfid"), account)?),
        Channel::Chatbot => None,
    };

    let message = match (kind, obj.get("message")) {
        (KindTag::Transfer | KindTag::Recall, None | Some(Value::Null)) => None,
        (KindTag::Recall, Some(_)) => {
            return reject(
                Reason::InvalidMessage,
                "message: a recall job carries no message (it names the sent job: target_job_id)",
            );
        }
        (KindTag::Transfer, Some(_)) => {
            // Sending it would be silently skipped; say so instead.
            return reject(
                Reason::InvalidMessage,
                "message: a transfer job carries no message (publish a separate send job)",
            );
        }
        (_, m) => Some(message_of(m, channel, kind == KindTag::EventReply)?),
    };

    let gate = gate_of(obj.get("gate"))?;
    let not_after = time_of(obj.get("not_after"), "not_after", Reason::InvalidNotAfter)?;
    let not_before = not_before_of(obj.get("not_before"), kind, not_after)?;

    let chatbot = match channel {
        Channel::Chatbot => chatbot_extras_of(obj.get("chatbot"), account)?,
        Channel::Wecom => ChatbotExtras::default(),
    };

    let kind = match kind {
        KindTag::Send => JobKind::Send,
        KindTag::Broadcast => JobKind::Broadcast { recipients },
        KindTag::EventReply => JobKind::EventReply {
            code: code_of(obj.get("code"))?,
        },
        KindTag::Transfer => JobKind::Transfer(transfer_of(obj, channel)?),
        KindTag::Recall => JobKind::Recall(Recall {
            target_job_id: recall_target_of(obj.get("target_job_id"), job_id)?,
            msgid: None,
        }),
    };

    Ok(Job {
        job_id: job_id.to_owned(),
        kind,
        to,
        open_kfid,
        message,
        chatbot,
        gate,
        not_after,
        not_before,
    })
}

fn gate_of(v: Option<&Value>) -> R<Gate> {
    match v {
        None | Some(Value::Null) => Ok(Gate::Bot),
        Some(Value::String(s)) if s == "bot" => Ok(Gate::Bot),
        Some(Value::String(s)) if s == "none" => Ok(Gate::None),
        Some(other) => reject(
            Reason::InvalidGate,
            format!("gate: {}: expected \"bot\" or \"none\"", show(other)),
        ),
    }
}

/// An optional RFC 3339 time (with its offset) in `field`; `reason` names the field's problem.
fn time_of(v: Option<&Value>, field: &str, reason: Reason) -> R<Option<DateTime<Utc>>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Ok(Some(t.with_timezone(&Utc))),
            Err(e) => reject(
                reason,
                format!("{field}: {}: not an RFC 3339 time ({e})", clip(s)),
            ),
        },
        Some(other) => reject(
            reason,
            format!(
                "{field}: expected an RFC 3339 string, got {}",
                type_name(other)
            ),
        ),
    }
}

/// `not_before`: when a scheduled job becomes due. Not for an event_reply (its `code` is valid
/// 20 s after the event, so it can never wait), and never after `not_after` (the job could
/// only expire). How far ahead it may be is checked by the lane, which has a clock.
fn not_before_of(
    v: Option<&Value>,
    kind: KindTag,
    not_after: Option<DateTime<Utc>>,
) -> R<Option<DateTime<Utc>>> {
    let Some(t) = time_of(v, "not_before", Reason::InvalidNotBefore)? else {
        return Ok(None);
    };
    if kind == KindTag::EventReply {
        return reject(
            Reason::InvalidNotBefore,
            "not_before: an event_reply cannot be scheduled (its code is valid 20 s after the event)",
        );
    }
    match not_after {
        Some(na) if t > na => reject(
            Reason::NotBeforeAfterNotAfter,
            format!(
                "not_before ({}) is after not_after ({}): the job could only expire",
                t.to_rfc3339(),
                na.to_rfc3339()
            ),
        ),
        _ => Ok(Some(t)),
    }
}

fn kind_of(v: Option<&Value>, account: &dyn AccountView) -> R<KindTag> {
    let name = match v {
        None | Some(Value::Null) => return Ok(KindTag::Send),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return reject(
                Reason::InvalidKind,
                format!("kind: expected a string, got {}", type_name(other)),
            );
        }
    };
    match (name, account.channel()) {
        ("send", _) => Ok(KindTag::Send),
        ("transfer", _) => Ok(KindTag::Transfer),
        ("broadcast", _) => Ok(KindTag::Broadcast),
        ("event_reply", Channel::Wecom) => Ok(KindTag::EventReply),
        ("recall", Channel::Wecom) => Ok(KindTag::Recall),
        ("recall", Channel::Chatbot) => reject(
            Reason::RecallWecomOnly,
            format!(
                "kind: recall is a WeCom feature (kf/recall_msg); account {} is a chatbot account",
                account.name()
            ),
        ),
        ("event_reply", Channel::Chatbot) => reject(
            Reason::InvalidKind,
            format!(
                "kind: event_reply is WeCom only (account {} is a chatbot account)",
                account.name()
            ),
        ),
        (other, _) => reject(
            Reason::InvalidKind,
            format!(
                "kind: {}: expected send, event_reply, transfer, broadcast or recall",
                clip(other)
            ),
        ),
    }
}

fn recipient_of(v: Option<&Value>) -> R<String> {
    match v {
        None | Some(Value::Null) => reject(Reason::InvalidTo, "to: missing"),
        Some(Value::String(s)) => {
            check_recipient(s, "to")?;
            Ok(s.clone())
        }
        Some(Value::Array(_)) => reject(
            Reason::InvalidTo,
            "to: an array of recipients needs kind \"broadcast\"",
        ),
        Some(other) => reject(
            Reason::InvalidTo,
            format!("to: expected a string, got {}", type_name(other)),
        ),
    }
}

fn check_recipient(s: &str, path: &str) -> R<()> {
    if s.is_empty() {
        return reject(Reason::InvalidTo, format!("{path}: empty"));
    }
    let n = s.chars().count();
    if n > MAX_RECIPIENT_CHARS {
        return reject(
            Reason::InvalidTo,
            format!("{path}: {n} chars, limit {MAX_RECIPIENT_CHARS}"),
        );
    }
    check_visible(s, path, Reason::InvalidTo)?;
    if !valid_recipient(s) {
        return reject(
            Reason::InvalidTo,
            format!("{path}: {}: contains whitespace", clip(s)),
        );
    }
    Ok(())
}

fn recipients_of(v: Option<&Value>) -> R<Vec<String>> {
    let items = match v {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => {
            return reject(
                Reason::InvalidTo,
                "to: missing (a broadcast needs an array of recipients)",
            );
        }
        Some(other) => {
            return reject(
                Reason::InvalidTo,
                format!(
                    "to: a broadcast needs an array of recipients, got {}",
                    type_name(other)
                ),
            );
        }
    };
    if items.is_empty() {
        return reject(Reason::InvalidTo, "to: empty array (no recipients)");
    }
    if items.len() > MAX_BROADCAST_RECIPIENTS {
        return reject(
            Reason::TooManyRecipients,
            format!(
                "to: {} recipients, limit {MAX_BROADCAST_RECIPIENTS}",
                items.len()
            ),
        );
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => reject(
                Reason::InvalidTo,
                format!("to[{i}]: expected a string, got {}", type_name(other)),
            ),
        })
        .collect()
}

fn open_kfid_of(v: Option<&Value>, account: &dyn AccountView) -> R<String> {
    let kfids = account.open_kfids();
    match v {
        None | Some(Value::Null) => match kfids {
            [only] => Ok(only.clone()),
            _ => reject(
                Reason::MissingOpenKfid,
                format!(
                    "open_kfid: missing, and account {} has {} open_kfids (name one)",
                    account.name(),
                    kfids.len()
                ),
            ),
        },
        Some(Value::String(s)) if s.is_empty() => {
            reject(Reason::InvalidOpenKfid, "open_kfid: empty string")
        }
        Some(Value::String(s)) => {
            check_visible(s, "open_kfid", Reason::InvalidOpenKfid)?;
            if kfids.iter().any(|k| k == s) {
                return Ok(s.clone());
            }
            reject(
                Reason::UnknownOpenKfid,
                format!(
                    "open_kfid: {} is not one of account {}'s open_kfids",
                    clip(s),
                    account.name()
                ),
            )
        }
        Some(other) => reject(
            Reason::InvalidOpenKfid,
            format!("open_kfid: expected a string, got {}", type_name(other)),
        ),
    }
}

fn code_of(v: Option<&Value>) -> R<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => reject(
            Reason::InvalidCode,
            "code: missing (event_reply needs the event's welcome_code or msg_code)",
        ),
        Some(Value::String(_)) => reject(Reason::InvalidCode, "code: empty string"),
        Some(other) => reject(
            Reason::InvalidCode,
            format!("code: expected a string, got {}", type_name(other)),
        ),
    }
}

fn transfer_of(obj: &Map<String, Value>, channel: Channel) -> R<Transfer> {
    match channel {
        Channel::Wecom => {
            let state = match obj.get("service_state") {
                None | Some(Value::Null) => {
                    return reject(
                        Reason::InvalidTransfer,
                        "service_state: missing (a WeCom transfer needs the target state 1-4)",
                    );
                }
                // A transfer moves to a state; 0 (new) is where a conversation starts, not a target.
                Some(v) => match v.as_i64().and_then(ServiceState::from_code) {
                    Some(s) if s != ServiceState::New => s,
                    _ => {
                        return reject(
                            Reason::InvalidTransfer,
                            format!(
                                "service_state: {}: expected an integer 1-4 (1 bot, 2 queued, 3 human, 4 ended)",
                                show(v)
                            ),
                        );
                    }
                },
            };
            let servicer = match obj.get("servicer_userid") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => {
                    check_visible(s, "servicer_userid", Reason::InvalidTransfer)?;
                    Some(s.clone())
                }
                Some(other) => {
                    return reject(
                        Reason::InvalidTransfer,
                        format!(
                            "servicer_userid: expected a string, got {}",
                            type_name(other)
                        ),
                    );
                }
            };
            match (state, &servicer) {
                (ServiceState::Human, None) => reject(
                    Reason::InvalidTransfer,
                    "servicer_userid: required with service_state 3 (human servicer)",
                ),
                // The platform: "第一次进入【3 人工接待】时必填，其他情况不填".
                (s, Some(_)) if s != ServiceState::Human => reject(
                    Reason::InvalidTransfer,
                    format!(
                        "servicer_userid: only allowed with service_state 3, not {}",
                        s.code()
                    ),
                ),
                _ => Ok(Transfer {
                    service_state: Some(state.code()),
                    servicer_userid: servicer,
                    kefustate: None,
                    chatbot_state: None,
                    expires: None,
                }),
            }
        }
        Channel::Chatbot => chatbot_transfer_of(obj),
    }
}

// --- messages -----------------------------------------------------------------------------------

fn message_of(v: Option<&Value>, channel: Channel, event_reply: bool) -> R<Message> {
    let map = match v {
        None | Some(Value::Null) => return reject(Reason::MissingMessage, "message: missing"),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return reject(
                Reason::InvalidMessage,
                format!(
                    "message: expected an object with one key, the message type; got {}",
                    type_name(other)
                ),
            );
        }
    };
    let mut entries = map.iter();
    let (msgtype, payload) = match (entries.next(), entries.next()) {
        (Some(entry), None) => entry,
        _ => {
            let keys: Vec<&str> = map.keys().map(String::as_str).take(5).collect();
            return reject(
                Reason::InvalidMessage,
                format!(
                    "message: expected exactly one key (the message type), got {}: {}",
                    map.len(),
                    clip(&keys.join(", "))
                ),
            );
        }
    };
    let path = format!("message.{msgtype}");
    let payload = match channel {
        Channel::Chatbot => chatbot_payload(msgtype, payload, &path, false)?,
        Channel::Wecom => {
            if event_reply
                && WECOM_MSGTYPES.contains(&msgtype.as_str())
                && !WECOM_EVENT_MSGTYPES.contains(&msgtype.as_str())
            {
                return reject(
                    Reason::UnknownMsgtype,
                    format!(
                        "message: {msgtype} cannot be sent by event_reply (only text, msgmenu)"
                    ),
                );
            }
            wecom_payload(msgtype, payload, &path)?
        }
    };
    Ok(Message {
        msgtype: msgtype.clone(),
        payload,
    })
}
