//! The kf table printer, and the session moves kf checks.

use super::*;

#[test]
fn tables_align() {
    let mut out = Vec::new();
    write_table(
        &mut out,
        &["A", "BB"],
        &[
            vec!["xyz".into(), "1".into()],
            vec!["客服".into(), "2".into()],
        ],
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "A     BB\nxyz   1\n客服  2\n" // "客服" is 4 columns wide
    );
}

/// The moves kf checks before `service_state/trans` are the reference's, and the
/// simulator the tests run against allows the same. (Here because only the command line
/// may import both the platform layer's vocabulary and the tools.)
#[test]
fn transitions_match_the_reference() {
    use crate::domain::service_state::transition_allowed;
    let allowed = [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 3),
        (3, 3),
        (3, 4),
    ];
    for from in 0..=4 {
        for to in 0..=4 {
            assert_eq!(
                transition_allowed(from, to),
                allowed.contains(&(from, to)),
                "{from}->{to}"
            );
            assert_eq!(
                transition_allowed(from, to),
                crate::tools::simulate::wecom::transition_allowed(from, to),
                "client and simulator agree on {from}->{to}"
            );
        }
    }
}
