//! Moodle institution: categories Campus → Semester → Department → Program, courses in programs, users
//! whose usernames are `<campus>-<student number>` (a few staff accounts have none), enrolments with
//! roles and course groups.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use super::Sizes;
use super::words::*;
use crate::util::{DAY, EPOCH_END};

#[derive(Debug, Clone)]
pub struct Category {
    pub id: i64,
    pub name: String,
    pub idnumber: String,
    pub parent: i64,
    pub sortorder: i64,
    pub depth: i64,
    pub path: String,
    pub timemodified: i64,
    pub visible: bool,
}

#[derive(Debug, Clone)]
pub struct MCourse {
    pub id: i64,
    pub fullname: String,
    pub shortname: String,
    pub idnumber: String,
    pub categoryid: i64,
    pub sortorder: i64,
    pub startdate: i64,
    pub timecreated: i64,
    pub timemodified: i64,
    pub visible: bool,
    /// Course groups: (id, name).
    pub groups: Vec<(i64, String)>,
}

#[derive(Debug, Clone)]
pub struct MUser {
    pub id: i64,
    pub username: String,
    pub firstname: String,
    pub lastname: String,
    pub email: String,
    pub idnumber: String,
    pub department: String,
    pub city: String,
    pub country: String,
    pub phone1: String,
    pub firstaccess: i64,
    pub lastaccess: i64,
    pub suspended: bool,
}

#[derive(Debug, Clone)]
pub struct Enrolment {
    pub userid: i64,
    pub courseid: i64,
    /// 5 student, 3 editingteacher, 4 teacher.
    pub roleid: i64,
    pub groups: Vec<i64>,
    pub lastcourseaccess: i64,
    pub active: bool,
}

pub fn role_shortname(roleid: i64) -> &'static str {
    match roleid {
        3 => "editingteacher",
        4 => "teacher",
        1 => "manager",
        _ => "student",
    }
}

#[derive(Debug, Clone, Default)]
pub struct Moodle {
    pub categories: Vec<Category>,
    pub courses: Vec<MCourse>,
    pub users: Vec<MUser>,
    pub enrolments: Vec<Enrolment>,
    pub course_idx: HashMap<i64, usize>,
    pub user_idx: HashMap<i64, usize>,
    /// Course id → enrolment indexes (ordered by user id).
    pub by_course: BTreeMap<i64, Vec<usize>>,
    /// User id → course ids.
    pub by_user: HashMap<i64, Vec<i64>>,
    pub next_user_id: i64,
    pub next_course_id: i64,
}

impl Moodle {
    pub fn reindex(&mut self) {
        self.course_idx = self.courses.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
        self.user_idx = self.users.iter().enumerate().map(|(i, u)| (u.id, i)).collect();
        self.enrolments.sort_by_key(|e| (e.courseid, e.userid));
        self.by_course.clear();
        self.by_user.clear();
        for (i, e) in self.enrolments.iter().enumerate() {
            self.by_course.entry(e.courseid).or_default().push(i);
            self.by_user.entry(e.userid).or_default().push(e.courseid);
        }
    }
}

/// Shape of the category tree per scale: (campuses, semesters, departments, programs, courses/program).
pub fn tree_shape(sizes: &Sizes) -> (usize, usize, usize, usize, usize) {
    sizes.moodle_tree
}

