//! Platform correctness (issue 20, points 1, 5, 11): the chatbot `multimsg` shape and `<appid>`
//! checked with an independent WXBizMsgCrypt implementation (Python's `cryptography`), the
//! simulator refusing the old shapes end to end, and the errcodes the table does not know.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use serde_json::{Value, json};
use wxdispatch::broker::{self, H_ATTEMPTS, H_ERRCODE, H_REASON};
use wxdispatch::tools::fixtures::{CHATBOT_APPID, CHATBOT_OA_APPID, DEMO_AES_KEY};
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account};
use crate::retry::wait_status;

/// The seed's example of a combined answer (the Dialogue Open Platform's own format): text
/// items as strings, rich items as objects inside the one array.
fn seed_multimsg() -> Value {
    json!({"multimsg": [
        "Hello,",
        {"image": {"media_id": "MEDIA_ID_1", "url": "https://example.com/i.png"}},
        {"miniprogrampage": {"title": "Your order", "appid": "wx1234567890abcdef",
                             "pagepath": "pages/order?id=1", "thumb_media_id": "THUMB"}}
    ]})
}

/// WXBizMsgCrypt decryption written apart from the crate (AES-256-CBC with the `cryptography`
/// package, PKCS#7 over 32-byte blocks, the length-prefixed layout) plus an XML parser: each
/// ciphertext becomes `{"receive_id", "fields": {tag: text}}`. Exit 77: the package is missing.
const PY_DECRYPT: &str = r#"
import base64, json, sys
import xml.etree.ElementTree as ET
try:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
except ImportError:
    sys.exit(77)
inp = json.load(sys.stdin)
key = base64.b64decode(inp["key"] + "=")
assert len(key) == 32
out = []
for ct in inp["ciphertexts"]:
    d = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    pt = d.update(base64.b64decode(ct, validate=True)) + d.finalize()
    pad = pt[-1]
    assert 1 <= pad <= 32 and pt[-pad:] == bytes([pad]) * pad, "bad PKCS#7 (block 32)"
    pt = pt[:-pad]
    n = int.from_bytes(pt[16:20], "big")
    root = ET.fromstring(pt[20:20 + n].decode("utf-8"))
    assert root.tag == "xml"
    out.append({"receive_id": pt[20 + n:].decode("utf-8"),
                "fields": {c.tag: (c.text or "") for c in root}})
print(json.dumps(out))
"#;

