-- Claims in running runs and successes recorded together take their steps as arrays, and
-- PostgreSQL planned both statements again on every call. Its plan cache keeps a statement's
-- generic plan only when that plan's estimate is no worse than a plan made for the call's values;
-- for an array that is never so (the generic plan counts 100 elements, a call's plan the real two
-- or three). Planning cost more than running: in the `queue` bench on a private server with
-- `pg_stat_statements.track_planning`, the claim statement was planned on all but a few of its
-- calls (0.5-0.7 ms each, against 0.2-0.5 ms of execution), and the successes' `UPDATE` on every
-- call (0.25 ms, against 0.19 ms).
--
-- Both now run with the session's generic plan, which is fixed to what these statements are: a
-- handful of steps, each reached by its primary key (nested loops, no sequential scan, whatever
-- the table's size or statistics). What they answer and write is unchanged.
--
-- `step_claim_running`: the claim of `runs::claim_in_running_runs` (before, a statement sent by the
-- worker): the run rows locked `FOR SHARE` in id order with their integrations read, then each
-- step claimed if its run is running and the delivery's job id is still the step's. One row per
-- delivery of a step that exists; `again` when the run is not running (nothing was written), for
-- the caller to claim with `step_claim`.
CREATE FUNCTION step_claim_running(p_ids BIGINT[], p_jobs TEXT[], p_worker TEXT)
RETURNS TABLE (step_run_id BIGINT, delivered TEXT, outcome TEXT, run_id UUID, chain TEXT, run_mode TEXT,
               force_sweep BOOLEAN, integration_id BIGINT, integration_name TEXT, pack TEXT, enabled BOOLEAN,
               settings JSONB, step TEXT, shard INT, attempts INT, max_attempts INT, lost_attempts INT,
               max_lost_attempts INT, entity_key TEXT, step_mode TEXT)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
SET enable_mergejoin = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH r AS (
        SELECT x.id AS xid, w.job_id AS job, c.id, c.status, c.chain, c.mode, c.force_sweep,
               i.id AS iid, i.name, i.pack, i.enabled, i.settings
          FROM unnest(p_ids, p_jobs) AS w(id, job_id)
          JOIN step_runs x ON x.id = w.id
          JOIN chain_runs c ON c.id = x.run_id
          JOIN integrations i ON i.id = c.integration_id
         ORDER BY c.id
           FOR SHARE OF c),
     s AS (
        UPDATE step_runs x
           SET status = 'running', attempts = x.attempts + 1, worker = p_worker, started_at = now(),
               heartbeat_at = now(), finished_at = NULL
          FROM r
         WHERE x.id = r.xid AND x.job_id = r.job AND x.status = 'ready' AND r.status = 'running'
        RETURNING x.id, x.job_id, x.step, x.shard, x.attempts, x.max_attempts, x.lost_attempts,
                  x.max_lost_attempts, x.entity_key, x.mode)
    SELECT r.xid, r.job,
           CASE WHEN r.status <> 'running' THEN 'again' WHEN s.step IS NULL THEN 'stale' ELSE 'claimed' END,
           r.id, r.chain, r.mode, r.force_sweep, r.iid, r.name, r.pack, r.enabled, r.settings, s.step,
           s.shard, s.attempts, s.max_attempts, s.lost_attempts, s.max_lost_attempts, s.entity_key, s.mode
      FROM r LEFT JOIN s ON s.id = r.xid AND s.job_id = r.job;
END
$$;

-- `step_succeed_settle` (`0029`), restated: its `UPDATE` runs under the same settings, set for its
-- transaction only (a procedure that commits cannot carry them as `SET` clauses).
CREATE OR REPLACE PROCEDURE step_succeed_settle(
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
    -- Until the commit below: the array's statement planned once per session (see above).
    PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);
    PERFORM set_config('enable_seqscan', 'off', true);
    PERFORM set_config('enable_hashjoin', 'off', true);
    PERFORM set_config('enable_mergejoin', 'off', true);
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
