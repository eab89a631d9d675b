-- A run's settle reads its steps through the indexes, whatever the planner's statistics say.
--
-- Each settle (`step_settle`) asks whether a pending step can be promoted (`run_unmet_steps`,
-- `run_promotable`) and whether anything in the run is still open (`run_open`). Each question is an
-- `EXISTS` that stops at the first open row. While `step_runs` holds few runs (a new deployment, a
-- first large fan-out), the planner expects half of its rows to match and reads the table from its
-- start instead of probing `step_runs_unsucceeded`. The rows of steps ended first lie there, so each
-- probe read every ended shard before an open one: on a 2,000-shard fan-out half done, 1,000 rows
-- for each of two probes, in every settle (0.51 ms for a settle that promotes nothing, against
-- 0.24 ms through the indexes).
--
-- These functions now plan without sequential scans. Their statements all have an index on the run
-- (`step_runs_pending`, `step_runs_unsucceeded`). `run_open` was a SQL function; SQL functions that
-- cannot be inlined are parsed and planned on every call, so it is now PL/pgSQL, whose plans a
-- session keeps. What each function answers is unchanged.

CREATE OR REPLACE FUNCTION run_open(p_run UUID)
RETURNS BOOLEAN
LANGUAGE plpgsql STABLE
SET enable_seqscan = off AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM step_runs s
                    WHERE s.run_id = p_run AND s.status IN ('pending', 'ready', 'running'));
END
$$;

ALTER FUNCTION run_unmet_steps(UUID) SET enable_seqscan = off;
ALTER FUNCTION run_promotable(UUID) SET enable_seqscan = off;
ALTER FUNCTION run_promote(UUID) SET enable_seqscan = off;

-- As `0026`, and a run with a pending step is open: the settle reads the pending steps once, for
-- whether one can be promoted and whether one is there, and probes the run's other open steps
-- (`run_open`) only when none is pending. A fan-out's shards settle while its next step waits.
CREATE OR REPLACE FUNCTION step_settle(p_run UUID)
RETURNS TABLE (ready_ids BIGINT[], ready_queues TEXT[], needs_end BOOLEAN)
LANGUAGE plpgsql
SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    status TEXT;
    grp TEXT;
    unmet TEXT[];
    pending BOOLEAN := false;
    promotable BOOLEAN := false;
BEGIN
    -- Settles of one run share this lock; the transitions that hold the run row `FOR UPDATE`
    -- take it exclusively (`run_settle_key`), so a settle waits for them and sees what they wrote.
    -- A settle with nothing to promote writes nothing: its commit costs no flush.
    PERFORM pg_advisory_xact_lock_shared(run_settle_key(p_run));
    SELECT c.status, c.exclusion_group INTO status, grp FROM chain_runs c WHERE c.id = p_run;
    needs_end := false;
    IF NOT FOUND THEN
        ready_ids := '{}';
        ready_queues := '{}';
        RETURN NEXT;
        RETURN;
    END IF;
    IF status = 'running' THEN
        unmet := run_unmet_steps(p_run);
        SELECT count(*) > 0, coalesce(bool_or(NOT (s.prerequisites && unmet)), false)
          INTO pending, promotable
          FROM step_runs s
         WHERE s.run_id = p_run AND s.status = 'pending';
    END IF;
    IF promotable THEN
        -- Settles that promote take turns: each one's promotion reads the steps after the
        -- previous one committed, so none re-reads (and locks) rows another just promoted.
        PERFORM pg_advisory_xact_lock(run_promote_key(p_run));
        SELECT array_agg(p.ready_id ORDER BY p.ready_id), array_agg(p.ready_queue ORDER BY p.ready_id)
          INTO ready_ids, ready_queues
          FROM run_promote(p_run) p;
    END IF;
    IF status IN ('queued', 'running') THEN
        needs_end := ready_ids IS NULL AND NOT pending AND NOT run_open(p_run);
    ELSE
        needs_end := grp IS NOT NULL;
    END IF;
    ready_ids := coalesce(ready_ids, '{}');
    ready_queues := coalesce(ready_queues, '{}');
    RETURN NEXT;
END
$$;