/// The ciphertexts decrypted by [`PY_DECRYPT`]; `None` (the test skips) only when python3 or
/// its `cryptography` package is absent.
fn py_decrypt(key: &str, ciphertexts: &[String]) -> Option<Vec<Value>> {
    let child = Command::new("python3")
        .args(["-c", PY_DECRYPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: python3 is not installed (the independent WXBizMsgCrypt check)");
            return None;
        }
        Err(e) => panic!("python3: {e}"),
    };
    let input = json!({"key": key, "ciphertexts": ciphertexts}).to_string();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    if out.status.code() == Some(77) {
        eprintln!("SKIPPED: python3 has no `cryptography` package (the independent check)");
        return None;
    }
    assert!(
        out.status.success(),
        "python decrypt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// A tiny stand-in for the Dialogue Open Platform that records every request (path and raw
/// body) and answers errcode 0, kefustate `off`.
async fn recording_platform() -> (String, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
    type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    async fn record(State(seen): State<Seen>, uri: Uri, body: Bytes) -> axum::Json<Value> {
        seen.lock()
            .unwrap()
            .push((uri.path().to_owned(), body.to_vec()));
        axum::Json(json!({"errcode": 0, "errmsg": "ok", "kefustate": "off", "status": "asking"}))
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .fallback(axum::routing::post(record))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

async fn attempts_of(env: &Env, job: &str) -> i32 {
    sqlx::query_scalar("SELECT attempts FROM deliveries WHERE job_id = $1")
        .bind(job)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Point 1 and 11 (a), on the wire: the request a worker posts, decrypted by an independent
/// implementation, carries the seed's multimsg structure and the OA appid, while the receive id
/// stays the platform APPID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multimsg_and_appid_on_the_wire_match_the_seed() {
    let (fake, seen) = recording_platform().await;
    let mut env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    env.cfg.accounts[0].base_url = Some(fake);
    let worker = env.start_worker().await;
    // gate "bot" (default): kefustate/get first, then sendmsg; channel 0 from the account.
    env.publish(
        "bot",
        &json!({"job_id": "m1", "to": "oUser1", "message": seed_multimsg()}),
    )
    .await;
    // The job's own appid wins over the account's oa_appid.
    env.publish(
        "bot",
        &json!({"job_id": "m2", "to": "oUser2", "gate": "none", "message": {"text": "hi"},
                "chatbot": {"channel": 5, "appid": "wxJobMiniProgram01"}}),
    )
    .await;
    env.wait_terminal(2, Duration::from_secs(20)).await;
    assert_eq!(env.status_of("m1").await.as_deref(), Some("sent"));
    assert_eq!(env.status_of("m2").await.as_deref(), Some("sent"));
    worker.stop().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    let ciphertexts: Vec<String> = seen
        .iter()
        .map(|(_, body)| {
            let v: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v.as_object().map(|o| o.len()), Some(1), "only encrypt: {v}");
            v["encrypt"].as_str().unwrap().to_owned()
        })
        .collect();
    let Some(plain) = py_decrypt(DEMO_AES_KEY, &ciphertexts) else {
        env.cleanup().await;
        return;
    };
    let mut by_openid = std::collections::HashMap::<(String, &str), Value>::new();
    for (p, (path, _)) in plain.iter().zip(&seen) {
        assert_eq!(
            p["receive_id"], CHATBOT_APPID,
            "receive id stays the platform APPID"
        );
        let api = if path.contains("/kefustate/get/") {
            "kefustate_get"
        } else {
            "sendmsg"
        };
        let openid = p["fields"]["openid"].as_str().unwrap().to_owned();
        by_openid.insert((openid, api), p["fields"].clone());
    }
    let m1 = &by_openid[&("oUser1".to_owned(), "sendmsg")];
    assert_eq!(
        m1["appid"], CHATBOT_OA_APPID,
        "the account's oa_appid, {paths:?}"
    );
    assert_eq!(m1["channel"], "0");
    let msg: Value = serde_json::from_str(m1["msg"].as_str().unwrap()).unwrap();
    assert_eq!(
        msg,
        seed_multimsg(),
        "multimsg items: strings and objects, as the seed"
    );
    let get = &by_openid[&("oUser1".to_owned(), "kefustate_get")];
    assert_eq!(
        get["appid"], CHATBOT_OA_APPID,
        "kefustate/get carries it too"
    );
    let m2 = &by_openid[&("oUser2".to_owned(), "sendmsg")];
    assert_eq!(
        (m2["appid"].as_str(), m2["channel"].as_str()),
        (Some("wxJobMiniProgram01"), Some("5"))
    );
    env.cleanup().await;
}

/// Point 1 and 11 against the simulator (which refuses a stringified rich item and the
/// platform APPID on channel 0): accepted; a channel-0 job with no appid anywhere is
/// dead-lettered naming the keys; channel 7 leaves `<appid>` out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_accepts_the_corrected_shapes_and_missing_appids_are_named() {
    let env = Env::new(
        |b| {
            let mut bare = chatbot_account("bare", b);
            bare.oa_appid = None;
            vec![chatbot_account("bot", b), bare]
        },
        SimOptions::default(),
    )
    .await;
    let worker = env.start_worker().await;
    env.publish(
        "bot",
        &json!({"job_id": "s1", "to": "oU", "message": seed_multimsg()}),
    )
    .await;
    env.publish(
        "bare",
        &json!({"job_id": "s2", "to": "oU", "message": {"text": "hi"}}),
    )
    .await;
    env.publish(
        "bare",
        &json!({"job_id": "s3", "to": "oU", "message": {"text": "hi"}, "chatbot": {"channel": 7}}),
    )
    .await;
    env.wait_terminal(3, Duration::from_secs(20)).await;
    assert_eq!(env.status_of("s1").await.as_deref(), Some("sent"));
    assert_eq!(env.status_of("s3").await.as_deref(), Some("sent"));
    assert_eq!(env.status_of("s2").await.as_deref(), Some("dead"));
    let dead = env.dead_letters(1, Duration::from_secs(10)).await;
    let h = |k| broker::header_str(&dead[0].1, k);
    assert_eq!(h(H_REASON).as_deref(), Some("missing_appid"));
    let error: String = sqlx::query_scalar("SELECT error FROM deliveries WHERE job_id = 's2'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(
        error.contains("chatbot.appid") && error.contains("oa_appid"),
        "{error}"
    );
    let sim = env.sim();
    let s1 = sim.accepted_for("bot");
    assert_eq!(s1.len(), 1);
    assert_eq!(s1[0].msgtype, "multimsg");
    assert_eq!(s1[0].body["appid"], CHATBOT_OA_APPID);
    let s3 = sim.accepted_for("bare");
    assert_eq!(s3.len(), 1, "only s3 reached the platform");
    assert!(
        !s3[0].plaintext.as_deref().unwrap().contains("<appid>"),
        "{:?}",
        s3[0].plaintext
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// Point 5: 45009 on the chatbot channel throttles the account (as on WeCom) and the job is
/// retried, not dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatbot_45009_throttles_the_account_and_retries() {
    let env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    let worker = env.start_worker().await;
    let sim = env.sim();
    assert!(sim.script_api("bot", "sendmsg", vec![45009, 45011]));
    env.publish(
        "bot",
        &json!({"job_id": "t1", "to": "oU", "gate": "none", "message": {"text": "x"}}),
    )
    .await;
    wait_status(&env, "t1", "sent", Duration::from_secs(20)).await;
    assert_eq!(attempts_of(&env, "t1").await, 3);
    let metrics = crate::harness::metrics_text(&worker).await;
    assert!(
        metrics.contains("wxdispatch_lane_pauses_total{account=\"bot\",reason=\"throttled\"}"),
        "the account was paused as throttled"
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// Point 5: a truly unknown errcode is retried `retry.unknown_errcode_retries` times, then
/// dead-lettered as `unknown_errcode`; one that clears up in between is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_errcode_is_retried_then_dead_lettered() {
    let mut env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    env.cfg.retry.unknown_errcode_retries = 2;
    let worker = env.start_worker().await;
    let sim = env.sim();
    assert!(sim.script_api("bot", "sendmsg", vec![99999, 99999, 99999, 99999]));
    env.publish(
        "bot",
        &json!({"job_id": "u1", "to": "oU", "gate": "none", "message": {"text": "x"}}),
    )
    .await;
    let dead = env.dead_letters(1, Duration::from_secs(20)).await;
    let h = |k| broker::header_str(&dead[0].1, k);
    assert_eq!(h(H_REASON).as_deref(), Some("unknown_errcode"));
    assert_eq!(h(H_ERRCODE).as_deref(), Some("99999"));
    assert_eq!(h(H_ATTEMPTS).as_deref(), Some("3"), "1 + 2 retries");
    wait_status(&env, "u1", "dead", Duration::from_secs(5)).await;
    assert_eq!(sim.errcode_counts().get("bot:99999"), Some(&3));

    // The fourth scripted 99999 meets the next job once; its retry is sent.
    env.publish(
        "bot",
        &json!({"job_id": "u2", "to": "oU", "gate": "none", "message": {"text": "y"}}),
    )
    .await;
    wait_status(&env, "u2", "sent", Duration::from_secs(20)).await;
    assert_eq!(attempts_of(&env, "u2").await, 2);
    worker.stop().await.unwrap();
    env.cleanup().await;
}
