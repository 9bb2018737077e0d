//! Integration tests against the real RabbitMQ and Postgres (a fresh vhost and database per
//! test) and the project's own platform simulator.

mod account_key;
mod broadcast;
mod byte_budget;
mod callback_security;
mod cli;
mod conversation;
mod core;
mod crash;
mod dead_letter_digest;
mod demo;
mod deploy;
mod examples;
mod harness;
mod hold_writes;
mod http_limits;
mod inbound;
mod inbound_nul;
mod kf;
mod ops;
mod outcomes;
mod platform_fixes;
mod producer;
mod recall;
mod retry;
mod schedule;
mod states;
mod text_secrets;
mod tokens;
mod topology;
