//! What happened to one job ([`Outcome`]), and what of it goes into its `deliveries` row
//! ([`Outcome::row`]). Pure: the lane decides the outcome, records the row, then acks.

/// What happened to one job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent {
        attempts: i32,
        msgid: Option<String>,
    },
    Suppressed {
        attempts: i32,
    },
    Expired {
        attempts: i32,
    },
    /// The job id already has an outcome (its status word): ack without doing anything.
    Duplicate(&'static str),
    Dead {
        reason: String,
        errcode: Option<i64>,
        errmsg: Option<String>,
        attempts: i32,
    },
    /// Park the job in the durable delay tier of `tier_secs` and ack it; it comes back to the
    /// lane by itself. `follow` marks a job parked only to stay behind an earlier parked job of
    /// its conversation (it was not attempted).
    Park {
        tier_secs: u64,
        attempts: i32,
        parks: u32,
        follow: bool,
        errcode: Option<i64>,
        error: String,
    },
    /// Not due yet (its `not_before` is ahead): park the job in the durable delay tier of
    /// `tier_secs` and ack it, like [`Outcome::Park`] but not a retry (`parks` is unchanged);
    /// it comes back to the lane by itself and is sent once due. The row says `scheduled`.
    Scheduled {
        tier_secs: u64,
        attempts: i32,
        parks: u32,
        due: chrono::DateTime<chrono::Utc>,
    },
    /// A broadcast was fanned out into this many recipients' jobs (its record is the
    /// `broadcasts` row).
    FannedOut {
        recipients: usize,
    },
    /// Give the message back to the broker (the database could not be reached).
    Requeue {
        why: String,
    },
}

/// The `deliveries.status` an outcome writes (the store's `Status` of the same name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowStatus {
    Sent,
    Suppressed,
    Expired,
    Retrying,
    Dead,
    /// Waiting for its `not_before` ([`Outcome::Scheduled`]).
    Scheduled,
}

/// The outcome's part of its `deliveries` row (the row's identity is the job's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub status: RowStatus,
    pub attempts: i32,
    pub errcode: Option<i64>,
    pub error: Option<String>,
    pub msgid: Option<String>,
}

impl Outcome {
    /// A short name for the job's log span.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Suppressed { .. } => "suppressed",
            Outcome::Expired { .. } => "expired",
            Outcome::Duplicate(_) => "duplicate",
            Outcome::Dead { .. } => "dead",
            Outcome::Park { .. } => "parked",
            Outcome::Scheduled { .. } => "scheduled",
            Outcome::FannedOut { .. } => "fanned_out",
            Outcome::Requeue { .. } => "requeued",
        }
    }

    /// The row this outcome records; `None` when it records none (a duplicate has its row
    /// already, a fanned-out broadcast has its `broadcasts` row, a requeued job has no outcome
    /// yet).
    pub fn row(&self) -> Option<Row> {
        let row = |status, attempts: &i32, errcode, error| Row {
            status,
            attempts: *attempts,
            errcode,
            error,
            msgid: None,
        };
        Some(match self {
            Outcome::Sent { attempts, msgid } => Row {
                msgid: msgid.clone(),
                ..row(RowStatus::Sent, attempts, None, None)
            },
            Outcome::Suppressed { attempts } => row(
                RowStatus::Suppressed,
                attempts,
                None,
                Some("human agent serving".into()),
            ),
            Outcome::Expired { attempts } => row(
                RowStatus::Expired,
                attempts,
                None,
                Some("not_after passed".into()),
            ),
            Outcome::Dead {
                reason,
                errcode,
                errmsg,
                attempts,
            } => {
                let error = match errmsg {
                    Some(m) if !m.is_empty() => format!("{reason}: {m}"),
                    _ => reason.clone(),
                };
                row(RowStatus::Dead, attempts, *errcode, Some(error))
            }
            Outcome::Park {
                tier_secs,
                attempts,
                errcode,
                error,
                ..
            } => row(
                RowStatus::Retrying,
                attempts,
                *errcode,
                Some(format!("parked {tier_secs}s: {error}")),
            ),
            Outcome::Scheduled { attempts, due, .. } => row(
                RowStatus::Scheduled,
                attempts,
                None,
                Some(format!(
                    "scheduled: not before {}",
                    due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )),
            ),
            Outcome::Duplicate(_) | Outcome::FannedOut { .. } | Outcome::Requeue { .. } => {
                return None;
            }
        })
    }
}

#[cfg(test)]
#[path = "outcome_tests.rs"]
mod tests;
