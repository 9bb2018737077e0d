//! Writes the database refuses, held in process until it accepts them.
//!
//! A database that is *reachable* can still refuse a write: a constraint or a trigger, a
//! deadlock or serialization failure, a read-only server after a failover, a full disk, a
//! statement timeout. Such a write is not failed back to the broker (a redelivered job
//! would be sent to the platform again); the engine holds it and retries it
//! (`crate::engine::hold`). While any write is held, [`WriteHold`] says so: the lanes take
//! no new deliveries, `/readyz` answers 503 and the gauge
//! [`crate::telemetry::WRITES_HELD`] shows how many are waiting.

use tokio::sync::watch;

use crate::telemetry as t;

/// How many writes are held right now; shared by every clone of a [`super::Store`].
#[derive(Debug)]
pub struct WriteHold {
    held: watch::Sender<usize>,
}

impl Default for WriteHold {
    fn default() -> Self {
        Self {
            held: watch::Sender::new(0),
        }
    }
}

impl WriteHold {
    /// One more write is held until the returned guard is dropped (also when its task is
    /// cancelled or panics).
    pub fn enter(&self) -> HeldWrite<'_> {
        self.held.send_modify(|n| *n += 1);
        metrics::gauge!(t::WRITES_HELD).set(*self.held.borrow() as f64);
        HeldWrite { hold: self }
    }

    /// Writes held right now.
    pub fn count(&self) -> usize {
        *self.held.borrow()
    }

    /// Watch the number of held writes (the lanes stop taking deliveries while it is not 0).
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.held.subscribe()
    }
}

/// A held write (see [`WriteHold::enter`]).
#[must_use = "the write counts as held only while the guard lives"]
pub struct HeldWrite<'a> {
    hold: &'a WriteHold,
}

impl Drop for HeldWrite<'_> {
    fn drop(&mut self) {
        self.hold.held.send_modify(|n| *n = n.saturating_sub(1));
        metrics::gauge!(t::WRITES_HELD).set(*self.hold.held.borrow() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_held_writes_and_wake_watchers() {
        let h = WriteHold::default();
        let mut rx = h.subscribe();
        assert_eq!(h.count(), 0);
        let a = h.enter();
        let b = h.enter();
        assert_eq!(h.count(), 2);
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(*rx.borrow_and_update(), 2);
        drop(a);
        assert_eq!(h.count(), 1);
        drop(b);
        assert_eq!(h.count(), 0);
        assert_eq!(*rx.borrow_and_update(), 0);
    }
}
