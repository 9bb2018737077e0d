//! `wxdispatch check-config`: validate the configuration and print it with secrets masked.

use crate::config::Config;

pub fn run(cfg: &Config) {
    print!("{}", cfg.to_redacted_toml());
    eprintln!("config ok: {} account(s)", cfg.accounts.len());
}
