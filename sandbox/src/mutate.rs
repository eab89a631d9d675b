//! Upstream-side changes between syncs: change N % of a resource (with a bumped timestamp), delete some,
//! add some. Which records are picked is deterministic from the seed and the number of earlier
//! mutations; the new timestamps are the wall clock (so incremental cursors see them).

use std::collections::HashSet;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Api;
use crate::data::Dataset;
use crate::data::erp::Item;
use crate::data::impartner::{Table, Val};
use crate::data::moodle::{Enrolment, MUser};
use crate::data::northpass::{Enrollment, Group, Person};
use crate::util::{mix, now_secs, uuid_v4};

#[derive(Debug, Clone, Deserialize)]
pub struct MutateRequest {
    pub api: Api,
    pub resource: String,
    #[serde(default)]
    pub change_percent: f64,
    #[serde(default)]
    pub delete: usize,
    #[serde(default)]
    pub add: usize,
    /// Northpass people: the change time the changed records get (Unix seconds) instead of the
    /// clock's, e.g. a change that lands behind a reader's cursor (a late commit upstream).
    #[serde(default)]
    pub updated_at: Option<i64>,
    /// Northpass people: change exactly these records (by id) instead of `change_percent` of them.
    #[serde(default)]
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MutateResult {
    pub api: Option<Api>,
    pub resource: String,
    pub changed: Vec<Value>,
    pub deleted: Vec<Value>,
    pub added: Vec<Value>,
}

/// Indexes to change and to delete (disjoint), drawn from `n` records.
fn pick(rng: &mut ChaCha8Rng, n: usize, percent: f64, delete: usize) -> (Vec<usize>, Vec<usize>) {
    let change = ((n as f64) * percent.clamp(0.0, 100.0) / 100.0).ceil() as usize;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let change = change.min(n);
    let delete = delete.min(n - change);
    let mut changed = order[..change].to_vec();
    let mut deleted = order[change..change + delete].to_vec();
    changed.sort_unstable();
    deleted.sort_unstable();
    (changed, deleted)
}

fn bump(prev: i64, now: i64) -> i64 {
    now.max(prev + 1)
}

pub fn mutate(data: &mut Dataset, seed: u64, round: u64, req: &MutateRequest) -> Result<MutateResult, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ 0x6d75_7461) ^ mix(round));
    let now = now_secs();
    let mut out = MutateResult { api: Some(req.api), resource: req.resource.clone(), ..MutateResult::default() };
    let resource = req.resource.to_ascii_lowercase();
    match (req.api, resource.as_str()) {
        (Api::Northpass, "people") => {
            let np = &mut data.northpass;
            let (ch, del) = if req.ids.is_empty() {
                pick(&mut rng, np.people.len(), req.change_percent, req.delete)
            } else {
                (
                    np.people.iter().enumerate().filter(|(_, p)| req.ids.contains(&p.id)).map(|(i, _)| i).collect(),
                    vec![],
                )
            };
            for &i in &ch {
                // A profile edit: the record changes, the person's learning activity does not.
                let p = &mut np.people[i];
                p.updated_at = req.updated_at.unwrap_or_else(|| bump(p.updated_at, now));
                out.changed.push(Value::from(p.id.clone()));
            }
            let keys: HashSet<u32> = del.iter().map(|&i| np.people[i].key).collect();
            out.deleted = del.iter().map(|&i| Value::from(np.people[i].id.clone())).collect();
            np.delete_people(&keys);
            for _ in 0..req.add {
                let key = np.take_key();
                let id = uuid_v4(&mut rng);
                np.people.push(Person {
                    key,
                    id: id.clone(),
                    email: format!("new.learner{key}@customer{}.example", key % 97),
                    first_name: "New".into(),
                    last_name: format!("Learner {key}"),
                    created_at: now,
                    updated_at: now,
                    activated_at: Some(now),
                    deactivated_at: None,
                    last_active_at: None,
                });
                out.added.push(Value::from(id));
            }
            np.reindex();
        }
        (Api::Northpass, "groups") => {
            let np = &mut data.northpass;
            let (ch, del) = pick(&mut rng, np.groups.len(), req.change_percent, req.delete);
            for &i in &ch {
                let g = &mut np.groups[i];
                g.updated_at = bump(g.updated_at, now);
                out.changed.push(Value::from(g.id.clone()));
            }
            let keys: HashSet<u32> = del.iter().map(|&i| np.groups[i].key).collect();
            out.deleted = del.iter().map(|&i| Value::from(np.groups[i].id.clone())).collect();
            np.groups.retain(|g| !keys.contains(&g.key));
            for _ in 0..req.add {
                let key = np.take_key();
                let id = uuid_v4(&mut rng);
                np.groups.push(Group {
                    key,
                    id: id.clone(),
                    name: format!("New Group {key}"),
                    created_at: now,
                    updated_at: now,
                    members: Default::default(),
                });
                out.added.push(Value::from(id));
            }
            np.reindex();
        }
        (Api::Northpass, "courses") => {
            let np = &mut data.northpass;
            let (ch, del) = pick(&mut rng, np.courses.len(), req.change_percent, req.delete);
            for &i in &ch {
                let c = &mut np.courses[i];
                c.updated_at = bump(c.updated_at, now);
                out.changed.push(Value::from(c.id.clone()));
            }
            let keys: HashSet<u32> = del.iter().map(|&i| np.courses[i].key).collect();
            out.deleted = del.iter().map(|&i| Value::from(np.courses[i].id.clone())).collect();
            np.delete_courses(&keys);
            for _ in 0..req.add {
                let key = np.take_key();
                let id = uuid_v4(&mut rng);
                let mut c = np.courses.first().cloned().ok_or("no course to copy")?;
                c.key = key;
                c.id = id.clone();
                c.name = format!("New Course {key}");
                c.permalink = format!("new-course-{key}");
                c.status = "published";
                c.created_at = now;
                c.updated_at = now;
                c.properties_forbidden = false;
                c.npcu = Some(1);
                c.credential_achievement_count = 0;
                np.courses.push(c);
                out.added.push(Value::from(id));
            }
            np.reindex();
        }
        (Api::Northpass, "enrollments") => {
            let np = &mut data.northpass;
            // People whose enrollments changed: progress is the person's activity (`last_active_at`
            // and `updated_at` move, as the LMS records it on the person); an enrollment added by an
            // administrator only touches the person record.
            let mut touched: Vec<(u32, bool)> = Vec::new();
            let (ch, del) = pick(&mut rng, np.enrollments.len(), req.change_percent, req.delete);
            for &i in &ch {
                let e = &mut np.enrollments[i];
                e.progress = 100;
                e.started_at = e.started_at.or(Some(now));
                e.completed_at = Some(bump(e.completed_at.unwrap_or(0), now));
                e.last_active_at = e.completed_at;
                out.changed.push(Value::from(e.id.clone()));
                touched.push((e.person, true));
            }
            let gone: HashSet<u32> = del.iter().map(|&i| np.enrollments[i].key).collect();
            out.deleted = del.iter().map(|&i| Value::from(np.enrollments[i].id.clone())).collect();
            np.enrollments.retain(|e| !gone.contains(&e.key));
            let (npeople, ncourses) = (np.people.len(), np.courses.len());
            let pairs: HashSet<(u32, u32)> = np.enrollments.iter().map(|e| (e.person, e.course)).collect();
            let mut added = 0;
            let mut tries = 0;
            while added < req.add && npeople > 0 && ncourses > 0 && tries < req.add * 50 {
                tries += 1;
                let (p, c) =
                    (np.people[rng.random_range(0..npeople)].key, np.courses[rng.random_range(0..ncourses)].key);
                if pairs.contains(&(p, c)) {
                    continue;
                }
                let key = np.take_key();
                let id = uuid_v4(&mut rng);
                np.enrollments.push(Enrollment {
                    key,
                    id: id.clone(),
                    person: p,
                    course: c,
                    enrolled_at: now,
                    started_at: None,
                    completed_at: None,
                    last_active_at: None,
                    progress: 0,
                    attempt_number: 1,
                });
                out.added.push(Value::from(id));
                added += 1;
                touched.push((p, false));
            }
            np.reindex();
            for (key, active) in touched {
                if let Some(&i) = np.person_by_key.get(&key) {
                    let p = &mut np.people[i];
                    if active {
                        p.last_active_at = Some(bump(p.last_active_at.unwrap_or(0), now));
                    }
                    p.updated_at = bump(p.updated_at, now);
                }
            }
        }
        (Api::Impartner, r) => {
            let ip = &mut data.impartner;
            let table = match r {
                "account" | "accounts" | "partners" => &mut ip.accounts,
                "user" | "users" | "contacts" => &mut ip.users,
                "lead" | "leads" => &mut ip.leads,
                other => {
                    return Err(format!("unknown impartner resource {other:?}: use accounts, users or leads"));
                }
            };
            mutate_table(table, &mut rng, req, now, &mut out);
        }
        (Api::Moodle, "users") => {
            let m = &mut data.moodle;
            let (ch, del) = pick(&mut rng, m.users.len(), req.change_percent, req.delete);
            for &i in &ch {
                let u = &mut m.users[i];
                u.lastaccess = bump(u.lastaccess, now);
                out.changed.push(Value::from(u.id));
            }
            let gone: HashSet<i64> = del.iter().map(|&i| m.users[i].id).collect();
            out.deleted = gone.iter().copied().map(Value::from).collect();
            out.deleted.sort_by_key(|v| v.as_i64());
            m.users.retain(|u| !gone.contains(&u.id));
            m.enrolments.retain(|e| !gone.contains(&e.userid));
            for _ in 0..req.add {
                let id = m.next_user_id;
                m.next_user_id += 1;
                let template = m.users.first().cloned().ok_or("no user to copy")?;
                let campus = template.username.split('-').next().unwrap_or("northgate").to_string();
                let username = format!("{campus}-{}", 900_000 + id);
                m.users.push(MUser {
                    id,
                    username: username.clone(),
                    email: format!("{}@students.example.edu", username.replace('-', ".")),
                    idnumber: (900_000 + id).to_string(),
                    firstaccess: now,
                    lastaccess: now,
                    ..template
                });
                if !m.courses.is_empty() {
                    let c = m.courses[rng.random_range(0..m.courses.len())].id;
                    m.enrolments.push(Enrolment {
                        userid: id,
                        courseid: c,
                        roleid: 5,
                        groups: Vec::new(),
                        lastcourseaccess: now,
                        active: true,
                    });
                }
                out.added.push(Value::from(id));
            }
            m.reindex();
        }
        (Api::Moodle, "courses") => {
            let m = &mut data.moodle;
            let (ch, del) = pick(&mut rng, m.courses.len(), req.change_percent, req.delete);
            for &i in &ch {
                let c = &mut m.courses[i];
                c.timemodified = bump(c.timemodified, now);
                out.changed.push(Value::from(c.id));
            }
            let gone: HashSet<i64> = del.iter().map(|&i| m.courses[i].id).collect();
            out.deleted = del.iter().map(|&i| Value::from(m.courses[i].id)).collect();
            m.courses.retain(|c| !gone.contains(&c.id));
            m.enrolments.retain(|e| !gone.contains(&e.courseid));
            for _ in 0..req.add {
                let id = m.next_course_id;
                m.next_course_id += 1;
                let mut c = m.courses.first().cloned().ok_or("no course to copy")?;
                c.id = id;
                c.shortname = format!("NEW-{id}");
                c.fullname = format!("New Course {id}");
                c.timecreated = now;
                c.timemodified = now;
                c.groups = Vec::new();
                m.courses.push(c);
                out.added.push(Value::from(id));
            }
            m.reindex();
        }
        (Api::Moodle, "enrolments" | "enrollments") => {
            let m = &mut data.moodle;
            let (ch, del) = pick(&mut rng, m.enrolments.len(), req.change_percent, req.delete);
            let label = |e: &Enrolment| Value::from(format!("{}:{}", e.courseid, e.userid));
            for &i in &ch {
                let e = &mut m.enrolments[i];
                e.lastcourseaccess = bump(e.lastcourseaccess, now);
                out.changed.push(label(e));
            }
            out.deleted = del.iter().map(|&i| label(&m.enrolments[i])).collect();
            let gone: HashSet<usize> = del.into_iter().collect();
            let mut i = 0;
            m.enrolments.retain(|_| {
                i += 1;
                !gone.contains(&(i - 1))
            });
            let pairs: HashSet<(i64, i64)> = m.enrolments.iter().map(|e| (e.courseid, e.userid)).collect();
            let mut added = 0;
            let mut tries = 0;
            while added < req.add && !m.users.is_empty() && !m.courses.is_empty() && tries < req.add * 50 {
                tries += 1;
                let (u, c) = (
                    m.users[rng.random_range(0..m.users.len())].id,
                    m.courses[rng.random_range(0..m.courses.len())].id,
                );
                if pairs.contains(&(c, u)) {
                    continue;
                }
                let e = Enrolment {
                    userid: u,
                    courseid: c,
                    roleid: 5,
                    groups: Vec::new(),
                    lastcourseaccess: 0,
                    active: true,
                };
                out.added.push(label(&e));
                m.enrolments.push(e);
                added += 1;
            }
            m.reindex();
        }
        (Api::Erp, "items") => {
            let erp = &mut data.erp;
            let (ch, del) = pick(&mut rng, erp.items.len(), req.change_percent, req.delete);
            for &i in &ch {
                let it = &mut erp.items[i];
                it.quantity = (it.quantity + rng.random_range(-50..=50)).max(0);
                it.updated_at = bump(it.updated_at, now);
                out.changed.push(Value::from(it.id));
            }
            let gone: HashSet<i64> = del.iter().map(|&i| erp.items[i].id).collect();
            out.deleted = del.iter().map(|&i| Value::from(erp.items[i].id)).collect();
            erp.items.retain(|it| !gone.contains(&it.id));
            for _ in 0..req.add {
                let id = erp.next_id;
                erp.next_id += 1;
                erp.items.push(Item {
                    id,
                    sku: format!("SKU-N{id:06}"),
                    name: format!("New Item {id}"),
                    quantity: rng.random_range(1..100),
                    warehouse: "SYD-1".into(),
                    updated_at: now,
                });
                out.added.push(Value::from(id));
            }
        }
        (api, other) => return Err(format!("unknown resource {other:?} for {api}")),
    }
    Ok(out)
}

