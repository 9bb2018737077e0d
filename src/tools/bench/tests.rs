//! Unit tests of the bench's pure parts: URLs, generated jobs and accounts, formatting, `/proc`.

use serde_json::{Value, json};

use super::env::{account_for, url_user, url_with_path};
use super::jobs::{H_PUBLISHED_MS, JobGen, published_ms_in};
use super::options::BenchOptions;
use super::procs::{proc_stat, proc_status_kb};
use super::report::thousands;
use crate::broker;
use crate::config::{Channel, Config};

#[test]
fn urls_get_their_path_replaced() {
    assert_eq!(
        url_with_path("amqp://guest:guest@127.0.0.1:5672/%2f", None),
        "amqp://guest:guest@127.0.0.1:5672"
    );
    assert_eq!(
        url_with_path(
            "postgres://postgres@127.0.0.1:5432/wxdispatch?sslmode=disable",
            Some("x")
        ),
        "postgres://postgres@127.0.0.1:5432/x?sslmode=disable"
    );
    assert_eq!(url_with_path("postgres://h", Some("db")), "postgres://h/db");
    assert_eq!(url_user("amqp://guest:pw@h/v").as_deref(), Some("guest"));
    assert_eq!(url_user("amqp://h/v"), None);
}

#[test]
fn jobs_carry_their_publish_time_and_are_valid() {
    let opts = BenchOptions {
        jobs: 1,
        recipients: 3,
        text_bytes: 200,
        channels: vec![],
        only: vec![],
        skip_memory: false,
        memory_jobs: 1,
        latency_rate: 1,
        latency_secs: 1,
        limiter_rate: 1,
        limiter_burst: 1,
        limiter_secs: 1,
        rounds: 1,
        prefetch: None,
        concurrency: None,
        keep: false,
        worker_wrapper: None,
        outcomes: true,
    };
    for channel in [Channel::Chatbot, Channel::Wecom] {
        let jobs = JobGen::new(channel, &opts);
        let (props, body) = jobs.job("j42", 4, 1_763_740_000_123);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["job_id"], "j42");
        assert!(v["to"].as_str().unwrap().ends_with("000001"), "{v}");
        let text = match channel {
            Channel::Chatbot => v["message"]["text"].as_str().unwrap().to_owned(),
            Channel::Wecom => v["message"]["text"]["content"].as_str().unwrap().to_owned(),
        };
        assert_eq!(text.len(), 200);
        assert_eq!(published_ms_in(&v), Some(1_763_740_000_123));
        assert_eq!(
            broker::header_str(&props, H_PUBLISHED_MS).as_deref(),
            Some("1763740000123")
        );
        let toml_text = toml::to_string(&json!({
            "account": [account_for(channel, "http://127.0.0.1:1", None)]
        }))
        .unwrap();
        let cfg = Config::from_toml_with_env(&toml_text, &[]).unwrap();
        cfg.validate().unwrap();
        crate::domain::job::parse(&body, Some("j42"), &cfg.accounts[0], 1 << 20).unwrap();
    }
}

#[test]
fn thousands_separators() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1000), "1,000");
    assert_eq!(thousands(12_345_678), "12,345,678");
}

#[test]
fn proc_stat_reads_this_process() {
    let (comm, _) = proc_stat(std::process::id()).unwrap();
    assert!(!comm.is_empty());
    assert!(proc_status_kb(std::process::id(), "VmHWM:").unwrap() > 0);
}
