//! The worker's byte budget ([`ByteBudget`]): how many bytes of job bodies the lanes hold at
//! once, whatever the jobs' sizes.
//!
//! Prefetch bounds how many deliveries a lane holds, not how big they are: 512 deliveries
//! of 4 MiB are 2 GiB. So every delivery, before the lane parses it and queues it behind its
//! conversation, takes its body's length from one budget shared by every lane of the worker
//! (`worker.held_bytes_budget`), and gives it back when it is settled — acked, dead-lettered,
//! handed back to the broker, or dropped with its AMQP channel: the [`Held`] guard travels
//! with the delivery and returns the bytes when dropped. While the budget is spent the lane
//! takes nothing more from its consumers (see `lane::consumers`), so the engine parses and
//! allocates nothing more; the broker's deliveries wait in the AMQP client's buffer (at most
//! the prefetch, see the README's "Memory bounds").
//!
//! A body larger than the whole budget takes the whole budget, alone: it waits until
//! nothing else is held, then runs — it never waits forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry as t;

/// Bytes of job bodies the worker's lanes may hold at once. One per worker, shared by its
/// lanes.
#[derive(Debug)]
pub struct ByteBudget {
    /// One permit per byte.
    sem: Arc<Semaphore>,
    /// The whole budget, in bytes (at most `u32::MAX`: what one acquire can take).
    total: u32,
    /// Bytes held now, and the most ever held at once (what the gauge and the tests read).
    held: AtomicU64,
    peak: AtomicU64,
}

/// A delivery's share of the budget; returned when dropped.
#[derive(Debug)]
pub struct Held {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
    budget: Arc<ByteBudget>,
}

impl ByteBudget {
    /// A budget of `bytes` (clamped to 1..=`u32::MAX`; `config::validate` refuses others).
    pub fn new(bytes: u64) -> Arc<Self> {
        let total = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        Arc::new(Self {
            sem: Arc::new(Semaphore::new(total as usize)),
            total,
            held: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> u64 {
        u64::from(self.total)
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// The most bytes ever held at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Wait until `len` bytes (at most the whole budget) are free and take them. Cancel-safe:
    /// dropped before it completes, it takes nothing.
    pub async fn acquire(self: &Arc<Self>, len: usize) -> Held {
        let take = u32::try_from(len).unwrap_or(u32::MAX).min(self.total);
        // The semaphore is never closed, so this cannot fail; should it, the delivery goes
        // through unaccounted rather than never.
        let permit = self.sem.clone().acquire_many_owned(take).await.ok();
        let bytes = u64::from(take);
        let now = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        metrics::gauge!(t::HELD_BYTES).increment(bytes as f64);
        Held {
            _permit: permit,
            bytes,
            budget: self.clone(),
        }
    }
}

impl Held {
    /// The bytes this delivery holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
        metrics::gauge!(t::HELD_BYTES).decrement(self.bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_wait_for_the_budget_and_give_it_back_when_dropped() {
        let b = ByteBudget::new(1000);
        let a = b.acquire(600).await;
        let c = b.acquire(300).await;
        assert_eq!(b.held(), 900);
        // 200 more do not fit until something is given back.
        let mut next = Box::pin(b.acquire(200));
        assert!(futures::poll!(next.as_mut()).is_pending());
        drop(a);
        let d = next.await;
        assert_eq!((b.held(), d.bytes()), (500, 200));
        drop((c, d));
        assert_eq!((b.held(), b.peak()), (0, 900));
    }

    #[tokio::test]
    async fn a_body_larger_than_the_budget_takes_it_whole_once_it_is_free() {
        let b = ByteBudget::new(1000);
        let small = b.acquire(10).await;
        let mut big = Box::pin(b.acquire(5000));
        assert!(futures::poll!(big.as_mut()).is_pending());
        drop(small);
        let big = big.await;
        assert_eq!((big.bytes(), b.held()), (1000, 1000));
        drop(big);
        assert_eq!(b.held(), 0);
    }

    #[tokio::test]
    async fn an_abandoned_wait_takes_nothing() {
        let b = ByteBudget::new(100);
        let first = b.acquire(100).await;
        let mut waiting = Box::pin(b.acquire(50));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(waiting);
        drop(first);
        assert_eq!(b.held(), 0);
        assert_eq!(b.acquire(100).await.bytes(), 100);
    }
}
