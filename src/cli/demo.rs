//! `wxdispatch demo`: the command line of the demo ([`crate::tools::demo`]).

use std::path::Path;

use crate::tools::demo::{DemoOptions, run_demo};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Keep the worker and simulator running after the demo (until Ctrl-C).
    #[arg(long)]
    pub serve: bool,
    /// Public listener of the demo worker (callbacks); metrics and health: `http.admin_listen`.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: String,
}

/// Run the demo with the broker and database of the config at `config` (or the defaults).
pub async fn run(config: Option<&Path>, args: DemoArgs) -> anyhow::Result<()> {
    let opts = DemoOptions {
        serve: args.serve,
        listen: args.listen,
    };
    run_demo(config, opts).await
}
