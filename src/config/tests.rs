use super::*;

const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

fn base() -> String {
    format!(
        r#"
[[account]]
name = "bot"
channel = "chatbot"
token = "tok-secret-1"
encoding_aes_key = "{KEY}"
appid = "APPID123"
rate = {{ per_second = 50, burst = 10 }}

[[account]]
name = "kf"
channel = "wecom"
corpid = "ww123"
secret = "corp-secret-2"
open_kfids = ["wkA"]
rate = {{ per_minute = 600 }}
"#
    )
}

#[test]
fn parses_defaults_and_accounts() {
    let c = Config::from_toml_with_env(&base(), &[]).unwrap();
    assert_eq!(c.accounts.len(), 2);
    assert_eq!(c.broker.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!(c.accounts[1].rate.burst(), 10);
    assert_eq!(c.accounts[0].base_url(), "https://chatbot.weixin.qq.com");
}

#[test]
fn env_overrides_by_name_index_and_section() {
    let env = vec![
        ("WXDISPATCH__ACCOUNT__KF__SECRET".into(), "from-env".into()),
        (
            "WXDISPATCH__ACCOUNT__0__RATE".into(),
            "{ per_second = 7 }".into(),
        ),
        ("WXDISPATCH__BROKER__PREFETCH".into(), "33".into()),
        ("WXDISPATCH__HTTP__LISTEN".into(), "127.0.0.1:1".into()),
    ];
    let c = Config::from_toml_with_env(&base(), &env).unwrap();
    assert_eq!(c.accounts[1].secret.expose(), "from-env");
    assert_eq!(c.accounts[0].rate.per_second, Some(7));
    assert_eq!(c.broker.prefetch, 33);
    assert_eq!(c.http.listen, "127.0.0.1:1");
}

#[test]
fn secrets_from_files_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s");
    std::fs::write(&f, "file-secret-3\n").unwrap();
    let text = base().replace(
        "secret = \"corp-secret-2\"",
        &format!("secret_file = {:?}", f),
    );
    let c = Config::from_toml_with_env(&text, &[]).unwrap();
    assert_eq!(c.accounts[1].secret.expose(), "file-secret-3");
    let shown = format!("{c:?}\n{}", c.to_redacted_toml());
    for s in ["tok-secret-1", "file-secret-3", KEY] {
        assert!(!shown.contains(s), "{s} leaked");
    }
}

#[test]
fn invalid_config_names_the_key() {
    let e =
        Config::from_toml_with_env(&base().replace("appid = \"APPID123\"", ""), &[]).unwrap_err();
    assert!(format!("{e:#}").contains("account[0] (bot).appid"), "{e:#}");
    let e = Config::from_toml_with_env(&base().replace("secret = \"corp-secret-2\"", ""), &[])
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("WXDISPATCH__ACCOUNT__KF__SECRET"),
        "{e:#}"
    );
    let e = Config::from_toml_with_env(&base().replace(KEY, "tooshort"), &[]).unwrap_err();
    assert!(format!("{e:#}").contains("encoding_aes_key"), "{e:#}");
    let e = Config::from_toml_with_env("[broker]\nprefetch = 0\n", &[]).unwrap_err();
    assert!(format!("{e:#}").contains("broker.prefetch"), "{e:#}");
    let e = Config::from_toml_with_env("[brokr]\nurl = 'x'\n", &[]).unwrap_err();
    assert!(format!("{e:#}").contains("brokr"), "{e:#}");
    let e = Config::from_toml_with_env(&base().replace("name = \"kf\"", "name = \"bot\""), &[])
        .unwrap_err();
    assert!(format!("{e:#}").contains("duplicate"), "{e:#}");
}

#[test]
fn database_password_is_spliced_into_url() {
    let env = vec![("WXDISPATCH__DATABASE__PASSWORD".into(), "p@ss w".into())];
    let c = Config::from_toml_with_env("", &env).unwrap();
    assert_eq!(
        c.database_url(),
        "postgres://postgres:p%40ss%20w@127.0.0.1:5432/wxdispatch"
    );
    assert!(!format!("{c:?}").contains("p@ss"));
}

#[test]
fn type_errors_name_the_key_and_the_variable() {
    let text = base().replace("per_minute = 600", "per_second = 'x'");
    let e = Config::from_toml_with_env(&text, &[]).unwrap_err();
    let shown = format!("{e:#}");
    assert!(
        shown.starts_with("account[1].rate.per_second: invalid type: found string \"x\""),
        "{shown}"
    );
    assert!(!shown.contains("from"), "{shown}");

    let env = vec![("WXDISPATCH__BROKER__PREFETCH".into(), "many".into())];
    let e = Config::from_toml_with_env(&base(), &env).unwrap_err();
    let shown = format!("{e:#}");
    assert!(
        shown.starts_with("broker.prefetch: invalid type"),
        "{shown}"
    );
    assert!(
        shown.contains("(from environment variable WXDISPATCH__BROKER__PREFETCH)"),
        "{shown}"
    );

    let env = vec![("WXDISPATCH__BROKER__PREFETCH".into(), "70000".into())];
    let e = Config::from_toml_with_env(&base(), &env).unwrap_err();
    assert!(
        format!("{e:#}").contains("broker.prefetch: invalid value"),
        "{e:#}"
    );
}

