//! A database that refuses writes (issue 14, points 6 and 7): a refused outcome record is
//! held and retried, never answered by a resend; a refused claim is held too instead of
//! burning the delivery limit; and what the broker dead-letters itself is recorded in
//! `dead_letters` (reason `delivery_limit`) so `dlq list` / `dlq replay` see it.
//!
//! Failures are injected in the test's own database: a trigger on `deliveries` that raises.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde_json::json;
use sqlx::Row;
use wxdispatch::ops::{self, Filter, ReplayOptions};
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, wecom_account};

const JOBS: usize = 20;

/// Make `deliveries` refuse rows whose new status is `status` (claims write `accepted`,
/// outcomes `sent`, …) with a trigger, as a constraint or a read-only server would.
async fn refuse_status(env: &Env, status: &str) {
    sqlx::query(
        "CREATE FUNCTION wxdt_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.status = TG_ARGV[0] THEN
             RAISE EXCEPTION 'test: % refused', NEW.status USING ERRCODE = '23514';
           END IF;
           RETURN NEW;
         END $$",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TRIGGER wxdt_refuse BEFORE INSERT OR UPDATE ON deliveries
         FOR EACH ROW EXECUTE FUNCTION wxdt_refuse('{status}')"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
}

async fn accept_again(env: &Env) {
    sqlx::query("DROP TRIGGER wxdt_refuse ON deliveries")
        .execute(&env.pool)
        .await
        .unwrap();
}

/// `/readyz`'s status code.
async fn readyz(addr: std::net::SocketAddr) -> u16 {
    match reqwest::get(format!("http://{addr}/readyz")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Poll `/readyz` until it answers `code` (or panic after `timeout`).
async fn wait_readyz(addr: std::net::SocketAddr, code: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = readyz(addr).await;
        if got == code {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz answered {got}, not {code}, for {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times the simulator accepted each job of account `kf` (WeCom: msgid = job id).
fn accepted_per_job(env: &Env) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for a in env.sim().accepted_for("kf") {
        *n.entry(a.msgid.unwrap_or_default()).or_insert(0) += 1;
    }
    n
}

/// Publish [`JOBS`] jobs over 5 conversations; their ids.
async fn publish_jobs(env: &Env, prefix: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let id = format!("{prefix}-{i:02}");
        let to = format!("wmUser{}", i % 5);
        env.publish(
            "kf",
            &json!({"job_id": id, "to": to, "message": {"text": id}}),
        )
        .await;
        ids.push(id);
    }
    ids
}

/// Every job accepted by the platform exactly once and recorded `sent`.
async fn assert_each_sent_once(env: &Env, ids: &[String]) {
    env.wait_terminal(JOBS as i64, Duration::from_secs(30))
        .await;
    let statuses = env.statuses().await;
    let accepted = accepted_per_job(env);
    for id in ids {
        assert_eq!(statuses.get(id).map(String::as_str), Some("sent"), "{id}");
        assert_eq!(accepted.get(id), Some(&1), "{id} reached the platform once");
    }
    assert_eq!(accepted.len(), JOBS, "{accepted:?}");
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0, "nothing dead-lettered");
    assert_eq!(env.queue_len("wxdispatch.dead").await, 0);
}

/// Point 6: outcome records refused for a while. Each job reaches the platform once (the
/// record is held, not handed back and sent again), `/readyz` says 503 while the writes are
/// refused and 200 after, and every job ends `sent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_outcome_record_is_held_and_never_resent() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    refuse_status(&env, "sent").await;
    let worker = env.start_worker().await;
    let addr = worker.admin_addr.unwrap();
    wait_readyz(addr, 200, Duration::from_secs(10)).await;
    let ids = publish_jobs(&env, "out").await;

    // The platform answers the first jobs; their records are refused and held.
    wait_readyz(addr, 503, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted_per_job(&env).is_empty() {
        assert!(Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for redeliveries to resend, had the messages been handed back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(readyz(addr).await, 503, "still refused, still not ready");
    let held = accepted_per_job(&env);
    assert!(
        held.values().all(|&n| n == 1),
        "a held job was sent again: {held:?}"
    );
    assert!(
        held.len() < JOBS,
        "jobs behind the held ones waited: {held:?}"
    );

    accept_again(&env).await;
    assert_each_sent_once(&env, &ids).await;
    wait_readyz(addr, 200, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// Point 7, the claim: claims refused for a while. Nothing is sent meanwhile, nothing is
/// redelivered into the broker's delivery limit (a tiny one here), `/readyz` says 503; once
/// the database accepts, every job is sent once and ends `sent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_claim_is_held_not_redelivered_into_the_delivery_limit() {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    // A tiny delivery limit: handing refused claims back would dead-letter them at once.
    let ch = env.conn.create_channel().await.unwrap();
    for q in ["wxdispatch.kf", "wxdispatch.kf.bulk"] {
        ch.queue_delete(q.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    env.cfg.broker.delivery_limit = 3;
    wxdispatch::broker::declare_topology(&env.conn, &env.cfg)
        .await
        .unwrap();
    refuse_status(&env, "accepted").await;
    let worker = env.start_worker().await;
    let addr = worker.admin_addr.unwrap();
    let ids = publish_jobs(&env, "clm").await;

    wait_readyz(addr, 503, Duration::from_secs(10)).await;
    // Long enough for the jobs to have been redelivered past the delivery limit and
    // dead-lettered by the broker, had each refused claim handed its message back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(readyz(addr).await, 503);
    assert!(accepted_per_job(&env).is_empty(), "nothing sent unclaimed");
    assert_eq!(
        env.queue_len("wxdispatch.dead").await,
        0,
        "nothing dead-lettered by the broker"
    );

    accept_again(&env).await;
    assert_each_sent_once(&env, &ids).await;
    wait_readyz(addr, 200, Duration::from_secs(10)).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

async fn dead_letter_rows(env: &Env) -> Vec<(Option<String>, String, String)> {
    sqlx::query("SELECT job_id, account, reason FROM dead_letters ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get("job_id"), r.get("account"), r.get("reason")))
        .collect()
}

async fn wait_dead_letter_rows(env: &Env, n: usize) -> Vec<(Option<String>, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = dead_letter_rows(env).await;
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} dead_letters rows: {rows:?}",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Point 7, the broker's own dead letters: a job the broker dead-letters at the lane's
/// delivery limit (really: handed back until the limit) is recorded with reason
/// `delivery_limit`, listed, and replayed (then sent once); wxdispatch's own dead letters,
/// which reach the recorder too, are not recorded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_broker_dead_letters_is_recorded_listed_and_replayed() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    env.publish(
        "kf",
        &json!({"job_id": "lim-1", "to": "wmLimit", "message": {"text": "hello"}}),
    )
    .await;
    // No worker yet: hand the message back until the broker's delivery limit dead-letters it.
    // (A consumer: quorum queues with a single active consumer refuse basic.get.)
    let ch = env.conn.create_channel().await.unwrap();
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "wxdispatch.kf".into(),
            "test-returner".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut returns = 0;
    for _ in 0..(env.cfg.broker.delivery_limit + 5) {
        let next = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await;
        let Ok(Some(Ok(d))) = next else {
            break;
        };
        d.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
        returns += 1;
    }
    ch.close(200, "done".into()).await.unwrap();
    assert_eq!(env.queue_len("wxdispatch.kf").await, 0, "after {returns}");
    assert!(returns > env.cfg.broker.delivery_limit, "{returns}");

    let worker = env.start_worker().await;
    let rows = wait_dead_letter_rows(&env, 1).await;
    assert_eq!(
        rows,
        vec![(Some("lim-1".into()), "kf".into(), "delivery_limit".into())]
    );
    let listed = ops::list_dead_letters(
        &env.pool,
        &Filter {
            reason: Some("delivery_limit".into()),
            ..Filter::default()
        },
        false,
        None,
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0]
            .errmsg
            .as_deref()
            .is_some_and(|m| m.contains("wxdispatch.kf")),
        "{:?}",
        listed[0].errmsg
    );

    // One of wxdispatch's own dead letters: recorded once, by the lane.
    env.publish_raw("kf", b"not a job").await;
    let rows = wait_dead_letter_rows(&env, 2).await;
    assert_eq!(rows[1].2, "invalid_json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.queue_len("wxdispatch.dead.recorder").await > 0 {
        assert!(
            Instant::now() < deadline,
            "the recorder queue never drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead_letter_rows(&env).await.len(), 2, "recorded once each");

    // Replay: the job is sent, once.
    let summary = ops::replay(
        &env.cfg,
        &Filter {
            reason: Some("delivery_limit".into()),
            ..Filter::default()
        },
        ReplayOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(summary.replayed.len(), 1, "{:?}", summary.skipped);
    let deadline = Instant::now() + Duration::from_secs(15);
    while env.status_of("lim-1").await.as_deref() != Some("sent") {
        assert!(
            Instant::now() < deadline,
            "lim-1 is {:?}",
            env.status_of("lim-1").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted_per_job(&env).get("lim-1"), Some(&1));
    worker.stop().await.unwrap();
    env.cleanup().await;
}
