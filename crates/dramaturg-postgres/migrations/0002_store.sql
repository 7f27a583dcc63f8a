-- dramaturg's PostgreSQL store (`PgStore`), version 2 of the schema: keys
-- with values and TTLs, counters, sets, slot sets and pacing keys, for
-- abort events, results, group completion, rate limits and unique jobs.
--
-- Run with `search_path` set to the broker's schema, after
-- 0001_queues.sql. The functions below keep that `search_path` (`SET
-- search_path FROM CURRENT`), so they find their table from any
-- connection.

-- One row per key. `kind` says what the key holds: a value (`value`, also
-- a counter as its decimal text), a set (`members`), a slot set (`slots`,
-- member → when the slot lapses, in ms since the epoch by the database's
-- clock) or a pacing key (`arrival_ms`, the theoretical arrival time of
-- the GCRA). A row whose `expires_at` has passed is absent to every read
-- and write, and is deleted in batches later.
CREATE TABLE store (
    key text PRIMARY KEY,
    kind text NOT NULL,
    value bytea,
    members text[],
    slots jsonb,
    arrival_ms bigint,
    expires_at timestamptz NOT NULL,
    CONSTRAINT store_kind CHECK (kind IN ('value', 'set', 'slots', 'paced'))
);

-- Expired rows, for their deletion in batches.
CREATE INDEX store_expiry ON store (expires_at);

-- The database's clock in ms since the epoch.
CREATE FUNCTION store_now_ms() RETURNS bigint
LANGUAGE sql VOLATILE
AS $$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Refuses a key of the other kind: SQLSTATE DTWTY, read by the client as a
-- wrong type.
CREATE FUNCTION store_wrong_type(p_key text, p_expected text) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'DTWTY', MESSAGE = format('store: key %L does not hold %s', left(p_key, 100), p_expected);
END
$$;

-- Locks the row of `p_key` for the rest of the transaction and returns it,
-- with `kind` NULL when the key is absent or expired; a live key of
-- another kind than `p_kind` is refused as not holding `p_what`. An absent
-- key gets a placeholder row (already expired) first, so that two writers
-- of a new key take turns instead of both inserting.
CREATE FUNCTION store_lock(p_key text, p_kind text, p_what text) RETURNS store
LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    r store;
BEGIN
    LOOP
        SELECT * INTO r FROM store WHERE key = p_key FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO store (key, kind, expires_at) VALUES (p_key, 'value', '-infinity') ON CONFLICT DO NOTHING;
    END LOOP;
    IF r.expires_at <= clock_timestamp() THEN
        r.kind := NULL;
    ELSIF r.kind <> p_kind THEN
        PERFORM store_wrong_type(p_key, p_what);
    END IF;
    RETURN r;
END
$$;

