-- A schedule carries its mode: several schedules per (chain, integration), one per mode (e.g.
-- incremental hourly and full nightly), each with the step modes of the runs it fires and the time
-- zone its cron expression is read in (crontab syntax, `0 2 * * *`).
--
-- Rows stored before this migration fired incremental runs: they become `incremental` schedules
-- (the column's default). A row switched off used to stop every schedule of its (chain,
-- integration); it becomes mode `all`, which keeps that meaning. Only a switched-off row may say
-- `all`.
ALTER TABLE schedules ADD COLUMN mode TEXT NOT NULL DEFAULT 'incremental'
    CHECK (mode IN ('incremental', 'full', 'all'));
ALTER TABLE schedules ADD COLUMN step_modes JSONB NOT NULL DEFAULT '{}'::jsonb
    CHECK (jsonb_typeof(step_modes) = 'object');
ALTER TABLE schedules ADD COLUMN tz TEXT NOT NULL DEFAULT 'UTC'
    CHECK (tz <> '' AND tz !~ '[[:cntrl:][:space:]]');
UPDATE schedules SET mode = 'all' WHERE NOT enabled;
ALTER TABLE schedules ADD CONSTRAINT schedules_all_only_off CHECK (mode <> 'all' OR NOT enabled);
ALTER TABLE schedules DROP CONSTRAINT schedules_pkey;
ALTER TABLE schedules ADD PRIMARY KEY (chain, integration_id, mode);
