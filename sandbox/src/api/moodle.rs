//! Moodle web services REST under `/moodle/webservice/rest/server.php` (GET or form POST, merged):
//! `core_course_get_categories`, `core_course_get_courses_by_field`, `core_enrol_get_enrolled_users`,
//! `core_user_get_users_by_field`. Errors are HTTP 200 with `{exception, errorcode, message}`; the
//! `exceptions` fault answers chosen calls (a function, or a function with one parameter) that way,
//! the `empty_answers` fault with a valid answer that lists nothing, the `capability_exceptions` fault
//! with `required_capability_exception`; `no_groups` leaves enrolled users' `groups` key out (a token
//! without `moodle/site:accessallgroups`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use crate::api::envelope::json_response;
use crate::config::Api;
use crate::data::moodle::{MCourse, MUser, Moodle, role_shortname};
use crate::state::{AppState, lock};
use crate::util::{param, parse_pairs};

pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/webservice/rest/server.php", get(serve_get).post(serve_post))
}

type Pairs = Vec<(String, String)>;

struct MoodleError {
    exception: &'static str,
    errorcode: &'static str,
    message: String,
    debuginfo: Option<String>,
}

fn err(exception: &'static str, errorcode: &'static str, message: impl Into<String>) -> MoodleError {
    MoodleError { exception, errorcode, message: message.into(), debuginfo: None }
}

fn invalid_param(debug: impl Into<String>) -> MoodleError {
    MoodleError {
        exception: "invalid_parameter_exception",
        errorcode: "invalidparameter",
        message: "Invalid parameter value detected".into(),
        debuginfo: Some(debug.into()),
    }
}

fn respond(body: &Value) -> Response {
    let mut resp = json_response(StatusCode::OK, body);
    resp.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    resp
}

fn error_body(e: &MoodleError) -> Value {
    let mut m = Map::new();
    m.insert("exception".into(), Value::from(e.exception));
    m.insert("errorcode".into(), Value::from(e.errorcode));
    m.insert("message".into(), Value::from(e.message.as_str()));
    if let Some(d) = &e.debuginfo {
        m.insert("debuginfo".into(), Value::from(d.as_str()));
    }
    Value::Object(m)
}

async fn serve_get(State(st): State<Arc<AppState>>, RawQuery(raw): RawQuery) -> Response {
    handle(&st, parse_pairs(raw.as_deref().unwrap_or("")))
}

async fn serve_post(State(st): State<Arc<AppState>>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let mut pairs = parse_pairs(raw.as_deref().unwrap_or(""));
    pairs.extend(parse_pairs(&String::from_utf8_lossy(&body)));
    handle(&st, pairs)
}

fn handle(st: &AppState, pairs: Pairs) -> Response {
    let function = param(&pairs, "wsfunction").unwrap_or("").to_string();
    *lock(&st.moodle_functions)
        .entry(if function.is_empty() { "(none)".into() } else { function.clone() })
        .or_default() += 1;
    if param(&pairs, "moodlewsrestformat") != Some("json") {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<EXCEPTION class=\"moodle_exception\">\n<ERRORCODE>xmlonly</ERRORCODE>\n<MESSAGE>This sandbox answers XML only with this error: send moodlewsrestformat=json.</MESSAGE>\n</EXCEPTION>\n";
        return ([(header::CONTENT_TYPE, "application/xml; charset=utf-8")], xml).into_response();
    }
    if param(&pairs, "wstoken") != Some(st.config.moodle_token.as_str()) {
        return respond(&error_body(&err("moodle_exception", "invalidtoken", "Invalid token - token not found")));
    }
    let faults = st.faults(Api::Moodle);
    if faults.moodle_exception(&function, &pairs) {
        let mut e = err("moodle_exception", "generalexceptionmessage", "Injected failure: the site answered an error.");
        e.debuginfo = Some(format!("{function} refused by the sandbox's `exceptions` fault"));
        return respond(&error_body(&e));
    }
    if faults.moodle_capability(&function, &pairs) {
        // What Moodle answers when `require_capability` fails for the token's user.
        let capability = match function.as_str() {
            "core_enrol_get_enrolled_users" => "View participants",
            "core_course_get_courses_by_field" => "View courses without participation",
            _ => "Access all groups",
        };
        let message = format!("Sorry, but you do not currently have permissions to do that ({capability}).");
        return respond(&error_body(&err("required_capability_exception", "nopermissions", message)));
    }
    if faults.moodle_empty(&function, &pairs) {
        // What Moodle answers when there is nothing to list.
        return respond(&match function.as_str() {
            "core_course_get_courses_by_field" => json!({"courses": [], "warnings": []}),
            _ => json!([]),
        });
    }
    let data = st.read();
    let m = &data.moodle;
    let result = match function.as_str() {
        "core_course_get_categories" => categories(m, &pairs),
        "core_course_get_courses_by_field" => courses_by_field(m, &pairs),
        "core_enrol_get_enrolled_users" => enrolled_users(m, &pairs, &faults, st.config.seed),
        "core_user_get_users_by_field" => users_by_field(m, &pairs),
        _ => Err(err(
            "dml_missing_record_exception",
            "invalidrecord",
            "Can't find data record in database table external_functions.",
        )),
    };
    match result {
        Ok(v) => respond(&v),
        Err(e) => respond(&error_body(&e)),
    }
}

