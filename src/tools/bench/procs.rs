//! Child processes of this binary and what `/proc` says about them and the machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// SIGTERM, then this long for a graceful exit, then SIGKILL.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Logging of the child processes: the worker's shipped default, whatever this shell has.
pub(super) const CHILD_LOG_FILTER: &str = "info,lapin=warn,sqlx=warn";

/// A child process of this binary (`simulate` or `run`) with its own config.
pub(super) struct Proc {
    pub(super) name: &'static str,
    pub(super) child: tokio::process::Child,
    pub(super) pid: u32,
    pub(super) log: PathBuf,
}

impl Proc {
    pub(super) fn spawn(
        name: &'static str,
        exe: &Path,
        cfg: &Path,
        args: &[String],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn_wrapped(name, None, exe, cfg, args, dir)
    }

    /// [`Proc::spawn`] under `wrapper` (a command and its arguments, split at whitespace).
    pub(super) fn spawn_wrapped(
        name: &'static str,
        wrapper: Option<&str>,
        exe: &Path,
        cfg: &Path,
        args: &[String],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut words = wrapper.unwrap_or("").split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut c = tokio::process::Command::new(program);
                c.args(words).arg(exe);
                c
            }
            None => tokio::process::Command::new(exe),
        };
        cmd.arg("--config").arg(cfg).args(args);
        // The generated config is the whole configuration: no overrides from this shell.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("WXDISPATCH_") {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.env("RUST_LOG", CHILD_LOG_FILTER)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {name} ({})", exe.display()))?;
        let pid = child.id().context("the child has no pid")?;
        Ok(Self {
            name,
            child,
            pid,
            log,
        })
    }

    /// Fails (with the end of its log) when the process has exited.
    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the {} exited ({status}); its log ends with:\n{}",
                self.name,
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// CPU seconds (user + system) used so far.
    pub(super) fn cpu_secs(&self) -> f64 {
        proc_stat(self.pid).map_or(0.0, |(_, t)| t as f64 / clock_ticks())
    }

    /// Peak resident set size so far (`VmHWM`), bytes.
    pub(super) fn peak_rss(&self) -> u64 {
        proc_status_kb(self.pid, "VmHWM:").unwrap_or(0) * 1024
    }

    /// SIGTERM, wait for a graceful exit, SIGKILL after [`STOP_TIMEOUT`].
    pub(super) async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid).context("pid out of range")?;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "the {} exited with {status}; its log ends with:\n{}",
                        self.name,
                        log_tail(&self.log)
                    );
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the {} did not stop within {STOP_TIMEOUT:?}", self.name)
            }
        }
    }
}

pub(super) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

pub(super) fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `(comm, utime + stime in clock ticks)` of a process.
pub(super) fn proc_stat(pid: u32) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    // Fields after the command: state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = s.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// A `kB` line of `/proc/<pid>/status`.
pub(super) fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// CPU use of every process and of the whole machine at one moment.
pub(super) struct CpuSnapshot {
    pub(super) at: Instant,
    /// Non-idle ticks of all CPUs (`/proc/stat`).
    pub(super) busy: u64,
    pub(super) procs: HashMap<u32, (String, u64)>,
}

impl CpuSnapshot {
    pub(super) fn take() -> Self {
        let busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_owned();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal …
                Some(
                    v.iter().take(8).sum::<u64>()
                        - v.get(3).copied().unwrap_or(0)
                        - v.get(4).copied().unwrap_or(0),
                )
            })
            .unwrap_or(0);
        let mut procs = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                    && let Some(st) = proc_stat(pid)
                {
                    procs.insert(pid, st);
                }
            }
        }
        Self {
            at: Instant::now(),
            busy,
            procs,
        }
    }
}

/// Where the machine's CPU went between two snapshots, in cores (CPU seconds per second).
#[derive(Debug, Default, Clone)]
pub(super) struct CpuUse {
    pub(super) worker: f64,
    pub(super) simulator: f64,
    pub(super) rabbitmq: f64,
    pub(super) postgres: f64,
    pub(super) bench: f64,
    pub(super) other: f64,
    pub(super) busy: f64,
}

impl CpuUse {
    pub(super) fn between(a: &CpuSnapshot, b: &CpuSnapshot, worker: u32, simulator: u32) -> Self {
        let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
        let hz = clock_ticks();
        let cores = |ticks: u64| ticks as f64 / hz / wall;
        let me = std::process::id();
        let mut u = CpuUse {
            busy: cores(b.busy.saturating_sub(a.busy)),
            ..Default::default()
        };
        for (pid, (comm, t)) in &b.procs {
            let before = a.procs.get(pid).map_or(0, |(_, t0)| *t0);
            let c = cores(t.saturating_sub(before));
            match (*pid, comm.as_str()) {
                (p, _) if p == worker => u.worker += c,
                (p, _) if p == simulator => u.simulator += c,
                (p, _) if p == me => u.bench += c,
                (_, "beam.smp") => u.rabbitmq += c,
                (_, "postgres") => u.postgres += c,
                _ => {}
            }
        }
        let known = u.worker + u.simulator + u.bench + u.rabbitmq + u.postgres;
        u.other = (u.busy - known).max(0.0);
        u
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "worker {:.2} · simulator {:.2} · RabbitMQ {:.2} · Postgres {:.2} · bench {:.2} · other {:.2} (busy {:.2})",
            self.worker,
            self.simulator,
            self.rabbitmq,
            self.postgres,
            self.bench,
            self.other,
            self.busy
        )
    }
}
