use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn since_accepts_durations_times_and_dates() {
    let now = at("2026-11-21T12:00:00Z");
    let cases = [
        ("90s", "2026-11-21T11:58:30Z"),
        ("30m", "2026-11-21T11:30:00Z"),
        ("2h", "2026-11-21T10:00:00Z"),
        ("1h30m", "2026-11-21T10:30:00Z"),
        ("7d", "2026-11-14T12:00:00Z"),
        ("1w", "2026-11-14T12:00:00Z"),
        ("0s", "2026-11-21T12:00:00Z"),
        ("2026-11-20T08:00:00+08:00", "2026-11-20T00:00:00Z"),
        ("2026-11-01", "2026-11-01T00:00:00Z"),
    ];
    for (input, want) in cases {
        assert_eq!(parse_since_at(input, now), Ok(at(want)), "{input}");
    }
}

#[test]
fn since_rejects_garbage_with_a_clear_message() {
    let now = at("2026-11-21T12:00:00Z");
    for bad in [
        "",
        "yesterday",
        "10",
        "h",
        "5x",
        "-3h",
        "2026-13-01",
        "99999999999999999999d",
    ] {
        let e = parse_since_at(bad, now).unwrap_err();
        assert!(
            e.contains("expected a duration") || e.contains("too far"),
            "{bad}: {e}"
        );
    }
}

/// humantime reads more than the documented forms; those stay refused.
#[test]
fn since_refuses_what_humantime_alone_would_take() {
    let now = at("2026-11-21T12:00:00Z");
    for bad in [
        "5 minutes",
        "5min",
        "2hours",
        "300ms",
        "1M",
        "1y",
        "1h 30m",
        "10us",
    ] {
        let e = parse_since_at(bad, now).unwrap_err();
        assert!(e.contains("expected a duration"), "{bad}: {e}");
    }
}

#[test]
fn reasons_are_snake_case_words() {
    assert!(parse_reason("config_error").is_ok());
    assert!(parse_reason("http_500").is_ok());
    for bad in ["", "Config", "config-error", "_x", "a b", &"x".repeat(65)] {
        assert!(parse_reason(bad).is_err(), "{bad}");
    }
}

#[test]
fn tables_align_and_flatten_errmsgs() {
    let now = at("2026-11-21T12:00:00Z");
    let row = |id, job: Option<&str>, msg: &str| DeadLetterRow {
        id,
        job_id: job.map(str::to_owned),
        message_id: None,
        account: "kf".into(),
        reason: "config_error".into(),
        errcode: Some(95017),
        errmsg: Some(msg.into()),
        attempts: 1,
        dead_at: at("2026-11-21T11:57:00Z"),
        replayed_at: None,
        body: None,
    };
    let mut out = Vec::new();
    dead_letter_table(
        &[
            row(12, Some("job-long-id-1"), "api\nswitch off"),
            row(3, None, ""),
        ],
        false,
        now,
    )
    .write_to(&mut out)
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("ID  JOB ID         ACCOUNT"), "{text}");
    assert!(lines[1].starts_with("12  job-long-id-1  kf "), "{text}");
    assert!(lines[1].contains(" 3m "), "{text}");
    assert!(lines[1].ends_with("api switch off"), "{text}");
    assert!(lines[2].starts_with("3   -              kf "), "{text}");
}

#[test]
fn skip_summaries_group_by_reason() {
    let dl = |id| DeadLetterRow {
        id,
        job_id: None,
        message_id: None,
        account: "ghost".into(),
        reason: "unknown_account".into(),
        errcode: None,
        errmsg: None,
        attempts: 0,
        dead_at: Utc::now(),
        replayed_at: None,
        body: None,
    };
    let skipped = vec![
        Skipped {
            dead_letter: dl(1),
            why: Skip::NoJobId,
        },
        Skipped {
            dead_letter: dl(2),
            why: Skip::AccountNotConfigured("ghost".into()),
        },
        Skipped {
            dead_letter: dl(3),
            why: Skip::NoJobId,
        },
    ];
    let mut out = Vec::new();
    write_skipped(&mut out, &skipped).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("skipped 3:\n"), "{text}");
    assert!(text.contains("2 × no job id"), "{text}");
    assert!(text.contains("(dead letter 1, 3)"), "{text}");
    assert!(
        text.contains("1 × account 'ghost' is not configured (dead letter 2)"),
        "{text}"
    );
}
