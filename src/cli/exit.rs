//! Exit codes: 0 success, 1 a runtime failure, 2 a usage or configuration error. The one place
//! that tells them apart.

use std::process::ExitCode;

use super::usage::UsageError;
use crate::platform::kf::KfError;

/// The exit code of a command that failed with `e`: 2 when the command was used wrongly (the
/// configuration, a `dlq` usage problem, kf input refused before any call), 1 otherwise.
pub fn code(e: &anyhow::Error) -> u8 {
    if is_usage(e) { 2 } else { 1 }
}

fn is_usage(e: &anyhow::Error) -> bool {
    UsageError::is_in(e)
        || e.chain()
            .any(|c| c.downcast_ref::<KfError>().is_some_and(KfError::is_usage))
}

/// Print the failure as one line on stderr and return its exit code.
pub fn report(e: &anyhow::Error) -> ExitCode {
    print_error(&format!("{e:#}"));
    ExitCode::from(code(e))
}

/// The one way a command's failure reaches the terminal: `error: <one line>` on stderr
/// (newlines folded, control characters escaped), whatever failed — a clap usage error, a
/// configuration error or a runtime failure.
pub fn print_error(msg: &str) {
    eprintln!("error: {}", one_line(msg));
}

fn one_line(msg: &str) -> String {
    let folded: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    crate::text::escape_controls(&folded.join(" ")).into_owned()
}

/// What a clap parse error becomes: `--help` and `--version` print as clap prints them (exit
/// 0); a usage error prints one `error: …` line naming the command's `--help` (exit 2), not
/// clap's usage block.
pub fn clap_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            print_error(&clap_line(e));
            ExitCode::from(2)
        }
    }
}

/// clap's message without its `error:` prefix, usage block and tips, on one line, followed by
/// where to look (the command's `--help` when clap names the command).
pub fn clap_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut paragraphs = text.split("\n\n").map(str::trim);
    let first = paragraphs.next().unwrap_or_default();
    let body = first.strip_prefix("error:").unwrap_or(first);
    let cmd = paragraphs
        .find_map(|p| p.strip_prefix("Usage: "))
        .map(|u| {
            u.split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty());
    let see = match cmd {
        Some(c) => format!("see '{c} --help'"),
        None => "see --help".into(),
    };
    format!("{} ({see})", one_line(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_configuration_errors_exit_2_others_1() {
        let config = anyhow::Error::new(UsageError::new("bad config"));
        assert_eq!(code(&config), 2);
        let dlq = anyhow::Error::new(UsageError::new("no --yes")).context("dlq replay");
        assert_eq!(code(&dlq), 2);
        let kf = anyhow::Error::new(KfError::Invalid("bad userid".into()));
        assert_eq!(code(&kf), 2);
        let kf = anyhow::Error::new(KfError::Setup("no database".into()));
        assert_eq!(code(&kf), 1);
        assert_eq!(code(&anyhow::anyhow!("broker down")), 1);
    }

    #[test]
    fn error_lines_fold_newlines_and_escape_controls() {
        assert_eq!(one_line("a\n  b\n\nc"), "a b c");
        assert_eq!(one_line("x\u{1b}[2J"), "x\\u{1b}[2J");
    }
}