/// `name[0][key]=..&name[0][value]=..` → one map per index (indexes in order).
fn structs(pairs: &Pairs, name: &str) -> Result<Vec<BTreeMap<String, String>>, MoodleError> {
    let mut out: BTreeMap<usize, BTreeMap<String, String>> = BTreeMap::new();
    for (k, v) in pairs {
        if k == name {
            return Err(invalid_param(format!("Only arrays accepted. The bad value is: '{v}'")));
        }
        let Some(rest) = k.strip_prefix(name).and_then(|r| r.strip_prefix('[')) else {
            continue;
        };
        let mut parts = rest.split(['[', ']']).filter(|s| !s.is_empty());
        let (Some(i), Some(field)) = (parts.next().and_then(|i| i.parse().ok()), parts.next()) else {
            return Err(invalid_param(format!("Invalid structure in {k}")));
        };
        out.entry(i).or_default().insert(field.to_string(), v.clone());
    }
    Ok(out.into_values().collect())
}

/// `name[0]=a&name[1]=b` → values in index order.
fn list(pairs: &Pairs, name: &str) -> Result<Vec<String>, MoodleError> {
    let mut out: BTreeMap<usize, String> = BTreeMap::new();
    for (k, v) in pairs {
        if k == name {
            return Err(invalid_param(format!("Only arrays accepted. The bad value is: '{v}'")));
        }
        if let Some(i) = k.strip_prefix(name).and_then(|r| r.strip_prefix('[')).and_then(|r| r.strip_suffix(']')) {
            let i = i.parse().map_err(|_| invalid_param(format!("Invalid index in {k}")))?;
            out.insert(i, v.clone());
        }
    }
    Ok(out.into_values().collect())
}

fn categories(m: &Moodle, pairs: &Pairs) -> Result<Value, MoodleError> {
    let criteria = structs(pairs, "criteria")?;
    let addsub = param(pairs, "addsubcategories").is_none_or(|v| v != "0");
    let mut matched: Vec<usize> = Vec::new();
    for (i, c) in m.categories.iter().enumerate() {
        let mut ok = true;
        for crit in &criteria {
            let key = crit.get("key").map(String::as_str).unwrap_or("");
            let value = crit.get("value").map(String::as_str).unwrap_or("");
            ok &= match key {
                "id" => value.parse() == Ok(c.id),
                "ids" => value.split(',').any(|v| v.trim().parse() == Ok(c.id)),
                "name" => c.name == value,
                "parent" => value.parse() == Ok(c.parent),
                "idnumber" => c.idnumber == value,
                "visible" => value.parse::<i64>().map(|v| v != 0) == Ok(c.visible),
                "theme" => value.is_empty(),
                other => {
                    let mut e =
                        err("moodle_exception", "criteriaerror", "Missing permissions to search on a criterion.");
                    e.debuginfo = Some(format!("You can not search on this criteria: {other}"));
                    return Err(e);
                }
            };
        }
        if ok {
            matched.push(i);
        }
    }
    if addsub && !criteria.is_empty() {
        let prefixes: Vec<String> = matched.iter().map(|&i| format!("{}/", m.categories[i].path)).collect();
        for (i, c) in m.categories.iter().enumerate() {
            if !matched.contains(&i) && prefixes.iter().any(|p| c.path.starts_with(p.as_str())) {
                matched.push(i);
            }
        }
    }
    matched.sort_by_key(|&i| m.categories[i].sortorder);
    let counts = {
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for c in &m.courses {
            *counts.entry(c.categoryid).or_default() += 1;
        }
        counts
    };
    Ok(Value::Array(
        matched
            .into_iter()
            .map(|i| {
                let c = &m.categories[i];
                json!({
                    "id": c.id, "name": c.name, "idnumber": c.idnumber, "description": "", "descriptionformat": 1,
                    "parent": c.parent, "sortorder": c.sortorder, "coursecount": counts.get(&c.id).copied().unwrap_or(0),
                    "visible": i64::from(c.visible), "visibleold": i64::from(c.visible), "timemodified": c.timemodified,
                    "depth": c.depth, "path": c.path, "theme": "",
                })
            })
            .collect(),
    ))
}

