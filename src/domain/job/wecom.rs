//! WeCom kf/send_msg payloads: the limits and their validation.

use serde_json::{Value, json};

use super::fields::{Fields, R, check_count, clip, reject, type_name};
use crate::domain::ids::{MAX_JOB_ID_LEN, valid_job_id};
use crate::domain::reason::Reason;

// --- WeCom kf/send_msg limits: reference/wechat-api.md, and for menu items the field docs of
// --- the kf send_msg API as transcribed in silenceper/wechat `work/kf/sendmsg/message.go`.

/// `text.content`: "最长不超过2048个字节".
pub const WECOM_TEXT_MAX_BYTES: usize = 2048;
/// `link.title` ≤ 128 bytes.
pub const WECOM_LINK_TITLE_MAX_BYTES: usize = 128;
/// `link.desc` ≤ 512 bytes.
pub const WECOM_LINK_DESC_MAX_BYTES: usize = 512;
/// `link.url` ≤ 2048 bytes.
pub const WECOM_LINK_URL_MAX_BYTES: usize = 2048;
/// `miniprogram.title` ≤ 64 bytes.
pub const WECOM_MINIPROGRAM_TITLE_MAX_BYTES: usize = 64;
/// `msgmenu.head_content` ≤ 1024 bytes.
pub const WECOM_MENU_HEAD_MAX_BYTES: usize = 1024;
/// `msgmenu.tail_content` ≤ 1024 bytes.
pub const WECOM_MENU_TAIL_MAX_BYTES: usize = 1024;
/// `msgmenu.list`: "不能多于10个".
pub const WECOM_MENU_MAX_ITEMS: usize = 10;
/// Menu item `click.id`: 1..=64 bytes.
const WECOM_MENU_CLICK_ID_MAX_BYTES: usize = 64;
/// Menu item `click.content`: 1..=128 bytes.
const WECOM_MENU_CLICK_CONTENT_MAX_BYTES: usize = 128;
/// Menu item `view.url`: 1..=2048 bytes.
const WECOM_MENU_VIEW_URL_MAX_BYTES: usize = 2048;
/// Menu item `view.content`: 1..=1024 bytes.
const WECOM_MENU_VIEW_CONTENT_MAX_BYTES: usize = 1024;
/// Menu item `miniprogram.appid`: 1..=32 bytes.
const WECOM_MENU_MP_APPID_MAX_BYTES: usize = 32;
/// Menu item `miniprogram.pagepath`: 1..=1024 bytes.
const WECOM_MENU_MP_PAGEPATH_MAX_BYTES: usize = 1024;
/// Menu item `miniprogram.content`: 1..=1024 bytes.
const WECOM_MENU_MP_CONTENT_MAX_BYTES: usize = 1024;
/// Latitude range of `location` (degrees).
const WECOM_LATITUDE_MAX: f64 = 90.0;
/// Longitude range of `location` (degrees).
const WECOM_LONGITUDE_MAX: f64 = 180.0;

/// Message types of WeCom kf/send_msg (CONTRACT.md §4).
pub const WECOM_MSGTYPES: [&str; 11] = [
    "text",
    "image",
    "voice",
    "video",
    "file",
    "link",
    "miniprogram",
    "msgmenu",
    "location",
    "business_card",
    "ca_link",
];
/// Message types kf/send_msg_on_event accepts ("msgtype text|msgmenu", wechat-api.md).
pub const WECOM_EVENT_MSGTYPES: [&str; 2] = ["text", "msgmenu"];

