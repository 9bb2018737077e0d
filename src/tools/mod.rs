//! Tools beside the job path: the demo, the benchmark, the platform simulator. Nothing on the
//! job path imports them.

pub mod bench;
pub mod demo;
pub mod fixtures;
pub mod simulate;

// The command line of the demo lives in `cli/demo.rs`; until `cli/mod.rs` declares it
// (`pub mod demo;`), it is compiled here and re-exported by `demo`.
#[path = "../cli/demo.rs"]
mod demo_cli;