fn course_json(m: &Moodle, c: &MCourse) -> Value {
    let catname = m.categories.iter().find(|k| k.id == c.categoryid).map_or("", |k| k.name.as_str());
    json!({
        "id": c.id, "fullname": c.fullname, "displayname": c.fullname, "shortname": c.shortname,
        "categoryid": c.categoryid, "categoryname": catname, "sortorder": c.sortorder,
        "summary": format!("<p>{}</p>", c.fullname), "summaryformat": 1, "summaryfiles": [], "overviewfiles": [],
        "contacts": [], "enrollmentmethods": ["manual"], "customfields": [],
        "idnumber": c.idnumber, "format": "topics", "showgrades": 1, "newsitems": 5, "startdate": c.startdate,
        "enddate": 0, "maxbytes": 0, "showreports": 0, "visible": i64::from(c.visible), "groupmode": i64::from(!c.groups.is_empty()),
        "groupmodeforce": 0, "defaultgroupingid": 0, "enablecompletion": 1, "completionnotify": 0, "lang": "",
        "theme": "", "marker": 0, "legacyfiles": 0, "calendartype": "", "timecreated": c.timecreated,
        "timemodified": c.timemodified, "requested": 0, "cacherev": c.timemodified + 1, "filters": [],
        "courseformatoptions": [{"name": "hiddensections", "value": 0}],
    })
}

fn courses_by_field(m: &Moodle, pairs: &Pairs) -> Result<Value, MoodleError> {
    let field = param(pairs, "field").unwrap_or("");
    let value = param(pairs, "value").unwrap_or("");
    let pick: Box<dyn Fn(&MCourse) -> bool> = match field {
        "" => Box::new(|_| true),
        "id" => {
            let id: i64 = value.parse().map_err(|_| invalid_param("value must be an integer for field id"))?;
            Box::new(move |c| c.id == id)
        }
        "ids" => {
            let ids: Vec<i64> = value.split(',').filter_map(|v| v.trim().parse().ok()).collect();
            Box::new(move |c| ids.contains(&c.id))
        }
        "shortname" => Box::new(move |c| c.shortname == value),
        "idnumber" => Box::new(move |c| c.idnumber == value),
        "category" => {
            let id: i64 = value.parse().map_err(|_| invalid_param("value must be an integer for field category"))?;
            Box::new(move |c| c.categoryid == id)
        }
        other => return Err(invalid_param(format!("Invalid field name {other}"))),
    };
    let courses: Vec<Value> = m.courses.iter().filter(|c| pick(c)).map(|c| course_json(m, c)).collect();
    Ok(json!({"courses": courses, "warnings": []}))
}

/// The user fields Moodle's `user_get_user_details` knows: the names `userfields` may list.
const USER_FIELDS: [&str; 39] = [
    "id",
    "username",
    "fullname",
    "firstname",
    "lastname",
    "email",
    "address",
    "phone1",
    "phone2",
    "icq",
    "skype",
    "yahoo",
    "aim",
    "msn",
    "department",
    "institution",
    "interests",
    "firstaccess",
    "lastaccess",
    "auth",
    "confirmed",
    "idnumber",
    "lang",
    "theme",
    "timezone",
    "mailformat",
    "description",
    "descriptionformat",
    "city",
    "url",
    "country",
    "profileimageurlsmall",
    "profileimageurl",
    "customfields",
    "groups",
    "roles",
    "preferences",
    "enrolledcourses",
    "suspended",
];

/// The fields an answer gives of each user, as `user_get_user_details` decides: every field, or
/// only those the `userfields` option lists. `id` and `fullname` are always given, and the course's
/// `lastcourseaccess` comes with `lastaccess`.
struct Fields(Option<Vec<String>>);

impl Fields {
    const ALL: Fields = Fields(None);

