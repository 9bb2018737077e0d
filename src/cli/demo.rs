//! `wxdispatch demo`: the command line of the demo ([`crate::tools::demo`]).

use std::path::{Path, PathBuf};

use crate::tools::demo::{DEMO_CONFIG_FILE, DEMO_SIM_LISTEN, DemoOptions, run_demo};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Keep the worker and simulator running after the demo (until Ctrl-C), and write a config
    /// with the demo accounts for `send`, `broadcast`, `status` and `dlq` in another shell.
    #[arg(long)]
    pub serve: bool,
    /// Public listener of the demo worker (callbacks) [default: the config's http.listen,
    /// 127.0.0.1:9464]; metrics and health: http.admin_listen (127.0.0.1:9465).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Listener of the demo's platform simulator (the demo accounts' base_url).
    #[arg(long, value_name = "HOST:PORT", default_value = DEMO_SIM_LISTEN)]
    pub sim_listen: String,
    /// With --serve: the config file to write (the demo accounts; broker and database of
    /// --config).
    #[arg(long, value_name = "FILE", default_value = DEMO_CONFIG_FILE)]
    pub write_config: PathBuf,
}

/// Run the demo with the broker and database of the config at `config` (or the defaults).
pub async fn run(config: Option<&Path>, args: DemoArgs) -> anyhow::Result<()> {
    let opts = DemoOptions {
        serve: args.serve,
        listen: args.listen,
        sim_listen: args.sim_listen,
        write_config: args.write_config,
    };
    run_demo(config, opts).await
}
