-- The partner pack (`shared/src/packs/partner/`): Northpass LMS and Impartner PRM data.
--
-- Synced tables follow the data-plane conventions of 0002 (one row per (integration_id, external_id);
-- `is_active`, `deleted_at`, `last_seen_run`, `created_at`, `updated_at`), are written by the pull
-- engine (`syncfleet_shared::sync`), and soft-delete: a record gone upstream keeps its row with
-- `is_active = FALSE` and `deleted_at` set. `source_updated_at` is the upstream's change time.
-- Cross-system links (`contact_id`, `partner_id` of LMS users) are written by the steps after the
-- pull, in the step's completion transaction; the upsert never touches them.

-- Northpass courses (`sync_courses`).
CREATE TABLE partner_courses (
    id                BIGSERIAL PRIMARY KEY,
    integration_id    BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id       TEXT NOT NULL,
    name              TEXT,
    status            TEXT,
    published         BOOLEAN,
    permalink         TEXT,
    enrollments_count BIGINT,
    source_created_at TIMESTAMPTZ,
    source_updated_at TIMESTAMPTZ,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at        TIMESTAMPTZ,
    last_seen_run     UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);

-- NPCU of a course, from its properties (`sync_npcu`); external_id = the course id. A course whose
-- properties answer 403 has no row (or keeps an inactive one).
CREATE TABLE partner_course_npcu (
    id             BIGSERIAL PRIMARY KEY,
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id    TEXT NOT NULL,
    npcu           INTEGER,
    certification  BOOLEAN,
    properties     JSONB,
    is_active      BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at     TIMESTAMPTZ,
    last_seen_run  UUID,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);

-- Impartner accounts that pass the partner filters (`impartner_sync`).
CREATE TABLE partner_partners (
    id                BIGSERIAL PRIMARY KEY,
    integration_id    BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id       TEXT NOT NULL,
    name              TEXT,
    crm_id            TEXT,
    tier              TEXT,
    account_status    TEXT,
    owner_name        TEXT,
    owner_email       TEXT,
    partner_type      TEXT,
    website           TEXT,
    country           TEXT,
    region_id         BIGINT,
    member_count      BIGINT,
    upstream_active   BOOLEAN,
    is_test           BOOLEAN,
    lms_account_id    TEXT,
    lms_group_name    TEXT,
    source_updated_at TIMESTAMPTZ,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at        TIMESTAMPTZ,
    last_seen_run     UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);

