//! `wxdispatch stats`: the arguments and the two tables (or one JSON object) of
//! `ops::stats`.

use std::collections::HashSet;
use std::io::Write;

use chrono::{DateTime, Utc};

use super::dlq::parse_since;
use super::table::{Table, format_age};
use crate::config::Config;
use crate::ops::stats::{self as ops, Stats};
use crate::store::{self, Status};

/// `wxdispatch stats`
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Deliveries created (and dead letters recorded) since then: a duration back from now
    /// (30m, 24h, 7d) or an RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME", default_value = "24h", value_parser = parse_since)]
    pub since: DateTime<Utc>,
    /// Only this account.
    #[arg(long)]
    pub account: Option<String>,
    /// One JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `wxdispatch stats`
pub async fn run(cfg: Config, a: StatsArgs) -> anyhow::Result<()> {
    let pool = store::connect_pool(&cfg).await?;
    let res = ops::stats(&pool, a.since, a.account.as_deref()).await;
    pool.close().await;
    let s = res?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&s)?)?;
        return Ok(());
    }
    write_stats(&mut out, &s, Utc::now())?;
    Ok(())
}

fn write_stats(out: &mut impl Write, s: &Stats, now: DateTime<Utc>) -> std::io::Result<()> {
    let ago = format_age(now - s.since);
    let since_text = s.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    writeln!(out, "deliveries created since {since_text} ({ago} ago)")?;
    if s.accounts.is_empty() {
        writeln!(out, "  none")?;
    } else {
        delivery_table(s).write_to(out)?;
    }
    writeln!(out)?;
    writeln!(out, "dead letters since {since_text}")?;
    if s.dead_letters.is_empty() {
        writeln!(out, "  none")?;
    } else {
        let mut t = Table::new(["ACCOUNT", "REASON", "COUNT", "UNREPLAYED"]);
        for d in &s.dead_letters {
            t.row([
                d.account.clone(),
                d.reason.clone(),
                d.count.to_string(),
                d.unreplayed.to_string(),
            ]);
        }
        t.write_to(out)?;
    }
    Ok(())
}

/// One row per account, a column for each status that occurs, in the lifecycle's order.
fn delivery_table(s: &Stats) -> Table {
    let order = [
        Status::Accepted,
        Status::Scheduled,
        Status::Retrying,
        Status::Sent,
        Status::Failed,
        Status::Dead,
        Status::Suppressed,
        Status::Expired,
        Status::Cancelled,
    ];
    let present: HashSet<&str> = s
        .accounts
        .iter()
        .flat_map(|a| a.statuses.keys().map(String::as_str))
        .collect();
    let mut cols: Vec<String> = order
        .iter()
        .map(|st| st.as_str())
        .filter(|st| present.contains(st))
        .map(str::to_owned)
        .collect();
    // Statuses this build does not know (a newer schema) still show.
    let mut unknown: Vec<String> = present
        .iter()
        .filter(|p| Status::parse(p).is_none())
        .map(|p| (*p).to_owned())
        .collect();
    unknown.sort();
    cols.extend(unknown);
    let mut header = vec!["ACCOUNT".to_owned(), "TOTAL".to_owned()];
    header.extend(cols.iter().map(|c| c.to_uppercase()));
    let mut t = Table::new(header);
    for a in &s.accounts {
        let mut r = vec![a.account.clone(), a.total.to_string()];
        r.extend(
            cols.iter()
                .map(|c| a.statuses.get(c).copied().unwrap_or(0).to_string()),
        );
        t.row(r);
    }
    t
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ops::stats::{AccountStats, ReasonStats};

    #[test]
    fn the_tables_show_the_statuses_that_occur_in_lifecycle_order() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let s = Stats {
            since: at("2026-11-20T10:00:00Z"),
            accounts: vec![
                AccountStats {
                    account: "bot".into(),
                    total: 1204,
                    statuses: BTreeMap::from([
                        ("sent".into(), 1190),
                        ("dead".into(), 3),
                        ("suppressed".into(), 11),
                    ]),
                },
                AccountStats {
                    account: "kf".into(),
                    total: 5530,
                    statuses: BTreeMap::from([
                        ("retrying".into(), 2),
                        ("sent".into(), 5519),
                        ("dead".into(), 9),
                    ]),
                },
            ],
            dead_letters: vec![
                ReasonStats {
                    account: "kf".into(),
                    reason: "config_error".into(),
                    count: 7,
                    unreplayed: 0,
                },
                ReasonStats {
                    account: "kf".into(),
                    reason: "invalid_recipient".into(),
                    count: 2,
                    unreplayed: 2,
                },
            ],
        };
        let mut out = Vec::new();
        write_stats(&mut out, &s, at("2026-11-21T10:00:00Z")).unwrap();
        // As README § Stats shows it.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "deliveries created since 2026-11-20T10:00:00Z (1d ago)
ACCOUNT  TOTAL  RETRYING  SENT  DEAD  SUPPRESSED
bot      1204   0         1190  3     11
kf       5530   2         5519  9     0

dead letters since 2026-11-20T10:00:00Z
ACCOUNT  REASON             COUNT  UNREPLAYED
kf       config_error       7      0
kf       invalid_recipient  2      2
"
        );
    }
}
