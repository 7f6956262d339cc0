-- What the index reads to decide which items a reader may see (edge/central/sqlite/console.py has the same
-- tables): the unit of each station and of each accepted item, sensitive markings with their named
-- readers, and the byte ranges served per playback. The console's accounts, grants and sessions follow
-- with the console store.
CREATE TABLE station_units (
    station text PRIMARY KEY,
    unit_code text NOT NULL,
    assigned_utc text NOT NULL,
    by text NOT NULL
);
CREATE TABLE item_units (
    item text PRIMARY KEY REFERENCES items (item),
    unit_code text,                    -- NULL: unknown; only supervisors see the item
    source text NOT NULL CHECK (source IN ('station', 'manifest', 'none'))
);
CREATE INDEX item_units_unit ON item_units (unit_code, item);
CREATE TABLE item_sensitive (
    item text PRIMARY KEY REFERENCES items (item),
    marked_utc text NOT NULL,
    by text NOT NULL,
    reason text NOT NULL
);
CREATE TABLE item_sensitive_readers (
    item text NOT NULL REFERENCES item_sensitive (item) ON DELETE CASCADE,
    reader text NOT NULL,
    PRIMARY KEY (item, reader)
);
CREATE TABLE media_ranges (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    access_id bigint NOT NULL,         -- the access_log row of the playback
    time text NOT NULL,
    first_byte bigint NOT NULL,
    last_byte bigint NOT NULL
);
CREATE INDEX media_ranges_access ON media_ranges (access_id);
-- An item's unit is fixed at acceptance: reassigning a station later moves no evidence.
CREATE TRIGGER item_units_no_change BEFORE UPDATE OR DELETE ON item_units
    FOR EACH ROW EXECUTE FUNCTION edge_refuse_change();
CREATE TRIGGER item_units_no_truncate BEFORE TRUNCATE ON item_units
    FOR EACH STATEMENT EXECUTE FUNCTION edge_refuse_change();
CREATE TRIGGER media_ranges_no_change BEFORE UPDATE OR DELETE ON media_ranges
    FOR EACH ROW EXECUTE FUNCTION edge_refuse_change();
CREATE TRIGGER media_ranges_no_truncate BEFORE TRUNCATE ON media_ranges
    FOR EACH STATEMENT EXECUTE FUNCTION edge_refuse_change();
