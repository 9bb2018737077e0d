//! The worker's byte budget (`worker.held_bytes_budget`): the lanes hold at most that many
//! bytes of job bodies at once, whatever the prefetch, and every job still goes out, in its
//! conversation's order.

use std::time::{Duration, Instant};

use serde_json::json;
use wxdispatch::config::Rate;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account};

const KIB: usize = 1024;

/// Extract `<tag>`'s text from the simulator's recorded plaintext (CDATA or not).
fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    let inner = &xml[start..end];
    Some(
        inner
            .trim_start_matches("<![CDATA[")
            .trim_end_matches("]]>")
            .to_owned(),
    )
}

/// A valid job of about `size` bytes: unknown top-level fields are ignored by the parser, so
/// a padding field makes a small reply big.
fn padded_job(id: &str, to: &str, size: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "job_id": id, "to": to, "message": {"text": id}, "padding": "x".repeat(size),
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lanes_hold_no_more_bytes_than_the_budget_and_every_job_still_goes_out_in_order() {
    let mut env = Env::new(
        |b| {
            let mut a = chatbot_account("bot", b);
            // Slow sends (20/s, one at a time): with a prefetch of 512 the lane would take
            // the whole backlog at once and queue it behind the conversation.
            a.rate = Rate {
                per_second: Some(20),
                burst: Some(1),
                ..Rate::default()
            };
            vec![a]
        },
        SimOptions::default(),
    )
    .await;
    env.cfg.worker.held_bytes_budget = 1024 * KIB as u64;
    let n = 12;
    let ids: Vec<String> = (0..n).map(|i| format!("big-{i:02}")).collect();
    // Published before the worker starts: the whole backlog is there when the lane consumes.
    for id in &ids {
        env.publisher
            .publish_job("bot", id, &padded_job(id, "oBudget", 300 * KIB))
            .await
            .unwrap();
    }
    let worker = env.start_worker().await;
    env.wait_terminal(n as i64, Duration::from_secs(30)).await;

    let statuses = env.statuses().await;
    for id in &ids {
        assert_eq!(statuses.get(id).map(String::as_str), Some("sent"), "{id}");
    }
    let sent: Vec<String> = env
        .sim()
        .accepted_for("bot")
        .iter()
        .filter_map(|a| xml_field(a.plaintext.as_deref()?, "msg"))
        .collect();
    assert_eq!(sent, ids, "one conversation, sent in publish order");

    let budget = worker.lanes[0].budget.clone();
    let body = padded_job(&ids[0], "oBudget", 300 * KIB).len() as u64;
    // Three of these bodies fit in 1 MiB, four do not: never a fourth at the same time.
    assert!(
        budget.peak() < 4 * body,
        "held {} bytes at once ({} bodies), budget {}",
        budget.peak(),
        budget.peak() as f64 / body as f64,
        budget.total()
    );
    assert!(
        budget.peak() >= 2 * body,
        "the lane held {} bytes at most: the backlog did not wait behind its conversation",
        budget.peak()
    );
    // Every delivery gave its bytes back once settled.
    let deadline = Instant::now() + Duration::from_secs(5);
    while budget.held() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} bytes still held",
            budget.held()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The gauge is exported.
    let addr = worker.admin_addr.expect("the worker serves /metrics");
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.lines()
            .any(|l| l.starts_with("wxdispatch_held_bytes ")),
        "no wxdispatch_held_bytes on /metrics"
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_the_whole_budget_still_goes_out() {
    let mut env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    env.cfg.worker.held_bytes_budget = 64 * KIB as u64;
    let worker = env.start_worker().await;
    for (i, size) in [10 * KIB, 200 * KIB, 10 * KIB, 300 * KIB]
        .into_iter()
        .enumerate()
    {
        let id = format!("huge-{i}");
        env.publisher
            .publish_job("bot", &id, &padded_job(&id, &format!("oHuge{i}"), size))
            .await
            .unwrap();
    }
    env.wait_terminal(4, Duration::from_secs(30)).await;
    let statuses = env.statuses().await;
    for i in 0..4 {
        assert_eq!(
            statuses.get(&format!("huge-{i}")).map(String::as_str),
            Some("sent")
        );
    }
    assert!(worker.lanes[0].budget.peak() <= 64 * KIB as u64);
    worker.stop().await.unwrap();
    env.cleanup().await;
}
