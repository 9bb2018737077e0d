-- Jobs parked in a durable delay tier, per conversation. While a conversation has parked
-- jobs, its later jobs park behind them (in the same tier, so they come back in order);
-- `seq` is the order within the conversation.
CREATE TABLE parked_jobs (
    account     text NOT NULL,
    conversation text NOT NULL,
    job_id      text NOT NULL,
    seq         bigint NOT NULL,
    tier_secs   integer NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, job_id)
);
CREATE INDEX parked_jobs_conversation ON parked_jobs (account, conversation, seq);
