//! Moodle web services: token errors at HTTP 200, categories tree, courses by field, enrolled users
//! (roles, groups, omitted empty fields, paging, the `userfields` option), users by field, parameter errors.

mod common;

use std::collections::{BTreeSet, HashSet};

use common::start_small;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn bad_token_is_an_exception_with_http_200() {
    let sb = start_small().await;
    let r = sb
        .http
        .get(sb.h.moodle_url())
        .query(&[("wstoken", "bad"), ("wsfunction", "core_course_get_categories"), ("moodlewsrestformat", "json")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["exception"], "moodle_exception");
    assert_eq!(body["errorcode"], "invalidtoken");
    assert_eq!(body["message"], "Invalid token - token not found");
    // Unknown function.
    let body = sb.moodle("core_nope", &[]).await;
    assert_eq!(body["exception"], "dml_missing_record_exception");
    assert_eq!(body["errorcode"], "invalidrecord");
}

#[tokio::test]
async fn categories_form_campus_semester_department_program_tree() {
    let sb = start_small().await;
    let all = sb.moodle("core_course_get_categories", &[]).await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len() as u64, sb.count("moodle", "categories").await);
    let campuses: Vec<&Value> = all.iter().filter(|c| c["parent"] == 0).collect();
    assert_eq!(campuses.len() as u64, sb.count("moodle", "campuses").await);
    assert_eq!(all.iter().map(|c| c["depth"].as_i64().unwrap()).max(), Some(4));
    let programs = all.iter().filter(|c| c["depth"] == 4).count() as u64;
    assert_eq!(programs, sb.count("moodle", "programs").await);
    let sortorders: Vec<i64> = all.iter().map(|c| c["sortorder"].as_i64().unwrap()).collect();
    assert!(sortorders.windows(2).all(|w| w[0] <= w[1]), "sorted by sortorder");
    // parent criterion with addsubcategories=0 returns direct children only; default adds descendants.
    let cid = campuses[0]["id"].to_string();
    let direct = sb
        .moodle(
            "core_course_get_categories",
            &[("criteria[0][key]", "parent"), ("criteria[0][value]", &cid), ("addsubcategories", "0")],
        )
        .await;
    assert!(direct.as_array().unwrap().iter().all(|c| c["parent"] == campuses[0]["id"]));
    let deep =
        sb.moodle("core_course_get_categories", &[("criteria[0][key]", "id"), ("criteria[0][value]", &cid)]).await;
    assert!(deep.as_array().unwrap().len() > direct.as_array().unwrap().len());
    let bad =
        sb.moodle("core_course_get_categories", &[("criteria[0][key]", "foo"), ("criteria[0][value]", "1")]).await;
    assert_eq!(bad["errorcode"], "criteriaerror");
}

#[tokio::test]
async fn courses_by_field() {
    let sb = start_small().await;
    let all = sb.moodle("core_course_get_courses_by_field", &[]).await;
    let courses = all["courses"].as_array().unwrap();
    assert_eq!(courses.len() as u64, sb.count("moodle", "courses").await);
    assert_eq!(all["warnings"].as_array().unwrap().len(), 0);
    let c = &courses[0];
    for key in ["id", "fullname", "shortname", "categoryid", "categoryname", "timemodified", "visible"] {
        assert!(c.get(key).is_some(), "{key}");
    }
    let by_cat = sb
        .moodle("core_course_get_courses_by_field", &[("field", "category"), ("value", &c["categoryid"].to_string())])
        .await;
    assert!(by_cat["courses"].as_array().unwrap().iter().all(|x| x["categoryid"] == c["categoryid"]));
    let ids = format!("{},{}", courses[0]["id"], courses[1]["id"]);
    let by_ids = sb.moodle("core_course_get_courses_by_field", &[("field", "ids"), ("value", &ids)]).await;
    assert_eq!(by_ids["courses"].as_array().unwrap().len(), 2);
    let by_short = sb
        .moodle(
            "core_course_get_courses_by_field",
            &[("field", "shortname"), ("value", c["shortname"].as_str().unwrap())],
        )
        .await;
    assert_eq!(by_short["courses"][0]["id"], c["id"]);
    let bad = sb.moodle("core_course_get_courses_by_field", &[("field", "nope"), ("value", "1")]).await;
    assert_eq!(bad["exception"], "invalid_parameter_exception");
}

