-- Producers and workers connect as a runtime role that owns no table (`syncfleet migrate` grants it
-- SELECT, INSERT, UPDATE and DELETE); the owner role that runs these migrations owns them all. Before
-- PostgreSQL 17 only a table's owner may `ANALYZE` it, so the pull engine refreshes the statistics of
-- a table it wrote through this function, which runs as the owner (the role these migrations run
-- as) and analyzes only a table that role owns: nothing the runtime role could not read already,
-- and no other effect. The argument is resolved by the caller (`'erp_items'::regclass`), so the
-- function itself looks up no name. Returns whether it analyzed.
CREATE FUNCTION syncfleet_analyze(target REGCLASS) RETURNS BOOLEAN
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_class c
         WHERE c.oid = target AND c.relkind IN ('r', 'p', 'm') AND c.relpersistence <> 't'
           AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
           AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
    ) THEN
        RETURN FALSE;
    END IF;
    EXECUTE format('ANALYZE %s', target);
    RETURN TRUE;
END $$;

REVOKE ALL ON FUNCTION syncfleet_analyze(REGCLASS) FROM PUBLIC;
