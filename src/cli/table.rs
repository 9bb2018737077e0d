//! The command line's one table printer: columns left aligned, two spaces apart, each as wide
//! as its widest cell in terminal columns (East Asian characters count two, through
//! comfy-table's unicode-width), no borders, no trailing spaces. Every cell, headers included,
//! goes through [`crate::text::escape_controls`]: a routing key or an errmsg holding `ESC[2J`
//! or a newline prints as `\u{1b}[2J` / `\n` and can neither redraw the terminal nor add a row.
//!
//! ```text
//! ID  JOB ID  ACCOUNT  REASON
//! 42  r-1043  kf       config_error
//! ```

use std::fmt;
use std::io::{self, Write};

use chrono::TimeDelta;
use comfy_table::presets::NOTHING;

/// Spaces between two columns.
const GAP: u16 = 2;

/// A header and rows of cells, printed as aligned columns.
#[derive(Debug, Clone)]
pub struct Table {
    inner: comfy_table::Table,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        let mut inner = comfy_table::Table::new();
        inner
            .load_style(NOTHING)
            .set_header(headers.into_iter().map(cell).collect::<Vec<String>>());
        let mut t = Self { inner };
        t.space_columns();
        t
    }

    /// Add a row; cells beyond the header's columns add columns.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.inner
            .add_row(cells.into_iter().map(cell).collect::<Vec<String>>());
        self.space_columns();
        self
    }

    /// Print to `out`, one line per row (the header first), each ending in a newline.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        for line in self.inner.lines() {
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }

    /// Print to stdout.
    pub fn print(&self) -> io::Result<()> {
        let mut out = io::stdout().lock();
        self.write_to(&mut out)?;
        out.flush()
    }

    /// The gap after every column but the last (whose padding would only trail).
    fn space_columns(&mut self) {
        let n = self.inner.column_count();
        for (i, c) in self.inner.column_iter_mut().enumerate() {
            c.set_padding((0, if i + 1 < n { GAP } else { 0 }));
        }
    }
}

/// The table's lines, each ending in a newline (as [`Table::write_to`] prints them).
impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.inner.lines() {
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// A cell as printed: invisible characters escaped (owned strings without any are kept as
/// they are, without a copy).
fn cell<S: Into<String>>(s: S) -> String {
    let s: String = s.into();
    match crate::text::escape_controls(&s) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(escaped) => escaped,
    }
}

/// A cell from text that may hold newlines or tabs (a platform's errmsg): control characters
/// flattened to spaces, cut to `max` bytes (with `…`) to keep one line per row.
pub use crate::text::one_line;

/// An age in its largest whole unit: `3s`, `3m`, `2h`, `4d` (negative ones are `0s`).
pub fn format_age(d: TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_two_spaces_apart_and_east_asian_characters_count_two() {
        let mut t = Table::new(["A", "BB"]);
        t.row(["xyz", "1"]).row(["客服", "2"]);
        // "客服" is 4 columns wide.
        assert_eq!(t.to_string(), "A     BB\nxyz   1\n客服  2\n");
    }

    #[test]
    fn no_trailing_spaces_and_empty_cells_keep_their_column() {
        let mut t = Table::new(["ID", "NAME", "NOTE"]);
        t.row(["1", "", "x"]).row(["22", "long name", ""]);
        let mut out = Vec::new();
        t.write_to(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID  NAME       NOTE\n1              x\n22  long name\n"
        );
    }

    #[test]
    fn control_and_format_characters_in_cells_are_escaped() {
        let mut t = Table::new(["KEY\n", "N"]);
        t.row(["kf\x1b[2J", "1"]).row(["a\nb\u{202e}", "2"]);
        let out = t.to_string();
        assert!(
            !out.contains('\x1b') && !out.contains('\u{202e}'),
            "{out:?}"
        );
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(
            out.contains("kf\\u{1b}[2J") && out.contains("a\\nb\\u{202e}"),
            "{out}"
        );
    }

    #[test]
    fn a_header_alone_is_one_line() {
        assert_eq!(Table::new(["ONLY"]).to_string(), "ONLY\n");
    }

    #[test]
    fn ages_are_short() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3 * 60 + 5, "3m"),
            (2 * 3600, "2h"),
            (86_399, "23h"),
            (4 * 86_400 + 7, "4d"),
            (-5, "0s"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_age(TimeDelta::seconds(secs)), want, "{secs}");
        }
    }

    #[test]
    fn one_line_flattens_and_cuts() {
        assert_eq!(one_line("api\nswitch\toff", 48), "api switch off");
        assert_eq!(one_line("héllo", 2), "h…");
    }
}
