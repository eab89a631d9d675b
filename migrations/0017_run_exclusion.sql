-- Exclusion between chains of one integration. A pack declares groups of chains that must not run
-- at the same time for one integration (`Pack::exclusive_chains`); a run of such a chain carries
-- its group's name. At most one run of a group per integration is active and not waiting: the
-- database refuses a second, as it refuses a second active run of one chain.
--
-- A run that would overlap waits: it is `queued` with `waiting_for` set (the run it waits behind,
-- as last known), its steps stay `pending` and nothing is dispatched. When the group's active run
-- ends (and no step of the group's runs is still running), the oldest waiting run is promoted:
-- `waiting_for` becomes NULL and its root steps ready, in the transaction that ended the other run
-- or by the reconciler. Not a foreign key: the run waited for may be purged from history.
ALTER TABLE chain_runs
    ADD COLUMN exclusion_group TEXT,
    ADD COLUMN waiting_for     UUID;

CREATE UNIQUE INDEX chain_runs_one_active_exclusive ON chain_runs (integration_id, exclusion_group)
    WHERE status IN ('queued', 'running') AND exclusion_group IS NOT NULL AND waiting_for IS NULL;

CREATE INDEX chain_runs_waiting ON chain_runs (integration_id, exclusion_group, created_at)
    WHERE status = 'queued' AND waiting_for IS NOT NULL;