fn mutate_table(table: &mut Table, rng: &mut ChaCha8Rng, req: &MutateRequest, now: i64, out: &mut MutateResult) {
    let (ch, del) = pick(rng, table.records.len(), req.change_percent, req.delete);
    let schema = table.schema;
    let updated = table.updated_idx;
    let created = table.created_idx;
    let touch = match schema.entity {
        "Account" => "MailingCity",
        "User" => "Title",
        _ => "Status",
    };
    let touch_idx = schema.field(touch).unwrap_or(0);
    for &i in &ch {
        let rec = &mut table.records[i];
        let prev = match rec.vals[updated] {
            Val::Time(t) => t,
            _ => 0,
        };
        rec.vals[updated] = Val::Time(bump(prev, now));
        let cur = rec.vals[touch_idx].as_str().unwrap_or("").trim_end_matches(" (updated)").to_string();
        rec.vals[touch_idx] = Val::Text(format!("{cur} (updated)"));
        out.changed.push(Value::from(rec.id()));
    }
    let ids: Vec<i64> = del.iter().map(|&i| table.records[i].id()).collect();
    out.deleted = table.delete(&ids, now).into_iter().map(Value::from).collect();
    for _ in 0..req.add {
        let Some(template) = table.records.first().cloned() else {
            break;
        };
        let mut rec = table.blank();
        let id = rec.id();
        rec.vals.clone_from(&template.vals);
        rec.vals[0] = Val::Int(id);
        rec.vals[created] = Val::Time(now);
        rec.vals[updated] = Val::Time(now);
        for name in ["Name", "Email", "UserName"] {
            if let Some(f) = schema.field(name) {
                rec.vals[f] = Val::Text(match name {
                    "Name" => format!("New Partner {id}"),
                    _ => format!("new.contact{id}@newpartner{id}.example"),
                });
            }
        }
        table.push(rec);
        out.added.push(Value::from(id));
    }
}
