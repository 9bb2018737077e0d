//! The one marker of a usage problem: the command was asked for something it must not do as
//! given (a bad value found after parsing, a missing `--yes`, an invalid configuration). The
//! binary exits 2 for it, 1 for any other failure (contract §7).
//!
//! Library layers do not know it: they return their own typed errors, and each command maps
//! the ones that are the operator's to fix into a `UsageError`.

/// A usage problem (exit code 2). Its message is the one line printed on stderr.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }

    /// True when `e` or anything in its chain of causes is a usage problem.
    pub fn is_in(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<UsageError>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn found_anywhere_in_the_chain() {
        let e = anyhow::Error::new(UsageError::new("refusing"));
        assert!(UsageError::is_in(&e));
        let wrapped = Err::<(), _>(e).context("dlq replay").unwrap_err();
        assert!(UsageError::is_in(&wrapped));
        assert!(!UsageError::is_in(&anyhow::anyhow!("database down")));
    }
}
