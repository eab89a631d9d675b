-- The latest completed run of a chain for an integration, read at every `/metrics` scrape
-- (`syncfleet_last_success_timestamp_seconds`): one index lookup per pair.
CREATE INDEX chain_runs_last_success ON chain_runs (chain, integration_id, finished_at DESC)
    WHERE status = 'completed';
