use super::*;

fn row(
    status: RowStatus,
    attempts: i32,
    errcode: Option<i64>,
    error: Option<&str>,
    msgid: Option<&str>,
) -> Option<Row> {
    Some(Row {
        status,
        attempts,
        errcode,
        error: error.map(str::to_owned),
        msgid: msgid.map(str::to_owned),
    })
}

#[test]
fn every_outcome_maps_to_its_row() {
    let dead = |errmsg: Option<&str>| Outcome::Dead {
        reason: "retries_exhausted".into(),
        errcode: Some(-1),
        errmsg: errmsg.map(str::to_owned),
        attempts: 10,
    };
    let table: Vec<(Outcome, Option<Row>)> = vec![
        (
            Outcome::Sent {
                attempts: 1,
                msgid: Some("m1".into()),
            },
            row(RowStatus::Sent, 1, None, None, Some("m1")),
        ),
        (
            Outcome::Sent {
                attempts: 3,
                msgid: None,
            },
            row(RowStatus::Sent, 3, None, None, None),
        ),
        (
            Outcome::Suppressed { attempts: 0 },
            row(
                RowStatus::Suppressed,
                0,
                None,
                Some("human agent serving"),
                None,
            ),
        ),
        (
            Outcome::Expired { attempts: 2 },
            row(RowStatus::Expired, 2, None, Some("not_after passed"), None),
        ),
        (
            dead(Some("system busy")),
            row(
                RowStatus::Dead,
                10,
                Some(-1),
                Some("retries_exhausted: system busy"),
                None,
            ),
        ),
        (
            dead(Some("")),
            row(
                RowStatus::Dead,
                10,
                Some(-1),
                Some("retries_exhausted"),
                None,
            ),
        ),
        (
            dead(None),
            row(
                RowStatus::Dead,
                10,
                Some(-1),
                Some("retries_exhausted"),
                None,
            ),
        ),
        (
            Outcome::Park {
                tier_secs: 30,
                attempts: 10,
                parks: 2,
                follow: false,
                errcode: Some(45009),
                error: "api freq out of limit".into(),
            },
            row(
                RowStatus::Retrying,
                10,
                Some(45009),
                Some("parked 30s: api freq out of limit"),
                None,
            ),
        ),
        (
            Outcome::Scheduled {
                tier_secs: 600,
                attempts: 0,
                parks: 0,
                due: chrono::DateTime::parse_from_rfc3339("2026-12-01T18:00:00+08:00")
                    .unwrap()
                    .to_utc(),
            },
            row(
                RowStatus::Scheduled,
                0,
                None,
                Some("scheduled: not before 2026-12-01T10:00:00Z"),
                None,
            ),
        ),
        (Outcome::Duplicate("sent"), None),
        (Outcome::FannedOut { recipients: 3 }, None),
        (
            Outcome::Requeue {
                why: "claim failed".into(),
            },
            None,
        ),
    ];
    for (outcome, want) in table {
        assert_eq!(outcome.row(), want, "{outcome:?}");
    }
}

#[test]
fn names_are_distinct_words() {
    let all = [
        Outcome::Sent {
            attempts: 1,
            msgid: None,
        },
        Outcome::Suppressed { attempts: 0 },
        Outcome::Expired { attempts: 0 },
        Outcome::Duplicate("sent"),
        Outcome::Dead {
            reason: "x".into(),
            errcode: None,
            errmsg: None,
            attempts: 0,
        },
        Outcome::Park {
            tier_secs: 5,
            attempts: 0,
            parks: 0,
            follow: true,
            errcode: None,
            error: String::new(),
        },
        Outcome::Scheduled {
            tier_secs: 5,
            attempts: 0,
            parks: 0,
            due: chrono::DateTime::UNIX_EPOCH,
        },
        Outcome::FannedOut { recipients: 0 },
        Outcome::Requeue { why: String::new() },
    ];
    let names: std::collections::BTreeSet<_> = all.iter().map(Outcome::name).collect();
    assert_eq!(names.len(), all.len());
    assert!(
        names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    );
}
