-- The central's index and Merkle log on PostgreSQL: the tables of edge/central/sqlite (index.py, log.py)
-- with the same append-only rules, enforced here by triggers. Applied once, in one transaction, by
-- edge/central/postgres/migrations.py, which records it in schema_version.

-- Refusals carry SQLSTATEs of their own: EE001 an insert that does not extend a chain or the log, EE002 a
-- change to append-only history (edge/central/postgres/log.py turns EE001 into LogStoreConflict).

-- History is never rewritten: one function refuses UPDATE and DELETE row by row, and TRUNCATE.
CREATE FUNCTION edge_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'EE002';
END $$;

-- The Merkle log's appends are serialised across every process that writes this database: each write
-- transaction takes this advisory lock first (edge/central/postgres/database.py), and the log's insert
-- triggers take it again, so a client that forgot it still cannot slip a leaf or a head between another
-- writer's read of the tree and its insert. The key is the constant below; advisory locks are per
-- database, so each central database has its own.
CREATE FUNCTION edge_log_writer_lock() RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(4242001300000000001)
$$;

CREATE TABLE stations (
    station text PRIMARY KEY,
    public_key text NOT NULL,
    key_id text NOT NULL,
    cert_sha256 text NOT NULL,
    status text NOT NULL CHECK (status IN ('active', 'revoked')),
    enrolled_utc text NOT NULL,
    revoked_utc text,
    revoke_reason text
);
CREATE TABLE station_keys (
    station text NOT NULL,
    key_id text NOT NULL,
    public_key text NOT NULL,
    enrolled_utc text NOT NULL,
    PRIMARY KEY (station, key_id)
);
CREATE TABLE readers (
    name text PRIMARY KEY,
    cert_sha256 text NOT NULL,
    status text NOT NULL CHECK (status IN ('active', 'revoked')),
    enrolled_utc text NOT NULL,
    revoked_utc text,
    revoke_reason text
);
CREATE TABLE enrolment_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('station', 'reader')),
    name text NOT NULL,
    event text NOT NULL CHECK (event IN ('enrolled', 'revoked')),
    key_id text,
    cert_sha256 text,
    reason text
);
CREATE TABLE station_ledger (
    station text NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 1),
    time text NOT NULL,
    type text NOT NULL,
    item text,
    data text NOT NULL,                -- canonical JSON, exactly as hashed
    prev text NOT NULL,
    hash text NOT NULL,
    accepted_utc text NOT NULL,
    PRIMARY KEY (station, seq)
);
CREATE INDEX station_ledger_item ON station_ledger (item, station, seq) WHERE item IS NOT NULL;
CREATE INDEX station_ledger_type ON station_ledger (station, type, seq);
CREATE TABLE station_checkpoints (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    station text NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    time text NOT NULL,
    key_id text NOT NULL,
    signature text NOT NULL,
    accepted_utc text NOT NULL,
    UNIQUE (station, seq, hash, time, key_id, signature)
);
CREATE INDEX station_checkpoints_seq ON station_checkpoints (station, seq);
-- Item ids and times order byte-wise (COLLATE "C", as SQLite does), whatever the database's locale: the
-- query cursor (acquired_utc, item) must mean the same on every server.
CREATE TABLE items (
    item text COLLATE "C" PRIMARY KEY,
    sha256 text NOT NULL,
    size bigint NOT NULL,
    station text NOT NULL,
    manifest text NOT NULL,            -- canonical JSON of the signed manifest, as received
    manifest_sha256 text NOT NULL,
    officer_no text,
    device_serial text,
    acquired_utc text COLLATE "C" NOT NULL,
    recorded_start text,
    chain_seq bigint NOT NULL,
    leaf_index bigint NOT NULL UNIQUE,
    accepted_utc text NOT NULL
);
CREATE INDEX items_sha256 ON items (sha256);
CREATE INDEX items_acquired ON items (acquired_utc, item);
CREATE INDEX items_officer ON items (officer_no, acquired_utc, item);
CREATE INDEX items_device ON items (device_serial, acquired_utc, item);
CREATE INDEX items_station ON items (station, acquired_utc, item);
CREATE TABLE item_case (
    item text PRIMARY KEY REFERENCES items (item),
    case_number text,
    location text,
    collector text,
    subject text,
    important boolean,
    category text,
    retention text,
    updated_utc text NOT NULL
);
CREATE INDEX item_case_number ON item_case (case_number);
CREATE TABLE metadata_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item text NOT NULL REFERENCES items (item),
    source text NOT NULL CHECK (source IN ('manifest', 'ledger')),
    station text NOT NULL,
    ledger_seq bigint NOT NULL,
    time text NOT NULL,
    changes text NOT NULL,             -- canonical JSON {field: value}
    by text,
    recorded_utc text NOT NULL,
    UNIQUE (item, source, ledger_seq)
);
-- Directories derived from history: upserted, not append-only.
CREATE TABLE officers (
    officer_no text PRIMARY KEY,
    officer_name text,
    unit_code text,
    unit_name text,
    first_seen_utc text NOT NULL,
    last_seen_utc text NOT NULL
);
CREATE TABLE devices (
    device_serial text PRIMARY KEY,
    last_officer_no text,
    last_station text NOT NULL,
    first_seen_utc text NOT NULL,
    last_seen_utc text NOT NULL
);
CREATE TABLE cases (
    case_number text PRIMARY KEY,
    first_seen_utc text NOT NULL,
    last_seen_utc text NOT NULL
);
CREATE TABLE rejections (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time text NOT NULL,
    station text,
    remote text,
    code text NOT NULL,
    detail text NOT NULL,
    item text,
    upload text
);
CREATE TABLE access_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time text NOT NULL,
    reader text NOT NULL,
    what text NOT NULL,
    item text,
    query text,
    remote text
);