    /// The `userfields` option (comma-separated); a name Moodle does not know fails the call.
    fn listed(option: Option<&String>) -> Result<Fields, MoodleError> {
        let Some(csv) = option.map(|v| v.trim()).filter(|v| !v.is_empty()) else {
            return Ok(Fields::ALL);
        };
        let names: Vec<String> = csv.split(',').map(|f| f.trim().to_owned()).collect();
        if let Some(bad) = names.iter().find(|f| !USER_FIELDS.contains(&f.as_str())) {
            return Err(err("moodle_exception", "invaliduserfield", format!("Invalid user field: {bad}")));
        }
        Ok(Fields(Some(names)))
    }

    fn has(&self, field: &str) -> bool {
        let listed = |f: &str| self.0.as_ref().is_none_or(|names| names.iter().any(|n| n == f));
        match field {
            "id" | "fullname" => true,
            "lastcourseaccess" => listed("lastaccess"),
            "descriptionformat" => listed("description"),
            f => listed(f),
        }
    }
}

fn user_common(u: &MUser, fields: &Fields, out: &mut Map<String, Value>) {
    let mut put = |k: &str, v: Value| {
        if fields.has(k) {
            out.insert(k.into(), v);
        }
    };
    put("id", Value::from(u.id));
    put("username", Value::from(u.username.as_str()));
    put("firstname", Value::from(u.firstname.as_str()));
    put("lastname", Value::from(u.lastname.as_str()));
    put("fullname", Value::from(format!("{} {}", u.firstname, u.lastname)));
    put("email", Value::from(u.email.as_str()));
    if !u.phone1.is_empty() {
        put("phone1", Value::from(u.phone1.as_str()));
    }
    put("department", Value::from(u.department.as_str()));
    put("institution", Value::from(""));
    if !u.idnumber.is_empty() {
        put("idnumber", Value::from(u.idnumber.as_str()));
    }
    put("firstaccess", Value::from(u.firstaccess));
    put("lastaccess", Value::from(u.lastaccess));
    put("suspended", Value::from(u.suspended));
    put("description", Value::from(""));
    put("descriptionformat", Value::from(1));
    if !u.city.is_empty() {
        put("city", Value::from(u.city.as_str()));
    }
    if !u.country.is_empty() {
        put("country", Value::from(u.country.as_str()));
    }
    // Built only when asked for (`put` would build the URL first).
    for (k, size) in [("profileimageurlsmall", "f2"), ("profileimageurl", "f1")] {
        if fields.has(k) {
            let url = format!("https://moodle.sandbox/theme/image.php/boost/core/1/u/{size}?u={}", u.id);
            out.insert(k.into(), Value::from(url));
        }
    }
}

