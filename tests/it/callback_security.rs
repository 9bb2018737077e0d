//! Callback security (issue 14): refusals that teach an attacker nothing, a slowdown for a
//! source that keeps being refused, the optional chatbot push signature, and WeCom callback
//! replays that do not make the sync loop pull again.
//!
//! Requests come from distinct loopback addresses (127.0.x.y, all of them `lo`) where a test
//! sends more refused requests than one source gets answered at once.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use wxdispatch::crypto::{CryptoError, MsgCrypt};
use wxdispatch::http::callback::REFUSED_BODY;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{AES_KEY, AES_KEY_2, Env, chatbot_account, wecom_account};
use crate::inbound::{count, url, wait_count};

const KFID: &str = "wkKF1";
/// Requests per source address where the test needs answers that are not slowed (the
/// throttle answers 20 refusals a minute from one source at once).
const PER_SOURCE: usize = 10;

/// A request to send from a given source.
type Req = Box<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder>;

/// An answer as a client sees it: status, headers (except `date`, which only tells the
/// time) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(ip))
        .build()
        .unwrap()
}

/// One client per loopback source 127.0.`net`.1, 127.0.`net`.2, …
fn sources(net: u8, n: usize) -> Vec<reqwest::Client> {
    (1..=n)
        .map(|i| client_from(Ipv4Addr::new(127, 0, net, i as u8)))
        .collect()
}

async fn answer(r: reqwest::RequestBuilder) -> Answer {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let mut headers: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "date")
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    let body = r.bytes().await.unwrap().to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// Send `(label, request)` pairs, `PER_SOURCE` per source address, and assert that every
/// answer is byte-identical to the first and is the one refusal.
async fn assert_all_refused_alike(reqs: Vec<(String, Req)>, net: u8) {
    let clients = sources(net, reqs.len().div_ceil(PER_SOURCE));
    let mut answers = Vec::new();
    for (i, (label, req)) in reqs.iter().enumerate() {
        answers.push((label.clone(), answer(req(&clients[i / PER_SOURCE])).await));
    }
    let (first_label, first) = &answers[0];
    assert_eq!(first.status, 400, "{first_label}: {first:?}");
    assert_eq!(first.body, REFUSED_BODY.as_bytes(), "{first_label}");
    for (label, a) in &answers {
        assert_eq!(a, first, "{label} is answered unlike {first_label}");
    }
}

