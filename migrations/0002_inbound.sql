-- Inbound: what the platforms tell us (sync_msg pages, callbacks, pushes) and the
-- conversation state derived from it.

-- One row per WeCom conversation (account, open_kfid, external_userid). Written by the sync
-- loop (customer messages, session_status_change events) and read by the lanes: gating
-- (service_state 2/3 = a human serves) and the 48-hour / 5-message reply window (the lanes
-- increment sent_since_customer on each send).
CREATE TABLE conversations (
    account              text NOT NULL,
    open_kfid            text NOT NULL,
    external_userid      text NOT NULL,
    -- send_time of the newest customer message (origin 3) seen
    last_customer_msg_at timestamptz,
    -- messages sent to this customer since last_customer_msg_at
    sent_since_customer  integer NOT NULL DEFAULT 0,
    -- 0 new, 1 bot, 2 queued, 3 human, 4 ended (NULL: never reported)
    service_state        integer,
    servicer_userid      text,
    -- when service_state was true (the event's send_time, or when it was read)
    state_updated_at     timestamptz,
    PRIMARY KEY (account, open_kfid, external_userid)
);

-- Where the sync_msg loop of each (account, open_kfid) stands. Advanced in the same
-- transaction that stores the page's messages.
CREATE TABLE sync_cursors (
    account    text NOT NULL,
    open_kfid  text NOT NULL,
    cursor     text NOT NULL,
    -- pages committed so far (operators' progress view)
    pages      bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, open_kfid)
);

-- Every inbound message and event once, deduplicated by the platform's msgid (chatbot pushes
-- without one: 'sha1:' + the hash of the decrypted plaintext). `body` is the message as the
-- platform gave it (WeCom: the msg_list entry; chatbot: the push, XML turned into JSON).
-- open_kfid and origin are NULL for chatbot pushes.
CREATE TABLE inbound_messages (
    account         text NOT NULL,
    msgid           text NOT NULL,
    open_kfid       text,
    external_userid text,
    origin          integer,
    msgtype         text NOT NULL,
    send_time       timestamptz,
    body            jsonb NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, msgid)
);
CREATE INDEX inbound_messages_conversation
    ON inbound_messages (account, open_kfid, external_userid, send_time);
CREATE INDEX inbound_messages_received ON inbound_messages (received_at);
