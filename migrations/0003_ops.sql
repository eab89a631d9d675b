-- Operating the fleet: API tokens, the audit trail, paused queues, webhook secrets.

-- Bearer tokens `sf_<key>_<secret>`: the key finds the row, the secret is stored only as its
-- SHA-256 and compared in constant time.
CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$'),
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    key          TEXT NOT NULL UNIQUE,
    secret_hash  BYTEA NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

-- Every mutation made through the API or the CLI: who, what, when.
CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON audit_log (at DESC);

-- A paused queue gets nothing new dispatched to it (checked under the per-queue dispatch lock).
CREATE TABLE queue_pauses (
    queue      TEXT PRIMARY KEY,
    paused_by  TEXT NOT NULL,
    paused_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Where the webhook HMAC secret of an integration lives (`env:NAME` or `file:/path`); never the
-- secret itself.
ALTER TABLE integrations ADD COLUMN webhook_secret_ref TEXT
    CHECK (webhook_secret_ref IS NULL OR webhook_secret_ref ~ '^(env:[A-Za-z_][A-Za-z0-9_]*|file:/.+)$');

CREATE INDEX step_runs_entity_running ON step_runs (entity_key) WHERE status = 'running';
