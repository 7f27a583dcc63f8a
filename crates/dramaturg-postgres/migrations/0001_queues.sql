-- dramaturg's PostgreSQL broker, version 1 of its schema.
--
-- Names are unqualified: run this with `search_path` set to the broker's
-- schema (`dramaturg` by default), as the broker itself does:
--
--     CREATE SCHEMA IF NOT EXISTS dramaturg;
--     SET search_path TO dramaturg;
--     \i 0001_queues.sql
--
-- A team that runs its own migrations applies these files in order and
-- connects the broker with `PgConfig::migrate(false)`.

-- Every message that is waiting, delayed or claimed. A row is deleted when
-- its delivery is acknowledged, and moved to `dead_letters` when it is
-- dead-lettered.
CREATE TABLE messages (
    -- The entry's id: the order of sending among messages of the same
    -- priority and due time.
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    -- The encoded message, as the app's encoder wrote it.
    body bytea NOT NULL,
    -- 0 to 255; higher is delivered first among ready messages.
    priority smallint NOT NULL DEFAULT 0,
    -- When the message may be delivered, by the database's clock.
    due_at timestamptz NOT NULL DEFAULT now(),
    -- The claim: the worker that holds the message, the claim's token
    -- (fencing every settlement) and when the claim lapses unless renewed.
    -- All three are NULL while the message waits.
    lease_owner text,
    lease_token bigint,
    lease_expires_at timestamptz,
    -- How many times the message was claimed.
    attempts integer NOT NULL DEFAULT 0,
    -- Whether it was claimed before and returned to the queue (a requeue,
    -- a lapsed claim).
    redelivered boolean NOT NULL DEFAULT false,
    CONSTRAINT messages_priority CHECK (priority BETWEEN 0 AND 255),
    CONSTRAINT messages_lease CHECK ((lease_token IS NULL) = (lease_expires_at IS NULL))
);

-- The claim's scan: waiting messages of a queue in delivery order.
CREATE INDEX messages_waiting ON messages (queue, priority DESC, due_at, id) WHERE lease_token IS NULL;
-- Claims by deadline, for the recovery of lapsed ones.
CREATE INDEX messages_leases ON messages (lease_expires_at) WHERE lease_token IS NOT NULL;
-- Claims by owner, for lease renewal.
CREATE INDEX messages_owners ON messages (lease_owner) WHERE lease_owner IS NOT NULL;

-- Claim tokens: each claim takes the next one, so that a token never
-- comes back.
CREATE SEQUENCE lease_tokens;

-- Messages that failed for good, with the reason.
CREATE TABLE dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    body bytea NOT NULL,
    reason text NOT NULL,
    dead_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letters_queue ON dead_letters (queue, id);
CREATE INDEX dead_letters_age ON dead_letters (dead_at);

-- Workers that consume, with their last heartbeat (database clock).
CREATE TABLE workers (
    id text PRIMARY KEY,
    last_beat timestamptz NOT NULL DEFAULT now(),
    concurrency integer
);

-- Paused queues: no worker claims their messages until they are resumed.
CREATE TABLE paused_queues (
    queue text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);
