-- A run's promotion in time linear in its steps, whatever the planner's statistics say.
--
-- Before, each pending step looked for an unmet prerequisite row with
-- `p.run_id = s.run_id AND p.step = ANY(s.prerequisites)`. The planner chose whether the array
-- became an index condition, and on fresh statistics it did not: each of a fan-out's 2,000 pending
-- shards then read all 2,000 open rows of its run, and the promotion that made them ready took
-- about a second (4 million rows filtered; the reconciler's search for stranded runs as long).
--
-- Now the prerequisites the run's pending steps name are checked once each, by a probe of
-- `step_runs_unsucceeded` on (run, step) that stops at the first open row, and a pending step is
-- promotable when its prerequisites share no name with the unmet ones. What counts as met is
-- unchanged: every row of the prerequisite succeeded, or failed while optional.

-- The prerequisite steps, named by the run's pending steps, of which some row is not met.
CREATE FUNCTION run_unmet_steps(p_run UUID)
RETURNS TEXT[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    wanted TEXT;
    unmet TEXT[] := '{}';
BEGIN
    FOR wanted IN
        SELECT DISTINCT w.step
          FROM step_runs s, unnest(s.prerequisites) AS w(step)
         WHERE s.run_id = p_run AND s.status = 'pending'
    LOOP
        IF EXISTS (SELECT 1 FROM step_runs p
                    WHERE p.run_id = p_run AND p.step = wanted AND p.status <> 'succeeded'
                      AND NOT (p.status = 'failed' AND NOT p.required)) THEN
            unmet := unmet || wanted;
        END IF;
    END LOOP;
    RETURN unmet;
END
$$;

-- Whether some pending step of the run has all its prerequisites met.
CREATE FUNCTION run_promotable(p_run UUID)
RETURNS BOOLEAN
LANGUAGE plpgsql STABLE AS $$
DECLARE
    unmet TEXT[] := run_unmet_steps(p_run);
BEGIN
    RETURN EXISTS (SELECT 1 FROM step_runs s
                    WHERE s.run_id = p_run AND s.status = 'pending' AND NOT (s.prerequisites && unmet));
END
$$;

-- Whether some step of the run is still to run or running.
CREATE FUNCTION run_open(p_run UUID)
RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM step_runs s
                    WHERE s.run_id = p_run AND s.status IN ('pending', 'ready', 'running'))
$$;

-- Whether a running run is owed a settle: a pending step can be promoted, or nothing is open
-- (`runs::settle_stranded`, the reconciler's net for a settle that never ran). Per run, with index
-- probes; the query it replaces could hash every open step of every run instead.
CREATE FUNCTION run_settle_due(p_run UUID)
RETURNS BOOLEAN
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN run_promotable(p_run) OR NOT run_open(p_run);
END
$$;

-- Makes every pending step of the run whose prerequisites are all met `ready` (`runs::promote_ready`
-- and `step_settle`). Exactly once: the update re-checks `pending` on each row it locks. The unmet
-- names are read just before the update: a name met in between (a finish committed) leaves its
-- steps to that finish's own settle, which runs after its commit; a met step never becomes unmet
-- while the caller holds the run's settle lock (resume takes it exclusively).
CREATE FUNCTION run_promote(p_run UUID)
RETURNS TABLE (ready_id BIGINT, ready_queue TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    unmet TEXT[] := run_unmet_steps(p_run);
BEGIN
    RETURN QUERY
    UPDATE step_runs s
       SET status = 'ready', ready_at = now(), not_before = now(), dispatched_at = NULL,
           job_id = step_job_id(s.run_id, s.step, s.shard, s.sharded, s.attempts + 1, s.lease_waits)
     WHERE s.run_id = p_run AND s.status = 'pending' AND NOT (s.prerequisites && unmet)
    RETURNING s.id, s.queue;
END
$$;

-- As `0023`, with the promotion above.
CREATE OR REPLACE FUNCTION step_settle(p_run UUID)
RETURNS TABLE (ready_ids BIGINT[], ready_queues TEXT[], needs_end BOOLEAN)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    status TEXT;
    grp TEXT;
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
    IF status = 'running' AND run_promotable(p_run) THEN
        -- Settles that promote take turns: each one's promotion reads the steps after the
        -- previous one committed, so none re-reads (and locks) rows another just promoted.
        PERFORM pg_advisory_xact_lock(run_promote_key(p_run));
        SELECT array_agg(p.ready_id ORDER BY p.ready_id), array_agg(p.ready_queue ORDER BY p.ready_id)
          INTO ready_ids, ready_queues
          FROM run_promote(p_run) p;
    END IF;
    IF status IN ('queued', 'running') THEN
        needs_end := ready_ids IS NULL AND NOT run_open(p_run);
    ELSE
        needs_end := grp IS NOT NULL;
    END IF;
    ready_ids := coalesce(ready_ids, '{}');
    ready_queues := coalesce(ready_queues, '{}');
    RETURN NEXT;
END
$$;
