//! The layers of the settings, merged by figment: the TOML file, then one layer per
//! `WXDISPATCH__…` variable (in the environment's order). Each layer is named, so an error
//! names the key and, when the value came from the environment, the variable.

use anyhow::{Context, bail};
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
    fig.extract()
        .map_err(|e| anyhow::anyhow!("{}", describe(e)))
}

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
            let origin = match e.metadata.as_ref().map(|m| m.name.as_ref()) {
                Some(name) if name != FILE => format!(" (from {name})"),
                _ => String::new(),
            };
            if key.is_empty() {
                format!("{}{origin}", e.kind)
            } else {
                format!("{key}: {}{origin}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
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

fn parse_env_value(raw: &str) -> Value {
    // `x = <raw>` parses for numbers, booleans, arrays and inline tables; anything else is a string.
    let doc = format!("x = {raw}");
    match toml::from_str::<Dict>(&doc) {
        Ok(mut t) => t.remove("x").unwrap_or_else(|| Value::from(raw.to_owned())),
        Err(_) => Value::from(raw.to_owned()),
    }
}
