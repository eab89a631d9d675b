-- A trigger's run and the dispatch of its root steps in one statement (`runs::create`,
-- `dispatch::create_and_push`): that statement takes the queue's dispatch lock for the session,
-- if no one holds it and the queue is not paused.
--
-- The pause is read after the lock is taken, by a query of its own: a VOLATILE function's queries
-- each see what committed before they started, whereas the calling statement's snapshot was taken
-- before the lock. A pause commits under the same lock, so once `queue.pause` returns, no trigger
-- marks a step of that queue dispatched (as `dispatch::take_due`, which runs after the lock).
CREATE FUNCTION dispatch_lock_unpaused(p_key BIGINT, p_queue TEXT)
RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_lock(p_key) THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM queue_pauses WHERE queue = p_queue) THEN
        PERFORM pg_advisory_unlock(p_key);
        RETURN false;
    END IF;
    RETURN true;
END
$$;
