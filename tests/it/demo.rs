//! The README's first command, `wxdispatch demo`, end to end (as a child process).

use wxdispatch::tools::simulate::SimOptions;

use crate::harness::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_sends_every_message_type_and_rejects_the_bad_one() {
    let env = Env::new(|_| vec![], SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::crash::write_config(&env, dir.path());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .args(["demo", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("demo-")).collect();
    let n = wxdispatch::tools::demo::sample_messages().len();
    assert_eq!(rows.len(), n + 1, "{text}");
    assert_eq!(
        rows.iter().filter(|l| l.contains(" sent ")).count(),
        n,
        "{text}"
    );
    assert!(
        rows.last().unwrap().contains(" dead ")
            && rows.last().unwrap().contains("message_over_limit"),
        "{text}"
    );
    assert!(
        text.contains(&format!("simulator accepted {n} messages")),
        "{text}"
    );
    // and the rows are in the database the config names
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'sent'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(sent, n as i64);
    env.cleanup().await;
}
