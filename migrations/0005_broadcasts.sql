-- Bulk broadcasts: one row per broadcast job. The per-recipient deliveries are ordinary
-- `deliveries` rows with broadcast_id set (pre-created at fan-out, status 'accepted').
-- The counts are refreshed from `deliveries` by the worker that owns the account's lane.
CREATE TABLE broadcasts (
    id          text PRIMARY KEY,
    account     text NOT NULL,
    message     jsonb NOT NULL,
    total       integer NOT NULL,
    -- recipients dropped at fan-out: duplicates and invalid ids
    skipped     integer NOT NULL DEFAULT 0,
    status      text NOT NULL DEFAULT 'fanning_out'
                CHECK (status IN ('fanning_out', 'running', 'done', 'cancelled')),
    sent        integer NOT NULL DEFAULT 0,
    failed      integer NOT NULL DEFAULT 0,
    dead        integer NOT NULL DEFAULT 0,
    suppressed  integer NOT NULL DEFAULT 0,
    expired     integer NOT NULL DEFAULT 0,
    cancelled   integer NOT NULL DEFAULT 0,
    pending     integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX broadcasts_account_status ON broadcasts (account, status);
