//! Integration tests against the real RabbitMQ and Postgres (a fresh vhost and database per
//! test) and the project's own platform simulator.

mod broadcast;
mod conversation;
mod core;
mod crash;
mod demo;
mod deploy;
mod harness;
mod inbound;
mod kf;
mod ops;
mod platform_fixes;
mod retry;
