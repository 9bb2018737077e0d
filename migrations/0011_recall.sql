-- A recall (job kind "recall", WeCom kf/recall_msg) marks the row of the job whose message it
-- took back: when, and which recall job did it. The row's status stays `sent` (the message was
-- delivered and still counts against the 5-message allowance); the recall job has a row of its
-- own. Both columns are NULL for a message never recalled.
ALTER TABLE deliveries ADD COLUMN recalled_at timestamptz;
ALTER TABLE deliveries ADD COLUMN recalled_by_job text;
