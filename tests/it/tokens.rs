//! Issue 20 points 6 and 8: a refused gettoken pauses the account (its jobs wait, nothing is
//! dead-lettered) and the lane resumes by itself once gettoken accepts the credentials; the
//! sync_msg `voice_format`; the sync retention alert in `/readyz` and the metrics.

use std::time::{Duration, Instant};

use serde_json::json;
use wxdispatch::config::{Secret, VoiceFormat};
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, metrics_text, wecom_account};

fn job(id: &str, to: &str) -> serde_json::Value {
    json!({"job_id": id, "to": to, "message": {"text": id}})
}

/// The value of the metric line starting with `prefix` (name and labels), if any.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Poll until `check` holds (or panic with `what` after `timeout`).
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// While gettoken refuses the secret: the jobs are not dead-lettered, the lane is paused
/// (metric), no attempt is counted and gettoken is not hammered. Returns the gettoken calls
/// made meanwhile.
async fn refused_and_paused(env: &Env, worker: &wxdispatch::app::Worker, account: &str) -> u64 {
    let sim = env.sim();
    let corpid = env.cfg.accounts[0].corpid.clone().unwrap();
    eventually(Duration::from_secs(10), "the lane pauses", || async {
        let m = metrics_text(worker).await;
        metric(
            &m,
            &format!("wxdispatch_lane_paused{{account=\"{account}\"}}"),
        ) == Some(1.0)
    })
    .await;
    let m = metrics_text(worker).await;
    assert_eq!(
        metric(
            &m,
            &format!(
                "wxdispatch_lane_pauses_total{{account=\"{account}\",reason=\"credentials_refused\"}}"
            )
        ),
        Some(1.0),
        "{m}"
    );
    // Long enough for the old behaviour to dead-letter all three (it took milliseconds).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.queue_len(wxdispatch::broker::DEAD).await,
        0,
        "nothing dead-lettered"
    );
    let statuses = env.statuses().await;
    assert!(
        statuses.values().all(|s| s != "dead"),
        "no job ended: {statuses:?}"
    );
    assert_eq!(sim.accepted_for(account).len(), 0, "nothing sent");
    let calls = sim.gettoken_calls(&corpid);
    assert!(
        (1..=4).contains(&calls),
        "gettoken asked only by the first job / sync and the prober: {calls}"
    );
    calls
}

async fn all_sent_once(env: &Env, account: &str, ids: &[&str], timeout: Duration) {
    env.wait_terminal(ids.len() as i64, timeout).await;
    for id in ids {
        let (status, attempts): (String, i32) =
            sqlx::query_as("SELECT status, attempts FROM deliveries WHERE job_id = $1")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert_eq!(
            (status.as_str(), attempts),
            ("sent", 1),
            "{id}: sent, the refused attempts not counted"
        );
    }
    let mut sent: Vec<String> = env
        .sim()
        .accepted_for(account)
        .iter()
        .filter_map(|a| a.msgid.clone())
        .collect();
    sent.sort();
    assert_eq!(sent, ids, "each sent exactly once");
}

