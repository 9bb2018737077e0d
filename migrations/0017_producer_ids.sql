-- Issue 15.3: job ids up to 128 chars. WeCom's `msgid` is at most 32 chars of [0-9a-zA-Z_-], so
-- a longer id is sent as a digest of it (`domain::ids::wecom_msgid`); the row keeps the msgid
-- the request carried, for `status` and for matching the platform's reports.
ALTER TABLE deliveries ADD COLUMN platform_request_msgid text;

-- A job rejected before it had a valid id (unreadable body, invalid job_id) is still found by
-- the AMQP message_id it was published with (`status <message_id>`).
ALTER TABLE dead_letters ADD COLUMN message_id text;
CREATE INDEX dead_letters_message_id ON dead_letters (message_id) WHERE message_id IS NOT NULL;