-- A station ledger row must extend that station's head (seq = head + 1, prev = head's hash). Concurrent
-- receivers of one station's push are serialised by a per-station advisory lock taken here.
CREATE FUNCTION station_ledger_extends_head() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- 64 zeros: GENESIS_PREV of edge/custody/ledger.py, the prev of a station's first entry.
    head_seq bigint;
    head_hash text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('edge station ledger ' || NEW.station, 0));
    SELECT seq, hash INTO head_seq, head_hash FROM station_ledger WHERE station = NEW.station
        ORDER BY seq DESC LIMIT 1;
    IF NEW.seq IS DISTINCT FROM coalesce(head_seq, 0) + 1
       OR NEW.prev IS DISTINCT FROM coalesce(head_hash,
            '0000000000000000000000000000000000000000000000000000000000000000') THEN
        RAISE EXCEPTION 'station ledger insert must extend the head (seq = head + 1, prev = head)'
            USING ERRCODE = 'EE001';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER station_ledger_extends_head BEFORE INSERT ON station_ledger
    FOR EACH ROW EXECUTE FUNCTION station_ledger_extends_head();

-- The Merkle log (edge/central/sqlite/log.py has the same tables and rules).
CREATE TABLE merkle_leaves (
    idx bigint PRIMARY KEY CHECK (idx >= 0),
    entry text NOT NULL,
    leaf_hash bytea NOT NULL CHECK (length(leaf_hash) = 32)
);
CREATE TABLE merkle_nodes (
    level integer NOT NULL CHECK (level BETWEEN 1 AND 62),
    idx bigint NOT NULL CHECK (idx >= 0),
    hash bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);
-- Head ids are max(id) + 1 under the writer lock (no sequence: a rolled-back transaction must not leave
-- a gap, which verification reads as a deleted head).
CREATE TABLE merkle_tree_heads (
    id bigint PRIMARY KEY CHECK (id >= 1),
    origin text NOT NULL,
    tree_size bigint NOT NULL CHECK (tree_size >= 0),
    root_hash text NOT NULL,
    time text NOT NULL,
    key_id text NOT NULL,
    signature text NOT NULL
);
CREATE INDEX merkle_tree_heads_size ON merkle_tree_heads (tree_size, id);
CREATE TABLE merkle_head_timestamps (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    head_id bigint NOT NULL,
    tree_size bigint NOT NULL,
    root_hash text NOT NULL,
    note text NOT NULL,
    token bytea NOT NULL,
    gen_time text NOT NULL,
    stamped_utc text NOT NULL
);

CREATE FUNCTION merkle_leaves_extend() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM edge_log_writer_lock();
    IF NEW.idx IS DISTINCT FROM (SELECT coalesce(max(idx), -1) + 1 FROM merkle_leaves) THEN
        RAISE EXCEPTION 'merkle leaf insert must extend the log (idx = number of leaves)'
            USING ERRCODE = 'EE001';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER merkle_leaves_extend BEFORE INSERT ON merkle_leaves
    FOR EACH ROW EXECUTE FUNCTION merkle_leaves_extend();

CREATE FUNCTION merkle_nodes_complete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM edge_log_writer_lock();
    IF NEW.level NOT BETWEEN 1 AND 62
       OR ((NEW.idx + 1) << NEW.level) > (SELECT coalesce(max(idx), -1) + 1 FROM merkle_leaves)
       OR EXISTS (SELECT 1 FROM merkle_nodes WHERE level = NEW.level AND idx = NEW.idx) THEN
        RAISE EXCEPTION 'merkle node insert must add a new subtree whose leaves are all in the log'
            USING ERRCODE = 'EE001';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER merkle_nodes_complete BEFORE INSERT ON merkle_nodes
    FOR EACH ROW EXECUTE FUNCTION merkle_nodes_complete();

CREATE FUNCTION merkle_tree_heads_grow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM edge_log_writer_lock();
    IF NEW.tree_size > (SELECT coalesce(max(idx), -1) + 1 FROM merkle_leaves)
       OR NEW.tree_size < coalesce((SELECT tree_size FROM merkle_tree_heads ORDER BY id DESC LIMIT 1), 0)
       OR NEW.id IS DISTINCT FROM (SELECT coalesce(max(id), 0) + 1 FROM merkle_tree_heads) THEN
        RAISE EXCEPTION 'tree head insert must cover at least the previous head and at most the log'
            USING ERRCODE = 'EE001';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER merkle_tree_heads_grow BEFORE INSERT ON merkle_tree_heads
    FOR EACH ROW EXECUTE FUNCTION merkle_tree_heads_grow();

-- Append-only: every history table refuses UPDATE, DELETE and TRUNCATE.
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY[
        'station_keys', 'enrolment_events', 'station_ledger', 'station_checkpoints', 'items',
        'metadata_history', 'rejections', 'access_log',
        'merkle_leaves', 'merkle_nodes', 'merkle_tree_heads', 'merkle_head_timestamps'
    ] LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I FOR EACH ROW '
                       'EXECUTE FUNCTION edge_refuse_change()', name || '_no_change', name);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT '
                       'EXECUTE FUNCTION edge_refuse_change()', name || '_no_truncate', name);
    END LOOP;
END $$;
