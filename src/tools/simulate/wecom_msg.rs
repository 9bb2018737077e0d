//! Validation of WeCom kf message bodies (`send_msg`, `send_msg_on_event`) against the
//! documented limits. Pure functions; byte lengths are UTF-8 bytes, as WeCom counts them.
//!
//! Errcodes: a missing or mistyped field or an out-of-range value → 40058; a field over its
//! byte limit (or a menu with too many items) → 45002; an empty media id → 40007; an unknown
//! `msgtype` or menu item type → 40008.

use serde_json::{Map, Value};

use super::reply::{ApiErr, code};

/// `text.content` (reference: ≤ 2048 bytes).
pub const TEXT_CONTENT_MAX: usize = 2048;
/// `link.title` / `link.desc` / `link.url` (reference).
pub const LINK_TITLE_MAX: usize = 128;
pub const LINK_DESC_MAX: usize = 512;
pub const LINK_URL_MAX: usize = 2048;
/// `miniprogram.title` (reference).
pub const MINIPROGRAM_TITLE_MAX: usize = 64;
/// `msgmenu.head_content` / `tail_content` (reference).
pub const MENU_HEAD_MAX: usize = 1024;
pub const MENU_TAIL_MAX: usize = 1024;
/// `msgmenu.list` items (reference).
pub const MENU_ITEMS_MAX: usize = 10;
/// Menu item limits from WeCom's send_msg page (not in the project reference): click id and
/// content ≤ 128 bytes, view/miniprogram content ≤ 1024, view url ≤ 2048, text content ≤ 256.
pub const MENU_CLICK_MAX: usize = 128;
pub const MENU_ITEM_CONTENT_MAX: usize = 1024;
pub const MENU_TEXT_MAX: usize = 256;
/// A `msgid` chosen by the caller: ≤ 32 of `[0-9a-zA-Z_-]`.
pub const MSGID_MAX: usize = 32;

/// Every `msgtype` send_msg accepts.
pub const SEND_MSG_TYPES: &[&str] = &[
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
/// send_msg_on_event accepts only these.
pub const EVENT_MSG_TYPES: &[&str] = &["text", "msgmenu"];

fn missing(path: &str) -> ApiErr {
    ApiErr::hint(
        code::INVALID_PARAM,
        format!("{path} missing or not a string"),
    )
}

fn obj<'a>(v: Option<&'a Value>, path: &str) -> Result<&'a Map<String, Value>, ApiErr> {
    v.and_then(Value::as_object).ok_or_else(|| {
        ApiErr::hint(
            code::INVALID_PARAM,
            format!("{path} missing or not an object"),
        )
    })
}

/// A required, non-empty string.
fn req<'a>(o: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a str, ApiErr> {
    match o.get(key).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(missing(&format!("{path}.{key}"))),
    }
}

/// An optional string (absent or null is fine; another type is not).
fn opt<'a>(o: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>, ApiErr> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(missing(&format!("{path}.{key}"))),
    }
}

fn within(s: &str, max: usize, path: &str) -> Result<(), ApiErr> {
    if s.len() > max {
        return Err(ApiErr::hint(
            code::TOO_LARGE,
            format!("{path} is {} bytes, limit {max}", s.len()),
        ));
    }
    Ok(())
}

fn media(o: &Map<String, Value>, key: &str, path: &str) -> Result<(), ApiErr> {
    match o.get(key).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Ok(()),
        _ => Err(ApiErr::hint(
            code::INVALID_MEDIA,
            format!("{path}.{key} missing or empty"),
        )),
    }
}

/// A caller-chosen msgid: `Ok(None)` when absent (or empty / null: the platform generates one).
pub(crate) fn msgid(body: &Map<String, Value>) -> Result<Option<&str>, ApiErr> {
    match body.get("msgid") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s))
            if s.len() <= MSGID_MAX
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            Ok(Some(s))
        }
        Some(_) => Err(ApiErr::hint(
            code::INVALID_MSGTYPE,
            format!("msgid must be at most {MSGID_MAX} characters of [0-9a-zA-Z_-]"),
        )),
    }
}

