//! The table the bench prints, the machine it ran on, number formatting.

use sqlx::Connection as _;

use super::env::Base;

pub(super) const MIB: f64 = 1024.0 * 1024.0;

pub(super) struct TableRow {
    pub(super) figure: String,
    pub(super) result: String,
    pub(super) target: String,
    pub(super) met: Option<bool>,
}

impl TableRow {
    pub(super) fn new(
        figure: impl Into<String>,
        result: impl Into<String>,
        target: impl Into<String>,
        met: Option<bool>,
    ) -> Self {
        Self {
            figure: figure.into(),
            result: result.into(),
            target: target.into(),
            met,
        }
    }
}

pub(super) fn print_table(rows: &[TableRow]) {
    println!("| figure | result | target | met |");
    println!("|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        println!("| {} | {} | {} | {met} |", r.figure, r.result, r.target);
    }
}

/// The machine the figures were taken on.
pub(super) struct Machine {
    pub(super) cpus: usize,
    pub(super) model: String,
    pub(super) mem_gib: f64,
    pub(super) kernel: String,
    pub(super) rabbitmq: String,
    pub(super) postgres: String,
    pub(super) load1: f64,
}

impl Machine {
    pub(super) async fn probe(base: &Base) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        };
        let model = match (field("model name"), field("cpu MHz")) {
            (Some(m), Some(mhz)) => format!("{m} @ {mhz} MHz"),
            (Some(m), None) => m,
            _ => "unknown CPU".into(),
        };
        let mem_gib = proc_meminfo_kb("MemTotal:").unwrap_or(0) as f64 / MIB;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let rabbitmq = tokio::process::Command::new("rabbitmqctl")
            .arg("version")
            .output()
            .await
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let postgres = match sqlx::PgConnection::connect(&base.admin_db_url()).await {
            Ok(mut c) => {
                let v: Option<String> = sqlx::query_scalar("SHOW server_version")
                    .fetch_one(&mut c)
                    .await
                    .ok();
                let _ = c.close().await;
                v.unwrap_or_default()
            }
            Err(_) => String::new(),
        };
        let load1 = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            model,
            mem_gib,
            kernel,
            rabbitmq,
            postgres,
            load1,
        }
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}; RabbitMQ {}, PostgreSQL {}; load average at start {:.2}",
            self.cpus,
            self.model,
            self.mem_gib,
            self.kernel,
            self.rabbitmq,
            self.postgres,
            self.load1
        )
    }
}

pub(super) fn proc_meminfo_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// How to run this bench again with the same arguments.
pub(super) fn rerun_command() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect();
    format!("cargo run --release -- {}", args.join(" "))
}

/// 12345678 → "12,345,678".
pub(super) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
