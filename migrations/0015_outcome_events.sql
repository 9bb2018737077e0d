-- Outcome events (README "Outcome events"): a transactional outbox. The statement that
-- records a terminal outcome inserts its event row here in the same statement, so an
-- outcome that is recorded always has its event durable; the worker's relay publishes the
-- rows to the `wxdispatch.outcomes` exchange (confirmed) and deletes them afterwards. A crash
-- between the publish and the delete publishes the row again, with the same message_id.
--
-- The table is a queue: rows live from the outcome's commit to the relay's confirm
-- (milliseconds while a relay runs), so it stays small and has no index but its key; the
-- relay reads it in `id` order.
CREATE TABLE outcome_events (
    id             bigserial PRIMARY KEY,
    account        text NOT NULL,
    job_id         text NOT NULL,
    -- sent, dead, suppressed, expired, cancelled, failed, or broadcast_completed
    status         text NOT NULL,
    channel        text,
    kind           text,
    recipient      text,
    -- the dead-letter reason word (dead), `msg_send_fail` (failed)
    reason         text,
    errcode        bigint,
    errmsg         text,
    attempts       integer NOT NULL DEFAULT 0,
    platform_msgid text,
    broadcast_id   text,
    -- copied from the job's AMQP properties (kept here only, never in `deliveries`)
    correlation_id text,
    reply_to       text,
    -- extra fields of the body (a completed broadcast's counts)
    detail         jsonb,
    at             timestamptz NOT NULL DEFAULT now()
);

-- A job's correlation_id and reply_to, for the events that come after its message was acked:
-- a WeCom `msg_send_fail` (a `failed` event of a sent job), a broadcast's cancelled
-- recipients and its completion. Written only for jobs that have either property and can
-- still have such an event (sent WeCom jobs, broadcast jobs), so a workload without them
-- writes nothing here.
CREATE TABLE outcome_routes (
    account        text NOT NULL,
    job_id         text NOT NULL,
    correlation_id text,
    reply_to       text,
    PRIMARY KEY (job_id, account)
);
