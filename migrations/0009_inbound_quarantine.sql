-- Inbound content the database cannot hold must not stop a sync loop.
--
-- 1. U+0000. Neither jsonb nor text can hold it, and JSON strings may carry it (`\u0000`).
--    Such a message is stored with `body` = the message with every U+0000 (in keys and
--    string values) replaced by U+FFFD, and `body_exact` = the exact message as JSON text,
--    in which U+0000 is JSON's own six-character escape `\u0000` (plain text, so a text
--    column holds it; any JSON parser gives the original back). `body_exact` is NULL for
--    every other message: then `body` is the message itself.
ALTER TABLE inbound_messages ADD COLUMN body_exact text;

-- 2. A message the database refuses for its data (SQLSTATE class 22 data exception, 23
--    integrity constraint, 54 program limit: e.g. a send_time out of timestamp range) is
--    kept here instead, and the page and its cursor move on. One row per (account, msgid):
--    the same message refused again (a cursor reset, a platform retry of a push) bumps
--    `times` and `last_at`. A message here counts as known: it is not published again.
CREATE TABLE inbound_quarantine (
    account        text NOT NULL,
    msgid          text NOT NULL,
    -- the sync loop's open_kfid (NULL for chatbot pushes)
    open_kfid      text,
    msgtype        text NOT NULL,
    -- the exact message as JSON text (U+0000 written `\u0000`, as in body_exact)
    raw            text NOT NULL,
    -- why the database refused it: 'SQLSTATE <code>: <message>'
    reason         text NOT NULL,
    sqlstate       text,
    times          integer NOT NULL DEFAULT 1,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    last_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, msgid)
);
CREATE INDEX inbound_quarantine_at ON inbound_quarantine (quarantined_at);
