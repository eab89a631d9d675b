-- Attempts lost to the infrastructure (the worker was killed or stopped, the entity lease went with a
-- Redis flush) are not the step's fault: they are counted here and spend none of the error budget.
-- `max_attempts` now caps the attempts that failed by the step's own error, `attempts - lost_attempts`
-- (a resume sets it to that plus `attempt_budget`). A separate, larger cap stops a step that keeps
-- losing its workers: it fails for good at its `max_lost_attempts`-th lost attempt; a resume adds
-- `lost_budget` to the lost attempts so far.
ALTER TABLE step_runs
    ADD COLUMN lost_attempts     INT NOT NULL DEFAULT 0,
    ADD COLUMN max_lost_attempts INT NOT NULL DEFAULT 10 CHECK (max_lost_attempts >= 1),
    ADD COLUMN lost_budget       INT NOT NULL DEFAULT 10 CHECK (lost_budget >= 1);
