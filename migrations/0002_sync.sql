-- Data plane conventions and push state.
--
-- Every synced table holds one row per (integration_id, external_id) with the bookkeeping columns
-- `is_active`, `deleted_at`, `last_seen_run`, `created_at` and `updated_at`. `updated_at` changes only
-- when the row's data changes; `last_seen_run` is the last run whose fetch saw the row (the full-mode
-- sweep deactivates active rows a complete fetch did not see). Tables named in the config are created
-- with the same columns (see `syncfleet_shared::sync::table`).

-- The ERP inventory of the `http-json` example (`examples/erp.toml`).
CREATE TABLE erp_items (
    id                BIGSERIAL PRIMARY KEY,
    integration_id    BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id       TEXT NOT NULL,
    sku               TEXT,
    name              TEXT,
    quantity          BIGINT,
    warehouse         TEXT,
    source_updated_at TIMESTAMPTZ,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at        TIMESTAMPTZ,
    last_seen_run     UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);

-- What a push step last got accepted upstream, per item: the next push sends only fields whose
-- value differs from `pushed`.
CREATE TABLE push_state (
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    entity         TEXT NOT NULL,
    external_id    TEXT NOT NULL,
    pushed         JSONB NOT NULL DEFAULT '{}'::jsonb,
    pushed_at      TIMESTAMPTZ,
    outcome        TEXT NOT NULL CHECK (outcome IN ('ok', 'error')),
    error          TEXT,
    attempted_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, entity, external_id)
);

-- One open error per item: a repeat failure updates it, a later success resolves it.
-- Webhook (single-item) failures have no run.
ALTER TABLE item_errors ALTER COLUMN run_id DROP NOT NULL;
ALTER TABLE item_errors ADD COLUMN occurrences INT NOT NULL DEFAULT 1;
ALTER TABLE item_errors ADD COLUMN last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE UNIQUE INDEX item_errors_one_open ON item_errors (integration_id, entity, external_id)
    WHERE resolved_at IS NULL;