/// Validate `body[msgtype]` for a message whose type must be one of `allowed`; returns the
/// msgtype.
pub(crate) fn validate<'a>(
    body: &'a Map<String, Value>,
    allowed: &[&str],
) -> Result<&'a str, ApiErr> {
    let msgtype = match body.get("msgtype").and_then(Value::as_str) {
        Some(t) if allowed.contains(&t) => t,
        Some(t) => {
            return Err(ApiErr::hint(
                code::INVALID_MSGTYPE,
                format!("msgtype '{t}' not supported here"),
            ));
        }
        None => return Err(ApiErr::hint(code::INVALID_MSGTYPE, "msgtype missing")),
    };
    let p = obj(body.get(msgtype), msgtype)?;
    match msgtype {
        "text" => {
            let c = req(p, "content", "text")?;
            within(c, TEXT_CONTENT_MAX, "text.content")?;
        }
        "image" | "voice" | "video" | "file" => media(p, "media_id", msgtype)?,
        "link" => {
            within(req(p, "title", "link")?, LINK_TITLE_MAX, "link.title")?;
            if let Some(d) = opt(p, "desc", "link")? {
                within(d, LINK_DESC_MAX, "link.desc")?;
            }
            within(req(p, "url", "link")?, LINK_URL_MAX, "link.url")?;
            media(p, "thumb_media_id", "link")?;
        }
        "miniprogram" => {
            req(p, "appid", "miniprogram")?;
            if let Some(t) = opt(p, "title", "miniprogram")? {
                within(t, MINIPROGRAM_TITLE_MAX, "miniprogram.title")?;
            }
            media(p, "thumb_media_id", "miniprogram")?;
            req(p, "pagepath", "miniprogram")?;
        }
        "msgmenu" => validate_menu(p)?,
        "location" => {
            opt(p, "name", "location")?;
            opt(p, "address", "location")?;
            coordinate(p, "latitude", 90.0)?;
            coordinate(p, "longitude", 180.0)?;
        }
        "business_card" => {
            req(p, "userid", "business_card")?;
        }
        "ca_link" => {
            req(p, "link_url", "ca_link")?;
        }
        _ => {}
    }
    Ok(msgtype)
}

fn coordinate(p: &Map<String, Value>, key: &str, bound: f64) -> Result<(), ApiErr> {
    match p.get(key).and_then(Value::as_f64) {
        Some(x) if (-bound..=bound).contains(&x) => Ok(()),
        Some(x) => Err(ApiErr::hint(
            code::INVALID_PARAM,
            format!("location.{key} {x} outside -{bound}..={bound}"),
        )),
        None => Err(ApiErr::hint(
            code::INVALID_PARAM,
            format!("location.{key} missing or not a number"),
        )),
    }
}

