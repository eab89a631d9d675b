//! JSON:API views of the Northpass records (serialized straight from the data, no intermediate
//! `Value`), and the attributes each resource exposes to `filter` and `sort`.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Value, json};

use super::list::{AttrVal, NpItem};
use crate::data::northpass::{Course, Enrollment, Group, Northpass, Person};
use crate::util::fmt_utc;

pub const SCHOOL_ID: &str = "5c7b2f0e-0000-4000-8000-5a4db0c5c001";

fn ts(t: Option<i64>) -> Option<String> {
    t.map(fmt_utc)
}

#[derive(Serialize)]
pub struct RelData<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Serialize)]
pub struct Rel<'a> {
    pub data: RelData<'a>,
}

#[derive(Serialize)]
pub struct PersonAttrs<'a> {
    name: String,
    full_name: String,
    first_name: &'a str,
    last_name: &'a str,
    email: &'a str,
    sso_uid: &'a str,
    created_at: String,
    updated_at: String,
    activated_at: Option<String>,
    last_active_at: Option<String>,
    deactivated_at: Option<String>,
    unsubscribed: bool,
}

#[derive(Serialize)]
pub struct PersonRels<'a> {
    school: Rel<'a>,
}

#[derive(Serialize)]
pub struct PersonLinks {
    #[serde(rename = "self")]
    this: String,
    teaching: String,
}

#[derive(Serialize)]
pub struct PersonView<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    attributes: PersonAttrs<'a>,
    relationships: PersonRels<'a>,
    links: PersonLinks,
}

impl NpItem for Person {
    type View<'a> = PersonView<'a>;
    fn key(&self) -> u32 {
        self.key
    }
    fn attr(&self, _np: &Northpass, name: &str) -> Option<AttrVal<'_>> {
        Some(match name {
            "email" | "sso_uid" => AttrVal::Str(Cow::Borrowed(&self.email)),
            "first_name" => AttrVal::Str(Cow::Borrowed(&self.first_name)),
            "last_name" => AttrVal::Str(Cow::Borrowed(&self.last_name)),
            "name" | "full_name" => AttrVal::Str(Cow::Owned(format!("{} {}", self.first_name, self.last_name))),
            "id" => AttrVal::Str(Cow::Borrowed(&self.id)),
            "created_at" => AttrVal::Time(Some(self.created_at)),
            "updated_at" => AttrVal::Time(Some(self.updated_at)),
            "activated_at" => AttrVal::Time(self.activated_at),
            "deactivated_at" => AttrVal::Time(self.deactivated_at),
            "last_active_at" => AttrVal::Time(self.last_active_at),
            "unsubscribed" => AttrVal::Bool(false),
            _ => return None,
        })
    }
    fn view<'a>(&'a self, _np: &'a Northpass, base: &str) -> PersonView<'a> {
        let full = format!("{} {}", self.first_name, self.last_name);
        PersonView {
            id: &self.id,
            kind: "people",
            attributes: PersonAttrs {
                name: full.clone(),
                full_name: full,
                first_name: &self.first_name,
                last_name: &self.last_name,
                email: &self.email,
                sso_uid: &self.email,
                created_at: fmt_utc(self.created_at),
                updated_at: fmt_utc(self.updated_at),
                activated_at: ts(self.activated_at),
                last_active_at: ts(self.last_active_at),
                deactivated_at: ts(self.deactivated_at),
                unsubscribed: false,
            },
            relationships: PersonRels { school: Rel { data: RelData { id: SCHOOL_ID, kind: "schools" } } },
            links: PersonLinks {
                this: format!("{base}/people/{}", self.id),
                teaching: format!("https://app.northpass.com/people/{}", self.id),
            },
        }
    }
}

#[derive(Serialize)]
pub struct GroupAttrs<'a> {
    name: &'a str,
    memberships_count: usize,
    membership_count: usize,
    user_count: usize,
    description: Option<&'a str>,
    group_enrollment_link: String,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize)]
pub struct SelfLink {
    #[serde(rename = "self")]
    this: String,
}

#[derive(Serialize)]
pub struct GroupView<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    attributes: GroupAttrs<'a>,
    links: SelfLink,
}

