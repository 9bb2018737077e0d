-- Scheduled sends (a job's `not_before`): while such a job waits in the delay tiers its row
-- says `scheduled` (not an outcome: the job is still to be sent). The status list of 0001
-- gains the word; the constraint keeps its name.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check CHECK (status IN
    ('accepted', 'retrying', 'scheduled', 'sent', 'failed', 'dead', 'suppressed', 'expired', 'cancelled'));
