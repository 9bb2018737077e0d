//! # wxdispatch
//!
//! Delivers customer-service replies into WeChat: jobs published to RabbitMQ are sent to the
//! WeChat Dialogue Open Platform (`openapi/sendmsg`, WXBizMsgCrypt-encrypted) or to WeCom
//! customer service (`cgi-bin/kf/send_msg`), within each account's rate limit, with retries
//! for transient failures, dead letters for permanent ones, and a Postgres row per job.
//!
//! ## The modules
//!
//! Layers, lowest first; a module imports only from layers below it (`tests/layers.rs` checks it).
//!
//! | layer | module | what it holds |
//! |---|---|---|
//! | pure | [`alloc`] | the allocator's settings |
//! | pure | [`crypto`] | WXBizMsgCrypt (encrypt, decrypt, signature) |
//! | pure | [`text`] | cutting and flattening quoted text: `truncate`, `clip_chars`, `one_line` |
//! | pure | [`telemetry`] | metric names, logging setup |
//! | pure | [`xml`] | the platforms' flat XML: one reader, one CDATA writer |
//! | pure | [`domain`] | the vocabulary: jobs (parsing at the boundary, rendering of platform requests), channels, ids, WeCom service states, dead-letter reasons, the 48 h / 5-message allowance, inbound messages |
//! | pure | [`policy`] | decisions: errcode → action, the retry schedule, the pause state machine, outcome → delivery row |
//! | settings | [`config`] | the settings tree: TOML + `WXDISPATCH__…` overrides, secrets redacted, fail-fast validation |
//! | clients | [`platform`] | the platforms' HTTP APIs, WeCom access tokens (over a `TokenStore`), kf administration |
//! | I/O | [`store`] | Postgres: every SQL statement (claims and outcomes batched, dead letters, tokens, parked jobs, inbound, broadcasts, stats) |
//! | I/O | [`broker`] | RabbitMQ: connection, topology, confirmed publishing, dead-letter headers, coalesced acks |
//! | engine | [`engine`] | lanes (order, rate limit, retries, pause, record-then-ack), dead letters, the unroutable queue, broadcasts, inbound sync |
//! | edges | [`http`] | `/metrics`, `/healthz`, `/readyz` and the platform callbacks |
//! | edges | [`ops`] | operator use cases returning data: dead letters, stats, a job's status, broadcasts |
//! | process | [`app`] | `run`: wires the above together, graceful shutdown |
//! | tools | [`tools`] | the demo, the benchmark, the platform simulator |
//! | command line | [`cli`] | clap, printing, exit codes; one file per command |
//!
//! ## One job's path
//!
//! 1. Upstream publishes to exchange `wxdispatch` with routing key = account; the job lands in
//!    the account's quorum queue `wxdispatch.<account>` (single active consumer).
//! 2. [`engine::lane::run`] receives it (prefetch-bounded), [`domain::job::parse`] validates it — a bad job is
//!    dead-lettered with a reason naming the field — and queues it behind earlier jobs of the
//!    same conversation.
//! 3. [`engine::lane::process`] *claims* the job id in Postgres (a job already `sent` is not sent
//!    again), waits for the account's rate limiter and pause gate, calls the platform through
//!    [`platform::Platform`], and lets [`policy::classify`] decide: delivered, retry with
//!    jittered backoff, pause the account, refresh the token, gate, or dead-letter.
//! 4. [`engine::lane`]'s finish step maps the outcome to its row ([`policy::outcome`]); the row is written to `deliveries` (batched with other jobs' outcomes) and only then
//!    is the message acked. A crash anywhere before the ack means a redelivery, which the claim
//!    turns into a no-op unless the platform was never asked.

pub mod alloc;
pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod engine;
pub mod http;
pub mod ops;
pub mod platform;
pub mod policy;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tools;
pub mod xml;
