-- Run lifecycle hooks: one row per (run, event) — `run.started` when a worker's claim starts the
-- run, `run.ended` when a step's finish ends it — written in the transaction that makes the
-- transition, so a hook is never lost and never blocks the run. The producer's reconciler claims
-- due rows (`next_at`, `SKIP LOCKED`), posts the signed run record to the configured hook and
-- records the outcome: `delivered_at` on success, else `last_error` and the next try (`attempts`
-- counts the deliveries tried). `state`: `pending` (to deliver), `delivered`, `failed` (attempts
-- spent), `none` (no hook configured for the integration when it was due).
CREATE TABLE run_hooks (
    run_id        UUID NOT NULL REFERENCES chain_runs(id) ON DELETE CASCADE,
    event         TEXT NOT NULL CHECK (event IN ('run.started', 'run.ended')),
    state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed', 'none')),
    attempts      INT NOT NULL DEFAULT 0,
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    next_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_at    TIMESTAMPTZ,
    delivered_at  TIMESTAMPTZ,
    PRIMARY KEY (run_id, event)
);
CREATE INDEX run_hooks_due ON run_hooks (next_at) WHERE state = 'pending';
