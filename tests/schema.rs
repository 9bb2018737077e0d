//! `schemas/job.schema.json` kept equal to what the parser accepts.
//!
//! Every README job example and every file of `tests/data/jobs/{good,bad}` is given to both the
//! schema (draft 2020-12, the `jsonschema` crate, formats asserted) and [`job::parse`], on the
//! channel the file names: the two verdicts must agree, and a bad job's reason word (the second
//! dot-separated part of its file name, `wecom.invalid_kind.unknown.json`) must be the parser's.
//! Drift is caught twice: the schema refuses top-level fields it does not list (so a README
//! example using a new field fails here), and the field names the parser reads, its message types
//! and its limits are compared with the schema's.
//!
//! No broker, no database: only parsing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use wxdispatch::domain::account::AccountView;
use wxdispatch::domain::channel::Channel;
use wxdispatch::domain::job;

/// The worker's default `max_body_bytes`.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// The test accounts' one open_kfid: the README's examples use it.
const OPEN_KFID: &str = "wkXXXX";

/// An account as the parser sees it: WeCom with exactly one open_kfid (so it may be omitted),
/// chatbot with an `oa_appid` (so channels 0/5/6 need no `chatbot.appid`).
struct Account {
    channel: Channel,
    open_kfids: Vec<String>,
}

impl AccountView for Account {
    fn name(&self) -> &str {
        "schema-test"
    }
    fn channel(&self) -> Channel {
        self.channel
    }
    fn open_kfids(&self) -> &[String] {
        &self.open_kfids
    }
    fn appid(&self) -> Option<&str> {
        Some("wxbotappid")
    }
    fn default_channel(&self) -> i64 {
        0
    }
    fn oa_appid(&self) -> Option<&str> {
        Some("wxoaappid")
    }
}

