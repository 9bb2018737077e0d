//! `wxdispatch check-config`: validate the configuration and print it with secrets masked.

use anyhow::Context;

use crate::config::Config;

/// `wxdispatch check-config`
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// Print one JSON object `{"ok", "accounts", "config"}` (the config as the TOML shows it,
    /// secrets masked) instead of TOML.
    #[arg(long)]
    pub json: bool,
}

/// The `--json` document of `check-config`.
#[derive(Debug, serde::Serialize)]
struct Checked {
    /// Always true: an invalid configuration exits 2 before anything is printed.
    ok: bool,
    /// How many `[[account]]` sections.
    accounts: usize,
    /// The redacted configuration (the TOML that check-config prints, as JSON).
    config: toml::Table,
}

pub fn run(cfg: &Config, a: &CheckConfigArgs) -> anyhow::Result<()> {
    let text = cfg.to_redacted_toml();
    if a.json {
        // From the redacted TOML, so the JSON can show no more than the text does.
        let config: toml::Table =
            toml::from_str(&text).context("the redacted configuration is not valid TOML")?;
        return super::output::print_json(&Checked {
            ok: true,
            accounts: cfg.accounts.len(),
            config,
        });
    }
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    super::output::note(&format!("config ok: {} account(s)", cfg.accounts.len()));
    Ok(())
}
