-- dramaturg's SQLite broker, version 1 of its schema.
--
-- Times are integers: milliseconds since the Unix epoch, by the clock of
-- the machine (every process using the file runs on it).
--
-- A team that runs its own migrations applies these files in order to the
-- database file and connects the broker with `SqliteConfig::migrate(false)`:
--
--     sqlite3 jobs.db < 0001_queues.sql

-- Every message that is waiting, delayed or claimed. A row is deleted when
-- its delivery is acknowledged, and moved to `dead_letters` when it is
-- dead-lettered.
CREATE TABLE messages (
    -- The order of sending among messages of the same priority and due
    -- time; AUTOINCREMENT so that an id is never used twice.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    -- The encoded message, as the app's encoder wrote it.
    body BLOB NOT NULL,
    -- 0 to 255; higher is delivered first among ready messages.
    priority INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 255),
    -- When the message may be delivered.
    due_at INTEGER NOT NULL,
    -- The claim: the worker that holds the message, the claim's token
    -- (fencing every settlement) and when the claim lapses unless renewed.
    -- All three are NULL while the message waits.
    lease_owner TEXT,
    lease_token INTEGER,
    lease_expires_at INTEGER,
    -- How many times the message was claimed.
    attempts INTEGER NOT NULL DEFAULT 0,
    -- 1 when it was claimed before and returned to the queue (a requeue,
    -- a lapsed claim).
    redelivered INTEGER NOT NULL DEFAULT 0,
    CHECK ((lease_token IS NULL) = (lease_expires_at IS NULL))
);

-- The claim's scan: waiting messages of a queue in delivery order.
CREATE INDEX messages_waiting ON messages (queue, priority DESC, due_at, id) WHERE lease_token IS NULL;
-- Claims by deadline, for the recovery of lapsed ones.
CREATE INDEX messages_leases ON messages (lease_expires_at) WHERE lease_token IS NOT NULL;
-- Claims by owner, for lease renewal.
CREATE INDEX messages_owners ON messages (lease_owner) WHERE lease_owner IS NOT NULL;

-- The last claim token handed out: each claim takes the next ones, so
-- that a token never comes back.
CREATE TABLE lease_tokens (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT INTO lease_tokens (id, last) VALUES (1, 0);

-- Messages that failed for good, with the reason.
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    dead_at INTEGER NOT NULL
);

CREATE INDEX dead_letters_queue ON dead_letters (queue, id);
CREATE INDEX dead_letters_age ON dead_letters (dead_at);

-- Workers that consume, with their last heartbeat.
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    last_beat INTEGER NOT NULL,
    concurrency INTEGER
);

-- Paused queues: no worker claims their messages until they are resumed.
CREATE TABLE paused_queues (
    queue TEXT PRIMARY KEY,
    paused_at INTEGER NOT NULL
);