// One check after another in the documented order, each with its errcode: a list, not logic.
fn validate_menu(p: &Map<String, Value>) -> Result<(), ApiErr> {
    if let Some(h) = opt(p, "head_content", "msgmenu")? {
        within(h, MENU_HEAD_MAX, "msgmenu.head_content")?;
    }
    if let Some(t) = opt(p, "tail_content", "msgmenu")? {
        within(t, MENU_TAIL_MAX, "msgmenu.tail_content")?;
    }
    let list = match p.get("list") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(l)) => l,
        Some(_) => {
            return Err(ApiErr::hint(
                code::INVALID_PARAM,
                "msgmenu.list is not an array",
            ));
        }
    };
    if list.len() > MENU_ITEMS_MAX {
        return Err(ApiErr::hint(
            code::TOO_LARGE,
            format!(
                "msgmenu.list has {} items, limit {MENU_ITEMS_MAX}",
                list.len()
            ),
        ));
    }
    for (i, item) in list.iter().enumerate() {
        let path = format!("msgmenu.list[{i}]");
        let item = obj(Some(item), &path)?;
        let ty = req(item, "type", &path)?;
        let ipath = format!("{path}.{ty}");
        match ty {
            "click" => {
                let c = obj(item.get("click"), &ipath)?;
                if let Some(id) = opt(c, "id", &ipath)? {
                    within(id, MENU_CLICK_MAX, &format!("{ipath}.id"))?;
                }
                within(
                    req(c, "content", &ipath)?,
                    MENU_CLICK_MAX,
                    &format!("{ipath}.content"),
                )?;
            }
            "view" => {
                let v = obj(item.get("view"), &ipath)?;
                within(
                    req(v, "url", &ipath)?,
                    LINK_URL_MAX,
                    &format!("{ipath}.url"),
                )?;
                within(
                    req(v, "content", &ipath)?,
                    MENU_ITEM_CONTENT_MAX,
                    &format!("{ipath}.content"),
                )?;
            }
            "miniprogram" => {
                let m = obj(item.get("miniprogram"), &ipath)?;
                req(m, "appid", &ipath)?;
                req(m, "pagepath", &ipath)?;
                within(
                    req(m, "content", &ipath)?,
                    MENU_ITEM_CONTENT_MAX,
                    &format!("{ipath}.content"),
                )?;
            }
            "text" => {
                let t = obj(item.get("text"), &ipath)?;
                within(
                    req(t, "content", &ipath)?,
                    MENU_TEXT_MAX,
                    &format!("{ipath}.content"),
                )?;
            }
            other => {
                return Err(ApiErr::hint(
                    code::INVALID_MSGTYPE,
                    format!("{path}.type '{other}' is not click/view/miniprogram/text"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<String, i64> {
        let o = v.as_object().cloned().unwrap_or_default();
        validate(&o, SEND_MSG_TYPES)
            .map(str::to_owned)
            .map_err(|e| e.code)
    }

    fn item(i: usize) -> Value {
        json!({"type": "click", "click": {"id": format!("m{i}"), "content": "yes"}})
    }

    #[test]
    fn table_of_limits() {
        let cases: Vec<(Value, Result<&str, i64>)> = vec![
            (
                json!({"msgtype": "text", "text": {"content": "a".repeat(2048)}}),
                Ok("text"),
            ),
            (
                json!({"msgtype": "text", "text": {"content": "a".repeat(2049)}}),
                Err(45002),
            ),
            // 683 three-byte characters = 2049 bytes.
            (
                json!({"msgtype": "text", "text": {"content": "中".repeat(683)}}),
                Err(45002),
            ),
            (
                json!({"msgtype": "text", "text": {"content": ""}}),
                Err(40058),
            ),
            (json!({"msgtype": "text", "text": "bare"}), Err(40058)),
            (json!({"msgtype": "text"}), Err(40058)),
            (json!({"msgtype": "sticker", "sticker": {}}), Err(40008)),
            (json!({"text": {"content": "x"}}), Err(40008)),
            (
                json!({"msgtype": "image", "image": {"media_id": "M"}}),
                Ok("image"),
            ),
            (
                json!({"msgtype": "voice", "voice": {"media_id": ""}}),
                Err(40007),
            ),
            (json!({"msgtype": "file", "file": {}}), Err(40007)),
            (
                json!({"msgtype": "link", "link": {"title": "t", "url": "https://x", "thumb_media_id": "M"}}),
                Ok("link"),
            ),
            (
                json!({"msgtype": "link", "link": {"title": "t".repeat(129), "url": "u", "thumb_media_id": "M"}}),
                Err(45002),
            ),
            (
                json!({"msgtype": "link", "link": {"title": "t", "desc": "d".repeat(513), "url": "u", "thumb_media_id": "M"}}),
                Err(45002),
            ),
            (
                json!({"msgtype": "link", "link": {"title": "t", "url": "u".repeat(2049), "thumb_media_id": "M"}}),
                Err(45002),
            ),
            (
                json!({"msgtype": "link", "link": {"title": "t", "url": "u"}}),
                Err(40007),
            ),
            (
                json!({"msgtype": "miniprogram", "miniprogram": {"appid": "wx1", "title": "t".repeat(64), "thumb_media_id": "M", "pagepath": "p"}}),
                Ok("miniprogram"),
            ),
            (
                json!({"msgtype": "miniprogram", "miniprogram": {"appid": "wx1", "title": "t".repeat(65), "thumb_media_id": "M", "pagepath": "p"}}),
                Err(45002),
            ),
            (
                json!({"msgtype": "miniprogram", "miniprogram": {"thumb_media_id": "M", "pagepath": "p"}}),
                Err(40058),
            ),
            (
                json!({"msgtype": "msgmenu", "msgmenu": {"head_content": "h", "list": (0..10).map(item).collect::<Vec<_>>()}}),
                Ok("msgmenu"),
            ),
            (
                json!({"msgtype": "msgmenu", "msgmenu": {"list": (0..11).map(item).collect::<Vec<_>>()}}),
                Err(45002),
            ),
            (
                json!({"msgtype": "msgmenu", "msgmenu": {"head_content": "h".repeat(1025)}}),
                Err(45002),
            ),
            (
                json!({"msgtype": "msgmenu", "msgmenu": {"tail_content": "h".repeat(1025)}}),
                Err(45002),
            ),
            (
                json!({"msgtype": "msgmenu", "msgmenu": {"list": [{"type": "radio"}]}}),
                Err(40008),
            ),
            (
                json!({"msgtype": "msgmenu", "msgmenu": {"list": [{"type": "view", "view": {"url": "u", "content": "c"}}, {"type": "text", "text": {"content": "t"}}, {"type": "miniprogram", "miniprogram": {"appid": "a", "pagepath": "p", "content": "c"}}]}}),
                Ok("msgmenu"),
            ),
            (
                json!({"msgtype": "location", "location": {"latitude": 90, "longitude": -180}}),
                Ok("location"),
            ),
            (
                json!({"msgtype": "location", "location": {"latitude": 90.5, "longitude": 0}}),
                Err(40058),
            ),
            (
                json!({"msgtype": "location", "location": {"latitude": 0, "longitude": 180.01}}),
                Err(40058),
            ),
            (
                json!({"msgtype": "location", "location": {"latitude": "1", "longitude": 0}}),
                Err(40058),
            ),
            (
                json!({"msgtype": "business_card", "business_card": {"userid": "zhangsan"}}),
                Ok("business_card"),
            ),
            (
                json!({"msgtype": "business_card", "business_card": {}}),
                Err(40058),
            ),
            (
                json!({"msgtype": "ca_link", "ca_link": {"link_url": "https://work.weixin.qq.com/ca/x"}}),
                Ok("ca_link"),
            ),
            (
                json!({"msgtype": "ca_link", "ca_link": {"link_url": ""}}),
                Err(40058),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(check(v.clone()), want.map(str::to_owned), "{v}");
        }
    }

    #[test]
    fn event_replies_allow_only_text_and_menu() {
        let o = json!({"msgtype": "image", "image": {"media_id": "M"}});
        let e = validate(o.as_object().unwrap(), EVENT_MSG_TYPES).unwrap_err();
        assert_eq!(e.code, 40008);
    }

    #[test]
    fn msgids() {
        let m = |v: Value| {
            msgid(json!({ "msgid": v }).as_object().unwrap())
                .map(|o| o.map(str::to_owned))
                .map_err(|e| e.code)
        };
        assert_eq!(m(json!("job-1_A")), Ok(Some("job-1_A".into())));
        assert_eq!(m(json!("a".repeat(32))), Ok(Some("a".repeat(32))));
        assert_eq!(m(json!("a".repeat(33))), Err(40008));
        assert_eq!(m(json!("a b")), Err(40008));
        assert_eq!(m(json!(12)), Err(40008));
        assert_eq!(m(json!("")), Ok(None));
        assert_eq!(m(Value::Null), Ok(None));
    }
}
