-- The partner pack's group analysis (`shared/src/packs/partner/analysis.rs`): domain matching.

-- LMS users whose email domain belongs to exactly one partner (the domains of its active contacts'
-- emails, public mail domains and the configured internal domains left out) but who are not a
-- confirmed member of a group linked to that partner. external_id = the person id. `membership` is
-- `pending` when a pending membership in `group_id` exists (the step adds them when
-- `analysis.add_pending` is set), else `none`. Replaced as a whole each run (the data-plane
-- conventions of 0002: a user no longer listed is deactivated).
CREATE TABLE partner_group_analysis (
    id             BIGSERIAL PRIMARY KEY,
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id    TEXT NOT NULL,
    email          TEXT,
    domain         TEXT,
    partner_id     TEXT,
    partner_name   TEXT,
    group_id       TEXT,
    membership     TEXT,
    is_active      BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at     TIMESTAMPTZ,
    last_seen_run  UUID,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