#[test]
fn toml_syntax_errors_give_line_and_column() {
    let e = Config::from_toml_with_env("[broker]\nprefetch = \n", &[]).unwrap_err();
    let shown = format!("{e:#}");
    assert!(
        shown.starts_with("TOML syntax error at line 2, column 12: "),
        "{shown}"
    );
    assert!(!shown.contains('\n'), "{shown}");
}

#[test]
fn env_overrides_that_cannot_apply_name_the_variable() {
    for (k, v, want) in [
        (
            "WXDISPATCH__BROKER",
            "x",
            "expected WXDISPATCH__SECTION__KEY",
        ),
        (
            "WXDISPATCH__ACCOUNT__9__TOKEN",
            "x",
            "no account at index 9",
        ),
        (
            "WXDISPATCH__ACCOUNT__NOPE__TOKEN",
            "x",
            "no account named 'nope'",
        ),
        (
            "WXDISPATCH__ACCOUNT__KF",
            "x",
            "expected WXDISPATCH__ACCOUNT__",
        ),
        ("WXDISPATCH__BROKER__URL__X", "x", "'url' is not a section"),
    ] {
        let env = vec![(k.to_owned(), v.to_owned())];
        let text = format!("[broker]\nurl = \"amqp://h\"\n{}", base());
        let e = Config::from_toml_with_env(&text, &env).unwrap_err();
        let shown = format!("{e:#}");
        assert!(
            shown.starts_with(&format!("environment variable {k}: ")),
            "{shown}"
        );
        assert!(shown.contains(want), "{k}: {shown}");
    }
}

#[test]
fn env_overrides_accumulate_on_one_account_and_keep_the_rest() {
    let env = vec![
        ("WXDISPATCH__ACCOUNT__BOT__APPID".into(), "APP2".into()),
        (
            "WXDISPATCH__ACCOUNT__0__BASE_URL".into(),
            "http://127.0.0.1:1".into(),
        ),
        ("WXDISPATCH__RETRY__TIERS_SECS".into(), "[1, 2]".into()),
        ("OTHER__BROKER__PREFETCH".into(), "0".into()),
    ];
    let c = Config::from_toml_with_env(&base(), &env).unwrap();
    assert_eq!(c.accounts[0].appid.as_deref(), Some("APP2"));
    assert_eq!(c.accounts[0].base_url(), "http://127.0.0.1:1");
    assert_eq!(c.accounts[0].token.expose(), "tok-secret-1");
    assert_eq!(c.accounts[0].rate.per_second, Some(50));
    assert_eq!(c.accounts[1].secret.expose(), "corp-secret-2");
    assert_eq!(c.retry.tiers_secs, vec![1, 2]);
    assert_eq!(c.broker.prefetch, 512);
}

#[test]
fn url_passwords_are_masked_in_check_config_debug_and_errors() {
    let text = format!(
        "[broker]\nurl = \"amqp://wx:brokerpw@mq:5672/%2f\"\n\
         [database]\nurl = \"postgres://wx:dbpw@db:5432/wx\"\n{}",
        base()
    );
    let c = Config::from_toml_with_env(&text, &[]).unwrap();
    assert_eq!(c.broker.url.expose(), "amqp://wx:brokerpw@mq:5672/%2f");
    assert_eq!(c.database_url(), "postgres://wx:dbpw@db:5432/wx");
    let shown = format!(
        "{}\n{c:?}\n{}\n{}",
        c.to_redacted_toml(),
        c.broker.url,
        c.database.url
    );
    for pw in ["brokerpw", "dbpw", "tok-secret-1", "corp-secret-2"] {
        assert!(!shown.contains(pw), "{pw} in {shown}");
    }
    assert!(
        c.to_redacted_toml()
            .contains("url = \"amqp://wx:***@mq:5672/%2f\""),
        "{}",
        c.to_redacted_toml()
    );
    // The password override is spliced into the real URL and masked in the shown one.
    let env = vec![("WXDISPATCH__DATABASE__PASSWORD".into(), "over".into())];
    let c = Config::from_toml_with_env(&text, &env).unwrap();
    assert_eq!(c.database_url(), "postgres://wx:over@db:5432/wx");
    assert!(!format!("{}{c:?}", c.to_redacted_toml()).contains("over@"));
}

