//! The delivery engine: lanes, broadcasts, inbound sync, dead letters and the unroutable
//! consumer. The only layer that combines the platform clients, the store and the broker.

pub mod broadcast;
pub mod budget;
pub mod dead_letter;
pub mod dead_recorder;
pub mod hold;
pub mod inbound;
pub mod lane;
pub mod outcomes;
pub mod unroutable;
