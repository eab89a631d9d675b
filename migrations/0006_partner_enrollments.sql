-- The partner pack's LMS learning steps (`shared/src/packs/partner/members.rs`, `enrollments.rs`,
-- `push.rs`): membership confirmation, and an index for the per-partner counts pushed to Impartner.

-- A membership is `pending` when this side asked for it (group analysis, an operator) and the LMS has
-- not shown it yet; `group_members_sync` sets every membership the LMS lists to `confirmed` and
-- soft-deletes the pending ones it did not list.
ALTER TABLE partner_group_memberships
    ADD COLUMN status TEXT NOT NULL DEFAULT 'confirmed' CHECK (status IN ('pending', 'confirmed'));
CREATE INDEX partner_group_memberships_group ON partner_group_memberships (integration_id, group_id);

-- `sync_to_impartner` sums completed enrollments per course.
CREATE INDEX partner_enrollments_course ON partner_enrollments (integration_id, course_id) WHERE is_active;
