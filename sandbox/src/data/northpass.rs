//! Northpass LMS data: people, groups (with members), courses (with properties) and enrollments.
//!
//! Every record has an internal `key` that never changes and is never reused; relationships refer to
//! keys. Lists are served in creation (key) order unless `sort` says otherwise.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;

use super::Sizes;
use super::impartner::{ContactSeed, INTERNAL_DOMAIN, PartnerSeed};
use super::words::*;
use crate::util::{DAY, EPOCH_END, before_end, uuid_v4};

#[derive(Debug, Clone)]
pub struct Person {
    pub key: u32,
    pub id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub activated_at: Option<i64>,
    pub deactivated_at: Option<i64>,
    pub last_active_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub key: u32,
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Person key → membership created_at.
    pub members: BTreeMap<u32, i64>,
}

#[derive(Debug, Clone)]
pub struct Course {
    pub key: u32,
    pub id: String,
    pub name: String,
    pub status: &'static str,
    pub permalink: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// `properties.npcu` (a string upstream); `None` when the course has no NPCU value.
    pub npcu: Option<u32>,
    /// The single-course properties call answers 403.
    pub properties_forbidden: bool,
    pub credential_achievement_count: u32,
}

#[derive(Debug, Clone)]
pub struct Enrollment {
    pub key: u32,
    pub id: String,
    pub person: u32,
    pub course: u32,
    pub enrolled_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub last_active_at: Option<i64>,
    pub progress: u8,
    pub attempt_number: u32,
}

