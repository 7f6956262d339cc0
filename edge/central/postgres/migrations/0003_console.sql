-- The auditor console's store (edge/central/sqlite/console.py and trail.py have the same tables and rules):
-- password accounts and their events, reader grants and their events, station unit assignments' events,
-- sensitivity events, live console sessions, and the seals of the append-only trails. station_units,
-- item_units, item_sensitive(_readers) and media_ranges came with 0002.
CREATE TABLE console_accounts (
    name text PRIMARY KEY,
    password_hash text NOT NULL,       -- argon2id PHC string; never the password
    totp_secret text,                  -- sealed with identity/console.key (sealed-v2:...)
    totp_last_step bigint,             -- the last time step accepted: a code is good once
    status text NOT NULL CHECK (status IN ('active', 'disabled')),
    failed_attempts integer NOT NULL DEFAULT 0,
    locked_until text,
    created_utc text NOT NULL,
    updated_utc text NOT NULL
);
CREATE TABLE account_events (
    id bigint PRIMARY KEY,             -- max + 1 (edge_next_id below)
    time text NOT NULL,
    name text NOT NULL,
    event text NOT NULL,
    by text,
    remote text,
    detail text
);
CREATE TABLE reader_grants (
    name text PRIMARY KEY,
    role text NOT NULL CHECK (role IN ('reader', 'supervisor')),
    units text NOT NULL,               -- space-separated unit codes
    granted_utc text NOT NULL,
    by text NOT NULL
);
CREATE TABLE grant_events (
    id bigint PRIMARY KEY,             -- max + 1 (edge_next_id below)
    time text NOT NULL,
    name text NOT NULL,
    role text,
    units text,
    by text NOT NULL,
    reason text NOT NULL
);
CREATE TABLE station_unit_events (
    id bigint PRIMARY KEY,             -- max + 1 (edge_next_id below)
    time text NOT NULL,
    station text NOT NULL,
    unit_code text NOT NULL,
    by text NOT NULL,
    reason text NOT NULL
);
CREATE TABLE sensitivity_events (
    id bigint PRIMARY KEY,             -- max + 1 (edge_next_id below)
    time text NOT NULL,
    item text NOT NULL,
    action text NOT NULL CHECK (action IN ('marked', 'unmarked')),
    readers text NOT NULL,             -- space-separated names (marked), empty (unmarked)
    by text NOT NULL,
    reason text NOT NULL,
    remote text
);
CREATE TABLE console_sessions (
    token_sha256 bytea PRIMARY KEY CHECK (length(token_sha256) = 32),  -- never the token itself
    reader text NOT NULL,
    method text NOT NULL,
    cert_sha256 text,
    created_s double precision NOT NULL,
    last_seen_s double precision NOT NULL,
    expires_s double precision NOT NULL,
    mac text                           -- HMAC of the row under console.key's session subkey
);
CREATE INDEX console_sessions_reader ON console_sessions (reader);

-- The seals of the trails (edge/central/postgres/trail.py): one sequence 1, 2, 3... across every trail
-- in append order, each an HMAC under console.key's trail subkey, computed by the central (the key never
-- reaches the database). The numbers are max + 1 under the writer lock every transaction holds.
CREATE TABLE trail_seals (
    seq bigint PRIMARY KEY CHECK (seq >= 1),
    tbl text NOT NULL,
    row_id bigint NOT NULL,
    mac text,                          -- NULL: appended while the console key was unusable
    UNIQUE (tbl, row_id)
);

-- The trails number their rows 1, 2, 3... with no gap, so that `edge verify` reads a gap as a deleted row
-- (as in SQLite). An identity column would leave one at every rolled-back insert (a registration refused
-- after its history rows were written), so the id is max + 1 under the writer lock instead, as the tree
-- heads' is.
CREATE FUNCTION edge_next_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM edge_log_writer_lock();
    EXECUTE format('SELECT coalesce(max(id), 0) + 1 FROM %I', TG_TABLE_NAME) INTO NEW.id;
    RETURN NEW;
END $$;

-- A trail row must be sealed by the end of its transaction: an insert that forgot its seal fails at
-- COMMIT rather than leaving a row `edge verify` would call inserted behind the central's back.
CREATE FUNCTION edge_trail_row_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM trail_seals WHERE tbl = TG_TABLE_NAME AND row_id = NEW.id) THEN
        RAISE EXCEPTION '% row % has no seal', TG_TABLE_NAME, NEW.id USING ERRCODE = 'EE003';
    END IF;
    RETURN NULL;
END $$;

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY[
        'enrolment_events', 'station_checkpoints', 'metadata_history', 'rejections', 'access_log',
        'media_ranges'
    ] LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN id DROP IDENTITY', name);
    END LOOP;
    FOREACH name IN ARRAY ARRAY[
        'enrolment_events', 'station_checkpoints', 'metadata_history', 'rejections', 'access_log',
        'media_ranges', 'account_events', 'grant_events', 'station_unit_events', 'sensitivity_events'
    ] LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE INSERT ON %I FOR EACH ROW EXECUTE FUNCTION edge_next_id()',
                       name || '_next_id', name);
    END LOOP;
    FOREACH name IN ARRAY ARRAY[
        'account_events', 'grant_events', 'station_unit_events', 'sensitivity_events', 'trail_seals'
    ] LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I FOR EACH ROW '
                       'EXECUTE FUNCTION edge_refuse_change()', name || '_no_change', name);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT '
                       'EXECUTE FUNCTION edge_refuse_change()', name || '_no_truncate', name);
    END LOOP;
    FOREACH name IN ARRAY ARRAY[
        'access_log', 'account_events', 'grant_events', 'station_unit_events', 'sensitivity_events',
        'media_ranges'
    ] LOOP
        EXECUTE format('CREATE CONSTRAINT TRIGGER %I AFTER INSERT ON %I DEFERRABLE INITIALLY DEFERRED '
                       'FOR EACH ROW EXECUTE FUNCTION edge_trail_row_sealed()', name || '_sealed', name);
    END LOOP;
END $$;
