//! `wxdispatch bench`: every selected figure in turn, then the table.

use std::path::Path;

use anyhow::bail;

use super::crypto::crypto_row;
use super::env::Base;
use super::latency::latency;
use super::limiter::limiter;
use super::memory::memory;
use super::options::{BenchChannel, BenchOptions, Figure};
use super::report::{Machine, TableRow, print_table, rerun_command};
use super::throughput::throughput_rounds;

/// One-minute load average above which the machine is not quiet: other work competes for
/// the cores and the figures come out low.
pub(super) const BUSY_LOAD: f64 = 0.7;

/// `wxdispatch bench`: the selected figures, each in runs of their own, then one table on
/// stdout (progress on stderr).
pub async fn run_bench(config: Option<&Path>, opts: BenchOptions) -> anyhow::Result<()> {
    let base = Base::load(config, &opts)?;
    if opts.jobs == 0 || opts.recipients == 0 || opts.memory_jobs == 0 {
        bail!("--jobs, --recipients and --memory-jobs must be at least 1");
    }
    let machine = Machine::probe(&base).await;
    eprintln!("{}", machine.describe());
    if machine.load1 > BUSY_LOAD {
        eprintln!(
            "warning: load average {:.2}: other work is running, the figures will come out low",
            machine.load1
        );
    }
    let mut rows: Vec<TableRow> = Vec::new();
    let mut rss_small: Vec<(BenchChannel, u64)> = Vec::new();

    if opts.wants(Figure::Crypto) {
        rows.push(crypto_row()?);
    }
    if opts.wants(Figure::Throughput) {
        for &ch in &opts.channels {
            let peak = throughput_rounds(&base, &opts, ch, &mut rows).await?;
            rss_small.push((ch, peak));
        }
    }
    if opts.wants(Figure::Latency) {
        let r = latency(&base, &opts).await?;
        r.rows(&mut rows, &opts);
    }
    if opts.wants(Figure::Memory) {
        let r = memory(&base, &opts).await?;
        r.rows(&mut rows, &opts, &rss_small);
    }
    if opts.wants(Figure::Limiter) {
        let r = limiter(&base, &opts).await?;
        r.rows(&mut rows, &opts);
    }

    println!();
    println!("{}", machine.describe());
    println!();
    print_table(&rows);
    println!();
    println!("rerun: {}", rerun_command());
    Ok(())
}