/// Validate a WeCom kf/send_msg payload; returns it normalised.
///
/// Long on purpose: one arm per message type, so the match reads as the table of
/// [`WECOM_MSGTYPES`] and their fields and limits.
pub(super) fn wecom_payload(msgtype: &str, payload: &Value, path: &str) -> R<Value> {
    match msgtype {
        "text" => {
            let normalized = match payload {
                Value::String(s) => json!({ "content": s }),
                Value::Object(_) => payload.clone(),
                other => {
                    return reject(
                        Reason::InvalidMessage,
                        format!(
                            "{path}: expected a string or {{\"content\": string}}, got {}",
                            type_name(other)
                        ),
                    );
                }
            };
            Fields::of(&normalized, path)?.req_str("content", WECOM_TEXT_MAX_BYTES)?;
            return Ok(normalized);
        }
        "image" | "voice" | "video" | "file" => {
            Fields::of(payload, path)?.req_str("media_id", usize::MAX)?;
        }
        "link" => {
            let f = Fields::of(payload, path)?;
            f.req_str("title", WECOM_LINK_TITLE_MAX_BYTES)?;
            f.opt_str("desc", WECOM_LINK_DESC_MAX_BYTES)?;
            f.req_str("url", WECOM_LINK_URL_MAX_BYTES)?;
            f.req_str("thumb_media_id", usize::MAX)?;
        }
        "miniprogram" => {
            let f = Fields::of(payload, path)?;
            f.req_str("appid", usize::MAX)?;
            // Optional on the platform ("title 否"), truncated there past 64 bytes; we reject.
            f.opt_str("title", WECOM_MINIPROGRAM_TITLE_MAX_BYTES)?;
            f.req_str("thumb_media_id", usize::MAX)?;
            f.req_str("pagepath", usize::MAX)?;
        }
        "msgmenu" => {
            let f = Fields::of(payload, path)?;
            let head = f.opt_str("head_content", WECOM_MENU_HEAD_MAX_BYTES)?;
            let tail = f.opt_str("tail_content", WECOM_MENU_TAIL_MAX_BYTES)?;
            let list = f.opt_array("list")?;
            if let Some(items) = list {
                let list_path = f.at("list");
                check_count(items, &list_path, 0, WECOM_MENU_MAX_ITEMS)?;
                for (i, item) in items.iter().enumerate() {
                    wecom_menu_item(item, &format!("{list_path}[{i}]"))?;
                }
            }
            let empty = head.is_none_or(str::is_empty)
                && tail.is_none_or(str::is_empty)
                && list.is_none_or(Vec::is_empty);
            if empty {
                return reject(
                    Reason::InvalidMessage,
                    format!("{path}: empty (set head_content, list or tail_content)"),
                );
            }
        }
        "location" => {
            let f = Fields::of(payload, path)?;
            f.opt_str("name", usize::MAX)?;
            f.opt_str("address", usize::MAX)?;
            f.req_coordinate("latitude", WECOM_LATITUDE_MAX)?;
            f.req_coordinate("longitude", WECOM_LONGITUDE_MAX)?;
        }
        "business_card" => {
            Fields::of(payload, path)?.req_str("userid", usize::MAX)?;
        }
        "ca_link" => {
            Fields::of(payload, path)?.req_str("link_url", usize::MAX)?;
        }
        other => {
            return reject(
                Reason::UnknownMsgtype,
                format!(
                    "message: {} is not a WeCom message type ({})",
                    clip(other),
                    WECOM_MSGTYPES.join(", ")
                ),
            );
        }
    }
    Ok(payload.clone())
}

fn wecom_menu_item(item: &Value, path: &str) -> R<()> {
    let f = Fields::of(item, path)?;
    let ty = f.req_str("type", usize::MAX)?;
    let sub_path = format!("{path}.{ty}");
    match ty {
        "click" => {
            let c = f.object("click", &sub_path)?;
            c.opt_nonempty("id", WECOM_MENU_CLICK_ID_MAX_BYTES)?;
            c.req_str("content", WECOM_MENU_CLICK_CONTENT_MAX_BYTES)?;
        }
        "view" => {
            let c = f.object("view", &sub_path)?;
            c.req_str("url", WECOM_MENU_VIEW_URL_MAX_BYTES)?;
            c.req_str("content", WECOM_MENU_VIEW_CONTENT_MAX_BYTES)?;
        }
        "miniprogram" => {
            let c = f.object("miniprogram", &sub_path)?;
            c.req_str("appid", WECOM_MENU_MP_APPID_MAX_BYTES)?;
            c.req_str("pagepath", WECOM_MENU_MP_PAGEPATH_MAX_BYTES)?;
            c.req_str("content", WECOM_MENU_MP_CONTENT_MAX_BYTES)?;
        }
        "text" => {
            // No documented length for a text item in our sources: only non-empty is checked.
            let c = f.object("text", &sub_path)?;
            c.req_str("content", usize::MAX)?;
        }
        other => {
            return reject(
                Reason::InvalidMessage,
                format!(
                    "{path}.type: {}: expected click, view, miniprogram or text",
                    clip(other)
                ),
            );
        }
    }
    Ok(())
}

/// A recall's `target_job_id`: a job id by the same rule as `job_id` (it names a job of the
/// same account), and not the recall's own `job_id`.
pub(super) fn recall_target_of(v: Option<&Value>, job_id: &str) -> R<String> {
    match v {
        Some(Value::String(s)) if s == job_id => reject(
            Reason::InvalidRecallTarget,
            format!("target_job_id: {}: a recall cannot recall itself", clip(s)),
        ),
        Some(Value::String(s)) if valid_job_id(s) => Ok(s.clone()),
        Some(Value::String(s)) => reject(
            Reason::InvalidRecallTarget,
            format!(
                "target_job_id: {}: must be a job id (1-{MAX_JOB_ID_LEN} chars of [0-9A-Za-z_-])",
                clip(s)
            ),
        ),
        None | Some(Value::Null) => reject(
            Reason::InvalidRecallTarget,
            "target_job_id: missing (a recall names the job whose message it takes back)",
        ),
        Some(other) => reject(
            Reason::InvalidRecallTarget,
            format!("target_job_id: expected a string, got {}", type_name(other)),
        ),
    }
}
