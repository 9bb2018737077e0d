-- The idempotency key is (account, job_id), not job_id alone: independent upstream tenants
-- publishing to different accounts may use the same job ids, and each must be sent.
--
-- The keys are declared (job_id, account): the same uniqueness as (account, job_id) (an
-- ON CONFLICT (account, job_id) finds the index whatever its column order), and a lookup by
-- job id alone (`wxdispatch status <job id>`, which then asks for --account when the id
-- exists on several accounts) is still a scan of the key's first column. Each key replaces
-- the old one: the hot path's writes maintain the same number of indexes as before.
--
-- Safe on tables with data: under the old key every job id is unique, so every existing row
-- is unique under the new one, and each history row belongs to exactly one delivery.

ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_pkey PRIMARY KEY (job_id, account);

-- A delivery's history names its account, taken from the delivery it belongs to. A history
-- row without a delivery (none is written, but one could have been deleted by hand) keeps
-- its place under the empty account rather than failing the migration.
ALTER TABLE delivery_events ADD COLUMN account text;
UPDATE delivery_events e SET account = d.account FROM deliveries d WHERE d.job_id = e.job_id;
UPDATE delivery_events SET account = '' WHERE account IS NULL;
ALTER TABLE delivery_events ALTER COLUMN account SET NOT NULL;
DROP INDEX IF EXISTS delivery_events_job;
CREATE INDEX delivery_events_job ON delivery_events (job_id, account, id);

-- A broadcast id is the job id of the broadcast job: the same rule.
ALTER TABLE broadcasts DROP CONSTRAINT broadcasts_pkey;
ALTER TABLE broadcasts ADD CONSTRAINT broadcasts_pkey PRIMARY KEY (id, account);

-- Dead letters keep their own id; `dead_letters_job` (job_id) still finds a job's dead
-- letters, the account is compared on the few rows it returns. parked_jobs is keyed
-- (account, job_id) already.
