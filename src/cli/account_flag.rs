//! `--account` where an id alone may be ambiguous: job ids and broadcast ids are unique per
//! account only (`ops::account_id`).

use super::usage::UsageError;
use crate::ops::account_id::AmbiguousId;

/// An [`AmbiguousId`] becomes a usage error (exit 2) naming the accounts and the flag that
/// picks one; any other error is returned as it is.
pub fn ambiguous_is_usage(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<AmbiguousId>() {
        Some(a) => UsageError(format!(
            "{} '{}' exists on {} accounts ({}): choose one with --account <ACCOUNT>",
            a.what,
            a.id,
            a.accounts.len(),
            a.accounts.join(", ")
        ))
        .into(),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::exit::code;

    #[test]
    fn an_ambiguous_id_is_a_usage_error_naming_the_flag_and_the_accounts() {
        let e = anyhow::Error::new(AmbiguousId {
            what: "job id",
            id: "j1".into(),
            accounts: vec!["bot".into(), "kf".into()],
        });
        let e = ambiguous_is_usage(e);
        assert_eq!(code(&e), 2);
        assert_eq!(
            e.to_string(),
            "job id 'j1' exists on 2 accounts (bot, kf): choose one with --account <ACCOUNT>"
        );
        let other = ambiguous_is_usage(anyhow::anyhow!("database down"));
        assert_eq!(code(&other), 1);
    }
}
