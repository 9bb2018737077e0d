//! Tools beside the job path: the demo, the benchmark, the platform simulator. Nothing on the
//! job path imports them.

pub mod bench;
pub mod demo;
pub mod fixtures;
pub mod simulate;
