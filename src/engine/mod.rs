//! The delivery engine: lanes, broadcasts, inbound sync. The only layer that combines the
//! platform clients, the store and the broker.

pub mod broadcast;
pub mod inbound;
pub mod lane;
