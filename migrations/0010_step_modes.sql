-- The mode each step of a run reads in, decided when the run is created: the trigger's per-step
-- choice, else the chain's pinned mode for the step, else the run's mode. NULL on rows created
-- before this migration (workers then fall back to the chain definition and the run's mode).
ALTER TABLE step_runs ADD COLUMN mode TEXT CHECK (mode IN ('full', 'incremental'));

-- When `group_members_sync` last read a group's memberships completely (its fetch start): an
-- incremental run reads only groups changed since, never read, or holding pending memberships.
ALTER TABLE partner_lms_groups ADD COLUMN members_read_at TIMESTAMPTZ;

-- When `sync_enrollments` last read a partner user's whole transcript (its batch's fetch start): an
-- incremental run reads users never read, or active within the look-back before their last read.
ALTER TABLE partner_lms_users ADD COLUMN transcript_read_at TIMESTAMPTZ;
