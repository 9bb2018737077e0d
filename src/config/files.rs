//! Reading files named by the settings and the command line, capped: `*_file` secrets, the
//! config file, `send --file`, `broadcast --to-file` and `--message FILE`. A path such as
//! `/dev/zero` or a runaway log ends in a clear error naming the key or flag, the path and the
//! cap, instead of reading until memory runs out.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};

/// `token_file`, `secret_file`, `encoding_aes_key_file`, `[database] password_file`: a
/// credential is a line; 64 KiB is far beyond any.
pub const SECRET_FILE_MAX: u64 = 64 * 1024;
/// The TOML settings file.
pub const CONFIG_FILE_MAX: u64 = 4 * 1024 * 1024;
/// A job or message JSON file (`send --file`, `broadcast --message FILE`) and a broadcast's
/// recipient list (`--to-file`: 10,000 ids of at most 128 characters fit many times over).
pub const INPUT_FILE_MAX: u64 = 64 * 1024 * 1024;

/// The UTF-8 text of `path`, at most `max` bytes. `what` names where the path came from
/// (`--to-file`, `database.password_file`) and starts every error:
/// `--to-file /dev/zero: larger than 64 MiB`, `--to-file: cannot read /x: No such file…`.
pub fn read_capped(path: &Path, max: u64, what: &str) -> anyhow::Result<String> {
    let cannot_read = || format!("{what}: cannot read {}", path.display());
    let file = std::fs::File::open(path).with_context(cannot_read)?;
    let mut buf = Vec::new();
    // One byte past the cap tells "exactly max" from "more".
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .with_context(cannot_read)?;
    if buf.len() as u64 > max {
        bail!("{what} {}: larger than {}", path.display(), size(max));
    }
    String::from_utf8(buf).map_err(|e| {
        anyhow::anyhow!(
            "{what} {}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// `65536` → `64 KiB`, `4194304` → `4 MiB`, `100` → `100 bytes`.
fn size(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_zero_ends_at_the_cap_with_an_error_naming_flag_path_and_cap() {
        let e = read_capped(Path::new("/dev/zero"), SECRET_FILE_MAX, "x.token_file").unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "x.token_file /dev/zero: larger than 64 KiB"
        );
    }

    #[test]
    fn a_file_of_exactly_the_cap_is_read_and_one_more_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "abcd").unwrap();
        assert_eq!(read_capped(&p, 4, "--file").unwrap(), "abcd");
        let e = read_capped(&p, 3, "--file").unwrap_err();
        assert_eq!(
            format!("{e}"),
            format!("--file {}: larger than 3 bytes", p.display())
        );
        std::fs::write(&p, b"a\xffb").unwrap();
        let e = read_capped(&p, 10, "--file").unwrap_err();
        assert!(
            format!("{e}").ends_with("not UTF-8 text (invalid byte at offset 1)"),
            "{e}"
        );
        let e = read_capped(&dir.path().join("missing"), 10, "--to-file").unwrap_err();
        assert!(
            format!("{e:#}").starts_with("--to-file: cannot read "),
            "{e:#}"
        );
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(size(INPUT_FILE_MAX), "64 MiB");
        assert_eq!(size(CONFIG_FILE_MAX), "4 MiB");
        assert_eq!(size(SECRET_FILE_MAX), "64 KiB");
        assert_eq!(size(1500), "1500 bytes");
    }
}
