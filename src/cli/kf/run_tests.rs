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
