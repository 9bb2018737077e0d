//! The idempotency key is (account, job_id): independent upstream tenants may use the same
//! job ids (and broadcast ids) on different accounts, and each job is sent. A duplicate on
//! the same account is still deduplicated; `status` and `broadcast status|cancel` ask for
//! `--account` when an id alone is ambiguous; migration 0007 keeps existing rows.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, PG_ADMIN, chatbot_account, wecom_account};

fn accounts(base: &str) -> Vec<wxdispatch::config::AccountConfig> {
    vec![
        wecom_account("kf", base),
        wecom_account("kf2", base),
        chatbot_account("bot", base),
    ]
}

/// Status of every row, by (account, job id).
async fn rows(pool: &PgPool) -> BTreeMap<(String, String), String> {
    sqlx::query_as::<_, (String, String, String)>("SELECT account, job_id, status FROM deliveries")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(a, j, s)| ((a, j), s))
        .collect()
}

fn key(account: &str, job: &str) -> (String, String) {
    (account.to_owned(), job.to_owned())
}

/// The account of every request the platform accepted, sorted.
fn sent_on(env: &Env) -> Vec<String> {
    let mut accounts: Vec<String> = env
        .sim()
        .accepted()
        .into_iter()
        .map(|a| a.account)
        .collect();
    accounts.sort();
    accounts
}

/// An ambiguous id: exit 2, the accounts listed, the flag named.
fn assert_asks_for_account((code, _, err): (i32, String, String), accounts: &str) {
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--account"), "{err}");
    assert!(err.contains(accounts), "{err}");
}

