-- Alert delivery retried (`producer/src/alerts.rs`): the channels of a claimed alert that failed
-- (`webhook`, `mail`) are kept in `alert_pending` and claimed again from `alert_retry_at`, with a
-- growing delay, until they succeed or `alerts.max_attempts` is spent.
ALTER TABLE step_runs
    ADD COLUMN alert_attempts INT NOT NULL DEFAULT 0,
    ADD COLUMN alert_retry_at TIMESTAMPTZ,
    ADD COLUMN alert_pending TEXT[];
CREATE INDEX step_runs_alert_retry ON step_runs (alert_retry_at) WHERE alert_retry_at IS NOT NULL;

-- Report mails sent (`shared/src/packs/partner/reports.rs`), written in their own transaction right
-- after the SMTP server accepted the message: a retried report step does not mail them again.
CREATE TABLE report_deliveries (
    run_id    UUID NOT NULL,
    kind      TEXT NOT NULL,
    recipient TEXT NOT NULL,
    sent_to   TEXT[] NOT NULL,
    sent_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, kind, recipient)
);
