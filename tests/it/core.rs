//! The core path: RabbitMQ → worker → simulator → Postgres.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use wxdispatch::broker;
use wxdispatch::tools::fixtures;
use wxdispatch::tools::simulate::{Faults, SimOptions};

use crate::harness::{Env, chatbot_account, wecom_account};

fn accounts(base: &str) -> Vec<wxdispatch::config::AccountConfig> {
    vec![chatbot_account("bot", base), wecom_account("kf", base)]
}

/// Extract `<tag>` content from the simulator's recorded plaintext (CDATA or not).
fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    let inner = &xml[start..end];
    Some(
        inner
            .replace("]]]]><![CDATA[>", "]]>")
            .trim_start_matches("<![CDATA[")
            .trim_end_matches("]]>")
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type_of_both_channels_is_delivered_exactly() {
    let env = Env::new(accounts, SimOptions::default()).await;
    let worker = env.start_worker().await;
    let samples = wxdispatch::tools::demo::sample_messages();
    let mut expected: HashMap<String, (&str, Value)> = HashMap::new();
    for (i, (account, _kind, message)) in samples.iter().enumerate() {
        let account = if *account == "demo-bot" { "bot" } else { "kf" };
        let job_id = format!("t-{i:02}");
        let to = if account == "bot" {
            "oUser-1"
        } else {
            "wmUser-1"
        };
        env.publish(
            account,
            &json!({"job_id": job_id, "to": to, "message": message}),
        )
        .await;
        expected.insert(job_id, (account, message.clone()));
    }
    env.wait_terminal(samples.len() as i64, Duration::from_secs(30))
        .await;
    let statuses = env.statuses().await;
    for id in expected.keys() {
        assert_eq!(statuses.get(id).map(String::as_str), Some("sent"), "{id}");
    }
    let accepted = env.sim().accepted();
    assert_eq!(accepted.len(), samples.len());
    let mut checked_text = false;
    for a in &accepted {
        match a.channel {
            "wecom" => {
                let id = a.msgid.clone().expect("wecom msgid is the job id");
                let (_, message) = &expected[&id];
                let (ty, payload) = message.as_object().unwrap().iter().next().unwrap();
                let payload = if ty == "text" && payload.is_string() {
                    json!({"content": payload})
                } else {
                    payload.clone()
                };
                let want = json!({"touser": "wmUser-1", "open_kfid": "wkKF1", "msgid": id, "msgtype": ty, ty.as_str(): payload});
                assert_eq!(a.body, want, "exact send_msg body of {id}");
            }
            "chatbot" => {
                let xml = a.plaintext.as_deref().expect("chatbot plaintext recorded");
                assert_eq!(
                    xml_field(xml, "appid").as_deref(),
                    Some(fixtures::CHATBOT_OA_APPID)
                );
                assert_eq!(xml_field(xml, "openid").as_deref(), Some("oUser-1"));
                assert_eq!(xml_field(xml, "channel").as_deref(), Some("0"));
                let msg = xml_field(xml, "msg").unwrap();
                // find the job by message content
                let m = expected
                    .values()
                    .filter(|(acc, _)| *acc == "bot")
                    .find(|(_, m)| {
                        let (ty, p) = m.as_object().unwrap().iter().next().unwrap();
                        match ty.as_str() {
                            "text" => p.as_str() == Some(msg.as_str()),
                            // multimsg items: a text item its string, a rich item its object
                            "multimsg" => {
                                let items: Vec<Value> = p
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .map(|it| it.get("text").cloned().unwrap_or(it.clone()))
                                    .collect();
                                serde_json::from_str::<Value>(&msg).ok()
                                    == Some(json!({ "multimsg": items }))
                            }
                            _ => serde_json::from_str::<Value>(&msg).ok().as_ref() == Some(m),
                        }
                    });
                assert!(m.is_some(), "chatbot msg {msg} matches no published job");
                if msg.starts_with("Hello!") {
                    let text = samples[0].2["text"].as_str().unwrap();
                    assert_eq!(
                        xml,
                        format!(
                            "<xml><appid><![CDATA[wx5f2c3e9a1b7d4c60]]></appid><openid><![CDATA[oUser-1]]></openid><msg><![CDATA[{text}]]></msg><channel>0</channel></xml>"
                        )
                    );
                    checked_text = true;
                }
            }
            other => panic!("unexpected channel {other}"),
        }
    }
    assert!(checked_text, "the text sample was checked byte for byte");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_a_reason_and_the_lane_keeps_flowing() {
    let env = Env::new(accounts, SimOptions::default()).await;
    let worker = env.start_worker().await;
    let good = |i: usize| json!({"job_id": format!("good-{i}"), "to": "wmUser-2", "message": {"text": format!("good {i}")}});
    // (body, expected reason, expected job id recorded)
    let bad: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
        (b"this is not json".to_vec(), "invalid_json", None),
        (vec![0xff, 0xfe, b'{', b'}'], "invalid_utf8", None),
        (
            br#"{"job_id": 42, "to": "u", "message": {"text": "x"}}"#.to_vec(),
            "invalid_job_id",
            None,
        ),
        (
            br#"{"to": "u", "message": {"text": "x"}}"#.to_vec(),
            "missing_job_id",
            None,
        ),
        (
            br#"{"job_id": "has space", "to": "u", "message": {"text": "x"}}"#.to_vec(),
            "invalid_job_id",
            None,
        ),
        (
            br#"{"job_id": "bad-type", "to": "u", "message": {"sticker": {}}}"#.to_vec(),
            "unknown_msgtype",
            Some("bad-type"),
        ),
        (
            br#"{"job_id": "bad-to", "to": 7, "message": {"text": "x"}}"#.to_vec(),
            "invalid_to",
            Some("bad-to"),
        ),
        (
            serde_json::to_vec(
                &json!({"job_id": "too-long", "to": "u", "message": {"text": "y".repeat(2049)}}),
            )
            .unwrap(),
            "message_over_limit",
            Some("too-long"),
        ),
        (
            br#"{"job_id": "bad-kf", "to": "u", "open_kfid": "wkNOPE", "message": {"text": "x"}}"#
                .to_vec(),
            "unknown_open_kfid",
            Some("bad-kf"),
        ),
        (
            br#"{"job_id": "bad-msg", "to": "u", "message": {"text": "x", "image": {}}}"#.to_vec(),
            "invalid_message",
            Some("bad-msg"),
        ),
        (
            format!(
                r#"{{"job_id": "huge", "to": "u", "message": {{"text": "{}"}}}}"#,
                "z".repeat(10 * 1024 * 1024)
            )
            .into_bytes(),
            "body_too_large",
            None,
        ),
    ];
    let mut n_good = 0;
    for (i, (body, _, _)) in bad.iter().enumerate() {
        env.publish("kf", &good(i)).await;
        n_good += 1;
        env.publish_raw("kf", body).await;
    }
    env.publish("kf", &good(99)).await;
    n_good += 1;
    let dead = env.dead_letters(bad.len(), Duration::from_secs(30)).await;
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|(_, p)| broker::header_str(p, broker::H_REASON).unwrap())
        .collect();
    let mut want: Vec<String> = bad.iter().map(|(_, r, _)| r.to_string()).collect();
    reasons.sort();
    want.sort();
    assert_eq!(reasons, want);
    for (_, p) in &dead {
        assert_eq!(
            broker::header_str(p, broker::H_ACCOUNT).as_deref(),
            Some("kf")
        );
        assert!(broker::header_str(p, broker::H_ERRMSG).is_some_and(|m| !m.is_empty()));
    }
    let with_id = bad.iter().filter(|(_, _, id)| id.is_some()).count() as i64;
    env.wait_terminal(n_good + with_id, Duration::from_secs(30))
        .await;
    let st = env.statuses().await;
    for i in (0..bad.len()).chain([99]) {
        assert_eq!(
            st.get(&format!("good-{i}")).map(String::as_str),
            Some("sent"),
            "good-{i}"
        );
    }
    for (_, reason, id) in &bad {
        if let Some(id) = id {
            assert_eq!(
                st.get(*id).map(String::as_str),
                Some("dead"),
                "{id} ({reason})"
            );
        }
    }
    // each dead letter is also recorded (after its confirmed publish) for `dlq list/replay`
    let mut recorded = 0i64;
    for _ in 0..100 {
        recorded = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        if recorded >= bad.len() as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorded, bad.len() as i64);
    // the worker is still consuming
    env.publish("kf", &good(100)).await;
    env.wait_terminal(n_good + with_id + 1, Duration::from_secs(10))
        .await;
    assert_eq!(env.status_of("good-100").await.as_deref(), Some("sent"));
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_account_is_dead_lettered() {
    let env = Env::new(accounts, SimOptions::default()).await;
    let worker = env.start_worker().await;
    env.publish(
        "nobody",
        &json!({"job_id": "lost-1", "to": "u", "message": {"text": "x"}}),
    )
    .await;
    let dead = env.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(
        broker::header_str(&dead[0].1, broker::H_REASON).as_deref(),
        Some("unknown_account")
    );
    assert_eq!(
        broker::header_str(&dead[0].1, broker::H_ACCOUNT).as_deref(),
        Some("nobody")
    );
    assert_eq!(dead[0].0["job_id"], "lost-1", "body unchanged");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errcodes_dead_letter_and_transient_ones_retry() {
    let mut env = Env::new(accounts, SimOptions::default()).await;
    // no time left for delay tiers (tests/it/retry.rs covers those): exhaustion is final
    env.cfg.retry.total_budget_secs = 0;
    let worker = env.start_worker().await;
    let sim = env.sim();
    // Permanent: each job gets one scripted errcode.
    let permanent = [
        ("kf", 95001_i64, "quota_exhausted"),
        ("kf", 40003, "invalid_recipient"),
        ("bot", 3014, "content_rejected"),
        ("bot", 1001, "config_error"),
    ];
    for (i, (acc, code, _)) in permanent.iter().enumerate() {
        sim.script(acc, vec![*code]);
        let to = if *acc == "bot" { "oPerm" } else { "wmPerm" };
        env.publish(
            acc,
            &json!({"job_id": format!("perm-{i}"), "to": to, "message": {"text": "x"}}),
        )
        .await;
        env.wait_terminal(i as i64 + 1, Duration::from_secs(10))
            .await;
    }
    let dead = env
        .dead_letters(permanent.len(), Duration::from_secs(10))
        .await;
    for (i, (_, code, reason)) in permanent.iter().enumerate() {
        let (_, p) = dead
            .iter()
            .find(|(b, _)| b["job_id"] == format!("perm-{i}"))
            .unwrap();
        assert_eq!(
            broker::header_str(p, broker::H_ERRCODE),
            Some(code.to_string())
        );
        assert_eq!(
            broker::header_str(p, broker::H_REASON).as_deref(),
            Some(*reason)
        );
        assert_eq!(
            broker::header_str(p, broker::H_ATTEMPTS).as_deref(),
            Some("1")
        );
    }
    // Transient: -1, HTTP 500 (-2), 45033, then success.
    sim.script("kf", vec![-1, -2, 45033]);
    env.publish(
        "kf",
        &json!({"job_id": "trans-1", "to": "wmT", "message": {"text": "x"}}),
    )
    .await;
    sim.script("bot", vec![-1, -2]);
    env.publish(
        "bot",
        &json!({"job_id": "trans-2", "to": "oT", "message": {"text": "x"}}),
    )
    .await;
    env.wait_terminal(permanent.len() as i64 + 2, Duration::from_secs(20))
        .await;
    for (id, attempts) in [("trans-1", 4), ("trans-2", 3)] {
        let (status, a): (String, i32) =
            sqlx::query_as("SELECT status, attempts FROM deliveries WHERE job_id = $1")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        assert_eq!((status.as_str(), a), ("sent", attempts), "{id}");
    }
    // Exhausted: more transient failures than the in-process budget.
    sim.set_faults(Faults {
        busy: 1.0,
        ..Default::default()
    });
    env.publish(
        "kf",
        &json!({"job_id": "exhaust-1", "to": "wmX", "message": {"text": "x"}}),
    )
    .await;
    let dead = env.dead_letters(1, Duration::from_secs(20)).await;
    assert_eq!(
        broker::header_str(&dead[0].1, broker::H_REASON).as_deref(),
        Some("retries_exhausted")
    );
    assert_eq!(
        broker::header_str(&dead[0].1, broker::H_ERRCODE).as_deref(),
        Some("-1")
    );
    assert_eq!(
        broker::header_str(&dead[0].1, broker::H_ATTEMPTS),
        Some(env.cfg.retry.in_process_attempts.to_string())
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_once_and_the_job_delivered() {
    let env = Env::new(accounts, SimOptions::default()).await;
    let worker = env.start_worker().await;
    let sim = env.sim();
    env.publish(
        "kf",
        &json!({"job_id": "tok-1", "to": "wmA", "message": {"text": "first"}}),
    )
    .await;
    env.wait_terminal(1, Duration::from_secs(10)).await;
    let corpid = env.cfg.accounts[1].corpid.clone().unwrap();
    assert_eq!(sim.gettoken_calls(&corpid), 1);
    sim.expire_tokens();
    // 20 concurrent jobs for different users all hit 42001 with the same token generation
    for i in 0..20 {
        env.publish("kf", &json!({"job_id": format!("tok-x{i}"), "to": format!("wmB{i}"), "message": {"text": "after expiry"}})).await;
    }
    env.wait_terminal(21, Duration::from_secs(20)).await;
    let st = env.statuses().await;
    assert!(st.values().all(|s| s == "sent"), "{st:?}");
    assert_eq!(
        sim.gettoken_calls(&corpid),
        2,
        "one refresh for all the jobs that saw the expired token"
    );
    let generation: i64 =
        sqlx::query_scalar("SELECT generation FROM access_tokens WHERE account = 'kf'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(generation, 2);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recipients_jobs_arrive_in_publish_order_with_prefetch() {
    let mut env = Env::new(accounts, SimOptions::default()).await;
    env.cfg.broker.prefetch = 100;
    env.cfg.worker.concurrency = 16;
    // transient faults make the race real: a failing job must hold its conversation
    env.sim().set_faults(Faults {
        busy: 0.2,
        http_5xx: 0.1,
        ..Default::default()
    });
    let worker = env.start_worker().await;
    let users = 5;
    let per_user = 60;
    for i in 0..per_user {
        for u in 0..users {
            env.publish("kf", &json!({"job_id": format!("o-{u}-{i:03}"), "to": format!("wmOrder{u}"), "message": {"text": format!("{i}")}})).await;
        }
    }
    env.wait_terminal((users * per_user) as i64, Duration::from_secs(60))
        .await;
    let accepted = env.sim().accepted();
    assert_eq!(accepted.len(), users * per_user);
    for u in 0..users {
        let seq: Vec<String> = accepted
            .iter()
            .filter(|a| a.recipient == format!("wmOrder{u}"))
            .map(|a| a.msgid.clone().unwrap())
            .collect();
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(seq, sorted, "user {u} received out of order");
        assert_eq!(seq.len(), per_user);
    }
    worker.stop().await.unwrap();
    // Acks are coalesced (one `multiple` ack per run of finished jobs, held ones singly):
    // every delivery was acked before the channel closed, none went back to the queue.
    assert_eq!(
        env.queue_len("wxdispatch.kf").await,
        0,
        "deliveries left unacked at shutdown went back to the queue"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_publishes_send_once() {
    let env = Env::new(accounts, SimOptions::default()).await;
    let worker = env.start_worker().await;
    for _ in 0..5 {
        env.publish(
            "kf",
            &json!({"job_id": "dup-1", "to": "wmD", "message": {"text": "once"}}),
        )
        .await;
        env.publish(
            "bot",
            &json!({"job_id": "dup-2", "to": "oD", "message": {"text": "once"}}),
        )
        .await;
    }
    env.wait_terminal(2, Duration::from_secs(10)).await;
    // let the remaining duplicates drain
    for _ in 0..100 {
        if env.queue_len("wxdispatch.kf").await == 0 && env.queue_len("wxdispatch.bot").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.sim().accepted().len(), 2);
    worker.stop().await.unwrap();
    env.cleanup().await;
}
