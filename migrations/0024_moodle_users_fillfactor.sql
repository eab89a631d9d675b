-- The moodle pack: room on each page of `moodle_users` for a new version of its rows.
--
-- `user_scope_backfill` (and the hydrate endpoint) write every user's scope (`campus_id`,
-- `department_id`, `program_id`, `scope_updated_at`, `updated_at`), none of them indexed, and a
-- sync rewrites the users Moodle changed. With full pages each such update moves the row to another
-- page and adds an entry to every index of the table; with half of each page free the new version
-- stays on its page (a heap-only tuple) and no index is touched. Measured on 80,000 users (one full
-- backfill, 4 shards of 5,000-user pages): 4 % of the updates heap-only at the default 100, 96 % at
-- 50, and the updates in less than half the time. Applies to pages written from now on.
ALTER TABLE moodle_users SET (fillfactor = 50);
