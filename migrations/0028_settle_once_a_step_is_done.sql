-- A success settles its run only once its step is done.
--
-- A settle (`step_settle`) promotes the pending steps whose prerequisites are all met and ends a
-- run with nothing open. A shard's success can do neither while another shard of its step is still
-- open: every step that names the step as a prerequisite waits for all its shards, and the open
-- shard keeps the run open. So a success that finds, after its commit, another row of its step
-- (same run, same step name) still pending, ready or running, settles nothing; on a fan-out, only
-- the last shards to end settle, not each one.
--
-- Nothing is missed: the check reads after the finish's commit, so the success that commits last
-- among its step's rows sees them all ended and settles; several that end at once may all settle,
-- which is correct (`0026`). A retry never settled; a cancelled step, a step failing for good and
-- the reconciler's settles (`runs::settle_stranded`) settle as before.

-- Whether another row of the step `p_id` is of (its run, its step name) is still to run or running.
CREATE FUNCTION step_siblings_open(p_id BIGINT)
RETURNS BOOLEAN
LANGUAGE plpgsql STABLE
SET enable_seqscan = off AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM step_runs me, step_runs s
                    WHERE me.id = p_id AND s.run_id = me.run_id AND s.step = me.step AND s.id <> p_id
                      AND s.status IN ('pending', 'ready', 'running'));
END
$$;

-- The settle after a committed finish (`runs::settled`): none when the finish was the success of
-- `p_succeeded` and another row of its step is still open, else `step_settle(p_run)`.
CREATE FUNCTION step_settle_after(p_run UUID, p_succeeded BIGINT)
RETURNS TABLE (ready_ids BIGINT[], ready_queues TEXT[], needs_end BOOLEAN)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_succeeded IS NOT NULL AND step_siblings_open(p_succeeded) THEN
        RETURN QUERY SELECT '{}'::BIGINT[], '{}'::TEXT[], false;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM step_settle(p_run);
END
$$;

-- As `0023`, with the success of a step whose other rows are still open settling nothing.
CREATE OR REPLACE PROCEDURE step_finish_settle(
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
    SELECT * INTO s FROM step_settle_after(f.run_id, CASE WHEN p_status = 'succeeded' THEN p_id END);
    ready_ids := s.ready_ids;
    ready_queues := s.ready_queues;
    needs_end := s.needs_end;
END
$$;
