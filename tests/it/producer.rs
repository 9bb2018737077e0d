//! Issue 15.3 and 15.6: job ids producers already have (UUIDs, ULIDs, up to 128 chars; the
//! WeCom msgid derived from longer ones), jobs rejected before they had a valid id found by
//! their AMQP message_id, and the HTTP job API.

use std::time::Duration;

use lapin::BasicProperties;
use serde_json::{Value, json};
use wxdispatch::broker;
use wxdispatch::config::ApiToken;
use wxdispatch::domain::ids::wecom_msgid;
use wxdispatch::ops::dlq;
use wxdispatch::ops::status;
use wxdispatch::store::Store;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account, wecom_account};

const UUID: &str = "0b9a8c8e-3f4a-4d39-9a3e-2a5d1f0c7b61";
const ULID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

async fn publish_with_message_id(env: &Env, account: &str, body: &[u8], message_id: &str) {
    env.publisher
        .publish(
            broker::EXCHANGE,
            account,
            body,
            BasicProperties::default().with_message_id(message_id.into()),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uuid_and_ulid_ids_are_sent_and_jobs_rejected_before_an_id_are_found_by_message_id() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let worker = env.start_worker().await;
    for id in [UUID, ULID] {
        env.publish(
            "kf",
            &json!({"job_id": id, "to": "wmUser-1", "message": {"text": format!("hi {id}")}}),
        )
        .await;
    }
    let long = "x".repeat(129);
    env.publish(
        "kf",
        &json!({"job_id": long, "to": "wmUser-1", "message": {"text": "too long"}}),
    )
    .await;
    // The user report: an unreadable body published with message_id = str(uuid.uuid4()).
    let unreadable = "5f1c3c1e-7a2b-4c8d-9e0f-a1b2c3d4e5f6";
    publish_with_message_id(&env, "kf", b"{not json", unreadable).await;
    // Neither the body's id nor the message_id is a valid job id.
    publish_with_message_id(
        &env,
        "kf",
        br#"{"job_id": "has space", "to": "wmUser-1", "message": {"text": "x"}}"#,
        "ticket/42",
    )
    .await;
    // UUID, ULID sent; the unreadable body dead under its message_id.
    env.wait_terminal(3, Duration::from_secs(30)).await;
    env.wait_dead_letter_rows(3, Duration::from_secs(30)).await;
    let statuses = env.statuses().await;
    assert_eq!(statuses.get(UUID).map(String::as_str), Some("sent"));
    assert_eq!(statuses.get(ULID).map(String::as_str), Some("sent"));

    // WeCom got the ULID as its msgid, and the UUID's 32-char digest (a UUID is 36 chars).
    let derived = wecom_msgid(UUID).into_owned();
    assert_eq!(derived.len(), 32);
    assert_ne!(derived, UUID.replace('-', ""));
    let mut sent: Vec<(String, Option<String>)> = env
        .sim()
        .accepted()
        .into_iter()
        .map(|a| {
            (
                a.body["text"]["content"].as_str().unwrap_or("").to_owned(),
                a.msgid,
            )
        })
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            (format!("hi {ULID}"), Some(ULID.to_owned())),
            (format!("hi {UUID}"), Some(derived.clone())),
        ]
    );
    // Stored in the row and shown by `status`.
    let store = Store::with_pool(env.pool.clone(), 1);
    let r = status::report(&store, UUID, None).await.unwrap().unwrap();
    assert_eq!(
        r.delivery.platform_request_msgid.as_deref(),
        Some(&*derived)
    );
    assert_eq!(r.delivery.status, "sent");
    assert!(r.dead_letter.is_none());
    let r = status::report(&store, ULID, None).await.unwrap().unwrap();
    assert_eq!(r.delivery.platform_request_msgid.as_deref(), Some(ULID));

    // 129 chars: invalid_job_id, found by its message_id (the publisher set it to the id).
    let r = status::report(&store, &long, None).await.unwrap().unwrap();
    assert_eq!(r.delivery.status, "dead");
    let err = r.delivery.error.clone().unwrap_or_default();
    assert!(err.starts_with("invalid_job_id: job_id: "), "{err}");
    assert!(err.contains("1-128 chars"), "{err}");
    assert!(r.dead_letter.is_some());
    // The unreadable body: `status <uuid>` finds it (was "no delivery").
    let r = status::report(&store, unreadable, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.delivery.status, "dead");
    let err = r.delivery.error.clone().unwrap_or_default();
    assert!(err.starts_with("invalid_json"), "{err}");
    // No usable id at all: still found by the message_id, and listed.
    let r = status::report(&store, "ticket/42", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.dead_letter.as_ref().map(|d| d.reason.as_str()),
        Some("invalid_job_id")
    );
    let listed = dlq::list_dead_letters(&env.pool, &dlq::Filter::default(), false, None)
        .await
        .unwrap();
    let row = listed
        .iter()
        .find(|d| d.message_id.as_deref() == Some("ticket/42"))
        .expect("dlq list shows the job without an id");
    assert_eq!(
        (row.job_id.as_deref(), row.reason.as_str()),
        (None, "invalid_job_id")
    );
    assert!(row.body.as_ref().is_some_and(|b| b.sha256.is_some()));
    worker.stop().await.unwrap();
    env.cleanup().await;
}

