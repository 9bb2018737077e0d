//! The README's publisher examples (`examples/python/publish.py`, `examples/node/publish.js`) run
//! as child processes against a live worker, the test's vhost and the simulator: each publishes
//! one job with confirms, mandatory and a correlation_id, waits for its own outcome event and
//! exits 0 on `sent`.
//!
//! First the delivery row and the simulator are checked (the publish half), then the example's
//! exit code and the event it printed (which needs the worker's outcome events).
//!
//! Without python3 + pika or node + `examples/node/node_modules` (`npm ci`) a test is skipped
//! with a note, except under `CI` (set by `.ci/run`'s caller), where it fails instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account, wecom_account};

/// How long an example may take end to end: its own outcome wait is 30 s.
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `None` (and a note) when the tool is missing outside CI; a panic under CI.
fn require(what: &str, ok: bool) -> Option<()> {
    if ok {
        return Some(());
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(!ci, "CI is set but {what} is missing (.ci/run installs it)");
    eprintln!("skipped: {what} is missing (install it to run this test; CI=true fails instead)");
    None
}

fn runs(cmd: &str, args: &[&str], dir: &Path) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The broker URL of the test's vhost, as a publisher outside the process would be given it.
fn amqp_url(env: &Env) -> String {
    let vhost: String = url::form_urlencoded::byte_serialize(env.vhost.as_bytes()).collect();
    format!("amqp://guest:guest@127.0.0.1:5672/{vhost}")
}

/// Run one example for a job to `to` on `account`; check the row, the simulator, then the exit
/// code and the printed event.
async fn run_example(
    env: &Env,
    account: &str,
    to: &str,
    job_id: &str,
    program: &str,
    args: &[&str],
) {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .args(["--url", &amqp_url(env), "--account", account, "--to", to])
        .args(["--job-id", job_id, "--text", "hello from an example"])
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // the publish half: the worker took the job and the platform got it (unless the example
    // gave up first: then its output says why, below)
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.status_of(job_id).await.as_deref() != Some("sent")
        && child.try_wait().unwrap().is_none()
    {
        assert!(
            Instant::now() < deadline,
            "{job_id} not sent after 30 s: {:?}",
            env.status_of(job_id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    if env.status_of(job_id).await.as_deref() == Some("sent") {
        let got = env.sim().accepted_for(account);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].recipient, to);
        eprintln!("{job_id}: the publish half passed (row sent, the simulator got it)");
    }

    // the outcome half: the example saw its own event
    let out = tokio::time::timeout(EXAMPLE_TIMEOUT, child.wait_with_output())
        .await
        .expect("the example did not exit")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} exited {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status.code()
    );
    assert_eq!(
        env.status_of(job_id).await.as_deref(),
        Some("sent"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let line = stdout.lines().last().unwrap_or("");
    let event: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not a JSON event ({e}): {stdout}\nstderr: {stderr}"));
    assert_eq!(event["job_id"], job_id, "{event}");
    assert_eq!(event["account"], account, "{event}");
    assert_eq!(event["status"], "sent", "{event}");
    assert_eq!(event["recipient"], to, "{event}");
    assert!(stderr.contains("correlation_id"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_publishes_a_job_and_reads_its_sent_event() {
    let script = repo().join("examples/python/publish.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    if require(
        "python3 with pika",
        runs(&python, &["-c", "import pika"], &repo()),
    )
    .is_none()
    {
        return;
    }
    let env = Env::new(|b| vec![wecom_account("kf-py", b)], SimOptions::default()).await;
    let worker = env.start_worker().await;
    let script = script.to_string_lossy().into_owned();
    run_example(&env, "kf-py", "wmPython", "ex-py-1", &python, &[&script]).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_example_publishes_a_job_and_reads_its_sent_event() {
    let dir = repo().join("examples/node");
    if require(
        "node with examples/node/node_modules (npm ci)",
        runs("node", &["-e", "require('amqplib')"], &dir),
    )
    .is_none()
    {
        return;
    }
    let env = Env::new(
        |b| vec![chatbot_account("bot-js", b)],
        SimOptions::default(),
    )
    .await;
    let worker = env.start_worker().await;
    let script = dir.join("publish.js").to_string_lossy().into_owned();
    run_example(&env, "bot-js", "oNodeUser", "ex-js-1", "node", &[&script]).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}
