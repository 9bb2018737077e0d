//! Bulk broadcasts: fan-out, exactly one message per recipient, replies not held behind it,
//! idempotent re-publish, cancellation.

use std::time::{Duration, Instant};

use serde_json::json;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, wecom_account};

async fn wait_finished(
    env: &Env,
    account: &str,
    id: &str,
    timeout: Duration,
) -> wxdispatch::engine::broadcast::Progress {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = wxdispatch::engine::broadcast::progress(&env.pool, account, id)
            .await
            .unwrap()
            && p.pending == 0
            && p.total > 0
        {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "broadcast {id} did not finish: {:?}",
            wxdispatch::engine::broadcast::progress(&env.pool, account, id)
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_every_recipient_once_while_replies_keep_flowing() {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    // a rate, so the broadcast takes a while and replies must find room next to it
    env.cfg.accounts[0].rate = wxdispatch::config::Rate {
        per_second: Some(1000),
        per_minute: None,
        burst: Some(50),
        unlimited: false,
    };
    let worker = env.start_worker().await;
    let n = 5_000;
    let mut recipients: Vec<String> = (0..n).map(|i| format!("wmB{i:05}")).collect();
    recipients.push("wmB00001".into()); // a duplicate
    recipients.push("has space".into()); // invalid
    let job = json!({"kind": "broadcast", "job_id": "bc-1", "to": recipients, "message": {"text": {"content": "Sale!"}}});
    env.publish("kf", &job).await;
    // replies published while the broadcast runs
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut reply_lat = Vec::new();
    for i in 0..20 {
        let id = format!("reply-{i}");
        let t0 = Instant::now();
        env.publish(
            "kf",
            &json!({"job_id": id, "to": format!("wmR{i}"), "message": {"text": "answer"}}),
        )
        .await;
        loop {
            if env.status_of(&id).await.as_deref() == Some("sent") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "reply {id} held behind the broadcast"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        reply_lat.push(t0.elapsed());
    }
    let p = wait_finished(&env, "kf", "bc-1", Duration::from_secs(60)).await;
    assert_eq!(p.total, n as i64);
    assert_eq!(p.skipped, 2);
    assert_eq!(p.sent, n as i64);
    // counts match the deliveries rows
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries WHERE broadcast_id = 'bc-1' AND status = 'sent'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows, p.sent);
    // every recipient exactly one message at the simulator
    let accepted = env.sim().accepted();
    let mut per: std::collections::HashMap<String, usize> = Default::default();
    for a in accepted.iter().filter(|a| a.recipient.starts_with("wmB")) {
        *per.entry(a.recipient.clone()).or_default() += 1;
    }
    assert_eq!(per.len(), n);
    assert!(per.values().all(|c| *c == 1));
    let worst = reply_lat.iter().max().unwrap();
    println!("broadcast of {n}: replies during it took at most {worst:?}");
    // The broadcast needs ≥ 5 s at its share of 1000/s; a reply held behind it would wait that long.
    assert!(
        *worst < Duration::from_secs(2),
        "replies kept their latency ({worst:?})"
    );
    // publishing the same broadcast again sends nothing
    let before = env.sim().accepted().len();
    env.publish("kf", &job).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.sim().accepted().len(), before);
    // the worker wrote the counts into `broadcasts`
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, sent): (String, i32) =
        sqlx::query_as("SELECT status, sent FROM broadcasts WHERE id = 'bc-1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), sent), ("done", n as i32));
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_broadcast_leaves_pending_recipients_cancelled() {
    let mut env = Env::new(
        |b| vec![wecom_account("kfcancel", b)],
        SimOptions::default(),
    )
    .await;
    env.cfg.accounts[0].rate = wxdispatch::config::Rate {
        per_second: Some(100),
        per_minute: None,
        burst: Some(10),
        unlimited: false,
    };
    let worker = env.start_worker().await;
    let recipients: Vec<String> = (0..1000).map(|i| format!("wmC{i}")).collect();
    env.publish(
        "kfcancel",
        &json!({"kind": "broadcast", "job_id": "bc-2", "to": recipients, "message": {"text": "x"}}),
    )
    .await;
    // let it start
    let t0 = Instant::now();
    loop {
        let p = wxdispatch::engine::broadcast::progress(&env.pool, "kfcancel", "bc-2")
            .await
            .unwrap();
        if p.is_some_and(|p| p.sent >= 20) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = wxdispatch::engine::broadcast::cancel(&env.pool, "kfcancel", "bc-2")
        .await
        .unwrap();
    assert!(n > 500, "most recipients were still pending ({n})");
    let p = wait_finished(&env, "kfcancel", "bc-2", Duration::from_secs(30)).await;
    assert_eq!(p.sent + p.cancelled, 1000, "{p:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent_at_sim = env.sim().accepted().len() as i64;
    let sent_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries WHERE broadcast_id = 'bc-2' AND status = 'sent'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(sent_at_sim, sent_rows, "nothing cancelled was sent");
    assert!(
        wxdispatch::engine::broadcast::cancel(&env.pool, "kfcancel", "nope")
            .await
            .is_err()
    );
    // Cancelled recipients count as `cancelled` deliveries, never as duplicates (the account
    // is this test's own: the metrics recorder is shared by the tests of this process).
    let metrics = crate::harness::metrics_text(&worker).await;
    let of = |name: &str, label: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with(name) && l.contains("account=\"kfcancel\"") && l.contains(label)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        of("wxdispatch_duplicate_jobs_total", ""),
        0.0,
        "cancelled counted as duplicates"
    );
    assert_eq!(
        of("wxdispatch_deliveries_total", "outcome=\"duplicate\""),
        0.0,
        "cancelled counted as duplicate deliveries"
    );
    assert!(
        of("wxdispatch_deliveries_total", "outcome=\"cancelled\"") > 0.0,
        "no cancelled deliveries counted"
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}
