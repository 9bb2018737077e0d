//! Text helpers for messages that quote outside input: logs, dead-letter headers, error
//! details, operator tables. One home, so that "cut", "clip" and "one line" mean the same
//! everywhere. Pure std.
//!
//! | helper | budget | cut marked | newlines, tabs |
//! |---|---|---|---|
//! | [`truncate`] | bytes | `…` | kept |
//! | [`clip_chars`] | characters | `…` | kept |
//! | [`one_line`] | bytes | `…` | each control character becomes a space |
//! | [`squash_whitespace`] | — | — | every run of whitespace becomes one space, ends trimmed |

/// The ellipsis that marks a cut (one character, three bytes in UTF-8).
pub const ELLIPSIS: char = '…';

/// Cut `s` to at most `max` bytes at a char boundary, marking a cut with `…` (which comes on
/// top of the budget). For fixed-size slots such as AMQP headers and log fields.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &s[..end])
}

/// Cut `s` to at most `max` characters, marking a cut with `…`. For details read by people,
/// where a CJK text should get as many characters as a Latin one.
pub fn clip_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}{ELLIPSIS}", &s[..cut]),
        None => s.to_owned(),
    }
}

/// `s` on one line: every control character (newline, tab, …) as a space, then cut to `max`
/// bytes like [`truncate`]. For a platform's `errmsg` in a table cell.
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(&flat, max)
}

/// Every run of whitespace as one space, leading and trailing whitespace removed. For
/// multi-line transport errors quoted in one line of an error message.
pub fn squash_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "abc…");
        assert_eq!(truncate("", 0), "");
        assert_eq!(truncate("中文", 0), "…");
        assert_eq!(truncate("中文", 4), "中…");
    }

    #[test]
    fn clip_counts_characters() {
        assert_eq!(clip_chars("中文字符", 2), "中文…");
        assert_eq!(clip_chars("中文", 2), "中文");
        assert_eq!(clip_chars("abc", 0), "…");
        assert_eq!(clip_chars("", 0), "");
    }

    #[test]
    fn one_line_flattens_controls_and_cuts_bytes() {
        assert_eq!(one_line("a\nb\tc", 64), "a b c");
        assert_eq!(one_line("a\r\nb", 64), "a  b");
        assert_eq!(one_line("line one\nline two", 8), "line one…");
    }

    #[test]
    fn squash_whitespace_joins_runs() {
        assert_eq!(squash_whitespace("  a \n\n b\tc  "), "a b c");
        assert_eq!(squash_whitespace("\n"), "");
        assert_eq!(squash_whitespace("one"), "one");
    }

    #[test]
    fn never_panics_on_any_cut() {
        let s = "añ中😀\n";
        for max in 0..=s.len() + 1 {
            let t = truncate(s, max);
            assert!(t.len() <= max + ELLIPSIS.len_utf8(), "{max}: {t}");
            let _ = clip_chars(s, max);
            let _ = one_line(s, max);
        }
    }
}
