-- Least privilege for the receivers (issue 13): the role that owns the tables (it applies these migrations)
-- can DISABLE TRIGGER, ALTER and DROP, and so defeat every append-only rule above. A receiver need not own
-- anything: it runs as a login role that is a member of the NOLOGIN group edge_central_runtime, which gets
-- exactly the privileges below. The agency's DBA grants the group to the receivers' login role
-- (README, "PostgreSQL roles for the agency DBA"); a single-role install (the owner is also the receiver)
-- keeps working, with a warning at each start.
--
-- edge_grant_runtime() is run here and again by every start that is given the owner's URL
-- (central.index.owner_url), so tables added by later migrations and a group created by the DBA after this
-- migration ran both get their grants. GRANT is idempotent.
CREATE OR REPLACE FUNCTION edge_grant_runtime() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    here text := current_schema();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'edge_central_runtime') THEN
        -- A single-role install whose role may not create roles must still migrate: the group is then
        -- left to the DBA (CREATE ROLE edge_central_runtime NOLOGIN), and the next start with the owner's
        -- URL grants it.
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
            RAISE NOTICE 'role edge_central_runtime does not exist and % may not create it: no grants', current_user;
            RETURN;
        END IF;
        CREATE ROLE edge_central_runtime NOLOGIN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO edge_central_runtime', here);
    -- Every table is read, and written by INSERT: the history tables only ever grow, and the triggers
    -- (owned, like the tables, by the owner) check that each insert extends its chain.
    EXECUTE format('GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA %I TO edge_central_runtime', here);
    -- Identity columns (those 0001 kept) draw from sequences.
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO edge_central_runtime', here);
    -- The schema's version is the owner's record: the runtime reads it (is the schema current?), never writes.
    REVOKE INSERT, UPDATE, DELETE ON schema_version FROM edge_central_runtime;

    -- UPDATE only where the code updates (every UPDATE and INSERT ... ON CONFLICT DO UPDATE in
    -- edge/central/sql, edge/central/postgres, edge/central/tus_shared_store.py). None of them is history:
    --   stations, readers       enrolment upserts and revocation (sql/index.py; history in enrolment_events)
    --   item_case               the current case fields of an item (sql/index.py; history in metadata_history)
    --   officers, devices, cases directories derived from history, upserted (sql/index.py)
    --   console_accounts        password/TOTP changes, failed attempts and lock-outs (sql/console.py)
    --   reader_grants           a grant's upsert (sql/console.py; history in grant_events)
    --   station_units           a station's unit upsert (sql/console.py; history in station_unit_events)
    --   item_sensitive          a marking's upsert (sql/console.py; history in sensitivity_events)
    --   console_sessions        last_seen and the row's MAC on each request (sql/console.py)
    --   fleet_reports           the latest report of each station (sql/equipment.py)
    --   tus_uploads             committed offset, expiry, digest, registration lease (tus_shared_store.py)
    --   lock_extensions_pending attempts and a newer retention of a queued lock (sql/lock_extensions.py)
    GRANT UPDATE ON stations, readers, item_case, officers, devices, cases, console_accounts, reader_grants,
        station_units, item_sensitive, console_sessions, fleet_reports, tus_uploads, lock_extensions_pending
        TO edge_central_runtime;
    -- DELETE only where the code deletes:
    --   reader_grants           a grant withdrawn (sql/console.py; history in grant_events)
    --   item_sensitive, item_sensitive_readers  a marking withdrawn or its readers replaced (sql/console.py)
    --   console_sessions        sign-out, expiry, an account's sessions ended (sql/console.py)
    --   tus_uploads             registered, terminated or purged uploads (tus_shared_store.py; their
    --                           tus_upload_parts go by ON DELETE CASCADE, which runs as the table's owner)
    --   lock_extensions_pending a lock the bucket confirmed (sql/lock_extensions.py)
    -- Nothing else: no Merkle log, ledger, item or trail row can be updated or deleted by the runtime even
    -- with the triggers gone, and it can never ALTER, DROP or TRUNCATE (owner-only).
    GRANT DELETE ON reader_grants, item_sensitive, item_sensitive_readers, console_sessions, tus_uploads,
        lock_extensions_pending TO edge_central_runtime;
END $$;
-- Only the owner runs it (GRANT needs the owner anyway); the runtime has no use for it.
REVOKE EXECUTE ON FUNCTION edge_grant_runtime() FROM PUBLIC;
SELECT edge_grant_runtime();
