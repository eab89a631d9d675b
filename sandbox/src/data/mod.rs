//! The generated data set: deterministic from `(seed, scale)`, held in memory and mutated by the
//! control API and by client writes.
//!
//! Generation draws from one ChaCha8 stream per API (seeded from the seed and the API's name), so the
//! APIs do not shift each other when one generator changes, and never reads the clock.

pub mod erp;
pub mod impartner;
pub mod moodle;
pub mod northpass;
mod words;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::config::{SandboxConfig, Scale};
use crate::util::mix;

/// How many records of each kind to generate.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub people: usize,
    pub groups: usize,
    pub courses: usize,
    pub enrollments: usize,
    pub partners: usize,
    pub contacts: usize,
    pub leads: usize,
    /// (campuses, semesters per campus, departments per semester, programs per department, courses per program)
    pub moodle_tree: (usize, usize, usize, usize, usize),
    pub moodle_users: usize,
    pub erp_items: usize,
    pub properties_forbidden_share: f64,
}

impl Sizes {
    /// The sizes `config` asks for: its scale's, with the ERP item count overridden when set.
    pub fn for_config(config: &SandboxConfig) -> Sizes {
        let mut sizes = Sizes::for_scale(config.scale, config.properties_forbidden_share);
        if let Some(n) = config.erp_items {
            sizes.erp_items = n;
        }
        sizes
    }

    pub fn for_scale(scale: Scale, properties_forbidden_share: f64) -> Sizes {
        match scale {
            Scale::Small => Sizes {
                people: 300,
                groups: 40,
                courses: 30,
                enrollments: 380,
                partners: 60,
                contacts: 400,
                leads: 50,
                moodle_tree: (2, 2, 2, 2, 2),
                moodle_users: 150,
                erp_items: 250,
                properties_forbidden_share,
            },
            Scale::Seed | Scale::Large => {
                let f = scale.factor();
                Sizes {
                    people: 22_000 * f,
                    groups: 1_600 * f,
                    courses: 452 * f,
                    enrollments: 28_000 * f,
                    partners: 1_500 * f,
                    contacts: 40_000 * f,
                    leads: 3_000 * f,
                    moodle_tree: if f == 1 { (4, 2, 4, 3, 4) } else { (8, 3, 5, 4, 5) },
                    moodle_users: 8_000 * f,
                    erp_items: 20_000 * f,
                    properties_forbidden_share,
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub northpass: northpass::Northpass,
    pub impartner: impartner::Impartner,
    pub moodle: moodle::Moodle,
    pub erp: erp::Erp,
}

fn stream(seed: u64, name: &str) -> ChaCha8Rng {
    let salt = name.bytes().fold(0u64, |h, b| mix(h ^ u64::from(b)));
    ChaCha8Rng::seed_from_u64(mix(seed) ^ salt)
}

impl Dataset {
    pub fn generate(seed: u64, sizes: &Sizes) -> Dataset {
        let (impartner, partners, contacts) = impartner::generate(&mut stream(seed, "impartner"), sizes);
        let northpass = northpass::generate(&mut stream(seed, "northpass"), sizes, &partners, &contacts);
        let moodle = moodle::generate(&mut stream(seed, "moodle"), sizes);
        let erp = erp::generate(&mut stream(seed, "erp"), sizes);
        Dataset { northpass, impartner, moodle, erp }
    }

    /// Current counts of every resource (the numbers tests expect paging to reach).
    pub fn counts(&self) -> Value {
        let np = &self.northpass;
        let with_transcript = np.by_person.len();
        let ip = &self.impartner;
        let m = &self.moodle;
        json!({
            "northpass": {
                "people": np.people.len(),
                "people_deactivated": np.people.iter().filter(|p| p.deactivated_at.is_some()).count(),
                "people_with_transcript": with_transcript,
                "people_without_transcript": np.people.len() - with_transcript,
                "groups": np.groups.len(),
                "memberships": np.memberships(),
                "courses": np.courses.len(),
                "courses_published": np.courses.iter().filter(|c| c.status == "published").count(),
                "courses_properties_forbidden": np.courses.iter().filter(|c| c.properties_forbidden).count(),
                "courses_with_npcu": np.courses.iter().filter(|c| c.npcu.is_some_and(|n| n > 0)).count(),
                "enrollments": np.enrollments.len(),
            },
            "impartner": {
                "Account": ip.accounts.records.len(),
                "User": ip.users.records.len(),
                "Lead": ip.leads.records.len(),
                "Account_deleted": ip.accounts.deleted.len(),
                "User_deleted": ip.users.deleted.len(),
                "Lead_deleted": ip.leads.deleted.len(),
            },
            "moodle": {
                "categories": m.categories.len(),
                "campuses": m.categories.iter().filter(|c| c.depth == 1).count(),
                "programs": m.categories.iter().filter(|c| c.depth == 4).count(),
                "courses": m.courses.len(),
                "users": m.users.len(),
                "enrolments": m.enrolments.len(),
            },
            "erp": { "items": self.erp.items.len() },
        })
    }
}
