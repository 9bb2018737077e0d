//! Delivery statistics: deliveries per account and status, dead letters per account and
//! reason, over a window. Printed by `cli::stats`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::dead_letters::Db;
use crate::store::stats::{self as counts, StatusCount};

pub use crate::store::stats::ReasonStats;

/// Deliveries of one account by status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccountStats {
    pub account: String,
    pub total: i64,
    /// status → count (only statuses that occur).
    pub statuses: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub since: DateTime<Utc>,
    pub accounts: Vec<AccountStats>,
    pub dead_letters: Vec<ReasonStats>,
}

/// Deliveries created since `since` per account and status, and dead letters recorded since
/// `since` per account and reason.
pub async fn stats(
    db: &impl Db,
    since: DateTime<Utc>,
    account: Option<&str>,
) -> anyhow::Result<Stats> {
    let accounts = by_account(counts::delivery_counts(db, since, account).await?);
    let dead_letters = counts::dead_letter_counts(db, since, account).await?;
    Ok(Stats {
        since,
        accounts,
        dead_letters,
    })
}

/// Counts ordered by account, folded into one entry per account.
fn by_account(counts: Vec<StatusCount>) -> Vec<AccountStats> {
    let mut accounts: Vec<AccountStats> = Vec::new();
    for c in counts {
        match accounts.last_mut() {
            Some(a) if a.account == c.account => {
                a.total += c.count;
                a.statuses.insert(c.status, c.count);
            }
            _ => accounts.push(AccountStats {
                account: c.account,
                total: c.count,
                statuses: BTreeMap::from([(c.status, c.count)]),
            }),
        }
    }
    accounts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fold_into_one_entry_per_account() {
        let c = |account: &str, status: &str, count| StatusCount {
            account: account.into(),
            status: status.into(),
            count,
        };
        let got = by_account(vec![
            c("bot", "dead", 1),
            c("bot", "sent", 4),
            c("kf", "sent", 2),
        ]);
        assert_eq!(
            got,
            vec![
                AccountStats {
                    account: "bot".into(),
                    total: 5,
                    statuses: BTreeMap::from([("dead".into(), 1), ("sent".into(), 4)]),
                },
                AccountStats {
                    account: "kf".into(),
                    total: 2,
                    statuses: BTreeMap::from([("sent".into(), 2)]),
                },
            ]
        );
        assert!(by_account(vec![]).is_empty());
    }
}
