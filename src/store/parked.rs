//! `parked_jobs`: the jobs of each conversation waiting in a delay tier, in their order, so a
//! lane that fails over to another process keeps every conversation's order (the lane's
//! in-memory copy is `engine::lane::Parked`).

use super::Store;

/// One parked job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedJob {
    pub conversation: String,
    pub job_id: String,
    /// Its place in the conversation's order.
    pub seq: i64,
    pub tier_secs: u64,
}

impl Store {
    /// Every parked job of `account` (lane start).
    pub async fn parked_jobs(&self, account: &str) -> anyhow::Result<Vec<ParkedJob>> {
        let rows: Vec<(String, String, i64, i32)> = sqlx::query_as(
            "SELECT conversation, job_id, seq, tier_secs FROM parked_jobs WHERE account = $1",
        )
        .bind(account)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(conversation, job_id, seq, tier)| ParkedJob {
                conversation,
                job_id,
                seq,
                tier_secs: tier.max(0) as u64,
            })
            .collect())
    }

    /// Remember that `job` of `account` is parked (a job parked again keeps its place and
    /// takes the new tier).
    pub async fn park_job(&self, account: &str, job: &ParkedJob) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO parked_jobs (account, conversation, job_id, seq, tier_secs) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (account, job_id) DO UPDATE SET tier_secs = excluded.tier_secs, parked_at = now()",
        )
        .bind(account)
        .bind(&job.conversation)
        .bind(&job.job_id)
        .bind(job.seq)
        .bind(job.tier_secs as i32)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A parked job reached an outcome: forget it.
    pub async fn unpark_job(&self, account: &str, job_id: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM parked_jobs WHERE account = $1 AND job_id = $2")
            .bind(account)
            .bind(job_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