impl Enrollment {
    pub fn progress_status(&self) -> &'static str {
        if self.completed_at.is_some() {
            "completed"
        } else if self.progress > 0 {
            "in_progress"
        } else {
            "enrolled"
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Northpass {
    pub people: Vec<Person>,
    pub groups: Vec<Group>,
    pub courses: Vec<Course>,
    pub enrollments: Vec<Enrollment>,
    pub next_key: u32,
    pub person_idx: HashMap<String, usize>,
    pub person_by_key: HashMap<u32, usize>,
    pub group_idx: HashMap<String, usize>,
    pub course_idx: HashMap<String, usize>,
    pub course_by_key: HashMap<u32, usize>,
    /// Person key → enrollment indexes.
    pub by_person: HashMap<u32, Vec<usize>>,
    /// Course key → enrollment indexes.
    pub by_course: HashMap<u32, Vec<usize>>,
}

impl Northpass {
    pub fn take_key(&mut self) -> u32 {
        self.next_key += 1;
        self.next_key
    }

    /// Rebuilds every index after records were added or removed.
    pub fn reindex(&mut self) {
        self.person_idx = self.people.iter().enumerate().map(|(i, p)| (p.id.clone(), i)).collect();
        self.person_by_key = self.people.iter().enumerate().map(|(i, p)| (p.key, i)).collect();
        self.group_idx = self.groups.iter().enumerate().map(|(i, g)| (g.id.clone(), i)).collect();
        self.course_idx = self.courses.iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
        self.course_by_key = self.courses.iter().enumerate().map(|(i, c)| (c.key, i)).collect();
        self.by_person.clear();
        self.by_course.clear();
        for (i, e) in self.enrollments.iter().enumerate() {
            self.by_person.entry(e.person).or_default().push(i);
            self.by_course.entry(e.course).or_default().push(i);
        }
    }

    pub fn person(&self, id: &str) -> Option<&Person> {
        self.person_idx.get(id).map(|&i| &self.people[i])
    }

    pub fn memberships(&self) -> usize {
        self.groups.iter().map(|g| g.members.len()).sum()
    }

    /// Removes people (and their memberships and enrollments) by key.
    pub fn delete_people(&mut self, keys: &HashSet<u32>) {
        self.people.retain(|p| !keys.contains(&p.key));
        for g in &mut self.groups {
            g.members.retain(|k, _| !keys.contains(k));
        }
        self.enrollments.retain(|e| !keys.contains(&e.person));
        self.reindex();
    }

    pub fn delete_courses(&mut self, keys: &HashSet<u32>) {
        self.courses.retain(|c| !keys.contains(&c.key));
        self.enrollments.retain(|e| !keys.contains(&e.course));
        self.reindex();
    }
}

/// The LMS group name a partner shows up under, with the variations real data has.
fn group_name_variant(rng: &mut ChaCha8Rng, name: &str) -> String {
    let r: f64 = rng.random();
    let stripped =
        name.trim_end_matches(" Inc.").trim_end_matches(", Inc.").trim_end_matches(" Ltd").trim_end_matches(" LLC");
    match r {
        r if r < 0.45 => name.to_string(),
        r if r < 0.70 => format!("ptr_{name}"),
        r if r < 0.76 => name.to_lowercase(),
        r if r < 0.80 => name.to_uppercase(),
        r if r < 0.86 => name.replace([',', '.', '-'], ""),
        r if r < 0.92 => {
            if stripped.len() < name.len() {
                stripped.to_string()
            } else {
                format!("{name} Inc.")
            }
        }
        r if r < 0.96 => format!("{} Ltd", stripped),
        _ => format!("ptr_{}", name.to_lowercase()),
    }
}

fn case_variant(rng: &mut ChaCha8Rng, email: &str) -> String {
    if rng.random_bool(0.5) {
        email.to_uppercase()
    } else {
        let mut c = email.chars();
        c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
    }
}

/// Generates the LMS, linked to the partners and contacts by email and group name.
pub fn generate(rng: &mut ChaCha8Rng, sizes: &Sizes, partners: &[PartnerSeed], contacts: &[ContactSeed]) -> Northpass {
    let mut np = Northpass::default();

    // People: most are partner contacts (same email, case sometimes differs), the rest customers,
    // staff and strays.
    let from_contacts = (sizes.people * 6 / 10).min(contacts.len());
    let mut order: Vec<usize> = (0..contacts.len()).collect();
    order.shuffle(rng);
    let mut person_partner: Vec<Option<usize>> = Vec::with_capacity(sizes.people);
    let mut used = HashSet::new();
    for i in 0..sizes.people {
        let (email, first, last, partner) = if i < from_contacts {
            let c = &contacts[order[i]];
            let email = if rng.random_bool(0.1) { case_variant(rng, &c.email) } else { c.email.clone() };
            (email, c.first.clone(), c.last.clone(), Some(c.partner))
        } else {
            let first = FIRST_NAMES.choose(rng).copied().unwrap_or("Pat");
            let last = LAST_NAMES.choose(rng).copied().unwrap_or("Lee");
            let local = format!("{}.{}", first.to_lowercase(), last.to_lowercase().replace([' ', '\''], ""));
            let domain = match rng.random_range(0..10) {
                0 => INTERNAL_DOMAIN.to_string(),
                1..=3 => {
                    ["gmail.com", "outlook.com", "yahoo.com"].choose(rng).copied().unwrap_or("gmail.com").to_string()
                }
                _ => format!("customer{}.example", rng.random_range(0..400)),
            };
            (format!("{local}{i}@{domain}"), first.to_string(), last.to_string(), None)
        };
        if !used.insert(email.to_lowercase()) {
            continue;
        }
        let key = np.take_key();
        let created = EPOCH_END - rng.random_range(10..1500) * DAY + rng.random_range(0..DAY);
        let activated = rng.random_bool(0.92).then(|| created + rng.random_range(0..3 * DAY));
        let last_active =
            activated.and_then(|a| rng.random_bool(0.85).then(|| before_end(a, a + rng.random_range(0..600) * DAY)));
        let deactivated = rng.random_bool(0.05).then(|| before_end(created, created + rng.random_range(30..900) * DAY));
        let updated =
            [Some(created), activated, last_active, deactivated].into_iter().flatten().max().unwrap_or(created);
        np.people.push(Person {
            key,
            id: uuid_v4(rng),
            email,
            first_name: first,
            last_name: last,
            created_at: created,
            updated_at: updated,
            activated_at: activated,
            deactivated_at: deactivated,
            last_active_at: last_active,
        });
        person_partner.push(partner);
    }

    // Groups: "All Partners", one per partner for most partners (name variations), some unmatched.
    let unmatched = (sizes.groups * 15 / 100).max(5).min(sizes.groups.saturating_sub(1));
    let partner_groups = (sizes.groups - unmatched - 1).min(partners.len());
    let mut group_of_partner: HashMap<usize, usize> = HashMap::new();
    let mut porder: Vec<usize> = (0..partners.len()).collect();
    porder.shuffle(rng);
    let mut names_used = HashSet::new();
    let new_group = |np: &mut Northpass, rng: &mut ChaCha8Rng, name: String| {
        let key = np.take_key();
        let created = EPOCH_END - rng.random_range(30..1400) * DAY + rng.random_range(0..DAY);
        let updated = before_end(created, created + rng.random_range(0..500) * DAY);
        np.groups.push(Group {
            key,
            id: uuid_v4(rng),
            name,
            created_at: created,
            updated_at: updated,
            members: BTreeMap::new(),
        });
        np.groups.len() - 1
    };
    new_group(&mut np, rng, "All Partners".into());
    names_used.insert("all partners".to_string());
    for &p in porder.iter().take(partner_groups) {
        let mut name = group_name_variant(rng, &partners[p].name);
        if !names_used.insert(name.to_lowercase()) {
            name = format!("ptr_{}", partners[p].name);
            if !names_used.insert(name.to_lowercase()) {
                continue;
            }
        }
        let g = new_group(&mut np, rng, name);
        group_of_partner.insert(p, g);
    }
    let mut n = 0;
    while np.groups.len() < sizes.groups {
        n += 1;
        let name = if n % 3 == 0 {
            // Looks like a partner, matches none.
            format!(
                "ptr_{} {} {n}",
                COMPANY_HEADS.choose(rng).unwrap_or(&"Acme"),
                ["Holdings", "Ventures", "Co"].choose(rng).unwrap_or(&"Co")
            )
        } else {
            format!("{} {n}", UNMATCHED_GROUPS.choose(rng).unwrap_or(&"Cohort"))
        };
        if names_used.insert(name.to_lowercase()) {
            new_group(&mut np, rng, name);
        }
    }
    let ngroups = np.groups.len();
    for (pi, person) in np.people.iter().enumerate() {
        let joined = person.created_at + rng.random_range(0..30) * DAY;
        match person_partner[pi] {
            Some(p) => {
                if let Some(&g) = group_of_partner.get(&p)
                    && rng.random_bool(0.9)
                {
                    np.groups[g].members.insert(person.key, joined.min(EPOCH_END - 1));
                }
                if rng.random_bool(0.8) {
                    np.groups[0].members.insert(person.key, joined.min(EPOCH_END - 1));
                }
            }
            None => {
                if ngroups > 1 && rng.random_bool(0.3) {
                    let g = rng.random_range(1..ngroups);
                    np.groups[g].members.insert(person.key, joined.min(EPOCH_END - 1));
                }
            }
        }
    }

    // Courses.
    let mut course_names = HashSet::new();
    for i in 0..sizes.courses {
        let mut name =
            format!("{} {}", PRODUCTS.choose(rng).unwrap_or(&"Nintex"), COURSE_TOPICS.choose(rng).unwrap_or(&"Basics"));
        if !course_names.insert(name.clone()) {
            name = format!("{name} {}", i / 10 + 2);
            course_names.insert(name.clone());
        }
        let key = np.take_key();
        let created = EPOCH_END - rng.random_range(30..1600) * DAY + rng.random_range(0..DAY);
        let updated = before_end(created, created + rng.random_range(0..400) * DAY);
        let status = match rng.random_range(0..20) {
            0..=14 => "published",
            15..=16 => "draft",
            _ => "archived",
        };
        let npcu = match rng.random_range(0..10) {
            0..=1 => Some(1),
            2 => Some(2),
            3 => Some(3),
            4 => Some(0),
            _ => None,
        };
        let permalink = name.to_lowercase().replace(' ', "-");
        np.courses.push(Course {
            key,
            id: uuid_v4(rng),
            permalink: format!("{permalink}-{i}"),
            name,
            status,
            created_at: created,
            updated_at: updated,
            npcu,
            properties_forbidden: false,
            credential_achievement_count: 0,
        });
    }
    let forbidden = ((sizes.courses as f64 * sizes.properties_forbidden_share).round() as usize)
        .max(usize::from(sizes.properties_forbidden_share > 0.0));
    let mut corder: Vec<usize> = (0..np.courses.len()).collect();
    corder.shuffle(rng);
    for &c in corder.iter().take(forbidden) {
        np.courses[c].properties_forbidden = true;
    }

    // Enrollments: about half the people have none (their transcript answers 404).
    let learners: Vec<usize> = (0..np.people.len()).filter(|_| rng.random_bool(0.55)).collect();
    let open: Vec<usize> = (0..np.courses.len()).filter(|&c| np.courses[c].status != "draft").collect();
    let mut pairs = HashSet::new();
    let mut attempts = 0;
    while np.enrollments.len() < sizes.enrollments
        && !learners.is_empty()
        && !open.is_empty()
        && attempts < sizes.enrollments * 20
    {
        attempts += 1;
        let p = learners[rng.random_range(0..learners.len())];
        let c = open[rng.random_range(0..open.len())];
        let (pk, ck) = (np.people[p].key, np.courses[c].key);
        if !pairs.insert((pk, ck)) {
            continue;
        }
        let enrolled = (np.people[p].created_at.max(np.courses[c].created_at) + rng.random_range(0..400) * DAY)
            .min(EPOCH_END - 3600);
        let r: f64 = rng.random();
        let (progress, started, completed) = if r < 0.45 {
            let s = enrolled + rng.random_range(60..DAY);
            (100, Some(s), Some((s + rng.random_range(1..60) * DAY).min(EPOCH_END - 60)))
        } else if r < 0.75 {
            (rng.random_range(5..96u8), Some(enrolled + rng.random_range(60..DAY)), None)
        } else {
            (0, None, None)
        };
        let key = np.take_key();
        if completed.is_some() {
            np.courses[c].credential_achievement_count += 1;
        }
        np.enrollments.push(Enrollment {
            key,
            id: uuid_v4(rng),
            person: pk,
            course: ck,
            enrolled_at: enrolled,
            started_at: started,
            completed_at: completed,
            last_active_at: completed.or(started),
            progress,
            attempt_number: if rng.random_bool(0.1) { 2 } else { 1 },
        });
    }
    np.reindex();
    np
}
