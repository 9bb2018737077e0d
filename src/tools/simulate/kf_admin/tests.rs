//! Unit tests of the kf administration model.

use super::model::*;
use super::statistics::*;

#[test]
fn day_floor_is_utc8_midnight() {
    // 2019-04-03 21:00 +08:00 → 2019-04-03 00:00 +08:00 (the docs' own example).
    assert_eq!(day_floor(1_554_296_400), 1_554_220_800);
    assert_eq!(day_floor(1_554_220_800), 1_554_220_800);
}

#[test]
fn userids() {
    assert!(is_member("zhangsan"));
    assert!(is_member("li.si@x-1"));
    assert!(!is_member("ghost-1"));
    assert!(!is_member("_x"));
    assert!(!is_member(""));
    assert!(!is_member(&"u".repeat(65)));
}

#[test]
fn api_names_round_trip() {
    for a in KfApi::ALL {
        assert_eq!(KfApi::from_name(a.name()), Some(a));
    }
}

#[test]
fn synthetic_days_are_plausible() {
    for h in [0u64, u64::MAX, 0x1234_5678_9abc_def0] {
        let c = corp_day(h);
        assert!(c["customer_cnt"].as_u64() <= c["session_cnt"].as_u64());
        let s = servicer_day(h);
        let sum = s["satisfied_rate"].as_f64().unwrap()
            + s["middling_rate"].as_f64().unwrap()
            + s["dissatisfied_rate"].as_f64().unwrap();
        assert!(sum <= 1.0001, "{s}");
    }
}
