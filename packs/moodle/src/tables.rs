//! The pack's synced tables (migration `0020_moodle.sql`): the mapped columns the batch upserts write.
//! Scope, source and role columns are written by the derivation steps, never by an upsert.
//! `ensure_tables` checks at registration that the migration and these declarations agree.

use syncfleet_sdk::sync::table::{Column, ColumnType, Table};

use ColumnType::{Bigint, Boolean, Integer, Jsonb, Text, Timestamptz};

fn table(name: &str, columns: &[(&str, ColumnType)]) -> Table {
    let columns = columns.iter().map(|(n, ty)| Column { name: (*n).to_owned(), ty: *ty }).collect();
    Table::new(name, columns).expect("the pack's table declarations are valid")
}

pub fn categories() -> Table {
    table(
        "moodle_categories",
        &[
            ("name", Text),
            ("idnumber", Text),
            ("kind", Text),
            ("parent_id", Text),
            ("campus_id", Text),
            ("semester_id", Text),
            ("department_id", Text),
            ("code", Text),
            ("depth", Integer),
            ("path", Text),
            ("sortorder", Bigint),
            ("visible", Boolean),
            ("source_updated_at", Timestamptz),
        ],
    )
}

pub fn courses() -> Table {
    table(
        "moodle_courses",
        &[
            ("fullname", Text),
            ("shortname", Text),
            ("idnumber", Text),
            ("program_id", Text),
            ("visible", Boolean),
            ("startdate", Timestamptz),
            ("source_updated_at", Timestamptz),
        ],
    )
}

pub fn users() -> Table {
    table(
        "moodle_users",
        &[
            ("username", Text),
            ("firstname", Text),
            ("lastname", Text),
            ("email", Text),
            ("idnumber", Text),
            ("firstaccess", Timestamptz),
            ("lastaccess", Timestamptz),
        ],
    )
}

pub fn sections() -> Table {
    table("moodle_sections", &[("course_id", Text), ("name", Text)])
}

pub fn enrollments() -> Table {
    table(
        "moodle_enrollments",
        &[
            ("course_id", Text),
            ("user_id", Text),
            ("section_id", Text),
            ("role", Text),
            ("roles", Jsonb),
            ("lastcourseaccess", Timestamptz),
        ],
    )
}

/// [`enrollments`] without `section_id`: the upsert of a course whose answer left out the users'
/// `groups` (a token without `moodle/site:accessallgroups`) keeps each enrollment's section as it
/// was; a new enrollment has none until groups are read.
pub fn enrollments_keeping_sections() -> Table {
    let mut columns = enrollments().columns;
    columns.retain(|c| c.name != "section_id");
    Table::new("moodle_enrollments", columns).expect("the pack's table declarations are valid")
}

/// Every synced table of the pack.
pub fn all() -> Vec<Table> {
    vec![categories(), courses(), users(), sections(), enrollments()]
}

/// Checks every table exists with compatible columns (they come from the migration).
pub async fn ensure_tables(conn: &mut sqlx::PgConnection) -> Result<(), String> {
    for t in all() {
        t.ensure(&mut *conn, false).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
