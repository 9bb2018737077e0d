//! The one confirmation of a destructive command (`dlq replay`, `broadcast cancel`,
//! `kf account delete`, `kf servicer remove`): `--yes`, or a y/N prompt on a terminal, or a
//! refusal (exit 2) when neither is possible.

use std::io::{BufRead, IsTerminal, Write};

use super::usage::UsageError;

/// May the command `what` (e.g. "cancel broadcast b1 of account kf") go ahead? `yes`: the
/// operator passed `--yes`. Without it: on a terminal, a y/N prompt on stderr (anything but
/// y/yes is no); otherwise a [`UsageError`] saying to pass `--yes`.
pub fn confirm(what: &str, yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(UsageError(format!(
            "refusing to {what} without --yes (stdin is not a terminal to ask)"
        ))
        .into());
    }
    let mut err = std::io::stderr().lock();
    write!(err, "{what}? [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(is_yes(&answer))
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_y_or_yes_is_yes() {
        for a in ["y\n", "yes\n", "Y", " YES "] {
            assert!(is_yes(a), "{a:?}");
        }
        for a in ["", "\n", "n\n", "no", "yy", "sure"] {
            assert!(!is_yes(a), "{a:?}");
        }
    }

    #[test]
    fn yes_goes_ahead_without_asking() {
        assert!(confirm("drop everything", true).is_ok_and(|ok| ok));
    }
}