fn token(name: &str, value: &str, accounts: &[&str], rate: u32) -> ApiToken {
    ApiToken {
        name: name.into(),
        sha256: wxdispatch::cli::token::hash(value.as_bytes()),
        accounts: accounts.iter().map(|a| a.to_string()).collect(),
        rate_per_sec: rate,
        burst: rate,
    }
}

async fn body(r: reqwest::Response) -> (u16, Value) {
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_job_api_authenticates_validates_publishes_and_shows_the_record() {
    let mut env = Env::new(
        |b| vec![chatbot_account("bot", b), wecom_account("kf", b)],
        SimOptions::default(),
    )
    .await;
    env.cfg.http.api_tokens = vec![
        token("crm", "crm-token-1", &[], 1000),
        token("slow", "slow-token-2", &["bot"], 1),
    ];
    let worker = env.start_worker().await;
    let base = format!("http://{}", worker.admin_addr.unwrap());
    let jobs = format!("{base}/v1/jobs");
    let c = reqwest::Client::new();
    let job = |id: &str| json!({"account": "kf", "job_id": id, "to": "wmUser-1", "message": {"text": format!("http {id}")}});

    // 401 without a token and with a wrong one: the same answer, with WWW-Authenticate.
    let none = c.post(&jobs).json(&job(UUID)).send().await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    assert!(
        none.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer"))
    );
    let none = body(none).await;
    let wrong = body(
        c.post(&jobs)
            .bearer_auth("crm-token-2")
            .json(&job(UUID))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(none, wrong);
    assert_eq!(none.1["errors"][0]["reason"], "unauthorized");

    // 422 with the queue path's reason word, and a batch with one bad job publishes nothing.
    let long = "x".repeat(129);
    let (code, v) = body(
        c.post(&jobs)
            .bearer_auth("crm-token-1")
            .json(&json!([job("never-1"), job(&long)]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["errors"][0]["index"], 1);
    assert_eq!(v["errors"][0]["reason"], "invalid_job_id");

    // 202 for one job and for a batch, after the confirms.
    let (code, v) = body(
        c.post(&jobs)
            .bearer_auth("crm-token-1")
            .json(&job(UUID))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, &v), (202, &json!({"job_ids": [UUID]})));
    let (code, v) = body(
        c.post(&jobs)
            .bearer_auth("crm-token-1")
            .json(&json!({"jobs": [job(ULID), {"account": "bot", "job_id": "crm:ticket.42", "to": "oUser-1", "message": {"text": "bot"}}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, &v),
        (202, &json!({"job_ids": [ULID, "crm:ticket.42"]}))
    );
    env.wait_terminal(3, Duration::from_secs(30)).await;
    let statuses = env.statuses().await;
    for id in [UUID, ULID, "crm:ticket.42"] {
        assert_eq!(statuses.get(id).map(String::as_str), Some("sent"), "{id}");
    }
    assert!(!statuses.contains_key("never-1"), "{statuses:?}");
    assert_eq!(env.sim().accepted().len(), 3);

    // GET: the delivery record; 404 for an unknown id.
    let (code, v) = body(
        c.get(format!("{jobs}/{UUID}"))
            .bearer_auth("crm-token-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "sent");
    assert_eq!(v["account"], "kf");
    assert_eq!(v["platform_request_msgid"], *wecom_msgid(UUID));
    let (code, v) = body(
        c.get(format!("{jobs}/nope-1"))
            .bearer_auth("crm-token-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, v["errors"][0]["reason"].as_str()),
        (404, Some("not_found"))
    );

    // A token limited to `bot` neither reads nor publishes `kf`'s jobs; over its rate, 429.
    let (code, _) = body(
        c.get(format!("{jobs}/{UUID}"))
            .bearer_auth("slow-token-2")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 404);
    let over = c
        .post(&jobs)
        .bearer_auth("slow-token-2")
        .json(&job("slow-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status().as_u16(), 429);
    let retry: u64 = over
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    assert!(retry >= 1);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (code, v) = body(
        c.post(&jobs)
            .bearer_auth("slow-token-2")
            .json(&job("slow-1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(v["errors"][0]["reason"], "forbidden_account");

    // The job API's requests are counted by token name; no token value appears.
    let m = crate::harness::metrics_text(&worker).await;
    assert!(m.contains("wxdispatch_http_job_requests_total"), "{m}");
    assert!(!m.contains("crm-token-1"));
    worker.stop().await.unwrap();
    env.cleanup().await;
}
