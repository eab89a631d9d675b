-- A holder of a run's settle turn settles again only when a finish that committed during its
-- settle can have made something ready.
--
-- The finishes with effects of one run settle in turns across the fleet (`worker/src/settles.rs`):
-- a finish that commits while another caller settles the run marks the turn, and the holder
-- settles again. Each such settle read the whole run, even when every mark came from the success
-- of a shard whose step still had other rows open, which can make nothing ready (`0028`): on a
-- fan-out of 2,000 shards writing their effects, a third to two thirds of the successes were
-- followed by a full settle (0.4-1.2 ms each in the `queue` bench).
--
-- A success now marks the turn with its step row's id. The holder reads the marks after their
-- commits and settles again only if one of those steps has no other row still open, the check
-- `step_settle_after` makes for a success alone: the success that commits last among a step's
-- rows sees the others ended, whether it settles itself or marks the turn.

-- None when every success in `p_succeeded` is of a step with another row still open, else
-- `step_settle(p_run)`.
CREATE FUNCTION step_settle_after_successes(p_run UUID, p_succeeded BIGINT[])
RETURNS TABLE (ready_ids BIGINT[], ready_queues TEXT[], needs_end BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    id BIGINT;
BEGIN
    FOREACH id IN ARRAY p_succeeded LOOP
        IF NOT step_siblings_open(id) THEN
            RETURN QUERY SELECT * FROM step_settle(p_run);
            RETURN;
        END IF;
    END LOOP;
    RETURN QUERY SELECT '{}'::BIGINT[], '{}'::TEXT[], false;
END
$$;
