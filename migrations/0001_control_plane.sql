-- Control plane: integrations, chain runs, step runs, schedules, cursors, item errors.
-- PostgreSQL is the only source of truth for runs; Redis only delivers step jobs.

CREATE TABLE integrations (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    pack        TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    settings    JSONB NOT NULL DEFAULT '{}'::jsonb,
    secret_ref  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE chain_runs (
    id             UUID PRIMARY KEY,
    chain          TEXT NOT NULL,
    integration_id BIGINT NOT NULL REFERENCES integrations(id),
    mode           TEXT NOT NULL CHECK (mode IN ('full', 'incremental')),
    trigger_kind   TEXT NOT NULL CHECK (trigger_kind IN ('manual', 'schedule', 'startup', 'webhook')),
    triggered_by   TEXT NOT NULL,
    -- `{chain}:{integration}:{tick}` for scheduled runs: N producers firing one tick make one run.
    tick_key       TEXT UNIQUE,
    status         TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'partial', 'failed', 'cancelled')),
    error          TEXT,
    force_sweep    BOOLEAN NOT NULL DEFAULT FALSE,
    resumes        INT NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at     TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ
);
-- The database itself refuses a second active run of one chain for one integration.
CREATE UNIQUE INDEX chain_runs_one_active ON chain_runs (chain, integration_id)
    WHERE status IN ('queued', 'running');
CREATE INDEX chain_runs_history ON chain_runs (created_at DESC);

CREATE TABLE step_runs (
    id             BIGSERIAL PRIMARY KEY,
    run_id         UUID NOT NULL REFERENCES chain_runs(id) ON DELETE CASCADE,
    step           TEXT NOT NULL,
    shard          INT NOT NULL DEFAULT 0,
    sharded        BOOLEAN NOT NULL DEFAULT FALSE,
    queue          TEXT NOT NULL,
    entity_key     TEXT NOT NULL,
    required       BOOLEAN NOT NULL,
    prerequisites  TEXT[] NOT NULL DEFAULT '{}',
    status         TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'running', 'succeeded', 'failed', 'skipped', 'cancelled')),
    attempts       INT NOT NULL DEFAULT 0,
    max_attempts   INT NOT NULL CHECK (max_attempts >= 1),
    -- Attempts the retry policy allows per run or resume; a resume adds this many to max_attempts.
    attempt_budget INT NOT NULL CHECK (attempt_budget >= 1),
    lease_waits    INT NOT NULL DEFAULT 0,
    -- The Redis task id of the job that may run this step now (see `step_job_id`).
    job_id         TEXT,
    not_before     TIMESTAMPTZ,
    dispatched_at  TIMESTAMPTZ,
    worker         TEXT,
    heartbeat_at   TIMESTAMPTZ,
    ready_at       TIMESTAMPTZ,
    started_at     TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ,
    duration_ms    BIGINT,
    fetched        BIGINT NOT NULL DEFAULT 0,
    inserted       BIGINT NOT NULL DEFAULT 0,
    updated        BIGINT NOT NULL DEFAULT 0,
    unchanged      BIGINT NOT NULL DEFAULT 0,
    deactivated    BIGINT NOT NULL DEFAULT 0,
    errors         BIGINT NOT NULL DEFAULT 0,
    api_calls      BIGINT NOT NULL DEFAULT 0,
    throttled      BIGINT NOT NULL DEFAULT 0,
    cursor_before  TEXT,
    cursor_after   TEXT,
    guard          TEXT,
    error          TEXT,
    UNIQUE (run_id, step, shard)
);
CREATE INDEX step_runs_due ON step_runs (queue, not_before, id)
    WHERE status = 'ready' AND dispatched_at IS NULL;
CREATE INDEX step_runs_dispatched ON step_runs (dispatched_at)
    WHERE status = 'ready' AND dispatched_at IS NOT NULL;
CREATE INDEX step_runs_running ON step_runs (heartbeat_at) WHERE status = 'running';
-- Transitions look only at rows that are not done: a run's pending rows (promotion candidates) and
-- its rows that have not succeeded (unmet prerequisites, open steps). Each finish of a fan-out
-- shard then costs a few index probes instead of a scan of the whole run.
CREATE INDEX step_runs_pending ON step_runs (run_id) WHERE status = 'pending';
CREATE INDEX step_runs_unsucceeded ON step_runs (run_id, step) WHERE status <> 'succeeded';

-- Task id of a step job: `{run}:{step}`, `:{shard}` for a fan-out slice, `:a{n}` from the second
-- attempt on (retry or resume), `:w{n}` when re-delivered after waiting for a busy entity lease.
-- Mirrored by `syncfleet_shared::job::JobId::for_step`; a test keeps the two equal.
CREATE FUNCTION step_job_id(run UUID, step TEXT, shard INT, sharded BOOLEAN, attempt INT, waits INT)
RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT run::text || ':' || step
        || CASE WHEN sharded THEN ':' || shard::text ELSE '' END
        || CASE WHEN attempt > 1 THEN ':a' || attempt::text ELSE '' END
        || CASE WHEN waits > 0 THEN ':w' || waits::text ELSE '' END
$$;

CREATE TABLE schedules (
    chain          TEXT NOT NULL,
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    interval_secs  INT CHECK (interval_secs IS NULL OR interval_secs > 0),
    cron           TEXT,
    enabled        BOOLEAN NOT NULL DEFAULT TRUE,
    updated_by     TEXT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain, integration_id),
    CHECK ((interval_secs IS NULL) <> (cron IS NULL))
);

CREATE TABLE cursors (
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    entity         TEXT NOT NULL,
    value          TEXT NOT NULL,
    run_id         UUID,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, entity)
);

CREATE TABLE item_errors (
    id             BIGSERIAL PRIMARY KEY,
    run_id         UUID NOT NULL REFERENCES chain_runs(id) ON DELETE CASCADE,
    step           TEXT NOT NULL,
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    entity         TEXT NOT NULL,
    external_id    TEXT NOT NULL,
    message        TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at    TIMESTAMPTZ
);
CREATE INDEX item_errors_open ON item_errors (integration_id, entity) WHERE resolved_at IS NULL;
CREATE INDEX item_errors_run ON item_errors (run_id);

-- Demo pack data plane: every applied step effect is one row (a doubled step shows as two).
CREATE TABLE demo_effects (
    id             BIGSERIAL PRIMARY KEY,
    run_id         UUID NOT NULL,
    step           TEXT NOT NULL,
    shard          INT NOT NULL,
    worker         TEXT NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL,
    applied_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX demo_effects_run ON demo_effects (run_id, step);
