//! A dead letter's body in `dead_letters` is bounded (`worker.dead_letter_body_bytes`): a
//! longer body is recorded as its first bytes, its size and its sha256, the whole body stays
//! in the `wxdispatch.dead` queue, and `dlq replay` refuses to publish the prefix as the job.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest;
use sqlx::Row;
use wxdispatch::ops::{self, Filter, ReplayOptions, Skip};
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account};

const PREFIX: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_dead_letter_keeps_a_prefix_its_size_and_sha256_and_is_not_replayed() {
    let env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    assert_eq!(env.cfg.worker.dead_letter_body_bytes, PREFIX, "the default");
    let worker = env.start_worker().await;
    // 2 MiB of text: under worker.max_body_bytes, so it is parsed (and has a job id), but
    // far over the platform's text limit: dead-lettered.
    let big = serde_json::to_vec(&json!({
        "job_id": "dl-big", "to": "oBig", "message": {"text": "x".repeat(2 * 1024 * 1024)},
    }))
    .unwrap();
    let small = serde_json::to_vec(&json!({
        "job_id": "dl-small", "to": "oSmall", "message": {"text": "y".repeat(5000)},
    }))
    .unwrap();
    env.publisher
        .publish_job("bot", "dl-big", &big)
        .await
        .unwrap();
    env.publisher
        .publish_job("bot", "dl-small", &small)
        .await
        .unwrap();
    env.wait_terminal(2, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let rows = loop {
        let rows = sqlx::query(
            "SELECT job_id, body, body_bytes, body_sha256, body_truncated FROM dead_letters
             ORDER BY job_id",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap();
        if rows.len() == 2 {
            break rows;
        }
        assert!(Instant::now() < deadline, "{} dead letter rows", rows.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
    for (row, whole, truncated) in [(&rows[0], &big, true), (&rows[1], &small, false)] {
        let job: String = row.get("job_id");
        let kept: Vec<u8> = row.get("body");
        assert_eq!(
            kept,
            whole[..whole.len().min(PREFIX)],
            "{job}: the row keeps at most {PREFIX} bytes, the body's first ones"
        );
        assert_eq!(row.get::<i64, _>("body_bytes"), whole.len() as i64, "{job}");
        assert_eq!(row.get::<String, _>("body_sha256"), sha(whole), "{job}");
        assert_eq!(row.get::<bool, _>("body_truncated"), truncated, "{job}");
    }
    // The whole bodies are in wxdispatch.dead.
    let mut queued: Vec<Value> = env
        .dead_letters(2, Duration::from_secs(15))
        .await
        .into_iter()
        .map(|(body, _)| body)
        .collect();
    queued.sort_by_key(|v| v["job_id"].as_str().map(str::to_owned));
    let whole = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
    assert_eq!(queued, vec![whole(&big), whole(&small)]);

    // `dlq list` shows the size, digest and truncation.
    let listed = ops::list_dead_letters(&env.pool, &Filter::default(), false, None)
        .await
        .unwrap();
    let big_row = listed
        .iter()
        .find(|r| r.job_id.as_deref() == Some("dl-big"))
        .unwrap();
    let digest = big_row.body.as_ref().expect("listed with its body digest");
    assert_eq!(
        (digest.bytes, digest.sha256.as_deref(), digest.truncated),
        (big.len() as i64, Some(sha(&big).as_str()), true)
    );

    // Replay publishes the whole small one and refuses the truncated one, naming it.
    let summary = ops::replay(&env.cfg, &Filter::default(), ReplayOptions::default())
        .await
        .unwrap();
    let replayed: Vec<_> = summary
        .replayed
        .iter()
        .filter_map(|r| r.job_id.as_deref())
        .collect();
    assert_eq!(replayed, ["dl-small"]);
    assert_eq!(summary.skipped.len(), 1);
    let skipped = &summary.skipped[0];
    assert_eq!(skipped.dead_letter.id, big_row.id);
    assert_eq!(
        skipped.why,
        Skip::Truncated {
            bytes: big.len() as i64
        }
    );
    assert!(
        skipped.why.to_string().contains("wxdispatch.dead"),
        "{}",
        skipped.why
    );
    // The truncated row stays unreplayed and its delivery dead.
    let replayed_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT replayed_at FROM dead_letters WHERE job_id = 'dl-big'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(replayed_at.is_none());
    assert_eq!(env.status_of("dl-big").await.as_deref(), Some("dead"));
    worker.stop().await.unwrap();
    env.cleanup().await;
}
