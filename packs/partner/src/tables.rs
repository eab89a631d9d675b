//! The pack's synced tables (migration `0005_partner.sql`): the mapped columns the pull engine writes.
//! `ensure_tables` checks at registration that the migration and these declarations agree.

use syncfleet_sdk::sync::table::{Column, ColumnType, Table};

fn table(name: &str, columns: &[(&str, ColumnType)]) -> Table {
    let columns = columns.iter().map(|(n, ty)| Column { name: (*n).to_owned(), ty: *ty }).collect();
    Table::new(name, columns).expect("the pack's table declarations are valid")
}

use ColumnType::{Bigint, Boolean, Integer, Jsonb, Text, Timestamptz};

pub fn courses() -> Table {
    table(
        "partner_courses",
        &[
            ("name", Text),
            ("status", Text),
            ("published", Boolean),
            ("permalink", Text),
            ("enrollments_count", Bigint),
            ("source_created_at", Timestamptz),
            ("source_updated_at", Timestamptz),
        ],
    )
}

pub fn npcu() -> Table {
    table("partner_course_npcu", &[("npcu", Integer), ("certification", Boolean), ("properties", Jsonb)])
}

pub fn partners() -> Table {
    table(
        "partner_partners",
        &[
            ("name", Text),
            ("crm_id", Text),
            ("tier", Text),
            ("account_status", Text),
            ("owner_name", Text),
            ("owner_email", Text),
            ("partner_type", Text),
            ("website", Text),
            ("country", Text),
            ("region_id", Bigint),
            ("member_count", Bigint),
            ("upstream_active", Boolean),
            ("is_test", Boolean),
            ("lms_account_id", Text),
            ("lms_group_name", Text),
            ("source_updated_at", Timestamptz),
        ],
    )
}

pub fn contacts() -> Table {
    table(
        "partner_contacts",
        &[
            ("email", Text),
            ("first_name", Text),
            ("last_name", Text),
            ("title", Text),
            ("phone", Text),
            ("partner_id", Text),
            ("account_name", Text),
            ("upstream_active", Boolean),
            ("contact_status", Text),
            ("crm_id", Text),
            ("source_updated_at", Timestamptz),
        ],
    )
}

pub fn lms_users() -> Table {
    table(
        "partner_lms_users",
        &[
            ("email", Text),
            ("first_name", Text),
            ("last_name", Text),
            ("activated_at", Timestamptz),
            ("deactivated_at", Timestamptz),
            ("last_active_at", Timestamptz),
            ("source_created_at", Timestamptz),
            ("source_updated_at", Timestamptz),
        ],
    )
}

pub fn lms_groups() -> Table {
    table(
        "partner_lms_groups",
        &[
            ("name", Text),
            ("member_count", Bigint),
            ("source_created_at", Timestamptz),
            ("source_updated_at", Timestamptz),
        ],
    )
}

pub fn group_links() -> Table {
    table(
        "partner_group_links",
        &[("partner_id", Text), ("group_name", Text), ("partner_name", Text), ("method", Text)],
    )
}

pub fn group_match_issues() -> Table {
    table("partner_group_match_issues", &[("group_name", Text), ("issue", Text), ("candidates", Jsonb)])
}

/// Every synced table of the pack.
pub fn all() -> Vec<Table> {
    vec![
        courses(),
        npcu(),
        partners(),
        contacts(),
        lms_users(),
        lms_groups(),
        group_links(),
        group_match_issues(),
        super::analysis::table(),
    ]
}

/// Checks every table exists with compatible columns (they come from the migration).
pub async fn ensure_tables(conn: &mut sqlx::PgConnection) -> Result<(), String> {
    for t in all() {
        t.ensure(&mut *conn, false).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
