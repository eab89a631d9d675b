-- The partner pack's operations (`shared/src/packs/partner/`): leads, failure alerts, weekly reports.

-- Impartner leads (`sync_leads`), following the data-plane conventions of 0002. `converted_at` is set
-- by the step when it first sees a lead with status `Converted` (never by the upsert).
CREATE TABLE partner_leads (
    id                BIGSERIAL PRIMARY KEY,
    integration_id    BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id       TEXT NOT NULL,
    first_name        TEXT,
    last_name         TEXT,
    email             TEXT,
    company           TEXT,
    status            TEXT,
    lead_source       TEXT,
    -- The Impartner account id (external_id of partner_partners).
    partner_id        TEXT,
    estimated_value   DOUBLE PRECISION,
    source_created_at TIMESTAMPTZ,
    source_updated_at TIMESTAMPTZ,
    converted_at      TIMESTAMPTZ,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at        TIMESTAMPTZ,
    last_seen_run     UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE INDEX partner_leads_partner ON partner_leads (integration_id, partner_id);