fn enrolled_users(
    m: &Moodle,
    pairs: &Pairs,
    faults: &crate::config::FaultSettings,
    seed: u64,
) -> Result<Value, MoodleError> {
    let courseid =
        param(pairs, "courseid").ok_or_else(|| invalid_param("Missing required key in single structure: courseid"))?;
    let courseid: i64 = courseid.parse().map_err(|_| invalid_param("courseid: Invalid parameter value detected"))?;
    let Some(&ci) = m.course_idx.get(&courseid) else {
        return Err(err(
            "dml_missing_record_exception",
            "invalidrecord",
            "Can't find data record in database table course.",
        ));
    };
    let course = &m.courses[ci];
    let mut opts: BTreeMap<String, String> = BTreeMap::new();
    for o in structs(pairs, "options")? {
        if let (Some(n), Some(v)) = (o.get("name"), o.get("value")) {
            opts.insert(n.clone(), v.clone());
        }
    }
    let groupid: Option<i64> = opts.get("groupid").and_then(|v| v.parse().ok()).filter(|g| *g > 0);
    let onlyactive = opts.get("onlyactive").is_some_and(|v| v == "1" || v == "true");
    let limitfrom: usize = opts.get("limitfrom").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limitnumber: usize = opts.get("limitnumber").and_then(|v| v.parse().ok()).unwrap_or(0);
    let sortby = opts.get("sortby").map(String::as_str).unwrap_or("id");
    if !matches!(sortby, "id" | "firstname" | "lastname" | "siteorder") {
        return Err(invalid_param(format!("Invalid sort by field: {sortby}")));
    }
    let desc = match opts.get("sortdirection").map(|s| s.to_ascii_uppercase()) {
        None => false,
        Some(d) if d == "ASC" => false,
        Some(d) if d == "DESC" => true,
        Some(d) => return Err(invalid_param(format!("Invalid sort direction: {d}"))),
    };
    let fields = Fields::listed(opts.get("userfields"))?;

    let mut rows: Vec<(&MUser, &crate::data::moodle::Enrolment)> = m
        .by_course
        .get(&courseid)
        .into_iter()
        .flatten()
        .map(|&i| &m.enrolments[i])
        .filter(|e| groupid.is_none_or(|g| e.groups.contains(&g)))
        .filter_map(|e| m.user_idx.get(&e.userid).map(|&u| (&m.users[u], e)))
        .filter(|(u, e)| !onlyactive || (e.active && !u.suspended))
        .collect();
    match sortby {
        "firstname" => rows.sort_by(|a, b| (&a.0.firstname, a.0.id).cmp(&(&b.0.firstname, b.0.id))),
        "lastname" => rows.sort_by(|a, b| (&a.0.lastname, a.0.id).cmp(&(&b.0.lastname, b.0.id))),
        _ => rows.sort_by_key(|r| r.0.id),
    }
    if desc {
        rows.reverse();
    }
    let start = limitfrom.min(rows.len());
    let mut end = if limitnumber == 0 { rows.len() } else { (start + limitnumber).min(rows.len()) };
    if faults.truncate_page && end > start {
        end = start + (end - start).div_ceil(2);
    }
    let users: Vec<Value> = rows[start..end]
        .iter()
        .map(|(u, e)| {
            let mut o = Map::new();
            user_common(u, &fields, &mut o);
            o.remove("suspended");
            if fields.has("lastcourseaccess") {
                o.insert("lastcourseaccess".into(), Value::from(e.lastcourseaccess));
            }
            // Without `moodle/site:accessallgroups` Moodle leaves the key out.
            if fields.has("groups") && !faults.no_groups {
                let groups: Vec<Value> = course
                    .groups
                    .iter()
                    .filter(|(gid, _)| e.groups.contains(gid))
                    .map(|(gid, name)| json!({"id": gid, "name": name, "description": "", "descriptionformat": 1}))
                    .collect();
                o.insert("groups".into(), Value::Array(groups));
            }
            if fields.has("roles") {
                o.insert(
                    "roles".into(),
                    json!([{"roleid": e.roleid, "name": "", "shortname": role_shortname(e.roleid), "sortorder": 0}]),
                );
            }
            if fields.has("enrolledcourses") {
                let enrolled: Vec<Value> = m
                    .by_user
                    .get(&u.id)
                    .into_iter()
                    .flatten()
                    .filter_map(|cid| m.course_idx.get(cid).map(|&i| &m.courses[i]))
                    .map(|c| json!({"id": c.id, "fullname": c.fullname, "shortname": c.shortname}))
                    .collect();
                if !enrolled.is_empty() {
                    o.insert("enrolledcourses".into(), Value::Array(enrolled));
                }
            }
            if faults.serves_malformed(Api::Moodle, seed, u.id as u64) {
                if u.id % 2 == 0 {
                    o.remove("id");
                } else {
                    o.insert("lastaccess".into(), Value::from("yesterday"));
                }
            }
            Value::Object(o)
        })
        .collect();
    Ok(Value::Array(users))
}

fn users_by_field(m: &Moodle, pairs: &Pairs) -> Result<Value, MoodleError> {
    let field = param(pairs, "field").unwrap_or("");
    let values = list(pairs, "values")?;
    if !matches!(field, "id" | "idnumber" | "username" | "email") {
        return Err(err(
            "coding_exception",
            "codingerror",
            "Coding error detected, it must be fixed by a programmer: invalid field parameter",
        ));
    }
    let mut users: Vec<&MUser> = m
        .users
        .iter()
        .filter(|u| {
            values.iter().any(|v| match field {
                "id" => v.parse() == Ok(u.id),
                "idnumber" => !u.idnumber.is_empty() && &u.idnumber == v,
                "username" => &u.username == v,
                _ => u.email.eq_ignore_ascii_case(v),
            })
        })
        .collect();
    users.sort_by_key(|u| u.id);
    Ok(Value::Array(
        users
            .into_iter()
            .map(|u| {
                let mut o = Map::new();
                user_common(u, &Fields::ALL, &mut o);
                o.insert("auth".into(), Value::from("manual"));
                o.insert("confirmed".into(), Value::from(true));
                o.insert("lang".into(), Value::from("en"));
                o.insert("theme".into(), Value::from(""));
                o.insert("timezone".into(), Value::from("99"));
                o.insert("mailformat".into(), Value::from(1));
                Value::Object(o)
            })
            .collect(),
    ))
}
