//! Ids are unique per account, not globally: a job id (and a broadcast id, the job id of the
//! broadcast job) is the idempotency key together with its account. A lookup by id alone
//! finds one row per account that has it; when there are several the operator must say which
//! account is meant.

/// An id that several accounts have, looked up without an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} '{id}' exists on {} accounts ({}); say which account", accounts.len(), accounts.join(", "))]
pub struct AmbiguousId {
    /// What the id names: `job id` or `broadcast id`.
    pub what: &'static str,
    pub id: String,
    /// Every account that has the id, sorted.
    pub accounts: Vec<String>,
}

/// The only element of `found` (`None` when it is empty), or [`AmbiguousId`] naming the
/// accounts of all of them when there are several.
pub fn only<T>(
    what: &'static str,
    id: &str,
    mut found: Vec<T>,
    account: impl Fn(&T) -> &str,
) -> Result<Option<T>, AmbiguousId> {
    if found.len() <= 1 {
        return Ok(found.pop());
    }
    let mut accounts: Vec<String> = found.iter().map(|t| account(t).to_owned()).collect();
    accounts.sort();
    accounts.dedup();
    Err(AmbiguousId {
        what,
        id: id.to_owned(),
        accounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_is_found_none_is_none_and_several_name_their_accounts() {
        let rows = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).collect() };
        assert_eq!(
            only("job id", "j1", rows(&["kf"]), String::as_str),
            Ok(Some("kf".to_owned()))
        );
        assert_eq!(only("job id", "j1", rows(&[]), String::as_str), Ok(None));
        let e = only("job id", "j1", rows(&["kf", "bot"]), String::as_str).unwrap_err();
        assert_eq!(e.accounts, ["bot", "kf"]);
        assert_eq!(
            e.to_string(),
            "job id 'j1' exists on 2 accounts (bot, kf); say which account"
        );
    }
}
