//! `wxdispatch migrate`: create the database if needed and apply the migrations.

use crate::config::Config;
use crate::store;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let pool = store::connect_pool(&cfg).await?;
    store::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}
