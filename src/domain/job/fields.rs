//! The plumbing shared by the validators: the rejection type, typed access to the fields of a
//! message object, and the helpers that keep every `detail` one short line.

use serde_json::{Map, Value};

use crate::domain::reason::Reason;

/// Input quoted in a `detail` is cut to this many characters: the detail becomes an AMQP header
/// and a log field, and must stay one short line whatever the body holds.
const DETAIL_QUOTE_CHARS: usize = 100;

/// A rejection before the job id is attached.
pub(super) struct Reject {
    pub(super) reason: Reason,
    pub(super) detail: String,
}

pub(super) type R<T> = Result<T, Reject>;

pub(super) fn reject<T>(reason: Reason, detail: impl Into<String>) -> R<T> {
    Err(Reject {
        reason,
        detail: detail.into(),
    })
}

/// Typed access to the fields of one object inside a message, with error details that name
/// the full path (`message.link.title`).
pub(super) struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Fields<'a> {
    pub(super) fn of(v: &'a Value, path: &'a str) -> R<Self> {
        match v {
            Value::Object(map) => Ok(Self { map, path }),
            other => reject(
                Reason::InvalidMessage,
                format!("{path}: expected an object, got {}", type_name(other)),
            ),
        }
    }

    pub(super) fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// An optional string of at most `max_bytes` (`null` = absent).
    pub(super) fn opt_str(&self, key: &str, max_bytes: usize) -> R<Option<&'a str>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() > max_bytes => reject(
                Reason::MessageOverLimit,
                format!("{}: {} bytes, limit {max_bytes}", self.at(key), s.len()),
            ),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => reject(
                Reason::InvalidMessage,
                format!(
                    "{}: expected a string, got {}",
                    self.at(key),
                    type_name(other)
                ),
            ),
        }
    }

    /// An optional string that, when present, is not empty.
    pub(super) fn opt_nonempty(&self, key: &str, max_bytes: usize) -> R<Option<&'a str>> {
        match self.opt_str(key, max_bytes)? {
            Some("") => reject(
                Reason::InvalidMessage,
                format!("{}: empty string", self.at(key)),
            ),
            other => Ok(other),
        }
    }

    /// A required non-empty string of at most `max_bytes`.
    pub(super) fn req_str(&self, key: &str, max_bytes: usize) -> R<&'a str> {
        match self.opt_str(key, max_bytes)? {
            Some("") => reject(
                Reason::InvalidMessage,
                format!("{}: empty string", self.at(key)),
            ),
            Some(s) => Ok(s),
            None => reject(Reason::InvalidMessage, format!("{}: missing", self.at(key))),
        }
    }

    /// A required number within `-limit..=limit`.
    pub(super) fn req_coordinate(&self, key: &str, limit: f64) -> R<f64> {
        match self.map.get(key) {
            Some(v @ Value::Number(n)) => match n.as_f64() {
                Some(x) if (-limit..=limit).contains(&x) => Ok(x),
                _ => reject(
                    Reason::InvalidMessage,
                    format!(
                        "{}: {}: out of range -{limit}..{limit}",
                        self.at(key),
                        show(v)
                    ),
                ),
            },
            None | Some(Value::Null) => {
                reject(Reason::InvalidMessage, format!("{}: missing", self.at(key)))
            }
            Some(other) => reject(
                Reason::InvalidMessage,
                format!(
                    "{}: expected a number, got {}",
                    self.at(key),
                    type_name(other)
                ),
            ),
        }
    }

    /// A required nested object.
    pub(super) fn object(&self, key: &str, path: &'a str) -> R<Fields<'a>> {
        match self.map.get(key) {
            None | Some(Value::Null) => reject(Reason::InvalidMessage, format!("{path}: missing")),
            Some(v) => Fields::of(v, path),
        }
    }

    /// An optional array (`null` = absent).
    pub(super) fn opt_array(&self, key: &str) -> R<Option<&'a Vec<Value>>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => reject(
                Reason::InvalidMessage,
                format!(
                    "{}: expected an array, got {}",
                    self.at(key),
                    type_name(other)
                ),
            ),
        }
    }
}

/// `Err` naming `path`, the first invisible character ([`crate::text::is_invisible`]: a
/// control, a format character such as U+200B or U+202E, U+2028/U+2029) and its position in
/// characters: `to: contains an invisible/format character U+202E at 3`. For ids, where such a
/// character is never legitimate and would make two different ids look the same.
pub(super) fn check_visible(s: &str, path: &str, reason: Reason) -> R<()> {
    match crate::text::first_invisible(s) {
        Some((at, c)) => reject(
            reason,
            format!(
                "{path}: contains an invisible/format character U+{:04X} at {at}",
                u32::from(c)
            ),
        ),
        None => Ok(()),
    }
}

/// Items of an array counted against `lo..=hi` (`lo` short: invalid; `hi` exceeded: over limit).
pub(super) fn check_count(items: &[Value], path: &str, lo: usize, hi: usize) -> R<()> {
    let n = items.len();
    if n < lo {
        return reject(
            Reason::InvalidMessage,
            format!("{path}: {n} items, needs at least {lo}"),
        );
    }
    if n > hi {
        return reject(
            Reason::MessageOverLimit,
            format!("{path}: {n} items, limit {hi}"),
        );
    }
    Ok(())
}

// --- detail helpers -----------------------------------------------------------------------------

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Cut to [`DETAIL_QUOTE_CHARS`] characters, marking the cut with "…".
pub(super) fn clip_plain(s: &str) -> String {
    match s.char_indices().nth(DETAIL_QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// A value quoted for a detail: clipped, escaped onto one line.
pub(super) fn clip(s: &str) -> String {
    format!("{:?}", clip_plain(s))
}

/// A JSON value for a detail: scalars shown (clipped), containers by type.
pub(super) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => clip(s),
        Value::Number(n) => clip_plain(&n.to_string()),
        Value::Bool(b) => b.to_string(),
        other => type_name(other).to_owned(),
    }
}
