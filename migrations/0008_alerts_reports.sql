-- Failure alerts (`producer/src/alerts.rs`) and weekly reports (`shared/src/packs/partner/reports.rs`).

-- When the alert for a failed required step was claimed by a producer (NULL = not yet). A producer
-- claims with `UPDATE … SET alerted_at = now() … RETURNING`, so each failure is alerted once across
-- the fleet; a step that fails again after a resume (newer `finished_at`) is alerted again.
ALTER TABLE step_runs ADD COLUMN alerted_at TIMESTAMPTZ;
-- Failures from before alerts existed are not alerted.
UPDATE step_runs SET alerted_at = COALESCE(finished_at, now()) WHERE status = 'failed' AND required;
CREATE INDEX step_runs_failed_required ON step_runs (id) WHERE status = 'failed' AND required;

-- Rendered reports, written by report steps in their completion transaction and served by
-- `GET /api/reports`. `kind` names the report (`pam_weekly`, `executive_weekly`), `period` the week
-- it covers (`2025-W14`), `recipient` who it is about and for (a manager's name, `executive`).
CREATE TABLE reports (
    id             BIGSERIAL PRIMARY KEY,
    kind           TEXT NOT NULL,
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    run_id         UUID,
    period         TEXT NOT NULL,
    recipient      TEXT NOT NULL,
    -- The addresses the report was mailed to (empty when none was configured).
    sent_to        TEXT[] NOT NULL DEFAULT '{}',
    html           TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX reports_recent ON reports (created_at DESC, id DESC);