/// The push body for a ciphertext.
fn push(enc: &str) -> String {
    json!({ "encrypted": enc }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_padding_oracle_attack_on_the_chatbot_push_learns_nothing() {
    let env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    let worker = env.start_worker().await;
    let a = env.cfg.account("bot").unwrap();
    let appid = a.appid.clone().unwrap();
    // The key, known to the test only, tells which guesses have valid padding.
    let crypt = MsgCrypt::new(a.token.expose(), AES_KEY, &appid).unwrap();
    let cb = url(&worker, "/callback/chatbot/bot");

    // A captured genuine push; the attacker keeps its last block C and puts a block R of its
    // own before it. Guessing R's last byte walks the last plaintext byte through all 256
    // values: the classic last-byte padding attack, with only the HTTP answer to go by.
    let genuine = crypt.encrypt(br#"{"msgid": "g-1", "msgtype": "text", "openid": "oU1"}"#);
    let raw = STANDARD.decode(&genuine).unwrap();
    let c = &raw[raw.len() - 16..];
    let mut valid_padding = Vec::new();
    let mut reqs: Vec<(String, Req)> = Vec::new();
    for g in 0..=255u8 {
        let mut forged = vec![0x5au8; 16];
        forged[15] = g;
        forged.extend_from_slice(c);
        let enc = STANDARD.encode(&forged);
        match crypt.decrypt(&enc) {
            Err(CryptoError::Padding) => {}
            Err(_) => valid_padding.push(g),
            Ok(m) => panic!("guess {g} decrypts to a push: {m:?}"),
        }
        let (cb, body) = (cb.clone(), push(&enc));
        reqs.push((
            format!("guess {g}"),
            Box::new(move |cl: &reqwest::Client| cl.post(&cb).body(body.clone())),
        ));
    }
    assert!(
        !valid_padding.is_empty(),
        "at least one guess has valid padding (and fails later, on length or receive id)"
    );
    // Every other way a push can fail after the key is touched, and before.
    let other_app = MsgCrypt::new(a.token.expose(), AES_KEY, "wxotherapp").unwrap();
    let other_key = MsgCrypt::new(a.token.expose(), AES_KEY_2, &appid).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong receive id",
            push(&other_app.encrypt(br#"{"msgid": "x"}"#)),
            "",
        ),
        ("another key", push(&other_key.encrypt(b"{}")), ""),
        (
            "non-UTF-8 plaintext",
            push(&crypt.encrypt(&[0xff, 0xfe, 0x00])),
            "",
        ),
        (
            "non-XML plaintext",
            push(&crypt.encrypt(b"plain words")),
            "",
        ),
        ("broken XML", push(&crypt.encrypt(b"<xml><a>")), ""),
        ("JSON array plaintext", push(&crypt.encrypt(b"[1,2]")), ""),
        ("bad base64", push("%%%"), ""),
        (
            "not a multiple of 16",
            push(&STANDARD.encode([1u8; 20])),
            "",
        ),
        ("missing field", "{}".into(), ""),
        ("empty field", push(""), ""),
        ("not JSON", "not json".into(), ""),
        ("empty body", String::new(), ""),
        (
            "wrong signature",
            push(&genuine),
            "?msg_signature=0000000000000000000000000000000000000000&timestamp=1&nonce=2",
        ),
        ("half a signature", push(&genuine), "?timestamp=1&nonce=2"),
    ];
    for (label, body, query) in cases {
        let u = format!("{cb}{query}");
        reqs.push((
            label.to_owned(),
            Box::new(move |cl: &reqwest::Client| cl.post(&u).body(body.clone())),
        ));
    }
    let nobody = url(&worker, "/callback/chatbot/nobody");
    let g = push(&genuine);
    reqs.push((
        "unknown account".into(),
        Box::new(move |cl: &reqwest::Client| cl.post(&nobody).body(g.clone())),
    ));
    assert_all_refused_alike(reqs, 1).await;
    assert_eq!(
        count(&env, "SELECT count(*) FROM inbound_messages").await,
        0,
        "no refused push is stored"
    );

    // The genuine push is still accepted.
    let ok = answer(
        client_from(Ipv4Addr::new(127, 0, 1, 200))
            .post(&cb)
            .body(push(&genuine)),
    )
    .await;
    assert_eq!((ok.status, ok.body.as_slice()), (200, &b"success"[..]));
    assert_eq!(
        count(&env, "SELECT count(*) FROM inbound_messages").await,
        1
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wecom_callback_refusals_are_indistinguishable() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let worker = env.start_worker().await;
    let a = env.cfg.account("kf").unwrap();
    let corpid = a.corpid.clone().unwrap();
    let crypt = MsgCrypt::new(a.token.expose(), AES_KEY_2, &corpid).unwrap();
    let cb = url(&worker, "/callback/wecom/kf");
    let now = chrono::Utc::now().timestamp();
    // Correctly signed envelopes around ciphertexts that fail after the signature check.
    let signed = |enc: &str, ts: i64| {
        let sig = crypt.signature(&ts.to_string(), "77", enc);
        (
            format!("?msg_signature={sig}&timestamp={ts}&nonce=77"),
            format!("<xml><ToUserName>x</ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"),
        )
    };
    let other_corp = MsgCrypt::new(a.token.expose(), AES_KEY_2, "wwother").unwrap();
    let mut forged = STANDARD.decode(crypt.encrypt(b"<xml/>")).unwrap();
    let last = forged.len() - 17;
    forged[last] ^= 0x55;
    let cases: Vec<(&str, (String, String))> = vec![
        ("bad padding", signed(&STANDARD.encode(&forged), now)),
        (
            "wrong receive id",
            signed(&other_corp.encrypt(b"<xml/>"), now),
        ),
        (
            "non-UTF-8 plaintext",
            signed(&crypt.encrypt(&[0xff, 0xfe]), now),
        ),
        ("non-XML plaintext", signed(&crypt.encrypt(b"plain"), now)),
        ("bad base64", signed("%%%", now)),
        ("stale", signed(&crypt.encrypt(b"<xml/>"), now - 1000)),
        (
            "bad signature",
            (
                format!("?msg_signature={}&timestamp={now}&nonce=77", "0".repeat(40)),
                signed(&crypt.encrypt(b"<xml/>"), now).1,
            ),
        ),
        ("no query", (String::new(), signed("AAAA", now).1)),
        (
            "malformed XML",
            (signed("AAAA", now).0, "<xml><Encrypt>".into()),
        ),
        ("no Encrypt", (signed("AAAA", now).0, "<xml></xml>".into())),
        (
            "kf event without OpenKfId",
            signed(
                &crypt
                    .encrypt(b"<xml><MsgType>event</MsgType><Event>kf_msg_or_event</Event></xml>"),
                now,
            ),
        ),
    ];
    let mut reqs: Vec<(String, Req)> = Vec::new();
    for (label, (q, body)) in cases {
        let u = format!("{cb}{q}");
        reqs.push((
            label.to_owned(),
            Box::new(move |cl: &reqwest::Client| cl.post(&u).body(body.clone())),
        ));
    }
    let nope = url(&worker, "/callback/wecom/nope?timestamp=1");
    reqs.push((
        "unknown account".into(),
        Box::new(move |cl: &reqwest::Client| cl.post(&nope).body("<xml/>")),
    ));
    let (q, _) = signed("AAAA", now);
    let verify = format!("{cb}{q}&echostr=AAAA");
    reqs.push((
        "URL verification, undecryptable echostr".into(),
        Box::new(move |cl: &reqwest::Client| cl.get(&verify)),
    ));
    assert_all_refused_alike(reqs, 2).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_keeps_being_refused_is_slowed_down_others_are_not() {
    let env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    let worker = env.start_worker().await;
    let a = env.cfg.account("bot").unwrap();
    let crypt = MsgCrypt::new(a.token.expose(), AES_KEY, a.appid.as_deref().unwrap()).unwrap();
    let cb = url(&worker, "/callback/chatbot/bot");
    let attacker = client_from(Ipv4Addr::new(127, 0, 3, 1));
    let bad = push(&crypt.encrypt(b"plain words"));
    // The first 20 refusals are answered at once, all alike.
    for i in 0..20 {
        let r = answer(attacker.post(&cb).body(bad.clone())).await;
        assert_eq!(
            (r.status, r.body.as_slice()),
            (400, REFUSED_BODY.as_bytes()),
            "#{i}"
        );
    }
    // Then a burst: a few are answered after a delay (the same refusal), the rest 429.
    let started = Instant::now();
    let burst: Vec<_> = (0..24)
        .map(|_| {
            let r = attacker.post(&cb).body(bad.clone());
            tokio::spawn(answer(r))
        })
        .collect();
    // Meanwhile a genuine push from elsewhere, and one from the same source, are accepted.
    let elsewhere = client_from(Ipv4Addr::new(127, 0, 3, 2));
    let ok = answer(
        elsewhere
            .post(&cb)
            .body(push(&crypt.encrypt(br#"{"msgid": "ok-1"}"#))),
    )
    .await;
    assert_eq!(ok.status, 200);
    let ok = answer(
        attacker
            .post(&cb)
            .body(push(&crypt.encrypt(br#"{"msgid": "ok-2"}"#))),
    )
    .await;
    assert_eq!(ok.status, 200, "an accepted push is never throttled");
    let (mut slowed, mut too_many) = (0, 0);
    for h in burst {
        let r = h.await.unwrap();
        match r.status {
            400 => {
                assert_eq!(r.body, REFUSED_BODY.as_bytes());
                slowed += 1;
            }
            429 => {
                assert!(r.headers.iter().any(|(k, _)| k == "retry-after"));
                too_many += 1;
            }
            s => panic!("unexpected answer {s}: {r:?}"),
        }
    }
    assert!(slowed >= 1, "some refusals wait their turn");
    assert!(
        too_many >= 1,
        "at most a few wait; the others are 429 ({slowed} slowed)"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "a slowed refusal waits at least one step"
    );
    // Another source is still answered at once, with the same refusal.
    let r = answer(elsewhere.post(&cb).body(bad.clone())).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (400, REFUSED_BODY.as_bytes())
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatbot_push_signatures_are_verified_and_can_be_required() {
    let env = Env::new(
        |b| {
            let mut strict = chatbot_account("strict", b);
            strict.require_push_signature = true;
            vec![chatbot_account("bot", b), strict]
        },
        SimOptions::default(),
    )
    .await;
    let worker = env.start_worker().await;
    let client = client_from(Ipv4Addr::new(127, 0, 4, 1));
    let now = chrono::Utc::now().timestamp().to_string();
    for (name, unsigned_ok) in [("bot", true), ("strict", false)] {
        let a = env.cfg.account(name).unwrap();
        let crypt = MsgCrypt::new(a.token.expose(), AES_KEY, a.appid.as_deref().unwrap()).unwrap();
        let cb = url(&worker, &format!("/callback/chatbot/{name}"));
        let enc = |id: &str| crypt.encrypt(format!(r#"{{"msgid": "{name}-{id}"}}"#).as_bytes());
        let e = enc("unsigned");
        let r = answer(client.post(&cb).body(push(&e))).await;
        assert_eq!(r.status == 200, unsigned_ok, "{name}: unsigned push: {r:?}");
        for param in ["msg_signature", "signature"] {
            let e = enc(param);
            let sig = crypt.signature(&now, "n1", &e);
            let q = format!("?{param}={sig}&timestamp={now}&nonce=n1");
            let r = answer(client.post(format!("{cb}{q}")).body(push(&e))).await;
            assert_eq!(
                (r.status, r.body.as_slice()),
                (200, &b"success"[..]),
                "{name} {param}"
            );
            // The same signature over another ciphertext, or a stale one, is refused.
            let r = answer(client.post(format!("{cb}{q}")).body(push(&enc("other")))).await;
            assert_eq!(
                r.status, 400,
                "{name} {param}: signature over another ciphertext"
            );
            let old = (chrono::Utc::now().timestamp() - 1000).to_string();
            let sig = crypt.signature(&old, "n1", &e);
            let q = format!("?{param}={sig}&timestamp={old}&nonce=n1");
            let r = answer(client.post(format!("{cb}{q}")).body(push(&e))).await;
            assert_eq!(r.status, 400, "{name} {param}: stale");
        }
    }
    // bot: the unsigned one and two signed ones; strict: two signed ones.
    assert_eq!(
        count(&env, "SELECT count(*) FROM inbound_messages").await,
        5
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// A worker that pulls at start and on callbacks only; returns the pages read so far.
async fn callback_only_worker(env: &mut Env) -> (wxdispatch::app::Worker, i64) {
    env.cfg.sync.poll_interval_secs = 0;
    let w = env.start_worker().await;
    wait_count(
        env,
        "SELECT count(*) FROM sync_cursors",
        1,
        Duration::from_secs(20),
    )
    .await;
    (w, pages(env).await)
}

/// sync_msg pages read (every pull of a short log reads exactly one).
async fn pages(env: &Env) -> i64 {
    count(
        env,
        "SELECT coalesce(sum(pages), 0)::bigint FROM sync_cursors",
    )
    .await
}

/// Long enough for any wake a burst left pending (deferred by at most a second) to pull.
const SETTLE: Duration = Duration::from_millis(2500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_callbacks_are_acked_but_pull_once() {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let (worker, start_pages) = callback_only_worker(&mut env).await;
    let sim = env.sim();
    let token = sim.customer_message("kf", KFID, "wmU1", "hello");
    let (q, body) = sim.callback_request("kf", KFID, &token);
    let cb = url(&worker, &format!("/callback/wecom/kf?{q}"));
    let client = reqwest::Client::new();
    let first = answer(client.post(&cb).body(body.clone())).await;
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, &b"success"[..])
    );
    wait_count(
        &env,
        "SELECT count(*) FROM inbound_messages",
        1,
        Duration::from_secs(10),
    )
    .await;
    // 500 replays of the captured callback, 10 at a time: each acked like the original.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (client, cb, body) = (client.clone(), cb.clone(), body.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    let r = answer(client.post(&cb).body(body.clone())).await;
                    assert_eq!((r.status, r.body.as_slice()), (200, &b"success"[..]));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(SETTLE).await;
    let pulls = pages(&env).await - start_pages;
    assert!(pulls >= 1, "the original callback pulled");
    assert!(pulls <= 2, "1 callback + 500 replays caused {pulls} pulls");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_distinct_callbacks_pulls_at_a_bounded_rate_and_loses_nothing() {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let (worker, start_pages) = callback_only_worker(&mut env).await;
    let sim = env.sim();
    let token = sim.issue_callback_token("kf", KFID);
    // 300 distinct, genuine callbacks (each its own ciphertext and signature), 10 at a time,
    // with a customer message arriving now and then.
    let started = Instant::now();
    let mut sent = 0;
    for round in 0..30 {
        let id = sim.customer_message("kf", KFID, "wmU1", &format!("m{round}"));
        assert!(!id.is_empty());
        let batch: Vec<_> = (0..10)
            .map(|_| {
                let (q, body) = sim.callback_request("kf", KFID, &token);
                let r = reqwest::Client::new()
                    .post(url(&worker, &format!("/callback/wecom/kf?{q}")))
                    .body(body);
                tokio::spawn(answer(r))
            })
            .collect();
        for b in batch {
            assert_eq!(b.await.unwrap().status, 200);
            sent += 1;
        }
    }
    let took = started.elapsed();
    // Every message is read: the wake of the last callback is deferred, never lost.
    wait_count(
        &env,
        "SELECT count(*) FROM inbound_messages",
        30,
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(SETTLE).await;
    let pulls = pages(&env).await - start_pages;
    // One wake a second reaches the loop, plus the one deferred to the end.
    let bound = 2 + took.as_secs() as i64;
    assert!(
        pulls <= bound,
        "{sent} callbacks in {took:?} caused {pulls} pulls (bound {bound})"
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}