-- Impartner users (partner contacts) that pass the contact filters (`impartner_sync`).
CREATE TABLE partner_contacts (
    id                BIGSERIAL PRIMARY KEY,
    integration_id    BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id       TEXT NOT NULL,
    email             TEXT,
    first_name        TEXT,
    last_name         TEXT,
    title             TEXT,
    phone             TEXT,
    -- The Impartner account id (external_id of partner_partners).
    partner_id        TEXT,
    account_name      TEXT,
    upstream_active   BOOLEAN,
    contact_status    TEXT,
    crm_id            TEXT,
    source_updated_at TIMESTAMPTZ,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at        TIMESTAMPTZ,
    last_seen_run     UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE INDEX partner_contacts_email ON partner_contacts (integration_id, lower(email));
CREATE INDEX partner_contacts_partner ON partner_contacts (integration_id, partner_id);

-- Northpass people (`sync_users`), partner or not. `contact_id` / `partner_id` link a person to the
-- contact with the same email (case-insensitive) and that contact's partner; NULL = not a partner
-- user (kept for orphan discovery).
CREATE TABLE partner_lms_users (
    id                BIGSERIAL PRIMARY KEY,
    integration_id    BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id       TEXT NOT NULL,
    email             TEXT,
    first_name        TEXT,
    last_name         TEXT,
    activated_at      TIMESTAMPTZ,
    deactivated_at    TIMESTAMPTZ,
    last_active_at    TIMESTAMPTZ,
    source_created_at TIMESTAMPTZ,
    source_updated_at TIMESTAMPTZ,
    contact_id        TEXT,
    partner_id        TEXT,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at        TIMESTAMPTZ,
    last_seen_run     UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE INDEX partner_lms_users_email ON partner_lms_users (integration_id, lower(email));
CREATE INDEX partner_lms_users_partner ON partner_lms_users (integration_id, partner_id);

-- Northpass groups (`sync_groups`).
CREATE TABLE partner_lms_groups (
    id                BIGSERIAL PRIMARY KEY,
    integration_id    BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id       TEXT NOT NULL,
    name              TEXT,
    member_count      BIGINT,
    source_created_at TIMESTAMPTZ,
    source_updated_at TIMESTAMPTZ,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at        TIMESTAMPTZ,
    last_seen_run     UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);

-- Group ↔ partner links decided by `sync_groups` (external_id = the group id; one partner per group).
-- `method`: exact | prefix | fuzzy. A link the matching no longer finds is deactivated.
CREATE TABLE partner_group_links (
    id             BIGSERIAL PRIMARY KEY,
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id    TEXT NOT NULL,
    partner_id     TEXT,
    group_name     TEXT,
    partner_name   TEXT,
    method         TEXT,
    is_active      BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at     TIMESTAMPTZ,
    last_seen_run  UUID,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE INDEX partner_group_links_partner ON partner_group_links (integration_id, partner_id);

-- Groups `sync_groups` could not link (external_id = the group id): `issue` is `unmatched` or
-- `ambiguous` (`candidates` = the partner ids that matched equally well). Reported, never guessed;
-- an issue that no longer holds is deactivated.
CREATE TABLE partner_group_match_issues (
    id             BIGSERIAL PRIMARY KEY,
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id    TEXT NOT NULL,
    group_name     TEXT,
    issue          TEXT,
    candidates     JSONB,
    is_active      BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at     TIMESTAMPTZ,
    last_seen_run  UUID,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);

-- Northpass group memberships (`group_members_sync`); external_id = `{group id}:{person id}`.
CREATE TABLE partner_group_memberships (
    id                BIGSERIAL PRIMARY KEY,
    integration_id    BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id       TEXT NOT NULL,
    group_id          TEXT,
    person_id         TEXT,
    joined_at         TIMESTAMPTZ,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at        TIMESTAMPTZ,
    last_seen_run     UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE INDEX partner_group_memberships_person ON partner_group_memberships (integration_id, person_id);

-- Northpass enrollments of partner users (`sync_enrollments`, from transcripts);
-- external_id = `{person id}:{course id}`.
CREATE TABLE partner_enrollments (
    id             BIGSERIAL PRIMARY KEY,
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id    TEXT NOT NULL,
    person_id      TEXT,
    course_id      TEXT,
    course_name    TEXT,
    progress_status TEXT,
    enrolled_at    TIMESTAMPTZ,
    started_at     TIMESTAMPTZ,
    completed_at   TIMESTAMPTZ,
    last_active_at TIMESTAMPTZ,
    attempt_number INTEGER,
    is_active      BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at     TIMESTAMPTZ,
    last_seen_run  UUID,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE INDEX partner_enrollments_person ON partner_enrollments (integration_id, person_id);

-- LMS offboarding removals (a soft-deleted contact or partner): one row per removal, so a retried
-- step does not remove twice; external_id = `{kind}:{group id}[:{person id}]`, `kind` is
-- `membership` or `group`.
CREATE TABLE partner_offboarding_removals (
    id             BIGSERIAL PRIMARY KEY,
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id    TEXT NOT NULL,
    kind           TEXT NOT NULL,
    group_id       TEXT,
    person_id      TEXT,
    partner_id     TEXT,
    contact_id     TEXT,
    reason         TEXT,
    run_id         UUID,
    removed_at     TIMESTAMPTZ,
    is_active      BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at     TIMESTAMPTZ,
    last_seen_run  UUID,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