fn account(channel: Channel) -> Account {
    Account {
        channel,
        open_kfids: vec![OPEN_KFID.to_owned()],
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema() -> Value {
    let path = root().join("schemas/job.schema.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The two channels' validators (`#/$defs/chatbot_job`, `#/$defs/wecom_job`) and the top one.
struct Validators {
    chatbot: jsonschema::Validator,
    wecom: jsonschema::Validator,
    top: jsonschema::Validator,
}

impl Validators {
    fn new() -> Self {
        let schema = schema();
        let build = |s: &Value| {
            jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(s)
                .unwrap()
        };
        let sub = |def: &str| {
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$ref": format!("#/$defs/{def}"),
                "$defs": schema["$defs"],
            })
        };
        Validators {
            chatbot: build(&sub("chatbot_job")),
            wecom: build(&sub("wecom_job")),
            top: build(&schema),
        }
    }

    fn of(&self, channel: Channel) -> &jsonschema::Validator {
        match channel {
            Channel::Chatbot => &self.chatbot,
            Channel::Wecom => &self.wecom,
        }
    }

    /// The schema's verdict on a body: `Err` lists why it is refused (a body that is not JSON
    /// is refused by both, as the parser refuses it with `invalid_json`).
    fn check(&self, channel: Channel, body: &[u8]) -> Result<(), String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let errors: Vec<String> = self
            .of(channel)
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            if !self.top.is_valid(&value) {
                return Err("valid for the channel but not for the top-level schema".into());
            }
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

fn parse(channel: Channel, body: &[u8]) -> Result<job::Job, job::JobError> {
    job::parse(body, None, &account(channel), MAX_BODY)
}

fn channel_named(name: &str) -> Channel {
    match name {
        "chatbot" => Channel::Chatbot,
        "wecom" => Channel::Wecom,
        other => panic!("corpus file names start with chatbot. or wecom., not {other:?}"),
    }
}

fn corpus(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = root().join("tests/data/jobs").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let body = std::fs::read(&p).unwrap();
            (p, body)
        })
        .collect()
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

#[test]
fn every_good_job_is_accepted_by_both_the_schema_and_the_parser() {
    let v = Validators::new();
    let files = corpus("good");
    assert!(files.len() >= 30, "only {} good jobs", files.len());
    let mut failures = Vec::new();
    let mut kinds = BTreeSet::new();
    let mut msgtypes = BTreeSet::new();
    for (path, body) in &files {
        let name = stem(path);
        let channel = channel_named(name.split('.').next().unwrap());
        if let Err(e) = v.check(channel, body) {
            failures.push(format!("{name}: the schema refuses it: {e}"));
        }
        match parse(channel, body) {
            Ok(j) => {
                kinds.insert(format!("{}.{}", channel.as_str(), j.kind.as_str()));
                if let Some(m) = j.message {
                    msgtypes.insert(format!("{}.{}", channel.as_str(), m.msgtype));
                }
            }
            Err(e) => failures.push(format!("{name}: the parser refuses it: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // the corpus covers every kind and message type of each channel
    let mut want = BTreeSet::new();
    for k in ["send", "transfer", "broadcast"] {
        want.insert(format!("chatbot.{k}"));
        want.insert(format!("wecom.{k}"));
    }
    want.insert("wecom.event_reply".to_owned());
    want.insert("wecom.recall".to_owned());
    assert_eq!(kinds, want);
    let want: BTreeSet<String> = job::CHATBOT_MSGTYPES
        .iter()
        .map(|t| format!("chatbot.{t}"))
        .chain(job::WECOM_MSGTYPES.iter().map(|t| format!("wecom.{t}")))
        .collect();
    assert_eq!(msgtypes, want);
}

#[test]
fn every_bad_job_is_refused_by_both_with_the_reason_its_name_gives() {
    let v = Validators::new();
    let files = corpus("bad");
    assert!(files.len() >= 30, "only {} bad jobs", files.len());
    let mut failures = Vec::new();
    let mut reasons = BTreeSet::new();
    for (path, body) in &files {
        let name = stem(path);
        let mut parts = name.split('.');
        let channel = channel_named(parts.next().unwrap());
        let reason = parts.next().unwrap_or("");
        assert!(
            job::Reason::parse(reason).is_some(),
            "{name}: {reason:?} is not a reason word (name files CHANNEL.REASON.WHAT.json)"
        );
        reasons.insert(reason.to_owned());
        if v.check(channel, body).is_ok() {
            failures.push(format!("{name}: the schema accepts it"));
        }
        match parse(channel, body) {
            Ok(_) => failures.push(format!("{name}: the parser accepts it")),
            Err(e) if e.reason != reason => {
                failures.push(format!("{name}: the parser says {e}"));
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // every reason the schema can express has a file (the others depend on the account, the
    // body's size or its encoding: unknown_open_kfid, missing_open_kfid, missing_appid,
    // body_too_large, invalid_utf8; too_many_recipients is built below, 100 001 recipients;
    // not_before_after_not_after compares two fields, which JSON Schema cannot)
    for r in [
        "invalid_json",
        "missing_job_id",
        "invalid_job_id",
        "invalid_kind",
        "invalid_to",
        "missing_message",
        "invalid_message",
        "unknown_msgtype",
        "message_over_limit",
        "invalid_open_kfid",
        "invalid_gate",
        "invalid_not_after",
        "invalid_not_before",
        "invalid_chatbot",
        "invalid_code",
        "invalid_transfer",
        "invalid_kefustate",
        "invalid_expires",
        "invalid_recall_target",
        "recall_wecom_only",
    ] {
        assert!(reasons.contains(r), "no bad job for {r}");
    }
}

#[test]
fn a_broadcast_over_the_recipient_limit_is_refused_by_both() {
    let v = Validators::new();
    for (n, ok) in [
        (job::MAX_BROADCAST_RECIPIENTS, true),
        (job::MAX_BROADCAST_RECIPIENTS + 1, false),
    ] {
        let body = serde_json::to_vec(&json!({
            "job_id": "b-many", "kind": "broadcast", "to": vec!["u"; n], "message": {"text": "x"},
        }))
        .unwrap();
        for channel in [Channel::Chatbot, Channel::Wecom] {
            assert_eq!(v.check(channel, &body).is_ok(), ok, "schema, {n}");
            match parse(channel, &body) {
                Ok(_) => assert!(ok, "parser accepts {n}"),
                Err(e) => {
                    assert!(!ok, "parser refuses {n}: {e}");
                    assert_eq!(e.reason, "too_many_recipients");
                }
            }
        }
    }
}

/// One JSON example of the README: a whole job, or a message in a channel's section.
struct Example {
    line: usize,
    section: String,
    value: Value,
}

/// The ```json blocks from "## The job format" up to the section after "## Broadcasts"; a
/// block is one JSON value or one value per line.
fn readme_examples() -> Vec<Example> {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut out = Vec::new();
    let (mut inside, mut seen_broadcasts, mut section) = (false, false, String::new());
    let mut block: Option<(usize, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        if let Some((start, lines)) = block.as_mut() {
            if line.starts_with("```") {
                let whole = lines.join("\n");
                let (start, lines) = (*start, std::mem::take(lines));
                block = None;
                if let Ok(value) = serde_json::from_str::<Value>(&whole) {
                    out.push(Example {
                        line: start,
                        section: section.clone(),
                        value,
                    });
                    continue;
                }
                for (k, l) in lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let value = serde_json::from_str(l).unwrap_or_else(|e| {
                        panic!("README.md:{}: not JSON: {e}: {l}", start + k + 1)
                    });
                    out.push(Example {
                        line: start + k + 1,
                        section: section.clone(),
                        value,
                    });
                }
            } else {
                lines.push(line);
            }
            continue;
        }
        if let Some(h) = line.strip_prefix("## ") {
            if h == "The job format" {
                inside = true;
            } else if inside && seen_broadcasts {
                break;
            }
            seen_broadcasts |= h == "Broadcasts";
        }
        if line.starts_with('#') {
            section = line.to_owned();
        }
        if inside && line.trim() == "```json" {
            block = Some((i + 1, Vec::new()));
        }
    }
    out
}

#[test]
fn every_readme_job_example_gets_the_same_verdict_from_the_schema_and_the_parser() {
    let v = Validators::new();
    let examples = readme_examples();
    assert!(
        examples.len() >= 20,
        "only {} README examples",
        examples.len()
    );
    let mut failures = Vec::new();
    for (n, ex) in examples.iter().enumerate() {
        let at = format!("README.md:{} ({})", ex.line, ex.section);
        if ex.value.get("job_id").is_some() {
            // a whole job: the same verdict on both channels, and valid on at least one
            let body = serde_json::to_vec(&ex.value).unwrap();
            let mut accepted = 0;
            for channel in [Channel::Chatbot, Channel::Wecom] {
                let schema = v.check(channel, &body);
                let parser = parse(channel, &body);
                accepted += usize::from(parser.is_ok());
                if schema.is_ok() != parser.is_ok() {
                    failures.push(format!(
                        "{at} on {}: schema {schema:?}, parser {:?}",
                        channel.as_str(),
                        parser.err()
                    ));
                }
            }
            if accepted == 0 {
                failures.push(format!("{at}: valid on no channel: {}", ex.value));
            }
            continue;
        }
        // a message example: in the section of its channel, sent as the message of a job
        let section = ex.section.to_lowercase();
        let channel = if section.contains("chatbot") {
            Channel::Chatbot
        } else if section.contains("wecom") {
            Channel::Wecom
        } else {
            failures.push(format!(
                "{at}: a JSON example that is no job (no job_id) outside a channel's section"
            ));
            continue;
        };
        let body = serde_json::to_vec(&json!({
            "job_id": format!("readme-{n}"), "to": "readme-user", "message": ex.value,
        }))
        .unwrap();
        if let Err(e) = v.check(channel, &body) {
            failures.push(format!("{at}: the schema refuses it: {e}"));
        }
        if let Err(e) = parse(channel, &body) {
            failures.push(format!("{at}: the parser refuses it: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The quoted names in `src` after each of `prefixes` (`obj.get("kind")` → `kind`).
fn names_after(src: &str, prefixes: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in prefixes {
        for (at, _) in src.match_indices(p) {
            let rest = &src[at + p.len()..];
            if let Some(end) = rest.find('"') {
                out.insert(rest[..end].to_owned());
            }
        }
    }
    out
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_schema_knows_every_field_message_type_and_limit_of_the_parser() {
    let s = schema();
    let defs = &s["$defs"];
    let src = |f: &str| std::fs::read_to_string(root().join("src/domain/job").join(f)).unwrap();

    // top-level fields: what parse.rs reads (and chatbot.rs, for a chatbot transfer's
    // kefustate and expires) is what each channel's job lists
    let mut read = names_after(&src("parse.rs"), &["obj.get(\""]);
    read.extend(names_after(&src("chatbot.rs"), &["obj.get(\""]));
    for def in ["chatbot_job", "wecom_job"] {
        assert_eq!(keys(&defs[def]["properties"]), read, "{def} vs parse.rs");
        assert_eq!(defs[def]["additionalProperties"], json!(false));
    }
    // the chatbot extras
    let chatbot = src("chatbot.rs");
    let extras = names_after(&chatbot, &["map.get(\"", "string(\""]);
    assert_eq!(keys(&defs["chatbot_extras"]["properties"]), extras);

    // message types
    let set = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(
        keys(&defs["chatbot_message"]["properties"]),
        set(&job::CHATBOT_MSGTYPES)
    );
    assert_eq!(
        keys(&defs["wecom_message"]["properties"]),
        set(&job::WECOM_MSGTYPES)
    );
    let event_rule = defs["wecom_job"]["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["if"]["properties"]["kind"]["const"] == "event_reply")
        .expect("wecom_job has an event_reply rule");
    let event = &event_rule["then"]["properties"]["message"]["propertyNames"];
    let event: BTreeSet<String> = event["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(event, set(&job::WECOM_EVENT_MSGTYPES));
    let chatbot_events: BTreeSet<String> = defs["chatbot_extras"]["properties"]["event"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(chatbot_events, set(&job::CHATBOT_EVENTS));

    // limits (maxLength in characters against the parser's bytes: see the schema's description)
    let n = |v: &Value| v.as_u64().unwrap() as usize;
    assert_eq!(
        n(&defs["chatbot_text"]["maxLength"]),
        job::CHATBOT_TEXT_MAX_BYTES
    );
    assert_eq!(
        n(&defs["chatbot_news"]["properties"]["articles"]["maxItems"]),
        job::CHATBOT_NEWS_MAX_ARTICLES
    );
    assert_eq!(
        n(&defs["chatbot_message"]["properties"]["multimsg"]["maxItems"]),
        job::CHATBOT_MULTIMSG_MAX_ITEMS
    );
    assert_eq!(
        n(&defs["wecom_text"]["anyOf"][0]["maxLength"]),
        job::WECOM_TEXT_MAX_BYTES
    );
    let link = &defs["wecom_link"]["properties"];
    assert_eq!(
        n(&link["title"]["maxLength"]),
        job::WECOM_LINK_TITLE_MAX_BYTES
    );
    assert_eq!(
        n(&link["desc"]["maxLength"]),
        job::WECOM_LINK_DESC_MAX_BYTES
    );
    assert_eq!(n(&link["url"]["maxLength"]), job::WECOM_LINK_URL_MAX_BYTES);
    assert_eq!(
        n(&defs["wecom_miniprogram"]["properties"]["title"]["maxLength"]),
        job::WECOM_MINIPROGRAM_TITLE_MAX_BYTES
    );
    let menu = &defs["wecom_msgmenu"]["properties"];
    assert_eq!(
        n(&menu["head_content"]["maxLength"]),
        job::WECOM_MENU_HEAD_MAX_BYTES
    );
    assert_eq!(
        n(&menu["tail_content"]["maxLength"]),
        job::WECOM_MENU_TAIL_MAX_BYTES
    );
    assert_eq!(n(&menu["list"]["maxItems"]), job::WECOM_MENU_MAX_ITEMS);
    assert_eq!(n(&defs["recipient"]["maxLength"]), job::MAX_RECIPIENT_CHARS);
    assert_eq!(
        n(&defs["recipients"]["maxItems"]),
        job::MAX_BROADCAST_RECIPIENTS
    );
    assert_eq!(
        defs["job_id"]["pattern"],
        json!(format!("^[0-9A-Za-z_.:-]{{1,{}}}$", job::MAX_JOB_ID_LEN))
    );
}
