//! The command line as an operator meets it (issue 20, points 9, 10 and 7): the binary run as a
//! child process against the real broker and database — usage errors, `--json`, `--yes`, log
//! lines, the demo and the commands the README suggests after it, the cancel's count.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, wecom_account};

const BIN: &str = env!("CARGO_BIN_EXE_wxdispatch");

/// Run the binary with `args` (stdin closed, no `RUST_LOG`: the defaults an operator gets).
async fn wx(config: Option<&Path>, args: &[&str]) -> Output {
    let mut c = tokio::process::Command::new(BIN);
    c.args(args)
        .env_remove("RUST_LOG")
        .env_remove("WXDISPATCH_CONFIG")
        .stdin(std::process::Stdio::null());
    if let Some(p) = config {
        c.arg("--config").arg(p);
    }
    c.output().await.unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 2 and exactly one line on stderr, `error: …`, containing `needle`.
fn assert_usage(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stderr: {err}\nstdout: {}",
        stdout(o)
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{needle:?} in {err}");
}

/// No log line of level INFO (or DEBUG) in `text`.
fn assert_no_info(text: &str) {
    for l in text.lines() {
        assert!(
            !l.contains(" INFO ") && !l.contains(" DEBUG "),
            "log line without -v: {l}"
        );
    }
}

#[tokio::test]
async fn usage_errors_exit_2_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let recipients = dir.path().join("r.txt");
    std::fs::write(&recipients, "wmA\n").unwrap();
    let r = recipients.to_str().unwrap();
    // `broadcast` without --account exited 1 before.
    assert_usage(&wx(None, &["broadcast"]).await, "--account");
    assert_usage(
        &wx(
            None,
            &[
                "broadcast",
                "--account",
                "nope",
                "--to-file",
                r,
                "--message",
                "{}",
            ],
        )
        .await,
        "no account named 'nope'",
    );
    assert_usage(&wx(None, &["send", "--to", "x"]).await, "--account");
    assert_usage(
        &wx(None, &["send", "--account", "a", "--at", "soon"]).await,
        "RFC 3339",
    );
    assert_usage(
        &wx(
            None,
            &[
                "broadcast",
                "--account",
                "a",
                "--at",
                "2026-13-01T00:00:00Z",
            ],
        )
        .await,
        "--at",
    );
    assert_usage(&wx(None, &["nosuch"]).await, "nosuch");
    assert_usage(
        &wx(None, &["stats", "--since", "yesterday-ish"]).await,
        "--since",
    );
    assert_usage(&wx(None, &["-q", "-v", "stats"]).await, "--quiet");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[broker]\nurl = 5\n").unwrap();
    assert_usage(&wx(Some(&bad), &["check-config"]).await, "broker");
    // --help and --version are not errors; completions and the man page print.
    let o = wx(None, &["send", "--help"]).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("--at <RFC3339>"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("contract"), "{}", stdout(&o));
    let o = wx(None, &["completions", "bash"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("wxdispatch"));
    let o = wx(None, &["man"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(".ie") || stdout(&o).contains(".TH wxdispatch"));
}

/// A free local port (bound, then released for the child to take).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `demo --serve`, then the README's follow-up commands from "another shell" (separate
/// processes using only the config file the demo wrote): send, status, broadcast, dlq list,
/// check-config, all with --json; no INFO line anywhere without -v.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_commands_work_against_demo_serve() {
    let env = Env::new(|_| vec![], SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let base = crate::crash::write_config(&env, dir.path());
    // The demo must honour http.listen from the config (it used its own --listen default).
    let port = free_port();
    let text = std::fs::read_to_string(&base).unwrap().replacen(
        "\nlisten = \"127.0.0.1:0\"",
        &format!("\nlisten = \"127.0.0.1:{port}\""),
        1,
    );
    std::fs::write(&base, text).unwrap();
    let demo_cfg = dir.path().join("wxdispatch-demo.toml");
    let mut child = tokio::process::Command::new(BIN)
        .args(["demo", "--serve", "--sim-listen", "127.0.0.1:0", "--config"])
        .arg(&base)
        .arg("--write-config")
        .arg(&demo_cfg)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let err_pipe = child.stderr.take().unwrap();
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let mut lines = tokio::io::BufReader::new(err_pipe).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    let mut out_lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut shown = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = tokio::time::timeout_at(deadline.into(), out_lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("demo did not start serving: {shown}"))
            .unwrap();
        let Some(line) = line else {
            panic!("demo ended: {shown}\n{}", err_task.await.unwrap());
        };
        shown.push_str(&line);
        shown.push('\n');
        if line.starts_with("serving") {
            break;
        }
    }
    assert_no_info(&shown);
    assert!(
        shown.contains(&format!("callbacks http://127.0.0.1:{port}/")),
        "http.listen honoured: {shown}"
    );
    assert!(
        shown.contains(&format!("export WXDISPATCH_CONFIG={}", demo_cfg.display())),
        "{shown}"
    );
    let first_id = shown
        .lines()
        .find_map(|l| l.strip_prefix("  wxdispatch status "))
        .unwrap_or_else(|| panic!("no status hint: {shown}"))
        .trim()
        .to_owned();
    let cfg = Some(demo_cfg.as_path());

    // check-config --json: the demo accounts, secrets masked
    let o = wx(cfg, &["check-config", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["accounts"], 2, "{v}");
    assert!(
        !stdout(&o).contains("demo-corp-secret"),
        "secret printed: {v}"
    );

    // send --json, then status --json until it is sent
    let o = wx(
        cfg,
        &[
            "send",
            "--account",
            "demo-kf",
            "--to",
            "wmDemoExternalUser1",
            "--text",
            "Hello",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_no_info(&stderr(&o));
    let sent: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(sent["account"], "demo-kf");
    let job_id = sent["job_id"].as_str().unwrap().to_owned();
    let t0 = Instant::now();
    let report = loop {
        let o = wx(cfg, &["status", &job_id, "--json"]).await;
        if o.status.code() == Some(0) {
            let r: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
            if r["delivery"]["status"] == "sent" {
                break r;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not sent: {}",
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(report["delivery"]["account"], "demo-kf", "{report}");
    assert!(report["history"].is_array(), "{report}");
    // the demo's own first job, in text
    let o = wx(cfg, &["status", &first_id]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("status     sent"), "{}", stdout(&o));

    // broadcast --account demo-kf (it failed: the account existed only inside the demo)
    let recipients = dir.path().join("recipients.txt");
    std::fs::write(&recipients, "wmR1\nwmR2\nwmR3\n").unwrap();
    let o = wx(
        cfg,
        &[
            "broadcast",
            "--account",
            "demo-kf",
            "--to-file",
            recipients.to_str().unwrap(),
            "--message",
            r#"{"text":{"content":"Hi"}}"#,
            "--json",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_no_info(&stderr(&o));
    let p: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        (p["total"].as_i64(), p["sent"].as_i64()),
        (Some(3), Some(3)),
        "{p}"
    );

    // dlq list: the demo's invalid job
    let o = wx(cfg, &["dlq", "list", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dead: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        dead.iter().any(|d| d["reason"] == "message_over_limit"),
        "{dead:?}"
    );

    // Ctrl-C ends the demo cleanly
    let pid = child.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    let err = err_task.await.unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert_no_info(&err);
    env.cleanup().await;
}

/// `broadcast cancel` refuses without --yes when it cannot ask, then reports an upper bound
/// and where the final count is; `broadcast status` shows the final count, which is lower
/// when recipients were in flight (the old line "N pending recipient(s) will not be sent"
/// overstated it). Also `kf account delete` refuses without --yes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reports_what_it_prevented_and_destructive_commands_need_yes() {
    let mut env = Env::new(|b| vec![wecom_account("kfc", b)], SimOptions::default()).await;
    // Slow enough that the lane holds many claimed recipients waiting for the limiter.
    env.cfg.accounts[0].rate = wxdispatch::config::Rate {
        per_second: Some(20),
        per_minute: None,
        burst: Some(1),
        unlimited: false,
    };
    let worker = env.start_worker().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::crash::write_config(&env, dir.path());
    let cfg = Some(cfg.as_path());

    // kf account delete: refused before any call
    let o = wx(
        cfg,
        &["kf", "account", "delete", "wkKF1", "--account", "kfc"],
    )
    .await;
    assert_usage(&o, "--yes");

    let total = 300;
    let recipients: Vec<String> = (0..total).map(|i| format!("wmX{i}")).collect();
    env.publish(
        "kfc",
        &json!({"kind": "broadcast", "job_id": "bc-c", "to": recipients, "message": {"text": "x"}}),
    )
    .await;
    let t0 = Instant::now();
    loop {
        let p = wxdispatch::engine::broadcast::progress(&env.pool, "kfc", "bc-c")
            .await
            .unwrap();
        if p.is_some_and(|p| p.sent >= 5) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "broadcast did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // without --yes and without a terminal: refused, nothing cancelled
    let o = wx(cfg, &["broadcast", "cancel", "bc-c", "--account", "kfc"]).await;
    assert_usage(&o, "--yes");
    let p = wxdispatch::engine::broadcast::progress(&env.pool, "kfc", "bc-c")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.cancelled, 0, "{p:?}");

    let o = wx(
        cfg,
        &["broadcast", "cancel", "bc-c", "--account", "kfc", "--yes"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_no_info(&stderr(&o));
    let line = stdout(&o);
    let at_most: i64 = line
        .split("at most ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'at most N': {line}"));
    assert!(
        line.contains("wxdispatch broadcast status bc-c --account kfc"),
        "{line}"
    );

    // Let the recipients in flight finish: the simulator stops receiving.
    let mut last = usize::MAX;
    let mut still = Instant::now();
    while still.elapsed() < Duration::from_secs(3) {
        let n = env.sim().accepted().len();
        if n != last {
            last = n;
            still = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = wx(
        cfg,
        &["broadcast", "status", "bc-c", "--account", "kfc", "--json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let fin: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let (sent, cancelled) = (
        fin["sent"].as_i64().unwrap(),
        fin["cancelled"].as_i64().unwrap(),
    );
    assert_eq!(sent + cancelled, total, "{fin}");
    assert_eq!(
        sent,
        env.sim().accepted().len() as i64,
        "status counts what was sent"
    );
    assert!(cancelled <= at_most, "{cancelled} > {at_most}: {line}");
    // Recipients were in flight at the cancel and were sent: the number the cancel marked
    // overstates what it prevented, which is why it is printed as a bound.
    assert!(
        cancelled < at_most,
        "no recipient in flight at the cancel ({cancelled} = {at_most}); the test proves nothing"
    );
    let o = wx(cfg, &["broadcast", "status", "bc-c", "--account", "kfc"]).await;
    assert!(
        stdout(&o).contains(&format!("cancelled {cancelled}")),
        "{}",
        stdout(&o)
    );
    // a second cancel prevents nothing more, in JSON
    let o = wx(
        cfg,
        &[
            "broadcast",
            "cancel",
            "bc-c",
            "--account",
            "kfc",
            "-y",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let c: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(c["marked_cancelled"], 0, "{c}");
    assert_eq!(c["progress"]["cancelled"], cancelled, "{c}");
    worker.stop().await.unwrap();
    env.cleanup().await;
}
