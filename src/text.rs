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
//! | [`escape_controls`] | — | — | every invisible character escaped (`\n`, `\u{1b}`) |
//!
//! *Invisible* ([`is_invisible`]) means Unicode general category Cc (controls: newline, ESC,
//! DEL, C1), Cf (format: U+200B zero width space, U+202E right-to-left override, U+FEFF) or
//! Zl/Zp (U+2028/U+2029), as the `unicode-properties` crate reads them. Such characters forge
//! log lines, redraw terminals and hide inside ids; [`escape_controls`] is what every log field
//! and every CLI cell goes through, [`first_invisible`] is how ids refuse them.

use std::borrow::Cow;
use std::fmt;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

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

/// A character that is not seen where it stands: Unicode general category Cc, Cf, Zl or Zp.
pub fn is_invisible(c: char) -> bool {
    // The ASCII fast path: of 0..=0x7f only the C0 controls and DEL are invisible.
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// The first invisible character of `s` and its position in characters (0-based), if any.
/// For errors such as `to: contains an invisible/format character U+202E at 3`.
pub fn first_invisible(s: &str) -> Option<(usize, char)> {
    s.chars().enumerate().find(|&(_, c)| is_invisible(c))
}

/// `s` with every [invisible](is_invisible) character escaped as Rust's `escape_debug` writes
/// it (`\n`, `\r`, `\t`, `\u{1b}`, `\u{202e}`), so that it stays on one line and cannot move
/// the cursor, change colours or reorder text. Everything else, backslashes included, is kept.
/// Borrowed when there is nothing to escape.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_invisible) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    // Writing into a String cannot fail.
    let _ = write_escaped(&mut out, s);
    Cow::Owned(out)
}

/// [`escape_controls`] written into `out` without an intermediate string (for formatters).
pub fn write_escaped(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    let mut rest = s;
    while let Some((at, c)) = rest.char_indices().find(|&(_, c)| is_invisible(c)) {
        out.write_str(&rest[..at])?;
        for e in c.escape_debug() {
            out.write_char(e)?;
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_format_characters_are_escaped_onto_one_line() {
        assert_eq!(escape_controls("plain 中文 \\ ok"), "plain 中文 \\ ok");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\nb"), "a\\nb");
        assert_eq!(
            escape_controls("x\x1b[2J\r\n\t\u{7f}\u{85}y"),
            "x\\u{1b}[2J\\r\\n\\t\\u{7f}\\u{85}y"
        );
        assert_eq!(
            escape_controls("a\u{200b}b\u{202e}c\u{feff}\u{2028}\u{2029}"),
            "a\\u{200b}b\\u{202e}c\\u{feff}\\u{2028}\\u{2029}"
        );
        let escaped = escape_controls("\x1b]0;title\x07\x1b[2J");
        assert!(!escaped.chars().any(is_invisible), "{escaped}");
    }

    #[test]
    fn invisible_characters_are_found_with_their_position() {
        assert_eq!(first_invisible("oUser"), None);
        assert_eq!(first_invisible("客服 id"), None);
        assert_eq!(first_invisible("abc\u{202e}d"), Some((3, '\u{202e}')));
        assert_eq!(first_invisible("中\u{200b}"), Some((1, '\u{200b}')));
        assert_eq!(first_invisible("\n"), Some((0, '\n')));
        for c in [
            '\u{0}',
            '\u{1f}',
            '\u{7f}',
            '\u{9b}',
            '\u{ad}',
            '\u{2066}',
            '\u{e0001}',
        ] {
            assert!(is_invisible(c), "{c:?}");
        }
        for c in [' ', 'a', '~', 'é', '中', '😀', '\u{3000}'] {
            assert!(!is_invisible(c), "{c:?}");
        }
    }

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
