-- A step that succeeded for most of its work but not all (e.g. one Moodle program's courses failed
-- while the others synced) ends `succeeded` with `partial`, so its downstream steps run, and its run
-- ends `partial` instead of `completed`. Resuming the run runs such steps again.
ALTER TABLE step_runs ADD COLUMN partial BOOLEAN NOT NULL DEFAULT FALSE;
