//! What every command shares when it prints: `-q` (notes and progress off), colour only on a
//! terminal and never with `NO_COLOR`, JSON documents one per line.

use std::sync::atomic::{AtomicBool, Ordering};

/// `-q` for this process: set once by [`crate::cli::main`] before any command runs; a flag
/// rather than a parameter of every printing function, as it is the process's setting.
static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A note for the operator on stderr (what was skipped, where to look next), not data:
/// silenced by `-q`.
pub fn note(msg: &str) {
    if !quiet() {
        eprintln!("{msg}");
    }
}

/// Whether a progress bar or colour may be drawn on stderr: a terminal, no `-q`, no `NO_COLOR`.
pub fn fancy_stderr() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
        && !quiet()
        && !crate::telemetry::no_color()
}

/// Print `value` as one line of JSON on stdout (every `--json` document).
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}
