//! `wxdispatch bench`: a reproducible benchmark against the local RabbitMQ and Postgres and
//! the built-in simulator. It prints one table:
//!
//! | figure | how |
//! |---|---|
//! | end-to-end throughput | a backlog of `--jobs` jobs (1 account, `--recipients` recipients, `--text-bytes` texts) is published, then the worker starts; time from its start until every row of `deliveries` is terminal (the last outcome's `updated_at`). Chatbot and WeCom in separate runs. |
//! | broker ceiling | in the same run, the same backlog on the same quorum queue, consumed and acked by a consumer that does nothing else, with the same prefetch |
//! | ratio | end-to-end ÷ ceiling; `--rounds` rounds per channel (default 3, each a fresh vhost and database with its own ceiling), the median round by ratio shown with every round's ratio |
//! | CPU | worker CPU seconds (utime + stime) per 10,000 jobs, and where the machine's CPU went during the drain (worker, simulator, RabbitMQ, Postgres) |
//! | rows per commit | claim + outcome rows (2 per job) ÷ transactions committed in the run's database during the drain (every statement counts, not only the batched ones) |
//! | latency | `--latency-rate` jobs/s for `--latency-secs`, each stamped with its publish time (header `x-wxdispatch-published-ms` and in the text); p50 / p99 / max of the simulator's acceptance time minus the publish time |
//! | memory | peak RSS (`VmHWM`) of the worker while it drains a `--memory-jobs` backlog |
//! | crypto | WXBizMsgCrypt encrypt + base64 of a 512-byte message, in process (the criterion bench `cargo bench --bench crypto` measures the same call) |
//! | limiter | a `--limiter-rate`/s limit with `--limiter-burst` for `--limiter-secs`, the simulator enforcing it: observed rate and the busiest one-second window at the simulator |
//!
//! Rate limits are off (`rate = { unlimited = true }`, `simulate --no-rate-limit`) except in
//! the limiter run. Every run gets a fresh vhost (`rabbitmqctl add_vhost`) and a fresh
//! database, both removed afterwards, and a generated config; the simulator
//! (`wxdispatch simulate`) and the worker (`wxdispatch run`) run as child processes of this
//! binary, so their CPU and memory are read from `/proc/<pid>` and the bench's own work
//! (publishing, polling) is not counted against them. Linux only; RabbitMQ must run on this
//! machine (`rabbitmqctl`). Build in release mode: `cargo run --release -- bench`.

mod crypto;
mod env;
mod jobs;
mod latency;
mod limiter;
mod memory;
mod options;
mod procs;
mod report;
mod run;
mod scenario;
mod sim_client;
mod throughput;

#[cfg(test)]
mod tests;

pub use options::{BenchChannel, BenchOptions, Figure};
pub use run::run_bench;
