//! Moodle's enrolled users as read: one entry of `core_enrol_get_enrolled_users` (the user's
//! columns, groups and roles in the course), and a user's `moodle_users` columns, which
//! `core_user_get_users_by_field` describes the same way (`hydrate`).

use serde_json::{Map, Value};

use super::epoch;

/// One enrolled user of one course, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrolled {
    pub user_id: String,
    /// The user's columns, or why they cannot be written.
    pub user: Result<Map<String, Value>, String>,
    /// (group id, name) in Moodle's order; `None` when Moodle left the `groups` key out (the token
    /// lacks `moodle/site:accessallgroups`), which says nothing about the user's groups.
    pub groups: Option<Vec<(String, String)>>,
    /// Role shortnames in Moodle's order.
    pub roles: Vec<String>,
    pub lastcourseaccess: Value,
}

/// The `moodle_users` columns of a user as Moodle describes them (enrolled users and
/// `core_user_get_users_by_field` alike).
pub fn user_fields(raw: &Value) -> Result<Map<String, Value>, String> {
    let text = |k: &str| raw.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let mut f = Map::new();
    f.insert("username".into(), Value::from(text("username").ok_or("no `username`")?));
    for k in ["firstname", "lastname", "email", "idnumber"] {
        f.insert(k.into(), text(k).map_or(Value::Null, Value::from));
    }
    f.insert("firstaccess".into(), epoch(raw.get("firstaccess"), "firstaccess")?);
    f.insert("lastaccess".into(), epoch(raw.get("lastaccess"), "lastaccess")?);
    Ok(f)
}

/// Reads one entry of `core_enrol_get_enrolled_users`; `Err` when even the id is unreadable.
pub fn read_enrolled(raw: &Value) -> Result<Enrolled, String> {
    let user_id = raw.get("id").and_then(Value::as_i64).ok_or("no readable `id`")?.to_string();
    let user = user_fields(raw);
    let groups = raw.get("groups").map(|groups| {
        groups
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| {
                let id = g.get("id").and_then(Value::as_i64)?;
                Some((id.to_string(), g.get("name").and_then(Value::as_str).unwrap_or_default().to_owned()))
            })
            .collect()
    });
    let roles = raw
        .get("roles")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("shortname").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let lastcourseaccess = epoch(raw.get("lastcourseaccess"), "lastcourseaccess").unwrap_or(Value::Null);
    Ok(Enrolled { user_id, user, groups, roles, lastcourseaccess })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_enrolled_user_is_read_with_groups_and_roles() {
        let raw = json!({"id": 57, "username": "northgate-100001", "firstname": "Pat", "lastname": "Lee",
            "email": "p@x", "firstaccess": 1_704_100_000, "lastaccess": 0, "lastcourseaccess": 1_735_500_000,
            "groups": [{"id": 8, "name": "Tutorial 1"}, {"id": 9, "name": "Tutorial 2"}],
            "roles": [{"roleid": 5, "shortname": "student"}]});
        let u = read_enrolled(&raw).unwrap();
        assert_eq!(u.user_id, "57");
        assert_eq!(u.groups.as_ref().unwrap()[0], ("8".into(), "Tutorial 1".into()));
        assert_eq!(u.roles, ["student"]);
        let f = u.user.unwrap();
        assert_eq!(f["username"], "northgate-100001");
        assert_eq!(f["lastaccess"], Value::Null, "0 means never");
        assert_eq!(f["idnumber"], Value::Null, "omitted fields are NULL");
        // Missing `groups` (no accessallgroups) says nothing of the groups; `[]` is no groups.
        let u = read_enrolled(&json!({"id": 3, "username": "a", "roles": []})).unwrap();
        assert_eq!(u.groups, None);
        let u = read_enrolled(&json!({"id": 3, "username": "a", "roles": [], "groups": []})).unwrap();
        assert_eq!(u.groups, Some(vec![]));
        assert!(read_enrolled(&json!({"username": "a"})).is_err());
        let bad = read_enrolled(&json!({"id": 4, "username": "b", "lastaccess": "yesterday"})).unwrap();
        assert!(bad.user.unwrap_err().contains("lastaccess"));
    }
}
