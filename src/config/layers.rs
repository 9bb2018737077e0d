//! The layers of the settings, merged by figment: the TOML file, then one layer per
//! `WXDISPATCH__…` variable (in the environment's order). Each layer is named, so an error
//! names the key and, when the value came from the environment, the variable.

use anyhow::{Context, bail};
use figment::error::{Actual, Kind};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::account::env_key_of;
use super::model::Config;

/// Every override variable starts so; the rest is `SECTION__KEY` or `ACCOUNT__<sel>__KEY`.
pub(super) const ENV_PREFIX: &str = "WXDISPATCH__";

/// The file layer's name. Not repeated in errors: [`Config::load`] names the file itself.
const FILE: &str = "the config file";

/// One layer: a tree of keys and where it came from.
struct Layer {
    name: String,
    data: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// The settings from TOML `text` with the `WXDISPATCH__…` overrides of `env` on top,
/// deserialized (not yet validated). A TOML syntax error gives line and column; a type error
/// names the key (`account[0].rate.per_second: invalid type: …`).
pub(super) fn extract(text: &str, env: &[(String, String)]) -> anyhow::Result<Config> {
    let file: Dict = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
    let mut fig = Figment::new().merge(Layer {
        name: FILE.into(),
        data: file,
    });
    for (k, v) in env {
        if let Some(rest) = k.strip_prefix(ENV_PREFIX) {
            let name = format!("environment variable {k}");
            let data = env_override(&fig, rest, v).with_context(|| name.clone())?;
            fig = fig.merge(Layer { name, data });
        }
    }
    // Lossy: an environment value is a string, read as a number or a boolean where the key
    // wants one (`WXDISPATCH__BROKER__PREFETCH=64`), and kept as written where it wants a
    // string (`WXDISPATCH__DATABASE__PASSWORD=48151623`, `'"quoted"'` with its quotes).
    fig.extract_lossy()
        .map_err(|e| anyhow::anyhow!("{}", describe(e)))
}

/// The keys whose values are credentials: an error about one names the key and the kind of
/// value found, never the value.
const SECRET_KEYS: [&str; 4] = ["password", "token", "secret", "encoding_aes_key"];

/// `line L, column C: message`, on one line.
fn syntax_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let msg = e.message().trim_end().replace('\n', "; ");
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else {
        return anyhow::anyhow!("TOML syntax error: {msg}");
    };
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    anyhow::anyhow!("TOML syntax error at line {line}, column {column}: {msg}")
}

/// figment's errors as `key: what (from where)`, the key written as in `validate`'s messages.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = key_of(&e.path);
            let secret = e
                .path
                .last()
                .is_some_and(|leaf| SECRET_KEYS.contains(&leaf.as_str()));
            let kind = if secret {
                scrubbed(&e.kind)
            } else {
                e.kind.to_string()
            };
            let origin = match e.metadata.as_ref().map(|m| m.name.as_ref()) {
                Some(name) if name != FILE => format!(" (from {name})"),
                _ => String::new(),
            };
            if key.is_empty() {
                format!("{kind}{origin}")
            } else {
                format!("{key}: {kind}{origin}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What went wrong with a secret's value, without the value: `invalid type: found an integer,
/// expected a string`.
fn scrubbed(kind: &Kind) -> String {
    match kind {
        Kind::InvalidType(actual, expected) => {
            format!("invalid type: found {}, expected {expected}", what(actual))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value: found {}, expected {expected}", what(actual))
        }
        Kind::InvalidLength(..)
        | Kind::MissingField(_)
        | Kind::DuplicateField(_)
        | Kind::UnknownField(..) => kind.to_string(),
        _ => "invalid value (not shown: the key holds a secret)".to_owned(),
    }
}

/// The kind of a value, without the value.
fn what(actual: &Actual) -> &'static str {
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        _ => "a value of another type",
    }
}

/// `["account", "0", "rate"]` → `account[0].rate`.
fn key_of(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if !out.is_empty() && !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// The layer of one `SECTION__KEY[__…]` or `ACCOUNT__<NAME or INDEX>__KEY` override, given
/// the layers below it (`fig`). An account override yields the whole `account` array with
/// the one key replaced, since figment replaces arrays rather than merging them.
fn env_override(fig: &Figment, path: &str, raw: &str) -> anyhow::Result<Dict> {
    let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.len() < 2 || parts.iter().any(String::is_empty) {
        bail!("expected WXDISPATCH__SECTION__KEY");
    }
    let value = parse_env_value(raw);
    if parts[0] == "account" {
        if parts.len() != 3 {
            bail!("expected WXDISPATCH__ACCOUNT__<NAME or INDEX>__KEY");
        }
        let mut accounts = match fig.find_value("account") {
            Ok(Value::Array(_, a)) => a,
            Ok(_) => bail!("[[account]] must be an array of tables"),
            Err(_) => Vec::new(),
        };
        let sel = &parts[1];
        let idx = match sel.parse::<usize>() {
            Ok(i) if i < accounts.len() => i,
            Ok(i) => bail!("no account at index {i}"),
            Err(_) => accounts
                .iter()
                .position(|a| {
                    a.find_ref("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| env_key_of(n).eq_ignore_ascii_case(sel))
                })
                .with_context(|| format!("no account named '{sel}' in the config file"))?,
        };
        let Value::Dict(_, table) = &mut accounts[idx] else {
            bail!("[[account]] entries must be tables");
        };
        table.insert(parts[2].clone(), value);
        return Ok(Dict::from([("account".to_owned(), Value::from(accounts))]));
    }
    for n in 1..parts.len() {
        if let Ok(v) = fig.find_value(&parts[..n].join("."))
            && !matches!(v, Value::Dict(..))
        {
            bail!("'{}' is not a section", parts[n - 1]);
        }
    }
    let Some((leaf, sections)) = parts.split_last() else {
        bail!("expected WXDISPATCH__SECTION__KEY");
    };
    let mut data = Dict::from([(leaf.clone(), value)]);
    for seg in sections.iter().rev() {
        data = Dict::from([(seg.clone(), Value::from(data))]);
    }
    Ok(data)
}

/// An environment value: an array (`[1, 2]`) or an inline table (`{ per_second = 5 }`) when it
/// starts so and parses as a TOML one; otherwise the string exactly as written, which
/// [`extract`] reads as a number or a boolean only where the key wants one. So a password of
/// digits stays a string, and `"quoted"` keeps its quotes.
fn parse_env_value(raw: &str) -> Value {
    let string = || Value::from(raw.to_owned());
    if !raw.trim_start().starts_with(['[', '{']) {
        return string();
    }
    match toml::from_str::<Dict>(&format!("x = {raw}")) {
        Ok(mut t) => t.remove("x").unwrap_or_else(string),
        Err(_) => string(),
    }
}
