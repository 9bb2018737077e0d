//! Untrusted text and secrets (issue 14, points 4, 12, 13): control characters from the
//! database never reach the terminal through the CLI, file inputs are capped, URL passwords
//! are never printed by `check-config` or connection errors.

use serde_json::json;
use wxdispatch::config::Config;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, wecom_account};
use crate::ops::cli;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A dead letter whose account (routing key) and errmsg hold terminal escapes and newlines:
/// `dlq list` and `stats` print them escaped, one row each, no ESC byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_and_stats_escape_control_characters() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    sqlx::query(
        "INSERT INTO dead_letters (job_id, account, reason, errcode, errmsg, body) \
         VALUES ($1, $2, 'unknown_account', 1, $3, $4)",
    )
    .bind("j-esc")
    .bind("kf\x1b[2J\u{202e}")
    .bind("line one\n\x1b]0;pwned\x07two")
    .bind(json!({"job_id": "j-esc"}).to_string().into_bytes())
    .execute(&env.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = crate::crash::write_config(&env, dir.path());
    for args in [&["dlq", "list"][..], &["stats"][..]] {
        let out = cli(&config, args);
        let shown = text(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(
            !shown.contains('\x1b') && !shown.contains('\x07') && !shown.contains('\u{202e}'),
            "{args:?}: raw control characters in {shown:?}"
        );
        assert!(shown.contains("kf\\u{1b}[2J\\u{202e}"), "{args:?}: {shown}");
    }
    let out = cli(&config, &["dlq", "list"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "{}",
        text(&out.stdout)
    );
    env.cleanup().await;
}

/// `/dev/zero` given to each file-reading entry point ends at once with an error naming the
/// flag or key, the path and the cap (and the process stays small).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_inputs_are_capped() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = crate::crash::write_config(&env, dir.path());
    let cases: [(&[&str], &str); 3] = [
        (
            &["send", "--account", "kf", "--file", "/dev/zero"],
            "--file /dev/zero: larger than 64 MiB",
        ),
        (
            &[
                "broadcast",
                "--account",
                "kf",
                "--to-file",
                "/dev/zero",
                "--message",
                "{\"text\": \"hi\"}",
            ],
            "--to-file /dev/zero: larger than 64 MiB",
        ),
        (
            &[
                "broadcast",
                "--account",
                "kf",
                "--to-file",
                config.to_str().unwrap(),
                "--message",
                "/dev/zero",
            ],
            "--message /dev/zero: larger than 64 MiB",
        ),
    ];
    for (args, want) in cases {
        let out = cli(&config, args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains(want),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // A secret file: a configuration error (exit 2) naming the key.
    let toml = std::fs::read_to_string(&config).unwrap().replace(
        "[[account]]\n",
        "[[account]]\nsecret_file = \"/dev/zero\"\n",
    );
    let zero = dir.path().join("zero.toml");
    std::fs::write(&zero, toml).unwrap();
    let out = cli(&zero, &["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("account[0] (kf).secret_file /dev/zero: larger than 64 KiB"),
        "{}",
        text(&out.stderr)
    );
    env.cleanup().await;
}

/// `check-config` prints the URLs with their passwords masked; the connection errors of the
/// broker and the database never carry the password either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_passwords_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("w.toml");
    std::fs::write(
        &config,
        "[broker]\nurl = \"amqp://wx:brokerpw-1@127.0.0.1:1/%2f\"\n\
         [database]\nurl = \"postgres://wx:dbpw-2@127.0.0.1:1/wx\"\n",
    )
    .unwrap();
    let out = cli(&config, &["check-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        shown.contains("url = \"amqp://wx:***@127.0.0.1:1/%2f\""),
        "{shown}"
    );
    assert!(
        !shown.contains("brokerpw-1") && !shown.contains("dbpw-2"),
        "{shown}"
    );

    // Unreachable broker and database: the errors name them, without the password.
    let cfg = Config::load(Some(&config)).unwrap();
    let e = wxdispatch::broker::connect(&cfg.broker.url, "wxdispatch-test")
        .await
        .unwrap_err();
    let shown = format!("{e:#} {e:?}");
    assert!(
        shown.contains("cannot connect to RabbitMQ at amqp://wx:***@127.0.0.1:1"),
        "{shown}"
    );
    assert!(!shown.contains("brokerpw-1"), "{shown}");
    let e = wxdispatch::store::connect_pool(&cfg).await.unwrap_err();
    let shown = format!("{e:#} {e:?}");
    assert!(!shown.contains("dbpw-2"), "{shown}");
    // A subcommand that connects fails the same way.
    let out = cli(
        &config,
        &["send", "--account", "kf", "--text", "hi", "--to", "u"],
    );
    assert!(!out.status.success());
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!shown.contains("brokerpw-1"), "{shown}");
}