#[test]
fn environment_values_of_string_keys_are_strings_as_written() {
    let env = vec![
        ("WXDISPATCH__DATABASE__PASSWORD".into(), "48151623".into()),
        (
            "WXDISPATCH__ACCOUNT__BOT__TOKEN".into(),
            "'\"quoted\"'".into(),
        ),
        ("WXDISPATCH__ACCOUNT__KF__SECRET".into(), "true".into()),
        ("WXDISPATCH__ACCOUNT__BOT__APPID".into(), "\"APP\"".into()),
        ("WXDISPATCH__HTTP__LISTEN".into(), "127.0.0.1:1".into()),
        // Numbers, booleans, options, floats, arrays and inline tables still read as such.
        ("WXDISPATCH__BROKER__PREFETCH".into(), "64".into()),
        ("WXDISPATCH__WORKER__BROADCAST_SHARE".into(), "0.5".into()),
        ("WXDISPATCH__RETRY__THROTTLE_PAUSE_SECS".into(), "2".into()),
        ("WXDISPATCH__RETRY__TIERS_SECS".into(), "[1, 2]".into()),
        (
            "WXDISPATCH__ACCOUNT__KF__RATE".into(),
            "{ per_second = 7 }".into(),
        ),
    ];
    let c = Config::from_toml_with_env(&base(), &env).unwrap();
    assert_eq!(c.database.password.expose(), "48151623");
    assert_eq!(c.accounts[0].token.expose(), "'\"quoted\"'");
    assert_eq!(c.accounts[1].secret.expose(), "true");
    assert_eq!(c.accounts[0].appid.as_deref(), Some("\"APP\""));
    assert_eq!(c.http.listen, "127.0.0.1:1");
    assert_eq!(c.broker.prefetch, 64);
    assert_eq!(c.worker.broadcast_share, 0.5);
    assert_eq!(c.retry.throttle_pause_secs, Some(2));
    assert_eq!(c.retry.tiers_secs, vec![1, 2]);
    assert_eq!(c.accounts[1].rate.per_second, Some(7));
}

#[test]
fn a_secret_of_the_wrong_type_is_named_but_never_shown() {
    let text = base().replace("token = \"tok-secret-1\"", "token = 48151623");
    let e = Config::from_toml_with_env(&text, &[]).unwrap_err();
    let shown = format!("{e:#}");
    assert!(
        shown.starts_with("account[0].token: invalid type: found an integer, expected a string"),
        "{shown}"
    );
    assert!(!shown.contains("48151623"), "{shown}");

    let env = vec![(
        "WXDISPATCH__DATABASE__PASSWORD".into(),
        "[4815, 1623]".into(),
    )];
    let e = Config::from_toml_with_env(&base(), &env).unwrap_err();
    let shown = format!("{e:#}");
    assert!(
        shown.starts_with("database.password: invalid type: found an array"),
        "{shown}"
    );
    assert!(
        shown.contains("(from environment variable WXDISPATCH__DATABASE__PASSWORD)"),
        "{shown}"
    );
    assert!(!shown.contains("4815"), "{shown}");
}

#[test]
fn secret_files_are_capped_and_the_error_names_the_key() {
    let text = format!("[database]\npassword_file = \"/dev/zero\"\n{}", base());
    let e = Config::from_toml_with_env(&text, &[]).unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "database.password_file /dev/zero: larger than 64 KiB"
    );
    let text = base().replace("token = \"tok-secret-1\"", "token_file = \"/dev/zero\"");
    let e = Config::from_toml_with_env(&text, &[]).unwrap_err();
    assert_eq!(
        format!("{e:#}"),
        "account[0] (bot).token_file /dev/zero: larger than 64 KiB"
    );
    let e = Config::load(Some(std::path::Path::new("/dev/zero"))).unwrap_err();
    assert_eq!(format!("{e:#}"), "config file /dev/zero: larger than 4 MiB");
}

#[test]
fn sync_voice_format_defaults_to_amr_and_takes_silk() {
    let c = Config::from_toml_with_env(&base(), &[]).unwrap();
    assert_eq!(c.sync.voice_format, super::VoiceFormat::Amr);
    assert_eq!(c.sync.voice_format.code(), 0);
    assert_eq!(c.sync.retention_alert_secs, 48 * 3600);
    let text = format!(
        "{}\n[sync]\nvoice_format = \"silk\"\nretention_alert_secs = 60\n",
        base()
    );
    let c = Config::from_toml_with_env(&text, &[]).unwrap();
    assert_eq!(c.sync.voice_format.code(), 1);
    assert_eq!(c.sync.retention_alert_secs, 60);
    let env = vec![("WXDISPATCH__SYNC__VOICE_FORMAT".into(), "mp3".into())];
    let e = Config::from_toml_with_env(&base(), &env).unwrap_err();
    assert!(format!("{e:#}").contains("voice_format"), "{e:#}");
}

#[test]
fn outcome_events_are_on_by_default_and_switch_per_account() {
    let c = Config::from_toml_with_env(&base(), &[]).unwrap();
    assert!(c.accounts.iter().all(|a| a.outcomes));
    assert!(c.outcomes.relay);
    let env = vec![
        ("WXDISPATCH__ACCOUNT__KF__OUTCOMES".into(), "false".into()),
        ("WXDISPATCH__OUTCOMES__RELAY".into(), "false".into()),
    ];
    let c = Config::from_toml_with_env(&base(), &env).unwrap();
    assert!(c.accounts[0].outcomes);
    assert!(!c.accounts[1].outcomes);
    assert!(!c.outcomes.relay);
    let bad = format!("{}\n[outcomes]\nbatch = 0\n", base());
    let err = Config::from_toml_with_env(&bad, &[]).unwrap_err();
    assert!(format!("{err:#}").contains("outcomes.batch"), "{err:#}");
}
