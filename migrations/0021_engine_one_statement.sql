-- The worker engine's claim and finish in one statement each (`store::runs::claim`,
-- `store::runs::finish_step_in`): the same transitions as the multi-statement path, in the same lock
-- order (the run row first, then step rows), fenced on (step_run_id, job_id, status, worker).

-- Claims a ready step for a worker: `claimed` with what the worker needs, `stale` (not this job's
-- or not ready), or `inactive` (the run is no longer active: the step was cancelled). The first
-- claim of a run starts it (`queued` → `running`) and records its `run.started` hook (as
-- `hooks::run_started_in_tx`), committed with the claim.
CREATE FUNCTION step_claim(p_id BIGINT, p_job TEXT, p_worker TEXT)
RETURNS TABLE (outcome TEXT, run_id UUID, chain TEXT, run_mode TEXT, force_sweep BOOLEAN,
               integration_id BIGINT, integration_name TEXT, pack TEXT, enabled BOOLEAN, settings JSONB,
               step TEXT, shard INT, attempts INT, max_attempts INT, lost_attempts INT,
               max_lost_attempts INT, entity_key TEXT, step_mode TEXT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r RECORD;
    s RECORD;
    started UUID;
BEGIN
    UPDATE chain_runs c SET status = 'running', started_at = now()
     WHERE c.id = (SELECT x.run_id FROM step_runs x WHERE x.id = p_id) AND c.status = 'queued'
    RETURNING c.id INTO started;
    IF started IS NOT NULL THEN
        INSERT INTO run_hooks (run_id, event) VALUES (started, 'run.started')
            ON CONFLICT (run_id, event) DO NOTHING;
    END IF;
    SELECT c.id, c.status, c.chain, c.mode, c.force_sweep, i.id AS iid, i.name, i.pack, i.enabled, i.settings
      INTO r
      FROM chain_runs c JOIN integrations i ON i.id = c.integration_id
     WHERE c.id = (SELECT x.run_id FROM step_runs x WHERE x.id = p_id)
       FOR SHARE OF c;
    IF NOT FOUND THEN
        outcome := 'stale';
        RETURN NEXT;
        RETURN;
    END IF;
    IF r.status <> 'running' THEN
        UPDATE step_runs x SET status = 'cancelled', finished_at = now()
         WHERE x.id = p_id AND x.job_id = p_job AND x.status IN ('pending', 'ready');
        outcome := CASE WHEN FOUND THEN 'inactive' ELSE 'stale' END;
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE step_runs x
       SET status = 'running', attempts = x.attempts + 1, worker = p_worker, started_at = now(),
           heartbeat_at = now(), finished_at = NULL
     WHERE x.id = p_id AND x.job_id = p_job AND x.status = 'ready'
    RETURNING x.step, x.shard, x.attempts, x.max_attempts, x.lost_attempts, x.max_lost_attempts,
              x.entity_key, x.mode
      INTO s;
    IF NOT FOUND THEN
        outcome := 'stale';
        RETURN NEXT;
        RETURN;
    END IF;
    outcome := 'claimed';
    run_id := r.id; chain := r.chain; run_mode := r.mode; force_sweep := r.force_sweep;
    integration_id := r.iid; integration_name := r.name; pack := r.pack; enabled := r.enabled;
    settings := r.settings;
    step := s.step; shard := s.shard; attempts := s.attempts; max_attempts := s.max_attempts;
    lost_attempts := s.lost_attempts; max_lost_attempts := s.max_lost_attempts;
    entity_key := s.entity_key; step_mode := s.mode;
    RETURN NEXT;
END
$$;

-- Records the end of an attempt that succeeded, will be retried (`p_status = 'ready'`), or was
-- cancelled with its run (`cancelled`), and promotes what it made ready. A step failing for good
-- goes through the multi-statement path (the run's error text is built there).
--
-- `finished`: false when the fence no longer holds (nothing was written). `run_ended`: this
-- statement ended the run (the caller records the `run.ended` hook in the same transaction).
-- `group_check`: the run is not active and has an exclusion group (the caller promotes the group's
-- waiting run in the same transaction). With `p_alone` (the statement is its own transaction) a
-- finish that ends the run or needs the group check raises SQLSTATE `SF001` instead, so that
-- nothing commits and the caller repeats the finish inside a transaction.
CREATE FUNCTION step_finish(
    p_id BIGINT, p_job TEXT, p_worker TEXT, p_status TEXT, p_error TEXT, p_retry_secs FLOAT8,
    p_fetched BIGINT, p_inserted BIGINT, p_updated BIGINT, p_unchanged BIGINT, p_deactivated BIGINT,
    p_errors BIGINT, p_api_calls BIGINT, p_throttled BIGINT, p_cursor_before TEXT, p_cursor_after TEXT,
    p_guard TEXT, p_partial BOOLEAN, p_lost BOOLEAN, p_alone BOOLEAN)
RETURNS TABLE (finished BOOLEAN, run_id UUID, chain TEXT, run_status TEXT, run_ended BOOLEAN,
               group_check BOOLEAN, ready_ids BIGINT[], ready_queues TEXT[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r RECORD;
    ended_status TEXT;
BEGIN
    IF p_status NOT IN ('succeeded', 'ready', 'cancelled') THEN
        RAISE EXCEPTION 'step_finish: status % is not finished here', p_status;
    END IF;
    SELECT c.id, c.status, c.chain, c.exclusion_group INTO r FROM chain_runs c
     WHERE c.id = (SELECT x.run_id FROM step_runs x WHERE x.id = p_id) FOR UPDATE;
    finished := false;
    run_ended := false;
    group_check := false;
    IF NOT FOUND THEN
        RETURN NEXT;
        RETURN;
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
     WHERE x.id = p_id AND x.job_id = p_job AND x.status = 'running' AND (p_worker IS NULL OR x.worker = p_worker);
    IF NOT FOUND THEN
        RETURN NEXT;
        RETURN;
    END IF;
    finished := true;
    run_id := r.id;
    chain := r.chain;
    IF r.status = 'running' AND p_status <> 'ready' THEN
        -- Every pending step whose prerequisites are all met (each row succeeded, or failed while
        -- optional), as `runs::promote_ready`.
        WITH promoted AS (
            UPDATE step_runs s
               SET status = 'ready', ready_at = now(), not_before = now(), dispatched_at = NULL,
                   job_id = step_job_id(s.run_id, s.step, s.shard, s.sharded, s.attempts + 1, s.lease_waits)
             WHERE s.run_id = r.id AND s.status = 'pending'
               AND NOT EXISTS (
                   SELECT 1 FROM step_runs p
                    WHERE p.run_id = s.run_id AND p.step = ANY(s.prerequisites)
                      AND NOT (p.status = 'succeeded' OR (p.status = 'failed' AND NOT p.required)))
            RETURNING s.id, s.queue)
        SELECT array_agg(id ORDER BY id), array_agg(queue ORDER BY id) INTO ready_ids, ready_queues FROM promoted;
    END IF;
    -- The run ends once no step is open, as `runs::finalize_run`.
    IF ready_ids IS NULL AND p_status <> 'ready' THEN
        UPDATE chain_runs c
           SET status = CASE
                   WHEN EXISTS (SELECT 1 FROM step_runs s WHERE s.run_id = r.id AND s.status = 'failed' AND s.required)
                       THEN 'failed'
                   WHEN EXISTS (SELECT 1 FROM step_runs s WHERE s.run_id = r.id
                                   AND (s.status = 'failed' OR (s.status = 'succeeded' AND s.partial)))
                       THEN 'partial'
                   ELSE 'completed' END,
               finished_at = now()
         WHERE c.id = r.id AND c.status IN ('queued', 'running')
           AND NOT EXISTS (SELECT 1 FROM step_runs s
                            WHERE s.run_id = r.id AND s.status IN ('pending', 'ready', 'running'))
        RETURNING c.status INTO ended_status;
        IF FOUND THEN
            run_ended := true;
        END IF;
    END IF;
    run_status := coalesce(ended_status, r.status);
    group_check := p_status <> 'ready' AND r.exclusion_group IS NOT NULL
                   AND run_status NOT IN ('queued', 'running');
    IF p_alone AND (run_ended OR group_check) THEN
        RAISE EXCEPTION USING ERRCODE = 'SF001', MESSAGE = 'step_finish: the finish needs a transaction';
    END IF;
    ready_ids := coalesce(ready_ids, '{}');
    ready_queues := coalesce(ready_queues, '{}');
    RETURN NEXT;
END
$$;
