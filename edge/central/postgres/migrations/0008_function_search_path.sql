-- Review 13: the functions of 0001-0007 name tables (and edge_log_writer_lock) without a schema and fix
-- no search_path, so they resolve names through the caller's. PostgreSQL searches pg_temp before the
-- schema for relations, and PUBLIC has TEMPORARY on a database by default: a runtime role could
-- CREATE TEMP TABLE merkle_leaves (or station_ledger, trail_seals, ...) and have an append-only trigger
-- check its insert into the real table against the shadow. Each function now runs with the central's
-- schema (the one these migrations were applied in, current_schema() here, as edge_grant_runtime uses)
-- after pg_catalog, and pg_temp explicitly last so a temp table can never come first. Applied migrations
-- are not edited: a database already at 0007 gets this by migrating.
--
-- edge_grant_runtime (0007) is left as it is: it takes its schema from current_schema(), which a path
-- starting with pg_catalog would turn into pg_catalog, and only the owner may run it (EXECUTE is revoked
-- from PUBLIC), in the owner's own session, where no other role's temp table exists.
--
-- TEMPORARY itself is left granted: it is a database-level privilege the DBA may rely on for other users
-- of the database, and with the path pinned a temp table can no longer reach any of these functions.
DO $$
DECLARE
    here text := current_schema();
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY[
        'edge_refuse_change', 'edge_log_writer_lock', 'station_ledger_extends_head', 'merkle_leaves_extend',
        'merkle_nodes_complete', 'merkle_tree_heads_grow', 'edge_next_id', 'edge_trail_row_sealed',
        'officer_lists_next_version'
    ] LOOP
        EXECUTE format('ALTER FUNCTION %I.%I() SET search_path = pg_catalog, %I, pg_temp', here, fn, here);
    END LOOP;
END $$;
