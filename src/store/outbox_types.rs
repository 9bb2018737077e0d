//! The outbox's types that the outcome statements and the [`super::Store`] hold (apart from
//! [`super::outbox`], whose statements use the store: no import circle).

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::Notify;

/// What an outcome row needs for its event (on [`super::Outcome::event`]): `None` there writes
/// no event (the account has `outcomes = false`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMeta {
    /// The dead-letter reason word (only for `dead`).
    pub reason: Option<String>,
    /// The platform's or the validator's message, without the reason prefix the row's `error`
    /// carries.
    pub errmsg: Option<String>,
    /// The job's AMQP `correlation_id`, copied onto the event.
    pub correlation_id: Option<String>,
    /// The job's AMQP `reply_to`: the event is also sent there.
    pub reply_to: Option<String>,
}

/// The outbox's shared state in a [`Store`]: who to wake, and which accounts write no events.
#[derive(Debug, Default)]
pub struct OutboxState {
    /// Woken after a committed batch wrote event rows, so the relay of this process publishes
    /// them at once instead of at its next poll.
    pub(super) wake: Notify,
    /// Accounts with `outcomes = false`: the store's own event statements skip them.
    pub(super) off: HashSet<String>,
}

impl OutboxState {
    pub fn new(off: impl IntoIterator<Item = String>) -> Arc<Self> {
        Arc::new(Self {
            wake: Notify::new(),
            off: off.into_iter().collect(),
        })
    }
}
