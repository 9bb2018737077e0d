//! Consumer acks, coalesced per channel.
//!
//! A job's delivery may be acked only once its outcome is recorded, and jobs finish out of
//! order. Instead of one `basic.ack` per job, each channel has an [`Acks`] batch: a job that
//! may be acked is marked settled, and a flusher task acks the longest run of settled
//! deliveries from the oldest one with a single `basic.ack multiple=true` (one frame for the
//! worker to send and one settle for the quorum queue to log, instead of one per job).
//!
//! A delivery that is not settled (its job still running, waiting behind its conversation,
//! or nacked back to the broker) ends the run. Settled deliveries behind it are acked one by
//! one once they have waited [`MAX_HOLD`], so a held job never keeps the others unacked, and
//! their prefetch slots, for long.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

/// Settled deliveries behind an unsettled one are acked singly after this long.
pub const MAX_HOLD: Duration = Duration::from_millis(20);

/// What to ack now: one multiple ack up to a tag, and single acks.
#[derive(Debug, PartialEq)]
pub struct Due<T> {
    pub multiple: Option<T>,
    pub single: Vec<T>,
}

/// The deliveries of one channel not yet acked or given back, by delivery tag. `None`: the
/// delivery's job has no outcome yet; `Some`: it may be acked (since when).
#[derive(Debug)]
pub struct Window<T> {
    open: BTreeMap<u64, Option<(T, Instant)>>,
}

impl<T> Default for Window<T> {
    fn default() -> Self {
        Self {
            open: BTreeMap::new(),
        }
    }
}

impl<T> Window<T> {
    pub fn delivered(&mut self, tag: u64) {
        self.open.insert(tag, None);
    }

    /// The delivery's outcome is recorded: it may be acked.
    pub fn settled(&mut self, tag: u64, acker: T, now: Instant) {
        self.open.insert(tag, Some((acker, now)));
    }