impl NpItem for Group {
    type View<'a> = GroupView<'a>;
    fn key(&self) -> u32 {
        self.key
    }
    fn attr(&self, _np: &Northpass, name: &str) -> Option<AttrVal<'_>> {
        Some(match name {
            "name" => AttrVal::Str(Cow::Borrowed(&self.name)),
            "id" => AttrVal::Str(Cow::Borrowed(&self.id)),
            "created_at" => AttrVal::Time(Some(self.created_at)),
            "updated_at" => AttrVal::Time(Some(self.updated_at)),
            "memberships_count" | "membership_count" | "user_count" => AttrVal::Int(self.members.len() as i64),
            _ => return None,
        })
    }
    fn view<'a>(&'a self, _np: &'a Northpass, base: &str) -> GroupView<'a> {
        let n = self.members.len();
        GroupView {
            id: &self.id,
            kind: "groups",
            attributes: GroupAttrs {
                name: &self.name,
                memberships_count: n,
                membership_count: n,
                user_count: n,
                description: None,
                group_enrollment_link: format!("https://app.northpass.com/g/{}", &self.id[..8]),
                created_at: fmt_utc(self.created_at),
                updated_at: fmt_utc(self.updated_at),
            },
            links: SelfLink { this: format!("{base}/groups/{}", self.id) },
        }
    }
}

#[derive(Serialize)]
pub struct CourseAttrs<'a> {
    name: &'a str,
    status: &'a str,
    published: bool,
    permalink: &'a str,
    short_description: String,
    full_description: String,
    enrollments_count: usize,
    credential_achievement_count: u32,
    list_image_url: String,
    ribbon: Option<&'a str>,
    unpublished_changes: bool,
    dependent_course_names: [&'a str; 0],
    created_at: String,
    updated_at: String,
}

#[derive(Serialize)]
pub struct CourseView<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    attributes: CourseAttrs<'a>,
    relationships: Value,
    links: SelfLink,
}

impl NpItem for Course {
    type View<'a> = CourseView<'a>;
    fn key(&self) -> u32 {
        self.key
    }
    fn attr(&self, np: &Northpass, name: &str) -> Option<AttrVal<'_>> {
        Some(match name {
            "name" => AttrVal::Str(Cow::Borrowed(&self.name)),
            "id" => AttrVal::Str(Cow::Borrowed(&self.id)),
            "status" => AttrVal::Str(Cow::Borrowed(self.status)),
            "permalink" => AttrVal::Str(Cow::Borrowed(&self.permalink)),
            "published" => AttrVal::Bool(self.status == "published"),
            "created_at" => AttrVal::Time(Some(self.created_at)),
            "updated_at" => AttrVal::Time(Some(self.updated_at)),
            "enrollments_count" => AttrVal::Int(np.by_course.get(&self.key).map_or(0, Vec::len) as i64),
            _ => return None,
        })
    }
    fn view<'a>(&'a self, np: &'a Northpass, base: &str) -> CourseView<'a> {
        CourseView {
            id: &self.id,
            kind: "courses",
            attributes: CourseAttrs {
                name: &self.name,
                status: self.status,
                published: self.status == "published",
                permalink: &self.permalink,
                short_description: format!("Learn {}.", self.name),
                full_description: format!("<p>{}</p>", self.name),
                enrollments_count: np.by_course.get(&self.key).map_or(0, Vec::len),
                credential_achievement_count: self.credential_achievement_count,
                list_image_url: format!("https://cdn.northpass.example/courses/{}.png", self.permalink),
                ribbon: None,
                unpublished_changes: false,
                dependent_course_names: [],
                created_at: fmt_utc(self.created_at),
                updated_at: fmt_utc(self.updated_at),
            },
            relationships: json!({"categories": {"data": []}}),
            links: SelfLink { this: format!("{base}/courses/{}", self.id) },
        }
    }
}

/// Course properties as `GET /v2/properties/courses` shows them (`npcu` is a string upstream).
/// A course as `/properties/courses` lists it: filtered and sorted like a course, shown as its
/// properties.
pub struct CourseProperties<'a>(pub &'a Course);

impl NpItem for CourseProperties<'_> {
    type View<'b>
        = Value
    where
        Self: 'b;
    fn key(&self) -> u32 {
        self.0.key
    }
    fn attr(&self, np: &Northpass, name: &str) -> Option<AttrVal<'_>> {
        self.0.attr(np, name)
    }
    fn view<'b>(&'b self, _np: &'b Northpass, _base: &str) -> Value {
        properties_view(self.0)
    }
}

pub fn properties_view(c: &Course) -> Value {
    let mut props = serde_json::Map::new();
    props.insert("name".into(), Value::from(c.name.as_str()));
    if let Some(n) = c.npcu {
        props.insert("npcu".into(), Value::from(n.to_string()));
    }
    props.insert("certification".into(), Value::from(c.name.contains("Certification")));
    json!({"id": c.id, "type": "course_properties", "attributes": {"properties": props}})
}

/// A transcript item (one enrollment seen from the person).
pub struct TranscriptItem<'a>(pub &'a Enrollment);

#[derive(Serialize)]
pub struct TranscriptAttrs<'a> {
    name: &'a str,
    resource_id: &'a str,
    resource_type: &'static str,
    progress_status: &'static str,
    enrolled_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    last_active_at: Option<String>,
    attempt_number: u32,
    version_number: u32,
}

