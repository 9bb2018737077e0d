-- One row per job: the idempotency record and the operators' view of a delivery.
CREATE TABLE deliveries (
    job_id          text PRIMARY KEY,
    account         text NOT NULL,
    channel         text NOT NULL,
    kind            text NOT NULL,
    recipient       text NOT NULL DEFAULT '',
    open_kfid       text,
    status          text NOT NULL CHECK (status IN
                        ('accepted', 'retrying', 'sent', 'failed', 'dead', 'suppressed', 'expired', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,
    errcode         bigint,
    error           text,
    platform_msgid  text,
    broadcast_id    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    -- when the first attempt started: the retry budget is counted from here
    first_attempt_at timestamptz
);
CREATE INDEX deliveries_account_status ON deliveries (account, status);
CREATE INDEX deliveries_updated ON deliveries (updated_at);
CREATE INDEX deliveries_platform_msgid ON deliveries (platform_msgid) WHERE platform_msgid IS NOT NULL;
CREATE INDEX deliveries_broadcast ON deliveries (broadcast_id, status) WHERE broadcast_id IS NOT NULL;

-- Every status change of a delivery, for `wxdispatch status <job_id>`.
CREATE TABLE delivery_events (
    id          bigserial PRIMARY KEY,
    job_id      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    status      text NOT NULL,
    attempts    integer NOT NULL,
    errcode     bigint,
    error       text
);
CREATE INDEX delivery_events_job ON delivery_events (job_id, id);

-- Every dead letter, with its body, so operators can list and replay them with filters
-- (the wxdispatch.dead queue holds the same messages for consumers that want them).
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    job_id      text,
    account     text NOT NULL,
    reason      text NOT NULL,
    errcode     bigint,
    errmsg      text,
    attempts    integer NOT NULL DEFAULT 0,
    body        bytea NOT NULL,
    dead_at     timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz
);
CREATE INDEX dead_letters_filter ON dead_letters (account, reason, dead_at) WHERE replayed_at IS NULL;
CREATE INDEX dead_letters_job ON dead_letters (job_id);

-- WeCom access tokens, shared by every worker process. `generation` increases on every
-- refresh so that a worker which saw 40014/42001 invalidates only the token it used.
CREATE TABLE access_tokens (
    account     text PRIMARY KEY,
    token       text NOT NULL,
    expires_at  timestamptz NOT NULL,
    generation  bigint NOT NULL,
    refreshed_at timestamptz NOT NULL DEFAULT now()
);
