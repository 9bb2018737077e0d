//! The checks made before any call, against the platform's documented limits.

use chrono::NaiveDate;

use super::*;

#[test]
fn names_count_characters_not_bytes() {
    assert!(validate_name("客服小助手一二三四五六七八九十一").is_ok()); // 16 chars, 48 bytes
    assert!(validate_name("客服小助手一二三四五六七八九十一二").is_err()); // 17
    assert!(validate_name("").is_err());
    assert!(validate_name("   ").is_err());
    assert!(validate_name("a\u{7}b").is_err());
    assert!(validate_media_id(&"m".repeat(128)).is_ok());
    assert!(validate_media_id(&"m".repeat(129)).is_err());
    assert!(validate_media_id("a b").is_err());
}

#[test]
fn scenes_userids_and_kfids() {
    assert!(validate_scene("").is_ok());
    assert!(validate_scene("spring-sale_2026").is_ok());
    assert!(validate_scene(&"s".repeat(32)).is_ok());
    assert!(validate_scene(&"s".repeat(33)).is_err());
    assert!(validate_scene("a b").is_err());
    assert!(validate_scene("a=1").is_err());
    assert!(validate_scene("场景").is_err());
    assert!(validate_userid("zhangsan").is_ok());
    assert!(validate_userid("li.si@corp-1_x").is_ok());
    assert!(validate_userid("_x").is_err());
    assert!(validate_userid("").is_err());
    assert!(validate_userid("a b").is_err());
    assert!(validate_userid(&"u".repeat(65)).is_err());
    assert!(validate_open_kfid("wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q").is_ok());
    assert!(validate_open_kfid("wk/1").is_err());
    assert!(validate_external_userid("wmAJ2GCAAAme1XQRC-NI").is_ok());
    assert!(validate_external_userid("a b").is_err());
}

#[test]
fn id_lists_report_every_bad_id_and_drop_repeats() {
    let ids: Vec<String> = ["a", "b", "a", "c"].map(String::from).to_vec();
    assert_eq!(
        validate_ids("userid", &ids, validate_userid).unwrap(),
        vec!["a", "b", "c"]
    );
    let bad: Vec<String> = ["ok", "", "x y"].map(String::from).to_vec();
    let e = validate_ids("userid", &bad, validate_userid)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("2 invalid userid(s), nothing sent"), "{e}");
    assert!(validate_ids("userid", &[], validate_userid).is_err());
}

#[test]
fn targets_need_a_servicer_exactly_for_state_3() {
    assert!(validate_target(3, Some("zhangsan")).is_ok());
    assert!(validate_target(3, None).is_err());
    assert!(validate_target(2, Some("zhangsan")).is_err());
    assert!(validate_target(4, None).is_ok());
    assert!(validate_target(0, None).is_err());
    assert!(validate_target(5, None).is_err());
}

#[test]
fn stats_ranges_follow_the_platform_rules() {
    let today = NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
    let r = stats_range("2026-02-08", "2026-03-09", today).unwrap();
    // 2026-02-08 00:00 +08:00 = 2026-02-07 16:00 UTC.
    assert_eq!(r.start_time, 1_770_480_000);
    assert_eq!(r.end_time - r.start_time, 29 * 86_400);
    // 31 days is the widest span; 32 is refused.
    assert!(stats_range("2026-02-07", "2026-03-09", today).is_ok());
    assert!(stats_range("2026-02-06", "2026-03-09", today).is_err());
    // Not today, not the future, not reversed, not older than 180 days, real dates.
    assert!(stats_range("2026-03-10", "2026-03-10", today).is_err());
    assert!(stats_range("2026-03-05", "2026-03-01", today).is_err());
    assert!(stats_range("2025-09-11", "2025-09-12", today).is_ok());
    assert!(stats_range("2025-09-10", "2025-09-12", today).is_err());
    assert!(stats_range("2026-02-30", "2026-03-01", today).is_err());
    assert!(stats_range("03/01/2026", "2026-03-01", today).is_err());
}