#[tokio::test]
async fn enrolled_users_with_roles_groups_and_paging() {
    let sb = start_small().await;
    let courses = sb.moodle("core_course_get_courses_by_field", &[]).await;
    let mut total = 0u64;
    let mut saw_group = false;
    let mut saw_omitted_city = false;
    let mut usernames = HashSet::new();
    for c in courses["courses"].as_array().unwrap() {
        let id = c["id"].to_string();
        let users = sb.moodle("core_enrol_get_enrolled_users", &[("courseid", &id)]).await;
        let users = users.as_array().unwrap_or_else(|| panic!("array for course {id}"));
        total += users.len() as u64;
        for u in users {
            assert!(u["roles"].is_array());
            assert!(u["groups"].is_array());
            saw_group |= !u["groups"].as_array().unwrap().is_empty();
            saw_omitted_city |= u.get("city").is_none();
            assert!(u.get("fullname").is_some());
            usernames.insert(u["username"].as_str().unwrap().to_string());
        }
        // limitfrom/limitnumber page through the same users.
        let mut paged = 0;
        let mut from = 0;
        loop {
            let f = from.to_string();
            let page = sb
                .moodle(
                    "core_enrol_get_enrolled_users",
                    &[
                        ("courseid", &id),
                        ("options[0][name]", "limitfrom"),
                        ("options[0][value]", &f),
                        ("options[1][name]", "limitnumber"),
                        ("options[1][value]", "3"),
                    ],
                )
                .await;
            let n = page.as_array().unwrap().len();
            paged += n;
            from += 3;
            if n < 3 {
                break;
            }
        }
        assert_eq!(paged, users.len());
    }
    assert_eq!(total, sb.count("moodle", "enrolments").await);
    assert!(saw_group && saw_omitted_city);
    let prefixed = usernames
        .iter()
        .filter(|u| u.split_once('-').is_some_and(|(_, id)| id.chars().all(|c| c.is_ascii_digit())))
        .count();
    assert!(prefixed > usernames.len() * 8 / 10, "most usernames are <campus>-<id>");
    let bad = sb.moodle("core_enrol_get_enrolled_users", &[("courseid", "999999")]).await;
    assert_eq!(bad["errorcode"], "invalidrecord");
    let bad = sb.moodle("core_enrol_get_enrolled_users", &[]).await;
    assert_eq!(bad["errorcode"], "invalidparameter");
    let c0 = courses["courses"][0]["id"].to_string();
    let bad = sb
        .moodle(
            "core_enrol_get_enrolled_users",
            &[("courseid", &c0), ("options[0][name]", "sortby"), ("options[0][value]", "email")],
        )
        .await;
    assert_eq!(bad["exception"], "invalid_parameter_exception");
}

#[tokio::test]
async fn enrolled_users_give_only_the_fields_userfields_lists() {
    let sb = start_small().await;
    let (id, all) = sb.moodle_first_course().await;
    let listed = |fields: &'static str| {
        let id = id.clone();
        let sb = &sb;
        async move {
            sb.moodle(
                "core_enrol_get_enrolled_users",
                &[("courseid", &id), ("options[0][name]", "userfields"), ("options[0][value]", fields)],
            )
            .await
        }
    };
    let some = listed("username, lastaccess,roles").await;
    assert_eq!(some.as_array().unwrap().len(), all.as_array().unwrap().len());
    for (s, a) in some.as_array().unwrap().iter().zip(all.as_array().unwrap()) {
        let keys: BTreeSet<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
        // `id` and `fullname` always; the course's last access comes with `lastaccess`.
        assert_eq!(
            keys,
            BTreeSet::from(["id", "fullname", "username", "lastaccess", "lastcourseaccess", "roles"]),
            "{s}"
        );
        for k in keys {
            assert_eq!(s[k], a[k], "{k}: the same value as in the whole answer");
        }
        assert!(a.get("enrolledcourses").is_some() && a.get("profileimageurl").is_some());
    }
    let bad = listed("username,lastcourseaccess").await;
    assert_eq!(
        (bad["exception"].as_str(), bad["errorcode"].as_str()),
        (Some("moodle_exception"), Some("invaliduserfield"))
    );
    assert!(bad["message"].as_str().unwrap().contains("lastcourseaccess"), "{bad}");
}

#[tokio::test]
async fn users_by_field() {
    let sb = start_small().await;
    let (_, users) = sb.moodle_first_course().await;
    let u = &users[0];
    let got = sb
        .moodle(
            "core_user_get_users_by_field",
            &[("field", "username"), ("values[0]", u["username"].as_str().unwrap()), ("values[1]", "no-such-user")],
        )
        .await;
    assert_eq!(got.as_array().unwrap().len(), 1, "unknown values are simply absent");
    assert_eq!(got[0]["id"], u["id"]);
    assert!(got[0].get("timemodified").is_none());
    let got = sb
        .moodle("core_user_get_users_by_field", &[("field", "email"), ("values[0]", u["email"].as_str().unwrap())])
        .await;
    assert_eq!(got[0]["id"], u["id"]);
    let bad = sb.moodle("core_user_get_users_by_field", &[("field", "city"), ("values[0]", "x")]).await;
    assert_eq!(bad["exception"], "coding_exception");
    let bad = sb.moodle("core_user_get_users_by_field", &[("field", "id"), ("values", "3")]).await;
    assert_eq!(bad["errorcode"], "invalidparameter");
    // GET works as well as POST.
    let r = sb
        .http
        .get(sb.h.moodle_url())
        .query(&[
            ("wstoken", sb.h.config.moodle_token.as_str()),
            ("wsfunction", "core_user_get_users_by_field"),
            ("moodlewsrestformat", "json"),
            ("field", "id"),
            ("values[0]", &u["id"].to_string()),
        ])
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body[0]["id"], u["id"]);
}
