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
    let line = crate::text::escape_controls(&format!("{e:#}").replace('\n', " ")).into_owned();
    eprintln!("wxdispatch: error: {line}");
    ExitCode::from(code(e))
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
}