-- Adds `p_delta` to the counter at `p_key` (zero when absent) and gives it
-- `p_ttl_ms` to live; returns the new value. An overflow fails with
-- SQLSTATE 22003.
CREATE FUNCTION store_incr_by(p_key text, p_delta bigint, p_ttl_ms bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    r store := store_lock(p_key, 'value', 'a counter');
    text_value text;
    current bigint := 0;
BEGIN
    IF r.kind IS NOT NULL THEN
        text_value := encode(r.value, 'escape');
        IF length(r.value) > 20 OR text_value !~ '^[+-]?[0-9]+$' THEN
            PERFORM store_wrong_type(p_key, 'a counter');
        END IF;
        current := text_value::bigint;
    END IF;
    current := current + p_delta;
    UPDATE store SET kind = 'value', value = convert_to(current::text, 'UTF8'), members = NULL, slots = NULL,
        arrival_ms = NULL, expires_at = clock_timestamp() + p_ttl_ms * interval '1 millisecond'
    WHERE key = p_key;
    RETURN current;
END
$$;

-- Adds `p_member` to the set at `p_key` and gives it `p_ttl_ms` to live;
-- returns how many members it has.
CREATE FUNCTION store_set_add(p_key text, p_member text, p_ttl_ms bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    r store := store_lock(p_key, 'set', 'a set');
    next_members text[] := ARRAY[p_member];
BEGIN
    IF r.kind IS NOT NULL THEN
        next_members := CASE WHEN p_member = ANY(r.members) THEN r.members ELSE r.members || p_member END;
    END IF;
    UPDATE store SET kind = 'set', value = NULL, members = next_members, slots = NULL, arrival_ms = NULL,
        expires_at = clock_timestamp() + p_ttl_ms * interval '1 millisecond'
    WHERE key = p_key;
    RETURN cardinality(next_members);
END
$$;

-- Removes `p_member` from the set at `p_key`, leaving its TTL alone;
-- returns how many members are left (a set with none is deleted).
CREATE FUNCTION store_set_remove(p_key text, p_member text) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    r store := store_lock(p_key, 'set', 'a set');
    left_members text[];
BEGIN
    IF r.kind IS NULL THEN
        RETURN 0;
    END IF;
    left_members := array_remove(r.members, p_member);
    IF cardinality(left_members) = 0 THEN
        DELETE FROM store WHERE key = p_key;
        RETURN 0;
    END IF;
    UPDATE store SET members = left_members WHERE key = p_key;
    RETURN cardinality(left_members);
END
$$;

-- Locks the slot set at `p_key` and returns its live slots (`p_now_ms`
-- by the database's clock): an empty object when the key is absent.
CREATE FUNCTION store_live_slots(p_key text, p_now_ms bigint) RETURNS jsonb
LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    r store := store_lock(p_key, 'slots', 'a slot set');
BEGIN
    RETURN coalesce(
        (SELECT jsonb_object_agg(k, v) FROM jsonb_each_text(r.slots) AS e(k, v) WHERE v::bigint > p_now_ms),
        '{}'::jsonb);
END
$$;

-- Writes the slot set `p_slots` (not empty) at `p_key`: the key lives as
-- long as its latest slot.
CREATE FUNCTION store_write_slots(p_key text, p_slots jsonb) RETURNS void
LANGUAGE sql SET search_path FROM CURRENT
AS $$
    UPDATE store SET kind = 'slots', value = NULL, members = NULL, slots = p_slots, arrival_ms = NULL,
        expires_at = to_timestamp((SELECT max(v::bigint) FROM jsonb_each_text(p_slots) AS e(k, v)) / 1000.0)
    WHERE key = p_key
$$;

-- Takes or renews the slot `p_member` at `p_key` for `p_hold_ms` if fewer
-- than `p_cap` slots are live or `p_member` holds one; returns -1 when
-- admitted, else the ms until the earliest slot lapses (at least 1).
CREATE FUNCTION store_take_slot(p_key text, p_member text, p_cap bigint, p_hold_ms bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    now_ms bigint := store_now_ms();
    live jsonb := store_live_slots(p_key, now_ms);
BEGIN
    IF NOT live ? p_member AND (SELECT count(*) FROM jsonb_object_keys(live)) >= greatest(p_cap, 1) THEN
        RETURN greatest((SELECT min(v::bigint) FROM jsonb_each_text(live) AS e(k, v)) - now_ms, 1);
    END IF;
    PERFORM store_write_slots(p_key, live || jsonb_build_object(p_member, now_ms + p_hold_ms));
    RETURN -1;
END
$$;

-- Makes `p_member`'s slot at `p_key` lapse `p_hold_ms` from now; false
-- when it holds none.
CREATE FUNCTION store_renew_slot(p_key text, p_member text, p_hold_ms bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    now_ms bigint := store_now_ms();
    live jsonb := store_live_slots(p_key, now_ms);
BEGIN
    IF NOT live ? p_member THEN
        RETURN false;
    END IF;
    PERFORM store_write_slots(p_key, live || jsonb_build_object(p_member, now_ms + p_hold_ms));
    RETURN true;
END
$$;

-- Gives `p_member`'s slot at `p_key` back; returns whether it held one (a
-- slot set left empty is deleted).
CREATE FUNCTION store_release_slot(p_key text, p_member text) RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    live jsonb := store_live_slots(p_key, store_now_ms());
    held boolean := live ? p_member;
BEGIN
    live := live - p_member;
    IF live = '{}'::jsonb THEN
        DELETE FROM store WHERE key = p_key;
    ELSIF held THEN
        PERFORM store_write_slots(p_key, live);
    END IF;
    RETURN held;
END
$$;

-- Paced admission (GCRA) at `p_key`: one caller per `p_interval_ms`, up to
-- `p_tolerance_ms / p_interval_ms + 1` at once; returns -1 when admitted,
-- else the ms until the next caller may come in.
CREATE FUNCTION store_take_paced(p_key text, p_interval_ms bigint, p_tolerance_ms bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT
AS $$
DECLARE
    now_ms bigint := store_now_ms();
    r store := store_lock(p_key, 'paced', 'a pacing key');
    arrival bigint := now_ms;
    allowed_at bigint;
BEGIN
    IF r.kind IS NOT NULL THEN
        arrival := greatest(r.arrival_ms, now_ms);
    END IF;
    allowed_at := arrival - p_tolerance_ms;
    IF allowed_at > now_ms THEN
        -- A refusal writes nothing: the placeholder of an absent key stays
        -- expired.
        RETURN allowed_at - now_ms;
    END IF;
    UPDATE store SET kind = 'paced', value = NULL, members = NULL, slots = NULL, arrival_ms = arrival + p_interval_ms,
        expires_at = to_timestamp((arrival + p_interval_ms) / 1000.0)
    WHERE key = p_key;
    RETURN -1;
END
$$;