/// Run the binary with `args` and the test's config: (exit code, stdout, stderr).
fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_id_on_three_accounts_is_sent_on_each_and_status_asks_which() {
    let env = Env::new(accounts, SimOptions::default()).await;
    let worker = env.start_worker().await;
    for (account, to) in [("kf", "wmA"), ("kf2", "wmA"), ("bot", "oUserA")] {
        env.publish(
            account,
            &json!({"job_id": "same-1", "to": to, "message": {"text": format!("hi from {account}")}}),
        )
        .await;
    }
    env.wait_terminal(3, Duration::from_secs(30)).await;
    let want: BTreeMap<_, _> = ["kf", "kf2", "bot"]
        .into_iter()
        .map(|a| (key(a, "same-1"), "sent".to_owned()))
        .collect();
    assert_eq!(rows(&env.pool).await, want);
    let mut sent_on: Vec<String> = env
        .sim()
        .accepted()
        .into_iter()
        .map(|a| a.account)
        .collect();
    sent_on.sort();
    assert_eq!(
        sent_on,
        ["bot", "kf", "kf2"],
        "each account sent its own job"
    );

    // A duplicate on the same account is still deduplicated: published again, then a later
    // job of the same conversation (one conversation is processed in order, so once that one
    // is sent the duplicate has been decided).
    env.publish(
        "kf",
        &json!({"job_id": "same-1", "to": "wmA", "message": {"text": "again"}}),
    )
    .await;
    env.publish(
        "kf",
        &json!({"job_id": "after-1", "to": "wmA", "message": {"text": "later"}}),
    )
    .await;
    env.wait_terminal(4, Duration::from_secs(30)).await;
    assert_eq!(
        env.sim().accepted().len(),
        4,
        "the duplicate on kf was not sent again"
    );
    assert_eq!(rows(&env.pool).await.len(), 4);

    // `status`: ambiguous without --account (usage error, exit 2, naming the accounts and
    // the flag); --account selects; an id on one account needs none.
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::crash::write_config(&env, dir.path());
    assert_asks_for_account(cli(&cfg, &["status", "same-1"]), "(bot, kf, kf2)");
    let (code, out, err) = cli(&cfg, &["status", "same-1", "--account", "kf2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("account    kf2 (wecom)"), "{out}");
    assert!(out.contains("status     sent"), "{out}");
    let (code, out, err) = cli(&cfg, &["status", "after-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("account    kf (wecom)"), "{out}");
    let (code, _, err) = cli(&cfg, &["status", "after-1", "--account", "kf2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("on account 'kf2'"), "{err}");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_broadcast_id_on_two_accounts_fans_out_on_both() {
    let env = Env::new(accounts, SimOptions::default()).await;
    let worker = env.start_worker().await;
    for account in ["kf", "kf2"] {
        env.publish(
            account,
            &json!({"kind": "broadcast", "job_id": "bc-same", "to": ["wmA", "wmB", "wmC"], "message": {"text": "news"}}),
        )
        .await;
    }
    env.wait_terminal(6, Duration::from_secs(30)).await;
    let per_account: Vec<(String, i64)> = sqlx::query_as(
        "SELECT account, count(*) FROM deliveries
         WHERE broadcast_id = 'bc-same' AND status = 'sent' GROUP BY account ORDER BY account",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(per_account, [("kf".into(), 3), ("kf2".into(), 3)]);
    assert_eq!(env.sim().accepted().len(), 6);
    let broadcasts: Vec<String> =
        sqlx::query_scalar("SELECT account FROM broadcasts WHERE id = 'bc-same' ORDER BY account")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(broadcasts, ["kf", "kf2"]);

    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::crash::write_config(&env, dir.path());
    assert_asks_for_account(cli(&cfg, &["broadcast", "status", "bc-same"]), "(kf, kf2)");
    let (code, out, err) = cli(
        &cfg,
        &[
            "broadcast",
            "status",
            "bc-same",
            "--account",
            "kf2",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let p: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(p["account"], "kf2", "{out}");
    assert_eq!(p["sent"], 3, "{out}");
    assert_asks_for_account(cli(&cfg, &["broadcast", "cancel", "bc-same"]), "(kf, kf2)");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_the_same_job_id_on_two_accounts_are_both_replayed() {
    let env = Env::new(accounts, SimOptions::default()).await;
    // Both accounts' job `dl-1` died (e.g. a configuration error since fixed): dead rows and
    // their dead letters, kf's the older.
    for account in ["kf", "kf2"] {
        let body =
            json!({"job_id": "dl-1", "to": "wmA", "message": {"text": format!("to {account}")}});
        sqlx::query(
            "INSERT INTO deliveries (job_id, account, channel, kind, recipient, open_kfid, status, attempts, error)
             VALUES ('dl-1', $1, 'wecom', 'send', 'wmA', 'wkKF1', 'dead', 1, 'config_error')",
        )
        .bind(account)
        .execute(&env.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO dead_letters (job_id, account, reason, attempts, body)
             VALUES ('dl-1', $1, 'config_error', 1, $2)",
        )
        .bind(account)
        .bind(serde_json::to_vec(&body).unwrap())
        .execute(&env.pool)
        .await
        .unwrap();
    }
    let plan = wxdispatch::ops::plan_replay(&env.pool, &env.cfg, &Default::default(), None)
        .await
        .unwrap();
    let mut planned: Vec<String> = plan.replay.iter().map(|r| r.account.clone()).collect();
    planned.sort();
    assert_eq!(
        planned,
        ["kf", "kf2"],
        "two jobs, not two dead letters of one: {:?}",
        plan.skipped
    );
    let worker = env.start_worker().await;
    let summary = wxdispatch::ops::execute_replay(&env.cfg, &env.pool, plan, &mut ())
        .await
        .unwrap();
    assert_eq!(summary.replayed.len(), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let want: BTreeMap<_, _> = [key("kf", "dl-1"), key("kf2", "dl-1")]
        .into_iter()
        .map(|k| (k, "sent".to_owned()))
        .collect();
    loop {
        let now = rows(&env.pool).await;
        if now == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not both sent: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sent_on(&env), ["kf", "kf2"]);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// The indexes of `table`, by name: their definitions.
async fn indexes(pool: &PgPool, table: &str) -> BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_7_rekeys_tables_that_hold_rows_of_the_old_schema() {
    let db = format!(
        "wxdt_mig7_{}_{:x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let admin = PgPool::connect(PG_ADMIN).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = PgPool::connect(&format!("postgres://postgres@127.0.0.1:5432/{db}"))
        .await
        .unwrap();
    let migrator = sqlx::migrate!("./migrations");
    assert!(
        migrator.iter().any(|m| m.version == 7),
        "migration 0007 exists"
    );
    migrator.run_to(6, &pool).await.unwrap();
    let before = indexes(&pool, "deliveries").await;
    // Rows as the old schema wrote them.
    sqlx::query(
        "INSERT INTO deliveries (job_id, account, channel, kind, recipient, status, attempts)
         VALUES ('old-1', 'kf', 'wecom', 'send', 'wmA', 'sent', 2),
                ('old-2', 'bot', 'chatbot', 'send', 'oA', 'dead', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO delivery_events (job_id, status, attempts)
         VALUES ('old-1', 'retrying', 1), ('old-1', 'sent', 2), ('old-2', 'dead', 1),
                ('gone', 'dead', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO broadcasts (id, account, message, total) VALUES ('bc-old', 'kf', '{}', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();

    migrator.run(&pool).await.unwrap();

    // The rows are kept and the history names its account.
    let events: Vec<(String, String, String)> =
        sqlx::query_as("SELECT job_id, account, status FROM delivery_events ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let owned = |j: &str, a: &str, s: &str| (j.to_owned(), a.to_owned(), s.to_owned());
    assert_eq!(
        events,
        [
            owned("old-1", "kf", "retrying"),
            owned("old-1", "kf", "sent"),
            owned("old-2", "bot", "dead"),
            owned("gone", "", "dead"),
        ]
    );
    assert_eq!(rows(&pool).await.len(), 2);
    // The key is (account, job_id): the same id on another account is a new row, on the
    // same account a conflict.
    let insert = |job: &'static str, account: &'static str| {
        sqlx::query(
            "INSERT INTO deliveries (job_id, account, channel, kind, status)
             VALUES ($1, $2, 'wecom', 'send', 'accepted') ON CONFLICT (account, job_id) DO NOTHING",
        )
        .bind(job)
        .bind(account)
        .execute(&pool)
    };
    assert_eq!(insert("old-1", "kf2").await.unwrap().rows_affected(), 1);
    assert_eq!(insert("old-1", "kf").await.unwrap().rows_affected(), 0);
    let b = sqlx::query(
        "INSERT INTO broadcasts (id, account, message, total) VALUES ('bc-old', 'kf2', '{}', 1)
         ON CONFLICT (account, id) DO NOTHING",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(b.rows_affected(), 1);
    // The key replaced the old one: the write path maintains as many indexes as before.
    let after = indexes(&pool, "deliveries").await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(
        after["deliveries_pkey"].ends_with("(job_id, account)"),
        "{after:?}"
    );
    pool.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
}
