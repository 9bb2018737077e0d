//! Conversation order: jobs of one conversation run one after the other in delivery order,
//! and when one goes back to the broker the ones queued behind it follow, in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;

use crate::broker::acks::Acks;
use crate::domain::job::{Job, JobError};
use crate::engine::budget::Held;

/// Before a message is handed back to the broker (database unreachable), wait this long so
/// a persistent outage does not become a hot redelivery loop.
const REQUEUE_DELAY: Duration = Duration::from_millis(500);

/// A delivery waiting for its conversation.
pub(super) struct Pending {
    pub(super) delivery: Delivery,
    /// The ack batch of the AMQP channel the delivery came on.
    pub(super) acks: Arc<Acks>,
    pub(super) job: Result<Job, JobError>,
    /// From the bulk queue (a broadcast's recipient): rate-limited to the broadcast share.
    pub(super) bulk: bool,
    /// Its body's share of the worker's byte budget, given back when the delivery is dropped.
    pub(super) _held: Held,
}

/// Conversation key: jobs with the same key are processed strictly in order.
pub(super) fn conversation_key(p: &Pending) -> String {
    match &p.job {
        Ok(j) => conversation_of(j),
        // Rejected input has no conversation: it is handled on its own.
        Err(_) => format!("\u{1e}tag:{}", p.delivery.delivery_tag),
    }
}

/// The conversation a job belongs to: (open_kfid, recipient) for WeCom, the openid for the
/// chatbot; a job without a recipient (a broadcast) is its own conversation.
pub(super) fn conversation_of(j: &Job) -> String {
    match &j.open_kfid {
        Some(k) => format!("{k}\u{1f}{}", j.to),
        None if j.to.is_empty() => format!("\u{1e}job:{}", j.job_id),
        None => j.to.clone(),
    }
}

tokio::task_local! {
    /// Set by [`requeue`] for the lane's consumer loop: this conversation's job went back to
    /// the broker, so the jobs queued behind it must follow (see [`hand_back`]).
    pub(super) static REQUEUED: std::cell::Cell<bool>;
}

/// Give a conversation's queued jobs back to the broker, one after the other in delivery
/// order, after the job ahead of them was requeued: the broker redelivers returned messages
/// in the order they were returned (RabbitMQ 3.x quorum queues: before the rest of the
/// queue), so the conversation keeps its order.
pub(super) async fn hand_back(q: VecDeque<Pending>) {
    for p in q {
        p.acks.give_back(&p.delivery).await;
    }
}

/// Hand a message back to the broker (its outcome could not be recorded). The lane hands
/// back the jobs queued behind it in its conversation as well, in order.
pub(super) async fn requeue(delivery: &Delivery, acks: &Acks) {
    let _ = REQUEUED.try_with(|r| r.set(true));
    tokio::time::sleep(REQUEUE_DELAY).await;
    acks.give_back(delivery).await;
}