pub fn generate(rng: &mut ChaCha8Rng, sizes: &Sizes) -> Moodle {
    let (nc, ns, nd, np, nk) = tree_shape(sizes);
    let mut m = Moodle { next_user_id: 2, next_course_id: 2, ..Moodle::default() };
    let mut next_cat = 1i64;
    let mut add_cat =
        |m: &mut Moodle, rng: &mut ChaCha8Rng, name: String, idnumber: String, parent: Option<&Category>| {
            let id = next_cat;
            next_cat += 1;
            let (depth, path) = match parent {
                Some(p) => (p.depth + 1, format!("{}/{id}", p.path)),
                None => (1, format!("/{id}")),
            };
            let cat = Category {
                id,
                name,
                idnumber,
                parent: parent.map_or(0, |p| p.id),
                sortorder: id * 10_000,
                depth,
                path,
                timemodified: EPOCH_END - rng.random_range(10..900) * DAY,
                visible: rng.random_bool(0.97),
            };
            m.categories.push(cat.clone());
            cat
        };
    let mut course_campus: Vec<usize> = Vec::new();
    let mut program_courses: Vec<Vec<usize>> = Vec::new();
    for (ci, campus) in CAMPUSES.iter().cycle().take(nc).enumerate() {
        let campus_cat = add_cat(&mut m, rng, format!("{campus} Campus"), campus.to_lowercase(), None);
        for s in 0..ns {
            let sem_name = format!("{} Semester {}", 2025 - (s / 2) as i64, s % 2 + 1);
            let sem = add_cat(&mut m, rng, sem_name, format!("{}-s{s}", campus.to_lowercase()), Some(&campus_cat));
            for d in 0..nd {
                let dname = DEPARTMENTS[d % DEPARTMENTS.len()];
                let dept =
                    add_cat(&mut m, rng, dname.to_string(), format!("{}-s{s}-d{d}", campus.to_lowercase()), Some(&sem));
                for p in 0..np {
                    let pname = format!("{} {}", PROGRAMS[p % PROGRAMS.len()], dname);
                    let prog =
                        add_cat(&mut m, rng, pname, format!("{}-s{s}-d{d}-p{p}", campus.to_lowercase()), Some(&dept));
                    let mut these = Vec::new();
                    for k in 0..nk {
                        let id = m.next_course_id;
                        m.next_course_id += 1;
                        let subject = SUBJECTS.choose(rng).unwrap_or(&"Topics in");
                        let code = format!(
                            "{}{}{:03}",
                            &campus[..3].to_uppercase(),
                            &dname[..3].to_uppercase(),
                            100 + id % 900
                        );
                        let created = EPOCH_END - rng.random_range(100..1200) * DAY;
                        let ngroups = rng.random_range(0..4);
                        let groups = (0..ngroups).map(|g| (id * 10 + g, format!("Tutorial {}", g + 1))).collect();
                        m.courses.push(MCourse {
                            id,
                            fullname: format!("{subject} {dname} {}", k + 1),
                            shortname: format!("{code}-{id}"),
                            idnumber: if rng.random_bool(0.8) { format!("{code}.{id}") } else { String::new() },
                            categoryid: prog.id,
                            sortorder: prog.sortorder + k as i64 + 1,
                            startdate: EPOCH_END - rng.random_range(30..400) * DAY,
                            timecreated: created,
                            timemodified: (created + rng.random_range(0..300) * DAY).min(EPOCH_END - 1),
                            visible: rng.random_bool(0.95),
                            groups,
                        });
                        these.push(m.courses.len() - 1);
                        course_campus.push(ci);
                    }
                    program_courses.push(these);
                }
            }
        }
    }

    // Users and enrolments: each user has a home campus and program; most courses come from there.
    let per_campus_programs = (program_courses.len() / nc.max(1)).max(1);
    let mut pairs = HashSet::new();
    for i in 0..sizes.moodle_users {
        let id = m.next_user_id;
        m.next_user_id += 1;
        let campus = rng.random_range(0..nc.max(1));
        let campus_slug = CAMPUSES[campus % CAMPUSES.len()].to_lowercase();
        let staff = rng.random_bool(0.03);
        let first = FIRST_NAMES.choose(rng).copied().unwrap_or("Pat");
        let last = LAST_NAMES.choose(rng).copied().unwrap_or("Lee");
        let student_no = 100_000 + i as i64;
        let username = if staff {
            format!("{}{}{}", &first[..1].to_lowercase(), last.to_lowercase().replace([' ', '\''], ""), i)
        } else {
            format!("{campus_slug}-{student_no}")
        };
        let firstaccess = if rng.random_bool(0.9) { EPOCH_END - rng.random_range(30..700) * DAY } else { 0 };
        let lastaccess =
            if firstaccess > 0 { (firstaccess + rng.random_range(0..600) * DAY).min(EPOCH_END - 1) } else { 0 };
        let email_domain = if rng.random_bool(0.9) { "students.example.edu" } else { "gmail.com" };
        m.users.push(MUser {
            id,
            username: username.clone(),
            firstname: first.to_string(),
            lastname: last.to_string(),
            email: format!("{}@{email_domain}", username.replace('-', ".")),
            idnumber: if staff { String::new() } else { student_no.to_string() },
            department: if rng.random_bool(0.5) {
                DEPARTMENTS.choose(rng).unwrap_or(&"").to_string()
            } else {
                String::new()
            },
            city: if rng.random_bool(0.6) { CITIES.choose(rng).map_or("", |c| c.0).to_string() } else { String::new() },
            country: if rng.random_bool(0.7) {
                CITIES.choose(rng).map_or("", |c| c.2).to_string()
            } else {
                String::new()
            },
            phone1: if rng.random_bool(0.3) {
                format!("04{:08}", rng.random_range(0..100_000_000))
            } else {
                String::new()
            },
            firstaccess,
            lastaccess,
            suspended: rng.random_bool(0.02),
        });
        let program = campus * per_campus_programs + rng.random_range(0..per_campus_programs);
        let program = program.min(program_courses.len().saturating_sub(1));
        let want = rng.random_range(2..6usize);
        let roleid = if staff {
            3
        } else if rng.random_bool(0.02) {
            4
        } else {
            5
        };
        for j in 0..want {
            let ci = if j == 0 || rng.random_bool(0.8) {
                *program_courses[program].choose(rng).unwrap_or(&0)
            } else {
                rng.random_range(0..m.courses.len())
            };
            let course = &m.courses[ci];
            if !pairs.insert((id, course.id)) {
                continue;
            }
            let groups = if course.groups.is_empty() || rng.random_bool(0.3) {
                Vec::new()
            } else {
                vec![course.groups[rng.random_range(0..course.groups.len())].0]
            };
            m.enrolments.push(Enrolment {
                userid: id,
                courseid: course.id,
                roleid,
                groups,
                lastcourseaccess: if lastaccess > 0 { lastaccess - rng.random_range(0..30) * DAY } else { 0 },
                active: rng.random_bool(0.97),
            });
        }
    }
    let _ = course_campus;
    m.reindex();
    m
}
