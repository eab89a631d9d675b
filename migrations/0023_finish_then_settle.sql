-- A finish writes its own step row and nothing else; what it makes ready is promoted after it
-- commits (`step_settle`). Finishes of one run no longer wait for each other: before, each held the
-- run row `FOR UPDATE` until its commit had reached the disk, so the 2,000 shards of one run
-- finished one commit at a time.
--
-- Why every promotion still happens, exactly once:
-- - Exactly once: a promotion is `UPDATE … WHERE status = 'pending'`. Two settles promoting the same
--   step take its row lock one after the other; the second re-reads the row, finds it `ready`, and
--   writes nothing. A run ends by `UPDATE … WHERE status IN ('queued', 'running')` the same way.
-- - Never missed: a settle runs after its finish committed, in a new snapshot. Of the finishes a
--   step waits on, the one that commits last settles after every other one committed, so it sees
--   them all. A settle holds the run's advisory lock shared, which a transition holding the run
--   row `FOR UPDATE` (a step failing for good, resume, cancel, a run's end) holds exclusively: it
--   is waited for, and seen, as before. A settle with nothing to promote takes no row lock and
--   writes nothing. Settles that promote take turns (a second advisory lock), so a settle never
--   re-reads rows another has just promoted: PostgreSQL would lock each such row, under claims
--   waiting for it, until that settle's end.
-- - A crash between the commit and the settle (the worker killed between two statements, or
--   PostgreSQL between the two commits of `step_finish_settle`) leaves a step pending that could run,
--   or a run with nothing open still `running`: the reconciler settles such runs
--   (`runs::settle_stranded`).

DROP FUNCTION step_finish(BIGINT, TEXT, TEXT, TEXT, TEXT, FLOAT8, BIGINT, BIGINT, BIGINT, BIGINT, BIGINT, BIGINT,
                          BIGINT, BIGINT, TEXT, TEXT, TEXT, BOOLEAN, BOOLEAN, BOOLEAN);

-- Records the end of an attempt that succeeded, will be retried (`p_status = 'ready'`), or was
-- cancelled with its run (`cancelled`): the step row only, fenced on (id, job, running, worker).
-- A step failing for good goes through the multi-statement path (the run's error text is built
-- there). `finished`: false when the fence no longer holds (nothing was written). `settle`: the
-- step ended (not a retry), so `step_settle(run_id)` must run once this commits.
-- The advisory lock keys of a run: settles hold the first shared; a step failing for good, resume,
-- cancel and a run's end hold it exclusively (after the run row). Settles that promote hold the
-- second.
CREATE FUNCTION run_settle_key(p_run UUID) RETURNS BIGINT
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended('settle:' || p_run::text, 0) $$;
CREATE FUNCTION run_promote_key(p_run UUID) RETURNS BIGINT
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended('promote:' || p_run::text, 0) $$;

CREATE FUNCTION step_finish(
    p_id BIGINT, p_job TEXT, p_worker TEXT, p_status TEXT, p_error TEXT, p_retry_secs FLOAT8,
    p_fetched BIGINT, p_inserted BIGINT, p_updated BIGINT, p_unchanged BIGINT, p_deactivated BIGINT,
    p_errors BIGINT, p_api_calls BIGINT, p_throttled BIGINT, p_cursor_before TEXT, p_cursor_after TEXT,
    p_guard TEXT, p_partial BOOLEAN, p_lost BOOLEAN)
RETURNS TABLE (finished BOOLEAN, run_id UUID, settle BOOLEAN)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    run UUID;
BEGIN
    IF p_status NOT IN ('succeeded', 'ready', 'cancelled') THEN
        RAISE EXCEPTION 'step_finish: status % is not finished here', p_status;
    END IF;
    UPDATE step_runs x SET
        status = p_status,
        error = p_error,
        finished_at = CASE WHEN p_status = 'ready' THEN NULL ELSE clock_timestamp() END,
        duration_ms = (extract(epoch FROM (clock_timestamp() - x.started_at)) * 1000)::bigint,
        fetched = p_fetched, inserted = p_inserted, updated = p_updated, unchanged = p_unchanged,
        deactivated = p_deactivated, errors = p_errors, api_calls = p_api_calls, throttled = p_throttled,
        cursor_before = p_cursor_before, cursor_after = p_cursor_after, guard = p_guard,
        partial = p_partial,
        lost_attempts = x.lost_attempts + CASE WHEN p_lost THEN 1 ELSE 0 END,
        worker = CASE WHEN p_status = 'ready' THEN NULL ELSE x.worker END,
        ready_at = CASE WHEN p_status = 'ready' THEN now() ELSE x.ready_at END,
        not_before = CASE WHEN p_status = 'ready' THEN now() + make_interval(secs => p_retry_secs)
                          ELSE x.not_before END,
        dispatched_at = CASE WHEN p_status = 'ready' THEN NULL ELSE x.dispatched_at END,
        job_id = CASE WHEN p_status = 'ready'
                      THEN step_job_id(x.run_id, x.step, x.shard, x.sharded, x.attempts + 1, x.lease_waits)
                      ELSE x.job_id END
     WHERE x.id = p_id AND x.job_id = p_job AND x.status = 'running' AND (p_worker IS NULL OR x.worker = p_worker)
    RETURNING x.run_id INTO run;
    finished := FOUND;
    run_id := run;
    settle := FOUND AND p_status <> 'ready';
    RETURN NEXT;
END
$$;

-- What the steps ended so far make possible, seen after their commits: every pending step of a
-- running run whose prerequisites are all met (each row succeeded, or failed while optional)
-- becomes ready (as `runs::promote_ready`). `needs_end`: the run is active and nothing in it is open
-- any more, or it is no longer active and belongs to an exclusion group; the caller then ends it in
-- a transaction with its hook and starts the group's waiting run (`runs::end_run`).
CREATE FUNCTION step_settle(p_run UUID)
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
    IF status = 'running' AND EXISTS (
        SELECT 1 FROM step_runs s
         WHERE s.run_id = p_run AND s.status = 'pending'
           AND NOT EXISTS (
               SELECT 1 FROM step_runs p
                WHERE p.run_id = s.run_id AND p.step = ANY(s.prerequisites)
                  AND NOT (p.status = 'succeeded' OR (p.status = 'failed' AND NOT p.required)))) THEN
        -- Settles that promote take turns: each one's promotion reads the steps after the
        -- previous one committed, so none re-reads (and locks) rows another just promoted.
        PERFORM pg_advisory_xact_lock(run_promote_key(p_run));
        WITH promoted AS (
            UPDATE step_runs s
               SET status = 'ready', ready_at = now(), not_before = now(), dispatched_at = NULL,
                   job_id = step_job_id(s.run_id, s.step, s.shard, s.sharded, s.attempts + 1, s.lease_waits)
             WHERE s.run_id = p_run AND s.status = 'pending'
               AND NOT EXISTS (
                   SELECT 1 FROM step_runs p
                    WHERE p.run_id = s.run_id AND p.step = ANY(s.prerequisites)
                      AND NOT (p.status = 'succeeded' OR (p.status = 'failed' AND NOT p.required)))
            RETURNING s.id, s.queue)
        SELECT array_agg(id ORDER BY id), array_agg(queue ORDER BY id) INTO ready_ids, ready_queues FROM promoted;
    END IF;
    IF status IN ('queued', 'running') THEN
        needs_end := ready_ids IS NULL
            AND NOT EXISTS (SELECT 1 FROM step_runs s
                             WHERE s.run_id = p_run AND s.status IN ('pending', 'ready', 'running'));
    ELSE
        needs_end := grp IS NOT NULL;
    END IF;
    ready_ids := coalesce(ready_ids, '{}');
    ready_queues := coalesce(ready_queues, '{}');
    RETURN NEXT;
END
$$;

-- The worker engine's finish with no effects of the step to commit, in one round trip: the finish
-- commits on its own, then the settle runs in a transaction of its own. Call it with `CALL` outside
-- any transaction block (it commits), passing NULL for the last four (output) arguments.
CREATE PROCEDURE step_finish_settle(
    p_id BIGINT, p_job TEXT, p_worker TEXT, p_status TEXT, p_error TEXT, p_retry_secs FLOAT8,
    p_fetched BIGINT, p_inserted BIGINT, p_updated BIGINT, p_unchanged BIGINT, p_deactivated BIGINT,
    p_errors BIGINT, p_api_calls BIGINT, p_throttled BIGINT, p_cursor_before TEXT, p_cursor_after TEXT,
    p_guard TEXT, p_partial BOOLEAN, p_lost BOOLEAN,
    INOUT finished BOOLEAN, INOUT run_id UUID, INOUT ready_ids BIGINT[], INOUT ready_queues TEXT[],
    INOUT needs_end BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    f RECORD;
    s RECORD;
BEGIN
    SELECT * INTO f FROM step_finish(p_id, p_job, p_worker, p_status, p_error, p_retry_secs, p_fetched,
        p_inserted, p_updated, p_unchanged, p_deactivated, p_errors, p_api_calls, p_throttled,
        p_cursor_before, p_cursor_after, p_guard, p_partial, p_lost);
    finished := f.finished;
    run_id := f.run_id;
    ready_ids := '{}';
    ready_queues := '{}';
    needs_end := false;
    IF NOT f.settle THEN
        RETURN;
    END IF;
    COMMIT;
    SELECT * INTO s FROM step_settle(f.run_id);
    ready_ids := s.ready_ids;
    ready_queues := s.ready_queues;
    needs_end := s.needs_end;
END
$$;
