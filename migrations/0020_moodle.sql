-- The moodle pack (`shared/src/packs/moodle/`): an institution's Moodle (web services) in PostgreSQL.
--
-- Synced tables follow the data-plane conventions of 0002 (one row per (integration_id, external_id);
-- `is_active`, `deleted_at`, `last_seen_run`, `created_at`, `updated_at`), are written with the sync
-- contract's batch upsert (`syncfleet_shared::sync::table`) and soft-delete. External ids are Moodle's
-- ids as text; references between the tables (`program_id`, `course_id`, …) hold external ids.

-- Categories, normalized into the hierarchy Campus → Semester → Department → Program by depth
-- (`sync_categories`): `kind` is campus, semester, department, program (or `other` below a program);
-- the ancestor columns are resolved per run from an in-memory map of the categories read. `code` is a
-- campus's idnumber upper-cased (usernames `<campus code>-<id>` name their campus by it).
CREATE TABLE moodle_categories (
    id                BIGSERIAL PRIMARY KEY,
    integration_id    BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id       TEXT NOT NULL,
    name              TEXT,
    idnumber          TEXT,
    kind              TEXT,
    parent_id         TEXT,
    campus_id         TEXT,
    semester_id       TEXT,
    department_id     TEXT,
    code              TEXT,
    depth             INTEGER,
    path              TEXT,
    sortorder         BIGINT,
    visible           BOOLEAN,
    source_updated_at TIMESTAMPTZ,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at        TIMESTAMPTZ,
    last_seen_run     UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE INDEX moodle_categories_kind ON moodle_categories (integration_id, kind) WHERE is_active;

-- Courses of each program (`sync_courses`, one transaction per program).
CREATE TABLE moodle_courses (
    id                BIGSERIAL PRIMARY KEY,
    integration_id    BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id       TEXT NOT NULL,
    fullname          TEXT,
    shortname         TEXT,
    idnumber          TEXT,
    program_id        TEXT,
    visible           BOOLEAN,
    startdate         TIMESTAMPTZ,
    source_updated_at TIMESTAMPTZ,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at        TIMESTAMPTZ,
    last_seen_run     UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE INDEX moodle_courses_program ON moodle_courses (integration_id, program_id);

-- Users, from the enrolled users of the courses (`sync_enrollments`, one batch per run). The scope
-- (`campus_id`, `department_id`, `program_id`: category external ids) is derived by
-- `user_scope_backfill` or the hydrate endpoint; `*_source` = `manual` keeps the derivation away.
-- Usernames are unique among a site's active users (the hydrate endpoint looks users up by them).
CREATE TABLE moodle_users (
    id                BIGSERIAL PRIMARY KEY,
    integration_id    BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id       TEXT NOT NULL,
    username          TEXT NOT NULL,
    firstname         TEXT,
    lastname          TEXT,
    email             TEXT,
    idnumber          TEXT,
    firstaccess       TIMESTAMPTZ,
    lastaccess        TIMESTAMPTZ,
    campus_id         TEXT,
    department_id     TEXT,
    program_id        TEXT,
    department_source TEXT NOT NULL DEFAULT 'auto' CHECK (department_source IN ('auto', 'manual')),
    program_source    TEXT NOT NULL DEFAULT 'auto' CHECK (program_source IN ('auto', 'manual')),
    scope_updated_at  TIMESTAMPTZ,
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at        TIMESTAMPTZ,
    last_seen_run     UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE UNIQUE INDEX moodle_users_username ON moodle_users (integration_id, username) WHERE is_active;

-- Sections of a course: its groups, as the enrolled users carry them (no extra Moodle call).
CREATE TABLE moodle_sections (
    id             BIGSERIAL PRIMARY KEY,
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id    TEXT NOT NULL,
    course_id      TEXT,
    name           TEXT,
    is_active      BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at     TIMESTAMPTZ,
    last_seen_run  UUID,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE INDEX moodle_sections_course ON moodle_sections (integration_id, course_id);

-- Enrollments: external_id = `{course id}:{user id}`; `section_id` is the user's first group in the
-- course; `role` the first role's shortname. Missing from Moodle → soft-deactivated per course.
CREATE TABLE moodle_enrollments (
    id               BIGSERIAL PRIMARY KEY,
    integration_id   BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    external_id      TEXT NOT NULL,
    course_id        TEXT,
    user_id          TEXT,
    section_id       TEXT,
    role             TEXT,
    roles            JSONB,
    lastcourseaccess TIMESTAMPTZ,
    is_active        BOOLEAN NOT NULL DEFAULT TRUE,
    deleted_at       TIMESTAMPTZ,
    last_seen_run    UUID,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (integration_id, external_id)
);
CREATE INDEX moodle_enrollments_course ON moodle_enrollments (integration_id, course_id);
CREATE INDEX moodle_enrollments_user ON moodle_enrollments (integration_id, user_id);

-- Roles of a user in our system (`role_derivation`, the hydrate endpoint): `granted_by` = `sync` for
-- roles derived from enrollments, `manual` for roles granted by hand (SUPER_ADMIN, ADMIN); a sync
-- only ever removes roles it granted.
CREATE TABLE moodle_user_roles (
    integration_id BIGINT NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    user_id        TEXT NOT NULL,
    role           TEXT NOT NULL,
    granted_by     TEXT NOT NULL CHECK (granted_by IN ('sync', 'manual')),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, user_id, role)
);
