-- The agency's equipment at the central (edge/central/sqlite/equipment.py has the same tables and rules):
-- every officer-list version the central issued, append-only and numbered 1, 2, 3... without a gap, and
-- the latest fleet report of each station.
CREATE TABLE officer_lists (
    version bigint PRIMARY KEY CHECK (version >= 1),
    sha256 text NOT NULL,              -- officers_sha256 of the signed list
    issued_at text NOT NULL,
    by text NOT NULL,
    officers integer NOT NULL,
    envelope bytea NOT NULL            -- canonical JSON of the signed envelope
);

-- A version is one more than the newest, read under the writer lock (which the central's transaction
-- holds already): two receivers issuing at once are serialised, and the second signs the next number.
CREATE FUNCTION officer_lists_next_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    newest bigint;
BEGIN
    PERFORM edge_log_writer_lock();
    SELECT coalesce(max(version), 0) INTO newest FROM officer_lists;
    IF NEW.version <> newest + 1 THEN
        RAISE EXCEPTION 'officer_lists: version % refused, the next is %', NEW.version, newest + 1
            USING ERRCODE = 'EE001';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER officer_lists_next_version BEFORE INSERT ON officer_lists
    FOR EACH ROW EXECUTE FUNCTION officer_lists_next_version();
CREATE TRIGGER officer_lists_no_change BEFORE UPDATE OR DELETE ON officer_lists
    FOR EACH ROW EXECUTE FUNCTION edge_refuse_change();
CREATE TRIGGER officer_lists_no_truncate BEFORE TRUNCATE ON officer_lists
    FOR EACH STATEMENT EXECUTE FUNCTION edge_refuse_change();

CREATE TABLE fleet_reports (
    station text PRIMARY KEY,
    received text NOT NULL,            -- central UTC time
    report bytea NOT NULL              -- canonical JSON, checked
);
