//! Integration tests against the real RabbitMQ and Postgres (a fresh vhost and database per
//! test) and the project's own platform simulator.

mod broadcast;
mod byte_budget;
mod conversation;
mod core;
mod crash;
mod dead_letter_digest;
mod demo;
mod deploy;
mod harness;
mod inbound;
mod kf;
mod ops;
mod retry;
