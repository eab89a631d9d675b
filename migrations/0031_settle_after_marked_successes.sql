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

-- None when the step of every success in `p_succeeded` has another row still open, else
-- `step_settle(p_run)`. The successes are committed rows, so of one step they all answer alike
-- (`step_siblings_open`): one probe of `step_runs_unsucceeded` per step, whatever the number of
-- its successes, a row among them left out as each one's check leaves itself out.
CREATE FUNCTION step_settle_after_successes(p_run UUID, p_succeeded BIGINT[])
RETURNS TABLE (ready_ids BIGINT[], ready_queues TEXT[], needs_end BOOLEAN)
LANGUAGE plpgsql
SET enable_seqscan = off AS $$
BEGIN
    IF EXISTS (SELECT 1
                 FROM (SELECT DISTINCT x.run_id, x.step FROM step_runs x WHERE x.id = ANY (p_succeeded)) AS d
                WHERE NOT EXISTS (SELECT 1 FROM step_runs s
                                   WHERE s.run_id = d.run_id AND s.step = d.step
                                     AND s.status IN ('pending', 'ready', 'running')
                                     AND s.id <> ALL (p_succeeded))) THEN
        RETURN QUERY SELECT * FROM step_settle(p_run);
        RETURN;
    END IF;
    RETURN QUERY SELECT '{}'::BIGINT[], '{}'::TEXT[], false;
END
$$;