/// On main this fails: the jobs are dead-lettered `config_error` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_gettoken_pauses_the_lane_and_it_resumes_by_itself_once_fixed() {
    let env = Env::new(|b| vec![wecom_account("tokref", b)], SimOptions::default()).await;
    let sim = env.sim();
    assert!(sim.refuse_gettoken("tokref", 40001));
    let worker = env.start_worker().await;
    for (id, to) in [("r1", "wmAlice"), ("r2", "wmAlice"), ("r3", "wmBob")] {
        env.publish("tokref", &job(id, to)).await;
    }
    refused_and_paused(&env, &worker, "tokref").await;

    // The secret is fixed in the console: the prober (5 s, then 10 s, …) finds it.
    assert!(sim.accept_gettoken("tokref"));
    all_sent_once(&env, "tokref", &["r1", "r2", "r3"], Duration::from_secs(25)).await;
    let m = metrics_text(&worker).await;
    assert_eq!(
        metric(&m, "wxdispatch_lane_paused{account=\"tokref\"}"),
        Some(0.0),
        "{m}"
    );
    // And new jobs flow as usual.
    env.publish("tokref", &job("r4", "wmBob")).await;
    env.wait_terminal(4, Duration::from_secs(10)).await;
    assert_eq!(env.status_of("r4").await.as_deref(), Some("sent"));
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// The account-update hook: replacing the credentials wakes the prober at once instead of
/// at its next scheduled probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_credentials_probes_at_once() {
    let env = Env::new(|b| vec![wecom_account("tokhook", b)], SimOptions::default()).await;
    let sim = env.sim();
    let corpid = env.cfg.accounts[0].corpid.clone().unwrap();
    assert!(sim.refuse_gettoken("tokhook", 40013));
    let worker = env.start_worker().await;
    env.publish("tokhook", &job("h1", "wmAlice")).await;
    let before = refused_and_paused(&env, &worker, "tokhook").await;
    // Let the first scheduled probe (4–5 s after the refusal) fail: the next one is 8–10 s
    // after it.
    eventually(
        Duration::from_secs(15),
        "the first probe asks gettoken",
        || async { sim.gettoken_calls(&corpid) > before },
    )
    .await;
    assert!(sim.accept_gettoken("tokhook"));
    let t0 = Instant::now();
    let tokens = worker.lanes[0].platform.tokens().unwrap();
    tokens.set_credentials(corpid.clone(), Secret::new("secret-tokhook"));
    all_sent_once(&env, "tokhook", &["h1"], Duration::from_secs(10)).await;
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "sent {:?} after the update: before the next scheduled probe",
        t0.elapsed()
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_msg_asks_for_the_configured_voice_format() {
    let mut env = Env::new(
        |b| vec![wecom_account("tokvoice", b)],
        SimOptions::default(),
    )
    .await;
    env.cfg.sync.voice_format = VoiceFormat::Silk;
    env.cfg.sync.poll_interval_secs = 1;
    let worker = env.start_worker().await;
    let sim = env.sim();
    eventually(Duration::from_secs(10), "two sync_msg pulls", || async {
        sim.sync_voice_formats().values().sum::<u64>() >= 2
    })
    .await;
    let seen = sim.sync_voice_formats();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["1"],
        "every request asks for Silk: {seen:?}"
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sync_raises_the_retention_alert_in_readyz_and_metrics() {
    let mut env = Env::new(
        |b| vec![wecom_account("tokstale", b)],
        SimOptions::default(),
    )
    .await;
    env.cfg.sync.poll_interval_secs = 1;
    env.cfg.sync.retention_alert_secs = 2;
    let worker = env.start_worker().await;
    let sim = env.sim();
    let addr = worker.admin_addr.unwrap();
    let readyz = || async {
        let r = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let risk = "wxdispatch_sync_retention_risk{account=\"tokstale\",open_kfid=\"wkKF1\"}";
    // Healthy: polled every second, never 2 s stale.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, body) = readyz().await;
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains("sync_retention_risk"), "{body}");
    assert_eq!(metric(&metrics_text(&worker).await, risk), Some(0.0));

    // sync_msg fails (no permission: the loop waits a minute before it tries again).
    assert!(sim.script_api("tokstale", "sync_msg", vec![48002]));
    eventually(Duration::from_secs(10), "the alert in /readyz", || async {
        readyz().await.1.contains("sync_retention_risk")
    })
    .await;
    let (code, body) = readyz().await;
    assert_eq!(code, 200, "details only, still ready: {body}");
    assert!(
        body.contains("account tokstale open_kfid wkKF1 not synced for"),
        "{body}"
    );
    let m = metrics_text(&worker).await;
    assert_eq!(metric(&m, risk), Some(1.0), "{m}");
    let stale = metric(
        &m,
        "wxdispatch_sync_stale_seconds{account=\"tokstale\",open_kfid=\"wkKF1\"}",
    )
    .unwrap();
    assert!(stale >= 2.0, "stale {stale} s");
    worker.stop().await.unwrap();
    env.cleanup().await;
}
