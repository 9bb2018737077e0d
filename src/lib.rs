//! # wxdispatch
//!
//! Delivers customer-service replies into WeChat: jobs published to RabbitMQ are sent to the
//! WeChat Dialogue Open Platform (`openapi/sendmsg`, WXBizMsgCrypt-encrypted) or to WeCom
//! customer service (`cgi-bin/kf/send_msg`), within each account's rate limit, with retries
//! for transient failures, dead letters for permanent ones, and a Postgres row per job.
//!
//! ## The modules
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | the settings tree: TOML + `WXDISPATCH__…` overrides, secrets redacted, fail-fast validation |
//! | [`crypto`] | WXBizMsgCrypt (encrypt, decrypt, signature), pure |
//! | [`job`] | the job contract: parsing and validation at the boundary, rendering of platform requests |
//! | [`policy`] | errcode → action, one pure table-tested function |
//! | [`channel`] | the platforms' HTTP APIs and WeCom access tokens (shared through Postgres) |
//! | [`lane`] | one account's lane: per-conversation order, rate limit, retries, pause, record-then-ack |
//! | [`broker`] | RabbitMQ topology, confirmed publishing, dead-letter headers |
//! | [`store`] | Postgres: claims and outcomes (batched), dead letters, tokens |
//! | [`broadcast`] | bulk broadcasts: idempotent fan-out into the account's bulk queue, progress, cancel |
//! | [`sync`] | WeCom sync_msg cursor loops; inbound messages and their effects on conversations and deliveries |
//! | [`callback`] | the platforms' HTTP callbacks (WeCom URL verification and kf events, chatbot push) |
//! | [`worker`] | `run`: wires the above together, graceful shutdown |
//! | [`ops`] | operator tooling: `dlq list` / `dlq replay`, `stats` |
//! | [`kf`] | `wxdispatch kf …`: WeCom customer-service administration |
//! | [`bench`] | `wxdispatch bench`: the reproducible benchmark |
//! | [`http`] | `/metrics`, `/healthz`, `/readyz` and the platform callbacks |
//! | [`simulate`] | a local simulator of both platforms, faithful to their crypto and errcodes |
//! | [`telemetry`] | metric names, logging setup |
//! | [`cli`], [`demo`] | the command line and the self-contained demo |
//!
//! ## One job's path
//!
//! 1. Upstream publishes to exchange `wxdispatch` with routing key = account; the job lands in
//!    the account's quorum queue `wxdispatch.<account>` (single active consumer).
//! 2. [`lane::run`] receives it (prefetch-bounded), [`job::parse`] validates it — a bad job is
//!    dead-lettered with a reason naming the field — and queues it behind earlier jobs of the
//!    same conversation.
//! 3. [`lane::process`] *claims* the job id in Postgres (a job already `sent` is not sent
//!    again), waits for the account's rate limiter and pause gate, calls the platform through
//!    [`channel::Platform`], and lets [`policy::classify`] decide: delivered, retry with
//!    jittered backoff, pause the account, refresh the token, gate, or dead-letter.
//! 4. The outcome is written to `deliveries` (batched with other jobs' outcomes) and only then
//!    is the message acked. A crash anywhere before the ack means a redelivery, which the claim
//!    turns into a no-op unless the platform was never asked.

pub mod acks;
pub mod alloc;
pub mod bench;
pub mod broadcast;
pub mod broker;
pub mod callback;
pub mod channel;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod http;
pub mod job;
pub mod kf;
pub mod lane;
pub mod ops;
pub mod policy;
pub mod simulate;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod worker;
