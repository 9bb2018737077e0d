//! The deployment artifacts under `deploy/` agree with the code they deploy.
//!
//! * Every metric the Grafana dashboard and the Prometheus alert rules query is defined in
//!   `src/telemetry.rs` and is exported on `/metrics` by a running worker that has done the
//!   things the metrics count.
//! * `deploy/rabbitmq/definitions.json` is exactly the topology a worker declares for the
//!   accounts of `deploy/wxdispatch.example.toml`, and a broker that imported it accepts the
//!   worker's own declarations unchanged.
//! * The compose stack, the Kubernetes manifests and the Dockerfile name the same accounts,
//!   ports, paths and secrets.
//!
//! No Docker engine or cluster runs the tests, so the last point is checked on the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use wxdispatch::app::Worker;
use wxdispatch::config::{AccountConfig, Config, Rate, Secret};
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{AES_KEY, Env, PG_ADMIN, chatbot_account, rabbitmqctl, wecom_account};

/// How long the metrics test waits for every queried series to show up. The slowest is the
/// database batch histogram, recorded every 5 s.
const METRICS_TIMEOUT: Duration = Duration::from_secs(45);
/// How long an asynchronous `rabbitmqctl import_definitions` may take to show.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(15);
/// The vhost deploy/rabbitmq/definitions.json describes.
const SHIPPED_VHOST: &str = "/";
/// Secrets given to the example accounts in place of their `*_file` keys.
const SECRET_KEYS: [&str; 3] = ["token", "secret", "encoding_aes_key"];

fn deploy_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy_path(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

/// Every document of a multi-document YAML file.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("deploy/{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn unique(prefix: &str) -> String {
    let r: u64 = rand::random();
    format!("{prefix}_{}_{:x}", std::process::id(), r & 0xffff_ffff)
}

// ---------------------------------------------------------------------------------- metrics

/// `wxdispatch_…` identifiers in a PromQL expression (every metric of the project has the
/// prefix; label values and names never start with it).
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while let Some(off) = expr[i..].find("wxdispatch_") {
        let start = i + off;
        let mut end = start;
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        if start == 0 || !ident(bytes[start - 1]) {
            out.insert(expr[start..end].to_owned());
        }
        i = end;
    }
}

/// PromQL of the dashboard: panel targets and template-variable queries.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The dashboard is importable as is: valid JSON, a uid, panels with queries on the
/// dashboard's own datasource variable, laid out without overlap on Grafana's 24 columns.
fn check_dashboard(d: &Value) -> Vec<String> {
    assert_eq!(d["uid"], "wxdispatch");
    assert!(d["title"].is_string());
    assert!(
        d["id"].is_null(),
        "an importable dashboard has no database id"
    );
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "the datasource is a variable, so the dashboard imports into any Grafana"
    );
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    let mut graphs = 0;
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{title} is wider than the dashboard");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: empty query"
            );
        }
    }
    assert!(graphs >= 12, "only {graphs} panels");
    let mut exprs = Vec::new();
    dashboard_exprs(d, &mut exprs);
    exprs
}

/// The rules file is valid YAML in Prometheus' layout; every alert has a severity, a summary
/// and a runbook link.
fn check_alerts(rules: &Value) -> Vec<String> {
    let groups = rules["groups"].as_array().expect("groups");
    assert!(!groups.is_empty());
    let mut names = BTreeSet::new();
    let mut exprs = Vec::new();
    for g in groups {
        assert!(g["name"].is_string());
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("only alerting rules here");
            assert!(names.insert(name.to_owned()), "duplicate alert {name}");
            let expr = r["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty(), "{name}: empty expr");
            let sev = r["labels"]["severity"].as_str();
            assert!(
                matches!(sev, Some("warning" | "critical")),
                "{name}: severity {sev:?}"
            );
            assert!(r["annotations"]["summary"].is_string(), "{name}: summary");
            assert!(
                r["annotations"]["runbook_url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(&format!("#{}", name.to_ascii_lowercase()))),
                "{name}: runbook_url must point at the README's section of the alert"
            );
            if let Some(f) = r.get("for") {
                let f = f.as_str().expect("for is a duration string");
                assert!(f.ends_with('m') || f.ends_with('s'), "{name}: for: {f}");
            }
            exprs.push(expr.to_owned());
        }
    }
    for required in [
        "WxdispatchDeadLettersRising",
        "WxdispatchLanePausedTooLong",
        "WxdispatchTokenRefreshFailing",
        "WxdispatchNoLaneConsumer",
        "WxdispatchHighRetryRate",
        "WxdispatchSyncLagHigh",
    ] {
        assert!(names.contains(required), "alert {required} missing");
    }
    exprs
}

/// Metric names `src/telemetry.rs` defines (`pub const X: &str = "wxdispatch_…";`).
fn telemetry_names() -> BTreeSet<String> {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/telemetry.rs"))
            .unwrap();
    src.lines()
        .filter(|l| l.trim_start().starts_with("pub const") && l.contains("&str"))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|n| n.starts_with("wxdispatch_"))
        .map(str::to_owned)
        .collect()
}

