-- Successes of one worker process recorded together: one round trip, one commit and one call for
-- several steps that ended at about the same time.
--
-- A `CALL step_finish_settle` costs PostgreSQL far more than the row it writes. On 30 fan-outs of
-- 2,000 empty shards claimed in order (pgbench, 8 connections, each claiming three shards with the
-- engine's claim, then finishing them), one `CALL step_finish_settle` per shard cost 0.56–0.72 ms
-- of PostgreSQL's CPU per shard, one call of this procedure for the three 0.46–0.59. The worker's
-- engine (`worker/src/finishes.rs`) sends the successes without effects that are waiting when its
-- previous call returns as one call of this procedure.
--
-- Per step, nothing changes: the row is written as `step_finish` writes a success, under the same
-- fence (id, job, running, worker); a step whose fence no longer holds is left as it is and not
-- named in `finished`. After the commit, each run with a success whose step has no other row still
-- open is settled once, in a transaction of its own (`step_settle`, as `step_settle_after` decides
-- for one success, `0028`); the reconciler settles what a crash in between leaves.

CREATE PROCEDURE step_succeed_settle(
    p_worker TEXT, p_ids BIGINT[], p_jobs TEXT[], p_fetched BIGINT[], p_inserted BIGINT[], p_updated BIGINT[],
    p_unchanged BIGINT[], p_deactivated BIGINT[], p_errors BIGINT[], p_api_calls BIGINT[], p_throttled BIGINT[],
    p_cursor_before TEXT[], p_cursor_after TEXT[], p_guard TEXT[], p_partial BOOLEAN[],
    INOUT finished BIGINT[], INOUT runs UUID[], INOUT ready_ids BIGINT[], INOUT ready_queues TEXT[],
    INOUT ready_runs UUID[], INOUT end_runs UUID[])
LANGUAGE plpgsql AS $$
DECLARE
    settles UUID[] := '{}';
    i INT;
    r UUID;
    s RECORD;
BEGIN
    WITH done AS (
        UPDATE step_runs x SET
            status = 'succeeded',
            error = NULL,
            finished_at = clock_timestamp(),
            duration_ms = (extract(epoch FROM (clock_timestamp() - x.started_at)) * 1000)::bigint,
            fetched = k.fetched, inserted = k.inserted, updated = k.updated, unchanged = k.unchanged,
            deactivated = k.deactivated, errors = k.errors, api_calls = k.api_calls, throttled = k.throttled,
            cursor_before = k.cursor_before, cursor_after = k.cursor_after, guard = k.guard, partial = k.partial
          FROM unnest(p_ids, p_jobs, p_fetched, p_inserted, p_updated, p_unchanged, p_deactivated, p_errors,
                      p_api_calls, p_throttled, p_cursor_before, p_cursor_after, p_guard, p_partial)
               AS k(id, job, fetched, inserted, updated, unchanged, deactivated, errors, api_calls, throttled,
                    cursor_before, cursor_after, guard, partial)
         WHERE x.id = k.id AND x.job_id = k.job AND x.status = 'running'
           AND (p_worker IS NULL OR x.worker = p_worker)
        RETURNING x.id, x.run_id)
    SELECT coalesce(array_agg(done.id), '{}'), coalesce(array_agg(done.run_id), '{}') INTO finished, runs FROM done;
    ready_ids := '{}';
    ready_queues := '{}';
    ready_runs := '{}';
    end_runs := '{}';
    IF cardinality(finished) = 0 THEN
        RETURN;
    END IF;
    COMMIT;
    FOR i IN 1 .. cardinality(finished) LOOP
        IF NOT step_siblings_open(finished[i]) AND NOT runs[i] = ANY(settles) THEN
            settles := settles || runs[i];
        END IF;
    END LOOP;
    -- One transaction per run, as a settle alone: its advisory locks are never held across runs.
    FOREACH r IN ARRAY settles LOOP
        SELECT * INTO s FROM step_settle(r);
        ready_ids := ready_ids || s.ready_ids;
        ready_queues := ready_queues || s.ready_queues;
        ready_runs := ready_runs || array_fill(r, ARRAY[cardinality(s.ready_ids)]);
        IF s.needs_end THEN
            end_runs := end_runs || r;
        END IF;
        COMMIT;
    END LOOP;
END
$$;
