-- A dead letter used to keep its whole body in `dead_letters` (a 12 MB row for a 12 MB job).
-- A body longer than `worker.dead_letter_body_bytes` (64 KiB by default) is now kept as its
-- first bytes (`body_truncated`), with the whole body's size and sha256; the whole body is in
-- the `wxdispatch.dead` queue. `dlq replay` does not replay a truncated row.
ALTER TABLE dead_letters
    ADD COLUMN body_bytes bigint,
    ADD COLUMN body_sha256 text,
    ADD COLUMN body_truncated boolean NOT NULL DEFAULT false;
-- Rows recorded before kept their whole body.
UPDATE dead_letters
   SET body_bytes = octet_length(body), body_sha256 = encode(sha256(body), 'hex');
