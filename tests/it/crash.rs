//! Crash safety: SIGKILL the worker process mid-run; nothing is lost, nothing recorded
//! `sent` is sent again; duplicates only for requests in flight at the kill.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account, wecom_account};

/// Write the env's config as a TOML file for a child worker process.
pub fn write_config(env: &Env, dir: &std::path::Path) -> std::path::PathBuf {
    let mut text = format!(
        "[broker]\nurl = \"{}\"\nprefetch = {}\n\n[database]\nurl = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[worker]\nhttp_timeout_ms = {}\nshutdown_grace_secs = 5\nconcurrency = {}\n\n[retry]\ninitial_backoff_ms = 5\nmax_backoff_ms = 50\npause_initial_secs = 1\npause_max_secs = 2\nthrottle_pause_secs = 1\n\n",
        env.cfg.broker.url.expose(),
        env.cfg.broker.prefetch,
        env.cfg.database.url.expose(),
        env.cfg.worker.http_timeout_ms,
        env.cfg.worker.concurrency
    );
    for a in &env.cfg.accounts {
        text.push_str("[[account]]\n");
        text.push_str(&format!(
            "name = \"{}\"\nchannel = \"{}\"\nbase_url = \"{}\"\n",
            a.name,
            a.channel.as_str(),
            a.base_url()
        ));
        match (a.rate.per_second, a.rate.unlimited) {
            (Some(n), _) => text.push_str(&format!(
                "rate = {{ per_second = {n}, burst = {} }}\n",
                a.rate.burst()
            )),
            _ => text.push_str("rate = { unlimited = true }\n"),
        }
        if let Some(x) = &a.appid {
            text.push_str(&format!("appid = \"{x}\"\n"));
        }
        if let Some(x) = &a.oa_appid {
            text.push_str(&format!("oa_appid = \"{x}\"\n"));
        }
        if let Some(x) = &a.corpid {
            text.push_str(&format!("corpid = \"{x}\"\n"));
        }
        if !a.secret.is_empty() {
            text.push_str(&format!("secret = \"{}\"\n", a.secret.expose()));
        }
        if !a.open_kfids.is_empty() {
            text.push_str(&format!("open_kfids = {:?}\n", a.open_kfids));
        }
        if !a.token.is_empty() {
            text.push_str(&format!("token = \"{}\"\n", a.token.expose()));
        }
        if !a.encoding_aes_key.is_empty() {
            text.push_str(&format!(
                "encoding_aes_key = \"{}\"\n",
                a.encoding_aes_key.expose()
            ));
        }
        text.push('\n');
    }
    let p = dir.join("wxdispatch.toml");
    std::fs::write(&p, text).unwrap();
    p
}

pub fn spawn_worker(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

pub fn sigterm(child: &Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

async fn count_sent(env: &Env) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'sent'")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_nothing_and_resends_only_in_flight_jobs() {
    let env = Env::new(
        |b| vec![chatbot_account("bot", b), wecom_account("kf", b)],
        SimOptions::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&env, dir.path());
    let total = 10_000usize;
    // Publish the backlog first, with confirms.
    for i in 0..total {
        let (acc, to) = if i % 2 == 0 {
            ("bot", format!("oU{}", i % 200))
        } else {
            ("kf", format!("wmU{}", i % 200))
        };
        env.publish(acc, &json!({"job_id": format!("k-{i:05}"), "to": to, "message": {"text": format!("message {i}")}})).await;
    }
    let mut child = spawn_worker(&cfg);
    let t0 = Instant::now();
    // Kill once a third has been sent.
    loop {
        if count_sent(&env).await >= (total / 3) as i64 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "worker made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let seq_at_kill = env
        .sim()
        .accepted()
        .iter()
        .map(|a| a.seq)
        .max()
        .unwrap_or(0);
    let sent_at_kill: HashSet<String> =
        sqlx::query_scalar("SELECT job_id FROM deliveries WHERE status = 'sent'")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let killed_at = Instant::now();

    let mut child = spawn_worker(&cfg);
    env.wait_terminal(total as i64, Duration::from_secs(240))
        .await;
    let recovered = killed_at.elapsed();
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status:?}"
    );

    let statuses = env.statuses().await;
    assert_eq!(statuses.len(), total);
    assert!(
        statuses.values().all(|s| s == "sent"),
        "{:?}",
        env.status_counts().await
    );
    // Every job reached the simulator; duplicates only where the request was in flight.
    let accepted = env.sim().accepted();
    let mut by_job: HashMap<String, Vec<u64>> = HashMap::new();
    for a in &accepted {
        let id = match a.channel {
            "wecom" => a.msgid.clone().unwrap(),
            _ => {
                let xml = a.plaintext.clone().unwrap();
                let msg = xml
                    .split("<msg><![CDATA[message ")
                    .nth(1)
                    .unwrap()
                    .split(']')
                    .next()
                    .unwrap()
                    .to_owned();
                format!("k-{:05}", msg.parse::<usize>().unwrap())
            }
        };
        by_job.entry(id).or_default().push(a.seq);
    }
    assert_eq!(by_job.len(), total, "every job reached the platform");
    let dups: Vec<(&String, &Vec<u64>)> = by_job.iter().filter(|(_, s)| s.len() > 1).collect();
    for (id, seqs) in &dups {
        assert_eq!(seqs.len(), 2, "{id} sent {} times", seqs.len());
        assert!(
            seqs[0] <= seq_at_kill && seqs[1] > seq_at_kill,
            "{id}: duplicate not around the kill"
        );
        assert!(
            !sent_at_kill.contains(*id),
            "{id} was recorded sent and still sent again"
        );
    }
    // In flight at the kill is bounded by the lanes' concurrency.
    assert!(
        dups.len() <= 2 * env.cfg.worker.concurrency,
        "{} duplicates",
        dups.len()
    );
    println!(
        "crash test: {total} jobs, {} duplicate(s) (in flight at SIGKILL), recovered and drained in {:.1}s",
        dups.len(),
        recovered.as_secs_f64()
    );
    env.cleanup().await;
}