/// Series names of a Prometheus text exposition.
fn exposed_series(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

async fn wait_status(env: &Env, job: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = env.status_of(job).await;
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{job} never became {want} (is {got:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_query_only_metrics_a_running_worker_exports() {
    // (a) the files parse and have the expected shape
    let dashboard: Value = serde_json::from_str(&read("grafana/wxdispatch.json")).unwrap();
    let mut exprs = check_dashboard(&dashboard);
    exprs.extend(check_alerts(&yaml("prometheus/alerts.yml")));
    let mut referenced = BTreeSet::new();
    for e in &exprs {
        metric_names(e, &mut referenced);
    }
    assert!(referenced.len() >= 15, "{referenced:?}");

    // Each is a metric of src/telemetry.rs (a histogram through its _bucket/_sum/_count).
    let defined = telemetry_names();
    let base = |n: &str| -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(b) = n.strip_suffix(suffix)
                && defined.contains(b)
            {
                return b.to_owned();
            }
        }
        n.to_owned()
    };
    let undefined: Vec<&String> = referenced
        .iter()
        .filter(|n| !defined.contains(&base(n)))
        .collect();
    assert!(
        undefined.is_empty(),
        "queried but not defined in src/telemetry.rs: {undefined:?}"
    );
    let uncovered: Vec<&String> = defined
        .iter()
        .filter(|d| !referenced.iter().any(|r| &base(r) == *d))
        .collect();
    if !uncovered.is_empty() {
        eprintln!("note: metrics on no dashboard panel or alert: {uncovered:?}");
    }

    // (b) a worker that did everything the metrics count exports every queried series
    let accounts = |base: &str| {
        vec![
            chatbot_account("mbot", base),
            wecom_account("mkf", base),
            wecom_account("mbad", base),
        ]
    };
    let mut env = Env::new(accounts, SimOptions::default()).await;
    // A rate limit (the harness's accounts have none) so that jobs wait for the limiter.
    env.cfg.accounts[0].rate = Rate {
        per_second: Some(1000),
        per_minute: None,
        burst: Some(100),
        unlimited: false,
    };
    // A secret the simulator does not know: gettoken is refused (40001).
    env.cfg.accounts[2].secret = Secret::new("not-the-corp-secret");
    env.cfg.sync.poll_interval_secs = 1;
    let sim = env.sim();
    // Inbound: a customer message waiting for the first sync_msg.
    sim.customer_message("mkf", "wkKF1", "wmCustomer", "hello");
    let worker = env.start_worker().await;
    let addr = worker.admin_addr.expect("the worker serves /metrics");
    let text = |id: &str, to: &str| json!({"job_id": id, "to": to, "message": {"text": id}});

    env.publish("mbot", &text("dep-sent", "oUser")).await;
    wait_status(&env, "dep-sent", "sent").await;
    sim.script("mbot", vec![-1]); // system busy: one transient retry
    env.publish("mbot", &text("dep-retry", "oUser")).await;
    wait_status(&env, "dep-retry", "sent").await;
    sim.script("mbot", vec![3014]); // content rejected: a dead letter
    env.publish("mbot", &text("dep-dead", "oUser")).await;
    wait_status(&env, "dep-dead", "dead").await;
    sim.script("mkf", vec![45009]); // throttled: the lane pauses
    env.publish("mkf", &text("dep-throttle", "wmCustomer"))
        .await;
    wait_status(&env, "dep-throttle", "sent").await;
    env.publish("mbot", &text("dep-sent", "oUser")).await; // a duplicate
    env.publish("mbad", &text("dep-bad", "wmCustomer")).await;
    env.publish(
        "mbot",
        &json!({"kind": "broadcast", "job_id": "dep-bc", "to": ["oFan1", "oFan2"],
                "message": {"text": "to all"}}),
    )
    .await;
    // WeCom reports the throttled-then-sent message undelivered.
    sim.push_event(
        "mkf",
        "wkKF1",
        json!({"event_type": "msg_send_fail", "external_userid": "wmCustomer",
               "fail_msgid": "dep-throttle", "fail_type": 4}),
    );

    let client = reqwest::Client::new();
    let deadline = Instant::now() + METRICS_TIMEOUT;
    let missing = loop {
        let body = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap();
        let exposed = exposed_series(&body);
        let missing: Vec<String> = referenced.difference(&exposed).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    worker.stop().await.unwrap();
    env.cleanup().await;
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts query series a worker does not export: {missing:?}"
    );
}

// -------------------------------------------------------------------------------- topology

/// Exchanges, queues and bindings of one vhost, in a form both `definitions.json` and
/// `rabbitmqctl list_*` map to.
#[derive(Debug, Default, PartialEq)]
struct Topology {
    /// name → {type, durable, auto_delete, internal, arguments}
    exchanges: BTreeMap<String, Value>,
    /// name → {durable, auto_delete, arguments}
    queues: BTreeMap<String, Value>,
    /// (source, destination type, destination, routing key, arguments)
    bindings: BTreeSet<(String, String, String, String, String)>,
}

fn exchange_entry(
    ty: &Value,
    durable: &Value,
    auto_delete: &Value,
    internal: &Value,
    args: Value,
) -> Value {
    json!({"type": ty, "durable": durable, "auto_delete": auto_delete, "internal": internal, "arguments": args})
}

fn queue_entry(durable: &Value, auto_delete: &Value, args: Value) -> Value {
    json!({"durable": durable, "auto_delete": auto_delete, "arguments": args})
}

/// What a definitions file declares for `vhost`.
fn definitions_topology(defs: &Value, vhost: &str) -> Topology {
    let of_vhost = |section: &str| -> Vec<Value> {
        defs[section]
            .as_array()
            .unwrap_or_else(|| panic!("definitions: no {section}"))
            .iter()
            .filter(|o| o["vhost"] == vhost)
            .cloned()
            .collect()
    };
    let mut t = Topology::default();
    for e in of_vhost("exchanges") {
        let name = e["name"].as_str().unwrap().to_owned();
        let entry = exchange_entry(
            &e["type"],
            &e["durable"],
            &e["auto_delete"],
            &e["internal"],
            e["arguments"].clone(),
        );
        assert!(
            t.exchanges.insert(name.clone(), entry).is_none(),
            "exchange {name} twice"
        );
    }
    for q in of_vhost("queues") {
        let name = q["name"].as_str().unwrap().to_owned();
        let entry = queue_entry(&q["durable"], &q["auto_delete"], q["arguments"].clone());
        assert!(
            t.queues.insert(name.clone(), entry).is_none(),
            "queue {name} twice"
        );
    }
    for b in of_vhost("bindings") {
        let s = |k: &str| b[k].as_str().unwrap().to_owned();
        t.bindings.insert((
            s("source"),
            s("destination_type"),
            s("destination"),
            s("routing_key"),
            b["arguments"].to_string(),
        ));
    }
    t
}

fn rabbitmqctl_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .args(["--formatter", "json", "--quiet"])
        .output()
        .expect("rabbitmqctl must be installed for the tests");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rabbitmqctl {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `rabbitmqctl import_definitions`, the JSON on standard input (the CLI runs as the broker's
/// user, which cannot read the test's temporary files).
fn import_definitions(json: &[u8]) {
    use std::io::Write;
    let mut child = Command::new("rabbitmqctl")
        .args(["import_definitions", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rabbitmqctl must be installed for the tests");
    child.stdin.take().unwrap().write_all(json).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "rabbitmqctl import_definitions: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `[[name, amqp type, value], …]` (rabbitmqctl's JSON for a field table) → `{name: value}`.
fn field_table(v: &Value) -> Value {
    let mut m = serde_json::Map::new();
    for item in v.as_array().expect("arguments") {
        let a = item.as_array().expect("[name, type, value]");
        m.insert(a[0].as_str().unwrap().to_owned(), a[2].clone());
    }
    Value::Object(m)
}

/// What exists in `vhost` (RabbitMQ's predeclared `amq.*` and default exchange left out).
fn broker_topology(vhost: &str) -> Topology {
    let mut t = Topology::default();
    for e in rabbitmqctl_json(&[
        "list_exchanges",
        "-p",
        vhost,
        "name",
        "type",
        "durable",
        "auto_delete",
        "internal",
        "arguments",
    ]) {
        let name = e["name"].as_str().unwrap().to_owned();
        if name.is_empty() || name.starts_with("amq.") {
            continue;
        }
        let entry = exchange_entry(
            &e["type"],
            &e["durable"],
            &e["auto_delete"],
            &e["internal"],
            field_table(&e["arguments"]),
        );
        t.exchanges.insert(name, entry);
    }
    for q in rabbitmqctl_json(&[
        "list_queues",
        "-p",
        vhost,
        "name",
        "durable",
        "auto_delete",
        "arguments",
    ]) {
        let name = q["name"].as_str().unwrap().to_owned();
        t.queues.insert(
            name,
            queue_entry(
                &q["durable"],
                &q["auto_delete"],
                field_table(&q["arguments"]),
            ),
        );
    }
    for b in rabbitmqctl_json(&[
        "list_bindings",
        "-p",
        vhost,
        "source_name",
        "destination_kind",
        "destination_name",
        "routing_key",
        "arguments",
    ]) {
        let s = |k: &str| b[k].as_str().unwrap().to_owned();
        if s("source_name").is_empty() {
            continue; // the default exchange's implicit binding of every queue
        }
        t.bindings.insert((
            s("source_name"),
            s("destination_kind"),
            s("destination_name"),
            s("routing_key"),
            field_table(&b["arguments"]).to_string(),
        ));
    }
    t
}

/// Fail with what differs, by name.
fn assert_same_topology(what: &str, got: &Topology, shipped: &Topology) {
    fn diff<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
        kind: &str,
        got: &BTreeMap<K, V>,
        want: &BTreeMap<K, V>,
        out: &mut Vec<String>,
    ) {
        for (k, v) in got {
            match want.get(k) {
                None => out.push(format!("{kind} {k:?} is not in definitions.json: {v:?}")),
                Some(w) if w != v => {
                    out.push(format!("{kind} {k:?}: {v:?}, definitions.json says {w:?}"))
                }
                Some(_) => {}
            }
        }
        for k in want.keys().filter(|k| !got.contains_key(k)) {
            out.push(format!("{kind} {k:?} is only in definitions.json"));
        }
    }
    let mut out = Vec::new();
    diff("exchange", &got.exchanges, &shipped.exchanges, &mut out);
    diff("queue", &got.queues, &shipped.queues, &mut out);
    let as_map =
        |s: &BTreeSet<_>| -> BTreeMap<_, ()> { s.iter().cloned().map(|b| (b, ())).collect() };
    diff(
        "binding",
        &as_map(&got.bindings),
        &as_map(&shipped.bindings),
        &mut out,
    );
    assert!(out.is_empty(), "{what}:\n  {}", out.join("\n  "));
}

/// A fresh vhost and database name; removed by [`Scratch::cleanup`].
struct Scratch {
    vhost: String,
    db: String,
}

impl Scratch {
    fn new() -> Self {
        let s = Scratch {
            vhost: unique("wxdd"),
            db: unique("wxdd"),
        };
        rabbitmqctl(&["add_vhost", &s.vhost]);
        rabbitmqctl(&["set_permissions", "-p", &s.vhost, "guest", ".*", ".*", ".*"]);
        s
    }

    async fn cleanup(self) {
        let vhost = self.vhost.clone();
        let _ = tokio::task::spawn_blocking(move || rabbitmqctl(&["delete_vhost", &vhost])).await;
        if let Ok(admin) = PgPool::connect(PG_ADMIN).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db
            )))
            .execute(&admin)
            .await;
        }
    }
}

/// A `wxdispatch.toml` made runnable here: `*_file` secrets replaced by dummy values, the
/// broker and database pointed at `vhost` and `db`, the HTTP listener off, the platforms nowhere.
/// Everything else (accounts, broker settings, retry tiers) is as written.
fn runnable(toml_text: &str, vhost: &str, db: &str, env: &[(String, String)]) -> Config {
    let mut root: toml::Table = toml::from_str(toml_text).unwrap();
    let table = |root: &toml::Table, k: &str| -> toml::Table {
        root.get(k)
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default()
    };
    let mut broker = table(&root, "broker");
    broker.insert(
        "url".into(),
        format!("amqp://guest:guest@127.0.0.1:5672/{vhost}").into(),
    );
    root.insert("broker".into(), broker.into());
    let mut database = table(&root, "database");
    database.insert(
        "url".into(),
        format!("postgres://postgres@127.0.0.1:5432/{db}").into(),
    );
    database.remove("password_file");
    root.insert("database".into(), database.into());
    let mut http = table(&root, "http");
    http.insert("listen".into(), "".into());
    http.insert("admin_listen".into(), "".into());
    root.insert("http".into(), http.into());
    if let Some(accounts) = root.get_mut("account").and_then(|a| a.as_array_mut()) {
        for a in accounts.iter_mut().filter_map(|a| a.as_table_mut()) {
            for key in SECRET_KEYS {
                let file = format!("{key}_file");
                if a.remove(&file).is_some() || a.contains_key(key) {
                    let dummy = if key == "encoding_aes_key" {
                        AES_KEY.to_owned()
                    } else {
                        format!("dummy-{key}")
                    };
                    a.insert(key.into(), dummy.into());
                }
            }
            a.insert("base_url".into(), "http://127.0.0.1:9".into());
        }
    }
    Config::from_toml_with_env(&toml::to_string(&root).unwrap(), env).unwrap()
}

fn account_names(cfg: &Config) -> BTreeSet<String> {
    cfg.accounts
        .iter()
        .map(|a: &AccountConfig| a.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_json_is_the_topology_the_worker_declares() {
    let defs: Value = serde_json::from_str(&read("rabbitmq/definitions.json")).unwrap();
    let shipped = definitions_topology(&defs, SHIPPED_VHOST);
    let example = read("wxdispatch.example.toml");

    // A worker with the example config declares exactly what definitions.json holds.
    let a = Scratch::new();
    let cfg = runnable(&example, &a.vhost, &a.db, &[]);
    let worker = Worker::start(cfg.clone()).await.unwrap();
    let declared = tokio::task::spawn_blocking({
        let v = a.vhost.clone();
        move || broker_topology(&v)
    })
    .await
    .unwrap();
    worker.stop().await.unwrap();
    a.cleanup().await;
    assert_same_topology(
        "the worker (example config) declares another topology than deploy/rabbitmq/definitions.json",
        &declared,
        &shipped,
    );
    let lanes: BTreeSet<String> = account_names(&cfg)
        .iter()
        .map(|n| format!("wxdispatch.{n}"))
        .collect();
    assert!(
        lanes.iter().all(|l| shipped.queues.contains_key(l)),
        "{lanes:?}"
    );

    // A broker that imported definitions.json (as compose does at boot) holds the same, and
    // a worker starting against it finds its declarations equivalent (no
    // PRECONDITION_FAILED on argument types) and adds nothing.
    let b = Scratch::new();
    let want_bindings = shipped.bindings.len();
    let mut imported_defs = defs.clone();
    imported_defs["vhosts"] = json!([{ "name": b.vhost }]);
    for section in ["exchanges", "queues", "bindings", "policies"] {
        if let Some(items) = imported_defs[section].as_array_mut() {
            for o in items {
                o["vhost"] = json!(b.vhost);
            }
        }
    }
    let vhost = b.vhost.clone();
    let imported = tokio::task::spawn_blocking(move || {
        import_definitions(&serde_json::to_vec(&imported_defs).unwrap());
        // The import runs asynchronously in the broker: wait for the last object to appear.
        let deadline = Instant::now() + IMPORT_TIMEOUT;
        loop {
            let t = broker_topology(&vhost);
            if t.bindings.len() >= want_bindings || Instant::now() > deadline {
                return t;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert_same_topology(
        "definitions.json does not import as written",
        &imported,
        &shipped,
    );
    let worker = Worker::start(runnable(&example, &b.vhost, &b.db, &[]))
        .await
        .expect("a worker starts against a broker that imported definitions.json");
    let vhost = b.vhost.clone();
    let after = tokio::task::spawn_blocking(move || broker_topology(&vhost))
        .await
        .unwrap();
    worker.stop().await.unwrap();
    b.cleanup().await;
    assert_same_topology("the worker changed an imported topology", &after, &shipped);
}

// ------------------------------------------------------------------- compose, k8s, Docker

/// Names of the example config's accounts.
fn example_accounts() -> BTreeSet<String> {
    let root: toml::Table = toml::from_str(&read("wxdispatch.example.toml")).unwrap();
    root["account"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect()
}

fn find_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/k8s"))
}

#[test]
fn compose_kubernetes_and_docker_files_agree() {
    let accounts = example_accounts();
    let defs: Value = serde_json::from_str(&read("rabbitmq/definitions.json")).unwrap();
    // The lanes' delivery limit is the `wxdispatch-lanes` policy's.
    let lane_limit = defs["policies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "wxdispatch-lanes"))
        .expect("definitions.json: policy wxdispatch-lanes")["definition"]["delivery-limit"]
        .clone();

    // ---- compose
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_object().expect("services");
    for s in [
        "rabbitmq",
        "postgres",
        "simulator",
        "wxdispatch",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(s), "compose service {s}");
    }
    assert!(
        services["rabbitmq"]["image"]
            .as_str()
            .unwrap()
            .starts_with("rabbitmq:3.13-management")
    );
    assert!(
        services["postgres"]["image"]
            .as_str()
            .unwrap()
            .starts_with("postgres:16")
    );
    assert_eq!(services["wxdispatch"]["command"], json!(["run"]));
    assert_eq!(
        services["simulator"]["command"],
        json!(["simulate", "--listen", "0.0.0.0:9900"])
    );
    for (name, s) in services {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let v = v.as_str().unwrap();
            if let Some(local) = v.strip_prefix("./") {
                let local = local.split(':').next().unwrap();
                assert!(
                    deploy_path(local).exists(),
                    "compose {name} mounts missing deploy/{local}"
                );
            }
        }
    }
    let rabbit_mounts: Vec<&str> = services["rabbitmq"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        rabbit_mounts
            .iter()
            .any(|m| m.starts_with("./rabbitmq/definitions.json:/etc/rabbitmq/definitions.d/"))
    );
    assert!(
        read("rabbitmq/rabbitmq.conf")
            .contains("definitions.local.path = /etc/rabbitmq/definitions.d")
    );
    let users: Value = serde_json::from_str(&read("compose/rabbitmq-users.json")).unwrap();
    let compose_toml = read("compose/wxdispatch.toml");
    let user = users["users"][0]["name"].as_str().unwrap();
    assert!(
        compose_toml.contains(&format!("amqp://{user}:")),
        "the worker logs in as the imported user"
    );

    // compose's wxdispatch.toml: the example's accounts, on the simulator service
    let env = vec![("WXDISPATCH__DATABASE__PASSWORD".to_owned(), "x".to_owned())];
    let cfg =
        Config::from_toml_with_env(&compose_toml, &env).expect("compose/wxdispatch.toml is valid");
    assert_eq!(
        account_names(&cfg),
        accounts,
        "compose accounts = example accounts = definitions.json lanes"
    );
    assert!(
        cfg.accounts
            .iter()
            .all(|a| a.base_url.as_deref() == Some("http://simulator:9900"))
    );
    assert_eq!(cfg.http.listen, "0.0.0.0:9464");
    assert_eq!(cfg.http.admin_listen, "0.0.0.0:9465");
    // Every published port is on the host's loopback: the simulator's unauthenticated admin
    // API and the worker's admin listener are not reachable from other machines.
    for (name, s) in services {
        for p in s["ports"].as_array().into_iter().flatten() {
            let p = p.as_str().unwrap();
            assert!(
                p.starts_with("127.0.0.1:"),
                "compose {name} publishes {p} beyond the host's loopback"
            );
        }
    }
    let published: Vec<&str> = services["wxdispatch"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(published, ["127.0.0.1:9464:9464", "127.0.0.1:9465:9465"]);
    assert!(cfg.broker.url.contains("@rabbitmq:5672/"));
    assert!(cfg.database.url.contains("@postgres:5432/"));
    assert_eq!(json!(cfg.broker.delivery_limit), lane_limit);

    // prometheus + grafana
    let prom = yaml("prometheus/prometheus.yml");
    assert_eq!(
        prom["scrape_configs"][0]["static_configs"][0]["targets"],
        json!(["wxdispatch:9465"]),
        "Prometheus scrapes the admin listener"
    );
    let rule_file = prom["rule_files"][0].as_str().unwrap();
    let prom_mounts: Vec<&str> = services["prometheus"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        prom_mounts.contains(&format!("./prometheus/alerts.yml:{rule_file}:ro").as_str()),
        "{prom_mounts:?}"
    );
    let provider = yaml("grafana/provisioning/dashboards/wxdispatch.yaml");
    let dash_dir = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let graf_mounts: Vec<&str> = services["grafana"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        graf_mounts
            .iter()
            .any(|m| m.starts_with(&format!("./grafana/wxdispatch.json:{dash_dir}/"))),
        "{graf_mounts:?}"
    );
    let ds = yaml("grafana/provisioning/datasources/prometheus.yaml");
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");

    // ---- Kubernetes
    let mut docs = Vec::new();
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(deploy_path("k8s")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") {
            docs.extend(yaml_docs(&format!("k8s/{name}")));
            files.insert(name);
        }
    }
    let kustomization = find_kind(&docs, "Kustomization");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    files.remove("kustomization.yaml");
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");

    let secret = find_kind(&docs, "Secret");
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    let secret_data = secret["stringData"].as_object().unwrap();
    for (k, v) in secret_data {
        assert!(
            v.as_str().unwrap().contains("REPLACE_ME"),
            "Secret template value {k} must be a placeholder"
        );
    }

    let deployment = find_kind(&docs, "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    let c = &pod["containers"][0];
    assert_eq!(c["args"], json!(["run"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["port"], "admin",
            "{probe} on the admin listener"
        );
    }
    let container_port = |name: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .clone()
    };
    assert_eq!(container_port("http"), 9464);
    assert_eq!(container_port("admin"), 9465);
    let pod_annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(pod_annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        pod_annotations["prometheus.io/port"], "9465",
        "Prometheus scrapes each pod's admin port"
    );
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let mount_of = |volume_kind: &str, name: &str| -> String {
        let vol = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v[volume_kind]["name"] == name || v[volume_kind]["secretName"] == name);
        let vol = vol.unwrap_or_else(|| panic!("no {volume_kind} volume for {name}"));
        let m = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == vol["name"])
            .unwrap();
        m["mountPath"].as_str().unwrap().to_owned()
    };
    let configmap = find_kind(&docs, "ConfigMap");
    let cm_name = configmap["metadata"]["name"].as_str().unwrap();
    let config_dir = mount_of("configMap", cm_name);
    let secret_dir = mount_of("secret", secret_name);
    let env_of = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
    };
    let (cm_file, cm_toml) = configmap["data"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert_eq!(
        env_of("WXDISPATCH_CONFIG").unwrap()["value"],
        format!("{config_dir}/{cm_file}")
    );
    let broker_key =
        env_of("WXDISPATCH__BROKER__URL").unwrap()["valueFrom"]["secretKeyRef"].clone();
    assert_eq!(broker_key["name"], secret_name);
    assert!(secret_data.contains_key(broker_key["key"].as_str().unwrap()));
    // every *_file of the ConfigMap's config is a key of the Secret, mounted where it says
    let cm_toml = cm_toml.as_str().unwrap();
    for line in cm_toml.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim().ends_with("_file") {
            let path = value.split('"').nth(1).unwrap();
            let file = path
                .strip_prefix(&format!("{secret_dir}/"))
                .unwrap_or_else(|| panic!("{path} is not under {secret_dir}"));
            assert!(
                secret_data.contains_key(file),
                "{path}: no key {file} in the Secret"
            );
        }
    }
    let broker_env = vec![(
        "WXDISPATCH__BROKER__URL".to_owned(),
        "amqp://u:p@rabbitmq:5672/%2f".to_owned(),
    )];
    let k8s_cfg = runnable(cm_toml, "unused", "unused", &broker_env);
    assert_eq!(
        account_names(&k8s_cfg),
        accounts,
        "ConfigMap accounts = example accounts"
    );
    assert_eq!(json!(k8s_cfg.broker.delivery_limit), lane_limit);
    let k8s_raw: toml::Table = toml::from_str(cm_toml).unwrap();
    assert_eq!(k8s_raw["http"]["listen"].as_str(), Some("0.0.0.0:9464"));
    // In the pod the admin listener binds 0.0.0.0 (probes, Prometheus); the Service hides it.
    assert_eq!(
        k8s_raw["http"]["admin_listen"].as_str(),
        Some("0.0.0.0:9465")
    );
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() > k8s_cfg.worker.shutdown_grace_secs,
        "the pod is not killed before the worker's own shutdown grace ends"
    );

    let service = find_kind(&docs, "Service");
    let service_ports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(
        service_ports.len(),
        1,
        "the Service exposes the public port only"
    );
    assert_eq!(service_ports[0]["port"], 9464);
    assert_eq!(service_ports[0]["targetPort"], "http");
    assert!(
        service["metadata"]["annotations"]["prometheus.io/port"].is_null(),
        "no scrape through the Service: it has no admin port"
    );
    for (k, v) in deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["spec"]["selector"][k], v,
            "the Service selects the Deployment's pods"
        );
    }

    let scaled = find_kind(&docs, "ScaledObject");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let mut queues = BTreeSet::new();
    for t in scaled["spec"]["triggers"].as_array().unwrap() {
        assert_eq!(t["type"], "rabbitmq");
        assert_eq!(t["metadata"]["mode"], "QueueLength");
        queues.insert(t["metadata"]["queueName"].as_str().unwrap().to_owned());
    }
    let lanes: BTreeSet<String> = accounts.iter().map(|a| format!("wxdispatch.{a}")).collect();
    assert_eq!(queues, lanes, "one KEDA trigger per lane queue");
    let auth = find_kind(&docs, "TriggerAuthentication");
    assert_eq!(auth["spec"]["secretTargetRef"][0]["name"], secret_name);

    // ---- Dockerfile
    let dockerfile = read("Dockerfile");
    let instr = |name: &str| -> Vec<String> {
        dockerfile
            .lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_owned())
            .collect()
    };
    assert_eq!(instr("EXPOSE "), ["9464 9465"]);
    assert_eq!(instr("ENTRYPOINT "), [r#"["wxdispatch"]"#]);
    assert_eq!(instr("CMD "), [r#"["run"]"#]);
    assert!(instr("HEALTHCHECK").is_empty());
    assert!(instr("FROM ").len() >= 2, "multi-stage");
    let user = instr("USER ");
    assert!(
        user.last()
            .is_some_and(|u| !u.starts_with("root") && !u.starts_with("0")),
        "the runtime stage runs as a non-root user: {user:?}"
    );
    let ignore = read("Dockerfile.dockerignore");
    for needed in ["!Cargo.toml", "!Cargo.lock", "!src/", "!migrations/"] {
        assert!(
            ignore.lines().any(|l| l == needed),
            "Dockerfile.dockerignore must let {needed} through"
        );
    }
}