    /// The delivery went back to the broker (nack) or is void: it no longer holds the run.
    pub fn forget(&mut self, tag: u64) {
        self.open.remove(&tag);
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Take what is due: the run of settled deliveries from the oldest open one (acked by
    /// its last tag with `multiple`), plus settled ones behind an unsettled delivery that
    /// were settled before `hold_since` (acked singly). With `hold_since` in the future,
    /// everything settled is due.
    pub fn take(&mut self, hold_since: Instant) -> Due<T> {
        let mut multiple = None;
        while let Some(entry) = self.open.first_entry() {
            if entry.get().is_none() {
                break;
            }
            if let Some((acker, _)) = entry.remove() {
                multiple = Some(acker);
            }
        }
        let single = self
            .open
            .extract_if(.., |_, v| matches!(v, Some((_, at)) if *at <= hold_since))
            .filter_map(|(_, v)| v.map(|(acker, _)| acker))
            .collect();
        Due { multiple, single }
    }
}

/// One channel's ack batch, with its flusher task.
#[derive(Debug)]
pub struct Acks {
    /// For log lines: the lane's account and which of its channels.
    label: String,
    window: Mutex<Window<Acker>>,
    /// Shared with the flusher task, which holds the batch itself only weakly: the task
    /// ends on [`Acks::close`] or, should a lane forget to close, once the batch is dropped.
    wake: Arc<Notify>,
    closed: tokio_util::sync::CancellationToken,
}

impl Acks {
    /// A batch whose flusher acks whatever is due whenever a delivery settles, and settled
    /// deliveries behind a held one every [`MAX_HOLD`].
    pub fn start(label: String) -> Arc<Self> {
        let acks = Arc::new(Self {
            label,
            window: Mutex::new(Window::default()),
            wake: Arc::new(Notify::new()),
            closed: tokio_util::sync::CancellationToken::new(),
        });
        let (weak, wake, closed) = (
            Arc::downgrade(&acks),
            acks.wake.clone(),
            acks.closed.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(MAX_HOLD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = closed.cancelled() => break,
                    _ = wake.notified() => {}
                    _ = tick.tick() => {}
                }
                let Some(a) = Weak::upgrade(&weak) else { break };
                let now = Instant::now();
                a.flush(now.checked_sub(MAX_HOLD).unwrap_or(now)).await;
            }
        });
        acks
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window<Acker>> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn delivered(&self, tag: u64) {
        self.lock().delivered(tag);
    }

    /// The delivery's outcome is recorded: ack it (soon, possibly with others).
    pub fn settled(&self, tag: u64, acker: &Acker) {
        self.lock().settled(tag, acker.clone(), Instant::now());
        self.wake.notify_one();
    }

    /// Give the delivery back to the broker (nack, requeue). It leaves the window only once
    /// the nack is sent, so no `multiple` ack can cover it first.
    pub async fn give_back(&self, delivery: &Delivery) {
        if let Err(e) = delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
        {
            warn!(lane = self.label.as_str(), error = %e, "nack failed; the broker will redeliver when the channel closes");
        }
        self.lock().forget(delivery.delivery_tag);
        self.wake.notify_one();
    }

    async fn flush(&self, hold_since: Instant) {
        let label = self.label.as_str();
        let due = self.lock().take(hold_since);
        if let Some(last) = due.multiple
            && let Err(e) = last.ack(BasicAckOptions { multiple: true }).await
        {
            warn!(lane = label, error = %e, "ack failed after the outcomes were recorded (redeliveries are no-ops)");
        }
        for a in due.single {
            if let Err(e) = a.ack(BasicAckOptions::default()).await {
                warn!(lane = label, error = %e, "ack failed after the outcome was recorded (a redelivery is a no-op)");
            }
        }
    }

    /// Ack everything settled and stop the flusher; call before the channel closes.
    pub async fn close(&self) {
        self.closed.cancel();
        self.flush(Instant::now() + Duration::from_secs(3600)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_settled_deliveries_is_one_multiple_ack() {
        let t0 = Instant::now();
        let mut w = Window::default();
        for tag in 1..=5 {
            w.delivered(tag);
        }
        // out of order: 3, 1, 2 settle; 4 runs
        w.settled(3, "a3", t0);
        w.settled(1, "a1", t0);
        w.settled(2, "a2", t0);
        assert_eq!(
            w.take(t0 - MAX_HOLD),
            Due {
                multiple: Some("a3"),
                single: vec![]
            }
        );
        // nothing new: nothing due
        assert_eq!(
            w.take(t0 - MAX_HOLD),
            Due {
                multiple: None,
                single: vec![]
            }
        );
        w.settled(5, "a5", t0);
        w.settled(4, "a4", t0);
        assert_eq!(w.take(t0 - MAX_HOLD).multiple, Some("a5"));
        assert!(w.is_empty());
    }

    #[test]
    fn a_held_delivery_keeps_the_others_waiting_only_max_hold() {
        let t0 = Instant::now();
        let mut w = Window::default();
        for tag in 10..=13 {
            w.delivered(tag);
        }
        // 10 is held (waiting behind its conversation, or retrying); 11 and 13 settle
        w.settled(11, "a11", t0);
        w.settled(13, "a13", t0 + Duration::from_millis(15));
        assert_eq!(
            w.take(t0 - Duration::from_millis(1)),
            Due {
                multiple: None,
                single: vec![]
            }
        );
        // 20 ms on: 11 is due singly, 13 (settled later) still waits
        assert_eq!(
            w.take(t0),
            Due {
                multiple: None,
                single: vec!["a11"]
            }
        );
        // 10 is nacked back to the broker: it no longer holds the run
        w.forget(10);
        assert_eq!(
            w.take(t0),
            Due {
                multiple: None,
                single: vec![]
            }
        );
        w.settled(12, "a12", t0 + Duration::from_millis(30));
        assert_eq!(
            w.take(t0),
            Due {
                multiple: Some("a13"),
                single: vec![]
            }
        );
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn the_flusher_does_not_keep_its_batch_alive() {
        let acks = Acks::start("test".into());
        let weak = Arc::downgrade(&acks);
        drop(acks);
        // Only the flusher task is left; holding the batch weakly, it ends at its next wake.
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn close_takes_everything_settled() {
        let t0 = Instant::now();
        let mut w = Window::default();
        for tag in 1..=3 {
            w.delivered(tag);
        }
        w.settled(2, "a2", t0);
        w.settled(3, "a3", t0);
        let due = w.take(t0 + Duration::from_secs(3600));
        assert_eq!(
            due,
            Due {
                multiple: None,
                single: vec!["a2", "a3"]
            }
        );
        // the unsettled one stays (it goes back to the broker with the channel)
        assert!(!w.is_empty());
    }
}
