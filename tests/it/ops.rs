//! Operating it (issue 5): dead letters listed with filters, replayed after the cause is
//! fixed — exactly the matching jobs are sent, nothing else moves — and stats; once through
//! the binary.

use std::collections::HashSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use sqlx::Row;
use wxdispatch::ops::{self, Filter, ReplayOptions, Skip};
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account, wecom_account};

fn accounts(base: &str) -> Vec<wxdispatch::config::AccountConfig> {
    vec![chatbot_account("bot", base), wecom_account("kf", base)]
}

async fn wait_status(env: &Env, ids: &[&str], status: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut all = true;
        for id in ids {
            all &= env.status_of(id).await.as_deref() == Some(status);
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ids:?} not all {status}: {:?}",
            env.statuses().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dead_letter_id(env: &Env, job_id: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM dead_letters WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn replayed_job_ids(env: &Env) -> HashSet<String> {
    sqlx::query_scalar(
        "SELECT coalesce(job_id, '-') FROM dead_letters WHERE replayed_at IS NOT NULL",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

fn job_ids(rows: &[ops::DeadLetterRow]) -> Vec<&str> {
    rows.iter()
        .map(|r| r.job_id.as_deref().unwrap_or("-"))
        .collect()
}

/// How many times the simulator accepted each msgid of account `kf` (the job id, for WeCom).
fn kf_accepted(env: &Env) -> Vec<String> {
    env.sim()
        .accepted_for("kf")
        .into_iter()
        .filter_map(|a| a.msgid)
        .collect()
}

/// The acceptance test of issue 5: dead-letter jobs for a config error, fix the config,
/// replay with a filter, and see exactly those jobs sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_error_dead_letters_are_replayed_by_filter_and_exactly_those_are_sent() {
    let env = Env::new(accounts, SimOptions::default()).await;
    let worker = env.start_worker().await;
    let sim = env.sim();
    let text = |id: &str, to: &str| json!({"job_id": id, "to": to, "message": {"text": id}});

    // A job that goes through, before anything breaks.
    env.publish("kf", &text("ok-1", "wmOk")).await;
    env.wait_terminal(1, Duration::from_secs(10)).await;
    // The kf API is switched off (95017 → config_error): one conversation's three jobs die.
    sim.script("kf", vec![95017; 3]);
    for i in 1..=3 {
        env.publish("kf", &text(&format!("cfg-{i}"), "wmCfg")).await;
    }
    env.wait_terminal(4, Duration::from_secs(10)).await;
    // Other dead letters the filters must leave alone: a wrong recipient on the same account,
    // a config error on another account, a malformed body, an account nobody configured.
    sim.script("kf", vec![40003]);
    env.publish("kf", &text("rcpt-1", "wmGone")).await;
    env.wait_terminal(5, Duration::from_secs(10)).await;
    sim.script("bot", vec![1001]);
    env.publish("bot", &text("bot-1", "oBot")).await;
    env.wait_terminal(6, Duration::from_secs(10)).await;
    env.publish_raw("kf", b"this is not json").await;
    env.wait_dead_letter_rows(6, Duration::from_secs(15)).await;
    env.publish("ghost", &text("ghost-1", "wmX")).await;
    env.wait_dead_letter_rows(7, Duration::from_secs(15)).await;
    for id in ["cfg-1", "cfg-2", "cfg-3", "rcpt-1", "bot-1"] {
        assert_eq!(env.status_of(id).await.as_deref(), Some("dead"), "{id}");
    }
    assert_eq!(kf_accepted(&env), vec!["ok-1".to_owned()]);

    // ---- list: newest first, every filter ----
    let all = ops::list_dead_letters(&env.pool, &Filter::default(), false, None)
        .await
        .unwrap();
    assert_eq!(
        job_ids(&all),
        vec!["ghost-1", "-", "bot-1", "rcpt-1", "cfg-3", "cfg-2", "cfg-1"]
    );
    assert!(all.windows(2).all(|w| w[0].dead_at >= w[1].dead_at));
    let list = |f: Filter| {
        let pool = env.pool.clone();
        async move {
            ops::list_dead_letters(&pool, &f, false, None)
                .await
                .unwrap()
        }
    };
    let by_code = list(Filter {
        errcode: Some(95017),
        ..Default::default()
    })
    .await;
    assert_eq!(job_ids(&by_code), vec!["cfg-3", "cfg-2", "cfg-1"]);
    for r in &by_code {
        assert_eq!(
            (r.account.as_str(), r.reason.as_str(), r.attempts),
            ("kf", "config_error", 1)
        );
        assert!(r.replayed_at.is_none());
    }
    let by_reason = list(Filter {
        reason: Some("config_error".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        job_ids(&by_reason),
        vec!["bot-1", "cfg-3", "cfg-2", "cfg-1"]
    );
    let by_account = list(Filter {
        account: Some("bot".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(job_ids(&by_account), vec!["bot-1"]);
    assert_eq!(by_account[0].errcode, Some(1001));
    let malformed = list(Filter {
        reason: Some("invalid_json".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(malformed.len(), 1);
    assert_eq!(malformed[0].job_id, None);
    let recent = list(Filter {
        since: Some(Utc::now() - chrono::TimeDelta::hours(1)),
        ..Default::default()
    })
    .await;
    assert_eq!(recent.len(), 7);
    let future = list(Filter {
        since: Some(Utc::now() + chrono::TimeDelta::hours(1)),
        ..Default::default()
    })
    .await;
    assert!(future.is_empty());
    let combined = list(Filter {
        account: Some("kf".into()),
        reason: Some("config_error".into()),
        errcode: Some(1001),
        since: None,
    })
    .await;
    assert!(combined.is_empty(), "all filters must match");
    let newest_two = ops::list_dead_letters(&env.pool, &Filter::default(), false, Some(2))
        .await
        .unwrap();
    assert_eq!(job_ids(&newest_two), vec!["ghost-1", "-"]);

    // ---- a dry run says what would happen and changes nothing ----
    let filter = Filter {
        errcode: Some(95017),
        ..Default::default()
    };
    let dry = ops::replay(
        &env.cfg,
        &filter,
        ReplayOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(dry.dry_run);
    assert_eq!(job_ids(&dry.replayed), vec!["cfg-1", "cfg-2", "cfg-3"]);
    assert!(dry.skipped.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in ["cfg-1", "cfg-2", "cfg-3"] {
        assert_eq!(env.status_of(id).await.as_deref(), Some("dead"), "{id}");
    }
    assert!(replayed_job_ids(&env).await.is_empty());
    assert_eq!(env.queue_len("wxdispatch.kf").await, 0);
    assert_eq!(kf_accepted(&env), vec!["ok-1".to_owned()]);

    // ---- "fix the config" (the script is used up: the API accepts again) and replay ----
    let summary = ops::replay(&env.cfg, &filter, ReplayOptions::default())
        .await
        .unwrap();
    assert!(!summary.dry_run);
    assert_eq!(job_ids(&summary.replayed), vec!["cfg-1", "cfg-2", "cfg-3"]);
    assert!(summary.skipped.is_empty(), "{:?}", summary.skipped);
    wait_status(&env, &["cfg-1", "cfg-2", "cfg-3"], "sent").await;
    // Exactly those were sent, once each, in the conversation's order; nothing else moved.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kf_accepted(&env), vec!["ok-1", "cfg-1", "cfg-2", "cfg-3"]);
    assert!(sim.accepted_for("bot").is_empty());
    assert_eq!(env.status_of("rcpt-1").await.as_deref(), Some("dead"));
    assert_eq!(env.status_of("bot-1").await.as_deref(), Some("dead"));
    assert_eq!(env.status_of("ok-1").await.as_deref(), Some("sent"));
    assert_eq!(
        replayed_job_ids(&env).await,
        HashSet::from(["cfg-1".to_owned(), "cfg-2".into(), "cfg-3".into()])
    );
    // The row's history tells the story: dead, replayed, sent.
    let dl1 = dead_letter_id(&env, "cfg-1").await;
    let history: Vec<(String, Option<String>)> =
        sqlx::query("SELECT status, error FROM delivery_events WHERE job_id = 'cfg-1' ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get("status"), r.get("error")))
            .collect();
    let statuses: Vec<&str> = history.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, vec!["dead", "retrying", "sent"], "{history:?}");
    assert_eq!(
        history[1].1.as_deref(),
        Some(format!("replayed from dead letter {dl1}").as_str())
    );
    let (error, errcode, sent_at): (Option<String>, Option<i64>, Option<chrono::DateTime<Utc>>) =
        sqlx::query_as("SELECT error, errcode, sent_at FROM deliveries WHERE job_id = 'cfg-1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((error, errcode), (None, None));
    assert!(sent_at.is_some());

    // ---- a second replay replays nothing ----
    let again = ops::replay(&env.cfg, &filter, ReplayOptions::default())
        .await
        .unwrap();
    assert!(again.replayed.is_empty() && again.skipped.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(kf_accepted(&env).len(), 4);
    // Replayed dead letters leave the default list, not the full one.
    let open = ops::list_dead_letters(&env.pool, &Filter::default(), false, None)
        .await
        .unwrap();
    assert_eq!(job_ids(&open), vec!["ghost-1", "-", "bot-1", "rcpt-1"]);
    let full = ops::list_dead_letters(&env.pool, &Filter::default(), true, None)
        .await
        .unwrap();
    assert_eq!(full.len(), 7);
    assert_eq!(full.iter().filter(|r| r.replayed_at.is_some()).count(), 3);

    // ---- what is left cannot all be replayed, and the replay says why ----
    let kf_rest = ops::replay(
        &env.cfg,
        &Filter {
            account: Some("kf".into()),
            ..Default::default()
        },
        ReplayOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(job_ids(&kf_rest.replayed), vec!["rcpt-1"]);
    assert_eq!(kf_rest.skipped.len(), 1);
    assert_eq!(kf_rest.skipped[0].why, Skip::NoJobId);
    assert_eq!(kf_rest.skipped[0].dead_letter.reason, "invalid_json");
    let ghost = ops::replay(
        &env.cfg,
        &Filter {
            reason: Some("unknown_account".into()),
            ..Default::default()
        },
        ReplayOptions::default(),
    )
    .await
    .unwrap();
    assert!(ghost.replayed.is_empty());
    assert_eq!(ghost.skipped.len(), 1);
    assert_eq!(
        ghost.skipped[0].why,
        Skip::AccountNotConfigured("ghost".into())
    );
    assert_eq!(
        replayed_job_ids(&env).await.len(),
        3,
        "skips change nothing"
    );

    // ---- stats ----
    let since = Utc::now() - chrono::TimeDelta::hours(1);
    let st = ops::stats(&env.pool, since, None).await.unwrap();
    let acc = |name: &str| st.accounts.iter().find(|a| a.account == name).unwrap();
    assert_eq!(acc("kf").total, 5);
    assert_eq!(acc("kf").statuses.get("sent"), Some(&4));
    assert_eq!(acc("kf").statuses.get("dead"), Some(&1));
    assert_eq!(acc("bot").total, 1);
    assert_eq!(acc("bot").statuses.get("dead"), Some(&1));
    let dl = |account: &str, reason: &str| {
        st.dead_letters
            .iter()
            .find(|d| d.account == account && d.reason == reason)
            .map(|d| (d.count, d.unreplayed))
    };
    assert_eq!(dl("kf", "config_error"), Some((3, 0)));
    assert_eq!(dl("kf", "invalid_recipient"), Some((1, 1)));
    assert_eq!(dl("kf", "invalid_json"), Some((1, 1)));
    assert_eq!(dl("bot", "config_error"), Some((1, 1)));
    assert_eq!(dl("ghost", "unknown_account"), Some((1, 1)));
    assert_eq!(st.dead_letters.len(), 5);
    let bot_only = ops::stats(&env.pool, since, Some("bot")).await.unwrap();
    assert_eq!(bot_only.accounts.len(), 1);
    assert_eq!(bot_only.dead_letters.len(), 1);
    let later = ops::stats(&env.pool, Utc::now() + chrono::TimeDelta::hours(1), None)
        .await
        .unwrap();
    assert!(later.accounts.is_empty() && later.dead_letters.is_empty());

    worker.stop().await.unwrap();
    env.cleanup().await;
}

pub fn cli(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The commands through the binary: `dlq list --json`, the table, usage errors (exit 2),
/// `--yes`, a dry run, a replay that never resends a sent job, `stats --json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_replays_and_counts() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let worker = env.start_worker().await;
    let dir = tempfile::tempdir().unwrap();
    let config = crate::crash::write_config(&env, dir.path());
    env.sim().script("kf", vec![95017, 95017]);
    for id in ["c-1", "c-2"] {
        env.publish(
            "kf",
            &json!({"job_id": id, "to": "wmC", "message": {"text": id}}),
        )
        .await;
    }
    env.wait_terminal(2, Duration::from_secs(10)).await;
    let (id1, id2) = (
        dead_letter_id(&env, "c-1").await,
        dead_letter_id(&env, "c-2").await,
    );

    // --json: one object per line, newest first.
    let out = cli(&config, &["dlq", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", stdout(&out));
    assert_eq!(lines[0]["id"], id2);
    assert_eq!(lines[0]["job_id"], "c-2");
    assert_eq!(lines[1]["job_id"], "c-1");
    for l in &lines {
        assert_eq!(l["account"], "kf");
        assert_eq!(l["reason"], "config_error");
        assert_eq!(l["errcode"], 95017);
        assert_eq!(l["attempts"], 1);
        assert_eq!(l["replayed_at"], Value::Null);
        assert!(l["dead_at"].as_str().unwrap().contains('T'));
        assert!(l["age_secs"].as_i64().unwrap() < 120);
    }
    let out = cli(
        &config,
        &[
            "dlq",
            "list",
            "--json",
            "--errcode",
            "1001",
            "--since",
            "1h",
        ],
    );
    assert!(out.status.success());
    assert_eq!(stdout(&out), "");

    // The table.
    let out = cli(&config, &["dlq", "list", "--reason", "config_error"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[0].starts_with("ID") && rows[0].contains("JOB ID") && rows[0].contains("AGE"),
        "{table}"
    );
    assert!(
        rows[1].contains("c-2") && rows[1].contains("95017"),
        "{table}"
    );
    assert!(rows[2].contains("c-1"), "{table}");
    let out = cli(&config, &["dlq", "list", "--limit", "1"]);
    assert_eq!(stdout(&out).lines().count(), 2);
    assert!(stderr(&out).contains("more match"), "{}", stderr(&out));
    let out = cli(&config, &["dlq", "list", "--reason", "config_eror"]);
    assert!(out.status.success());
    assert!(
        stderr(&out)
            .contains("no dead letter has reason 'config_eror' (reasons seen: config_error)"),
        "{}",
        stderr(&out)
    );

    // Bad filter values: exit 2 and a line that says what is wrong.
    for (args, says) in [
        (
            &["dlq", "list", "--since", "yesterday"][..],
            "expected a duration",
        ),
        (&["dlq", "list", "--reason", "Config-Error"], "snake_case"),
        (&["dlq", "replay", "--errcode", "abc"], "invalid value"),
        (&["dlq", "list", "--limit", "0"], "--limit"),
        (&["stats", "--since", "5 minutes"], "expected a duration"),
    ] {
        let out = cli(&config, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let first = stderr(&out).lines().next().unwrap_or_default().to_owned();
        assert!(first.contains(says), "{args:?}: {}", stderr(&out));
    }
    // Without a terminal, a replay needs --yes.
    let out = cli(&config, &["dlq", "replay", "--errcode", "95017"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("without --yes"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));

    // Dry run.
    let out = cli(&config, &["dlq", "replay", "--dry-run", "--errcode=95017"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("would replay 2 dead letter(s)"), "{text}");
    assert!(text.contains("dry run: nothing changed"), "{text}");
    assert!(replayed_job_ids(&env).await.is_empty());

    // c-1 got sent some other way meanwhile: it is never reset or sent again.
    sqlx::query("UPDATE deliveries SET status = 'sent' WHERE job_id = 'c-1'")
        .execute(&env.pool)
        .await
        .unwrap();
    let out = cli(&config, &["dlq", "replay", "--yes", "--account", "kf"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("replayed 1 dead letter(s)"), "{text}");
    assert!(
        text.contains(&format!(
            "1 × the job was sent meanwhile (dead letter {id1})"
        )),
        "{text}"
    );
    wait_status(&env, &["c-2"], "sent").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kf_accepted(&env), vec!["c-2".to_owned()]);
    assert_eq!(
        replayed_job_ids(&env).await,
        HashSet::from(["c-2".to_owned()])
    );
    let out = cli(&config, &["dlq", "replay", "--yes", "--account", "kf"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("replayed 0"), "{}", stdout(&out));

    // stats --json.
    let out = cli(&config, &["stats", "--json", "--since", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let st: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(st["accounts"][0]["account"], "kf");
    assert_eq!(st["accounts"][0]["total"], 2);
    assert_eq!(st["accounts"][0]["statuses"]["sent"], 2);
    assert_eq!(st["dead_letters"][0]["reason"], "config_error");
    assert_eq!(st["dead_letters"][0]["count"], 2);
    assert_eq!(st["dead_letters"][0]["unreplayed"], 1);
    let out = cli(&config, &["stats"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ACCOUNT  TOTAL  SENT"), "{text}");
    assert!(text.contains("kf       2      2"), "{text}");
    assert!(text.contains("config_error"), "{text}");

    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// A replay publishes at the account's configured rate (with a progress bar when many;
/// hidden here, stderr is not a terminal), and every replayed job is sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_keeps_to_the_accounts_rate() {
    const JOBS: usize = 12;
    const PER_SECOND: u32 = 5;
    let env = Env::new(
        |b| {
            let mut a = wecom_account("kf", b);
            a.rate = wxdispatch::config::Rate {
                per_second: Some(PER_SECOND),
                per_minute: None,
                burst: Some(1),
                unlimited: false,
            };
            vec![a]
        },
        SimOptions::default(),
    )
    .await;
    let worker = env.start_worker().await;
    env.sim().script("kf", vec![95017; JOBS]);
    for i in 0..JOBS {
        env.publish(
            "kf",
            &json!({"job_id": format!("r-{i}"), "to": format!("wmR{i}"), "message": {"text": "x"}}),
        )
        .await;
    }
    env.wait_terminal(JOBS as i64, Duration::from_secs(20))
        .await;
    assert!(kf_accepted(&env).is_empty());

    let t0 = Instant::now();
    let summary = ops::replay(
        &env.cfg,
        &Filter {
            account: Some("kf".into()),
            ..Default::default()
        },
        ReplayOptions {
            progress: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let took = t0.elapsed();
    assert_eq!(summary.replayed.len(), JOBS);
    // Burst 1 at 5/s: the first publish is free, each of the other 11 waits 200 ms.
    let min = Duration::from_millis(1000 / u64::from(PER_SECOND) * (JOBS as u64 - 1));
    assert!(took >= min - Duration::from_millis(50), "took {took:?}");
    let ids: Vec<String> = (0..JOBS).map(|i| format!("r-{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_status(&env, &id_refs, "sent").await;
    let mut accepted = kf_accepted(&env);
    accepted.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(accepted, want, "each replayed job sent exactly once");

    worker.stop().await.unwrap();
    env.cleanup().await;
}
