//! Integration tests against the real RabbitMQ and Postgres (a fresh vhost and database per
//! test) and the project's own platform simulator.

mod core;
mod crash;
mod harness;