#[derive(Serialize)]
pub struct CertLink {
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<String>,
}

#[derive(Serialize)]
pub struct TranscriptView<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    attributes: TranscriptAttrs<'a>,
    links: CertLink,
}

impl NpItem for TranscriptItem<'_> {
    type View<'b>
        = TranscriptView<'b>
    where
        Self: 'b;
    fn key(&self) -> u32 {
        self.0.key
    }
    fn attr(&self, _np: &Northpass, _name: &str) -> Option<AttrVal<'_>> {
        None
    }
    fn view<'b>(&'b self, np: &'b Northpass, _base: &str) -> TranscriptView<'b> {
        let e = self.0;
        let course = np.course_by_key.get(&e.course).map(|&i| &np.courses[i]);
        TranscriptView {
            id: &e.id,
            kind: "transcript_items",
            attributes: TranscriptAttrs {
                name: course.map_or("", |c| c.name.as_str()),
                resource_id: course.map_or("", |c| c.id.as_str()),
                resource_type: "course",
                progress_status: e.progress_status(),
                enrolled_at: fmt_utc(e.enrolled_at),
                started_at: ts(e.started_at),
                completed_at: ts(e.completed_at),
                last_active_at: ts(e.last_active_at),
                attempt_number: e.attempt_number,
                version_number: 1 + e.key % 4,
            },
            links: CertLink {
                certificate: e.completed_at.map(|_| format!("https://app.northpass.com/certificates/{}", e.id)),
            },
        }
    }
}

/// An enrollment seen from the course; ids are unique only per course (upstream quirk).
pub struct CourseEnrollment<'a> {
    pub e: &'a Enrollment,
    pub rank: usize,
}

#[derive(Serialize)]
pub struct CourseEnrollmentAttrs<'a> {
    progress: u8,
    percentage: u8,
    status: &'static str,
    person_id: &'a str,
    enrolled_at: String,
    last_active_on: Option<String>,
    completed_at: Option<String>,
}

#[derive(Serialize)]
pub struct CourseEnrollmentRels<'a> {
    person: Rel<'a>,
}

#[derive(Serialize)]
pub struct CourseEnrollmentView<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    attributes: CourseEnrollmentAttrs<'a>,
    relationships: CourseEnrollmentRels<'a>,
}

impl NpItem for CourseEnrollment<'_> {
    type View<'b>
        = CourseEnrollmentView<'b>
    where
        Self: 'b;
    fn key(&self) -> u32 {
        self.e.key
    }
    fn attr(&self, _np: &Northpass, _name: &str) -> Option<AttrVal<'_>> {
        None
    }
    fn view<'b>(&'b self, np: &'b Northpass, _base: &str) -> CourseEnrollmentView<'b> {
        let e = self.e;
        let person_id = np.person_by_key.get(&e.person).map_or("", |&i| np.people[i].id.as_str());
        CourseEnrollmentView {
            id: self.rank.to_string(),
            kind: "course_enrollments",
            attributes: CourseEnrollmentAttrs {
                progress: e.progress,
                percentage: e.progress,
                status: e.progress_status(),
                person_id,
                enrolled_at: fmt_utc(e.enrolled_at),
                last_active_on: ts(e.last_active_at),
                completed_at: ts(e.completed_at),
            },
            relationships: CourseEnrollmentRels { person: Rel { data: RelData { id: person_id, kind: "people" } } },
        }
    }
}

/// One member of a group.
pub struct Membership<'a> {
    pub group: &'a Group,
    pub person: &'a Person,
    pub created_at: i64,
}

impl NpItem for Membership<'_> {
    type View<'b>
        = Value
    where
        Self: 'b;
    fn key(&self) -> u32 {
        self.person.key
    }
    fn attr(&self, np: &Northpass, name: &str) -> Option<AttrVal<'_>> {
        self.person.attr(np, name)
    }
    fn view<'b>(&'b self, _np: &'b Northpass, _base: &str) -> Value {
        json!({
            "id": membership_id(self.group.key, self.person.key),
            "type": "memberships",
            "attributes": {"created_at": fmt_utc(self.created_at), "updated_at": fmt_utc(self.created_at)},
            "relationships": {
                "person": {"data": {"id": self.person.id, "type": "people"}},
                "group": {"data": {"id": self.group.id, "type": "groups"}},
            },
        })
    }
}

/// A stable UUID-shaped id for (group, person).
pub fn membership_id(group: u32, person: u32) -> String {
    use crate::util::mix;
    let a = mix(u64::from(group) << 32 | u64::from(person));
    let b = mix(a);
    let s = format!("{a:016x}{b:016x}");
    format!("{}-{}-4{}-8{}-{}", &s[0..8], &s[8..12], &s[13..16], &s[17..20], &s[20..32])
}
