//! Impartner PRM objects (`Account`, `User`, `Lead`): typed schemas with the tenant's field names and
//! the generated partners, contacts and leads.
//!
//! Records hold one [`Val`] per schema field, in schema order; field 0 is always `Id`.
//! Responses use camelCase keys derived with Newtonsoft's rule ([`camel_case`]).

use std::collections::HashMap;
use std::sync::OnceLock;

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use super::Sizes;
use super::words::*;
use crate::util::{DAY, EPOCH_END};

/// The tenant's UTC offset shown on Impartner timestamps (`-07:00`).
pub const TENANT_OFFSET: i64 = -7 * 3600;
/// Email domain of the vendor's own staff (contacts to exclude).
pub const INTERNAL_DOMAIN: &str = "nintex.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Int,
    Float,
    Text,
    Bool,
    Time,
}

#[derive(Debug)]
pub struct FieldDef {
    pub pascal: &'static str,
    pub camel: String,
    pub lower: String,
    pub ty: FieldType,
    pub read_only: bool,
}

/// One object's fields.
#[derive(Debug)]
pub struct Schema {
    pub entity: &'static str,
    pub fields: Vec<FieldDef>,
    by_lower: HashMap<String, usize>,
}

impl Schema {
    fn new(entity: &'static str, defs: &[(&'static str, FieldType, bool)]) -> Schema {
        let fields: Vec<FieldDef> = defs
            .iter()
            .map(|&(pascal, ty, read_only)| FieldDef {
                pascal,
                camel: camel_case(pascal),
                lower: pascal.to_ascii_lowercase(),
                ty,
                read_only,
            })
            .collect();
        let by_lower = fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.lower.clone(), i))
            .collect();
        Schema {
            entity,
            fields,
            by_lower,
        }
    }

    /// Field index by name, case-insensitive.
    pub fn field(&self, name: &str) -> Option<usize> {
        self.by_lower
            .get(&name.trim().to_ascii_lowercase())
            .copied()
    }

    fn idx(&self, name: &str) -> usize {
        self.field(name)
            .unwrap_or_else(|| panic!("schema {} lacks {name}", self.entity))
    }
}

/// Newtonsoft's camelCase: lower-case the leading run of capitals (`CRMAccountType` → `crmAccountType`,
/// `TPA_Product_s__cf` → `tpA_Product_s__cf`).
pub fn camel_case(s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for i in 0..chars.len() {
        if i == 1 && !chars[i].is_uppercase() {
            break;
        }
        let has_next = i + 1 < chars.len();
        if i > 0 && has_next && !chars[i + 1].is_uppercase() {
            if chars[i + 1] == ' ' {
                chars[i] = chars[i].to_ascii_lowercase();
            }
            break;
        }
        chars[i] = chars[i].to_ascii_lowercase();
    }
    chars.into_iter().collect()
}

/// A field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    /// Epoch seconds; shown with the tenant offset.
    Time(i64),
}

impl Val {
    pub fn text(s: impl Into<String>) -> Val {
        Val::Text(s.into())
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub vals: Vec<Val>,
}

impl Record {
    pub fn id(&self) -> i64 {
        self.vals[0].as_i64().unwrap_or(0)
    }
}

/// One object's records, in creation order, with an id index and a deletion log.
#[derive(Debug, Clone)]
pub struct Table {
    pub schema: &'static Schema,
    pub records: Vec<Record>,
    pub by_id: HashMap<i64, usize>,
    /// `(id, deleted_at)` for the `_deleted` endpoint.
    pub deleted: Vec<(i64, i64)>,
    pub next_id: i64,
    pub updated_idx: usize,
    pub created_idx: usize,
}

impl Table {
    fn new(schema: &'static Schema, first_id: i64) -> Table {
        Table {
            schema,
            records: Vec::new(),
            by_id: HashMap::new(),
            deleted: Vec::new(),
            next_id: first_id,
            updated_idx: schema.idx("Updated"),
            created_idx: schema.idx("Created"),
        }
    }

    /// A new record with `Id` set and everything else null.
    pub fn blank(&mut self) -> Record {
        let mut vals = vec![Val::Null; self.schema.fields.len()];
        vals[0] = Val::Int(self.next_id);
        self.next_id += 1 + (self.next_id % 3);
        Record { vals }
    }

    pub fn push(&mut self, rec: Record) {
        self.by_id.insert(rec.id(), self.records.len());
        self.records.push(rec);
    }

    pub fn get(&self, id: i64) -> Option<&Record> {
        self.by_id.get(&id).map(|&i| &self.records[i])
    }

    pub fn get_mut(&mut self, id: i64) -> Option<&mut Record> {
        self.by_id.get(&id).map(|&i| &mut self.records[i])
    }

    /// Removes the records with these ids, logging their deletion at `at`.
    pub fn delete(&mut self, ids: &[i64], at: i64) -> Vec<i64> {
        let mut gone = Vec::new();
        for &id in ids {
            if self.by_id.contains_key(&id) {
                gone.push(id);
                self.deleted.push((id, at));
            }
        }
        if !gone.is_empty() {
            let set: std::collections::HashSet<i64> = gone.iter().copied().collect();
            self.records.retain(|r| !set.contains(&r.id()));
            self.reindex();
        }
        gone
    }

    pub fn reindex(&mut self) {
        self.by_id = self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id(), i))
            .collect();
    }

    pub fn set(&self, rec: &mut Record, field: &str, v: Val) {
        rec.vals[self.schema.idx(field)] = v;
    }

    pub fn val<'a>(&self, rec: &'a Record, field: &str) -> &'a Val {
        &rec.vals[self.schema.idx(field)]
    }
}

use FieldType::*;

pub fn account_schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        Schema::new(
            "Account",
            &[
                ("Id", Int, true),
                ("Name", Text, false),
                ("CrmId", Text, false),
                ("Partner_Tier__cf", Text, false),
                ("Account_Status__cf", Text, true),
                ("Account_Owner__cf", Text, true),
                ("Account_Owner_Email__cf", Text, false),
                ("Partner_Type__cf", Text, false),
                ("Website", Text, false),
                ("MailingCity", Text, false),
                ("MailingCountry", Text, false),
                ("MailingCountryCode", Text, false),
                ("RegionId", Int, false),
                ("MemberCount", Int, true),
                ("ParentAccountId", Int, false),
                ("PrimaryUserId", Int, false),
                ("IsActive", Bool, false),
                ("IsTest", Bool, false),
                ("RecordLink", Text, true),
                ("Total_NPCU__cf", Float, false),
                ("Nintex_CE_Certifications__cf", Float, false),
                ("Nintex_K2_Certifications__cf", Float, false),
                ("Nintex_for_Salesforce_Certifications__cf", Float, false),
                ("Nintex_GTM_Certifications__cf", Float, false),
                ("Expert_Certifications__cf", Float, false),
                ("Practitioner_Certifications__cf", Float, true),
                ("Master_Certifications__cf", Float, true),
                ("LMS_Account_ID__cf", Text, false),
                ("LMS_Group_Name__cf", Text, false),
                ("LMS_Training_Dashboard__cf", Text, false),
                ("Created", Time, true),
                ("Updated", Time, true),
            ],
        )
    })
}

pub fn user_schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        Schema::new(
            "User",
            &[
                ("Id", Int, true),
                ("Email", Text, false),
                ("UserName", Text, false),
                ("FirstName", Text, false),
                ("LastName", Text, false),
                ("FullName", Text, true),
                ("Title", Text, false),
                ("Phone", Text, false),
                ("AccountId", Int, false),
                ("AccountName", Text, true),
                ("IsActive", Bool, false),
                ("Contact_Status__cf", Text, false),
                ("CrmId", Text, false),
                ("Created", Time, true),
                ("Updated", Time, true),
            ],
        )
    })
}

pub fn lead_schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        Schema::new(
            "Lead",
            &[
                ("Id", Int, true),
                ("FirstName", Text, false),
                ("LastName", Text, false),
                ("Email", Text, false),
                ("Company", Text, false),
                ("Status", Text, false),
                ("LeadSource", Text, false),
                ("PartnerAccountId", Int, false),
                ("EstimatedValue", Float, false),
                ("Created", Time, true),
                ("Updated", Time, true),
            ],
        )
    })
}

/// What the Northpass generator needs to link LMS data to partners and contacts.
#[derive(Debug, Clone)]
pub struct PartnerSeed {
    pub id: i64,
    pub name: String,
    pub domain: String,
}

#[derive(Debug, Clone)]
pub struct ContactSeed {
    pub email: String,
    pub first: String,
    pub last: String,
    pub partner: usize,
}

#[derive(Debug, Clone)]
pub struct Impartner {
    pub accounts: Table,
    pub users: Table,
    pub leads: Table,
}

impl Impartner {
    pub fn table(&self, entity: &str) -> Option<&Table> {
        match entity.to_ascii_lowercase().as_str() {
            "account" => Some(&self.accounts),
            "user" => Some(&self.users),
            "lead" => Some(&self.leads),
            _ => None,
        }
    }
    pub fn table_mut(&mut self, entity: &str) -> Option<&mut Table> {
        match entity.to_ascii_lowercase().as_str() {
            "account" => Some(&mut self.accounts),
            "user" => Some(&mut self.users),
            "lead" => Some(&mut self.leads),
            _ => None,
        }
    }
}

fn slug(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

fn crm_id(rng: &mut ChaCha8Rng, prefix: &str) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut s = String::from(prefix);
    for _ in 0..10 {
        s.push(ALNUM[rng.random_range(0..ALNUM.len())] as char);
    }
    s.push_str("AAV");
    s
}

fn pick_tier(rng: &mut ChaCha8Rng) -> Val {
    let r: f64 = rng.random();
    match r {
        r if r < 0.10 => Val::text("Premier"),
        r if r < 0.30 => Val::text("Select"),
        r if r < 0.62 => Val::text("Registered"),
        r if r < 0.78 => Val::text("Certified"),
        r if r < 0.90 => Val::text("Pending"),
        r if r < 0.95 => Val::text(""),
        _ => Val::Null,
    }
}

/// Generates partners, contacts and leads; also returns the seeds the LMS generator links to.
pub fn generate(
    rng: &mut ChaCha8Rng,
    sizes: &Sizes,
) -> (Impartner, Vec<PartnerSeed>, Vec<ContactSeed>) {
    let mut accounts = Table::new(account_schema(), 1_295_000);
    let mut users = Table::new(user_schema(), 3_990_000);
    let mut leads = Table::new(lead_schema(), 7_100_000);
    let mut partners = Vec::with_capacity(sizes.partners);
    let mut used_names = std::collections::HashSet::new();
    let mut used_domains = std::collections::HashSet::new();

    for i in 0..sizes.partners {
        let mut base = format!(
            "{} {}",
            COMPANY_HEADS.choose(rng).unwrap_or(&"Acme"),
            COMPANY_TAILS.choose(rng).unwrap_or(&"Group")
        );
        if !used_names.insert(base.clone()) {
            base = format!("{base} {}", i);
            used_names.insert(base.clone());
        }
        let suffix = COMPANY_SUFFIXES.choose(rng).copied().unwrap_or("");
        let name = if suffix.is_empty() {
            base.clone()
        } else if rng.random_bool(0.3) {
            format!("{base}, {suffix}")
        } else {
            format!("{base} {suffix}")
        };
        let mut domain = format!("{}.{}", slug(&base), TLDS.choose(rng).unwrap_or(&"com"));
        if !used_domains.insert(domain.clone()) {
            domain = format!("{}{i}.com", slug(&base));
            used_domains.insert(domain.clone());
        }
        let mut rec = accounts.blank();
        let id = rec.id();
        let created = EPOCH_END - rng.random_range(200..2500) * DAY + rng.random_range(0..DAY);
        let updated = (created + rng.random_range(0..400) * DAY + rng.random_range(0..DAY))
            .min(EPOCH_END - 1);
        let is_test = rng.random_bool(0.015);
        let name = if is_test {
            format!("Test Partner {i}")
        } else {
            name
        };
        let inactive = rng.random_bool(0.12);
        let (city, country, code) = *CITIES.choose(rng).unwrap_or(&CITIES[0]);
        let owner_first = FIRST_NAMES.choose(rng).unwrap_or(&"Jane");
        let owner_last = LAST_NAMES.choose(rng).unwrap_or(&"Doe");
        let a = &accounts;
        a.set(&mut rec, "Name", Val::text(name.clone()));
        a.set(&mut rec, "CrmId", Val::Text(crm_id(rng, "0015g")));
        a.set(&mut rec, "Partner_Tier__cf", pick_tier(rng));
        a.set(
            &mut rec,
            "Account_Status__cf",
            Val::text(if inactive { "Inactive" } else { "Active" }),
        );
        a.set(
            &mut rec,
            "Account_Owner__cf",
            Val::Text(format!("{owner_first} {owner_last}")),
        );
        a.set(
            &mut rec,
            "Account_Owner_Email__cf",
            Val::Text(format!(
                "{}.{}@{INTERNAL_DOMAIN}",
                owner_first.to_lowercase(),
                slug(owner_last)
            )),
        );
        a.set(
            &mut rec,
            "Partner_Type__cf",
            Val::text(
                *[
                    "Reseller",
                    "Referral",
                    "Services",
                    "Technology",
                    "Distributor",
                ]
                .choose(rng)
                .unwrap_or(&"Reseller"),
            ),
        );
        a.set(
            &mut rec,
            "Website",
            if rng.random_bool(0.9) {
                Val::Text(format!("https://www.{domain}"))
            } else {
                Val::Null
            },
        );
        a.set(&mut rec, "MailingCity", Val::text(city));
        a.set(&mut rec, "MailingCountry", Val::text(country));
        a.set(&mut rec, "MailingCountryCode", Val::text(code));
        a.set(
            &mut rec,
            "RegionId",
            Val::Int(1785 + rng.random_range(0..6)),
        );
        a.set(&mut rec, "IsActive", Val::Bool(!inactive));
        a.set(&mut rec, "IsTest", Val::Bool(is_test));
        a.set(
            &mut rec,
            "RecordLink",
            Val::Text(format!("https://prod.impartner.live/load/ACT/{id}")),
        );
        a.set(
            &mut rec,
            "Practitioner_Certifications__cf",
            Val::Float(f64::from(rng.random_range(0..4u8))),
        );
        a.set(
            &mut rec,
            "Master_Certifications__cf",
            Val::Float(f64::from(rng.random_range(0..2u8))),
        );
        a.set(&mut rec, "Created", Val::Time(created));
        a.set(&mut rec, "Updated", Val::Time(updated));
        accounts.push(rec);
        partners.push(PartnerSeed { id, name, domain });
    }

    // Contacts, skewed so that a few partners are large.
    let mut contacts = Vec::with_capacity(sizes.contacts);
    let mut used_emails = std::collections::HashSet::new();
    let mut member_counts = vec![0i64; partners.len()];
    let mut primary = vec![None; partners.len()];
    for i in 0..sizes.contacts {
        let r: f64 = rng.random();
        let p = ((r * r) * partners.len() as f64) as usize % partners.len().max(1);
        let first = *FIRST_NAMES.choose(rng).unwrap_or(&"Pat");
        let last = *LAST_NAMES.choose(rng).unwrap_or(&"Lee");
        let kind: f64 = rng.random();
        let domain = if kind < 0.02 {
            INTERNAL_DOMAIN.to_string()
        } else {
            partners[p].domain.clone()
        };
        let is_test = (0.02..0.035).contains(&kind);
        let local = if is_test {
            format!("test.user{i}")
        } else {
            format!("{}.{}", first.to_lowercase(), slug(last))
        };
        let mut email = format!("{local}@{domain}");
        if !used_emails.insert(email.clone()) {
            email = format!("{local}{i}@{domain}");
            used_emails.insert(email.clone());
        }
        let (first, last) = if is_test {
            ("Test", "User")
        } else {
            (first, last)
        };
        let mut rec = users.blank();
        let uid = rec.id();
        let created = EPOCH_END - rng.random_range(30..2000) * DAY + rng.random_range(0..DAY);
        let updated = (created + rng.random_range(0..300) * DAY + rng.random_range(0..DAY))
            .min(EPOCH_END - 1);
        let active = !rng.random_bool(0.08);
        let t = &users;
        t.set(&mut rec, "Email", Val::text(email.clone()));
        t.set(&mut rec, "UserName", Val::text(email.clone()));
        t.set(&mut rec, "FirstName", Val::text(first));
        t.set(&mut rec, "LastName", Val::text(last));
        t.set(&mut rec, "FullName", Val::Text(format!("{first} {last}")));
        t.set(
            &mut rec,
            "Title",
            match TITLES.choose(rng).copied().unwrap_or("") {
                "" => Val::Null,
                s => Val::text(s),
            },
        );
        t.set(
            &mut rec,
            "Phone",
            if rng.random_bool(0.6) {
                Val::Text(format!("+1 555 {:04}", rng.random_range(0..10_000)))
            } else {
                Val::Null
            },
        );
        t.set(&mut rec, "AccountId", Val::Int(partners[p].id));
        t.set(&mut rec, "AccountName", Val::text(partners[p].name.clone()));
        t.set(&mut rec, "IsActive", Val::Bool(active));
        t.set(
            &mut rec,
            "Contact_Status__cf",
            Val::text(if active { "Active" } else { "Inactive" }),
        );
        t.set(&mut rec, "CrmId", Val::Text(crm_id(rng, "0035g")));
        t.set(&mut rec, "Created", Val::Time(created));
        t.set(&mut rec, "Updated", Val::Time(updated));
        users.push(rec);
        member_counts[p] += 1;
        primary[p].get_or_insert(uid);
        contacts.push(ContactSeed {
            email,
            first: first.to_string(),
            last: last.to_string(),
            partner: p,
        });
    }
    let member_idx = accounts.schema.idx("MemberCount");
    let primary_idx = accounts.schema.idx("PrimaryUserId");
    for (i, rec) in accounts.records.iter_mut().enumerate() {
        rec.vals[member_idx] = Val::Int(member_counts[i]);
        rec.vals[primary_idx] = primary[i].map_or(Val::Null, Val::Int);
    }

    for _ in 0..sizes.leads {
        let first = *FIRST_NAMES.choose(rng).unwrap_or(&"Pat");
        let last = *LAST_NAMES.choose(rng).unwrap_or(&"Lee");
        let company = format!(
            "{} {}",
            COMPANY_HEADS.choose(rng).unwrap_or(&"Acme"),
            COMPANY_TAILS.choose(rng).unwrap_or(&"Group")
        );
        let p = rng.random_range(0..partners.len().max(1));
        let mut rec = leads.blank();
        let created = EPOCH_END - rng.random_range(1..700) * DAY + rng.random_range(0..DAY);
        let updated = (created + rng.random_range(0..60) * DAY).min(EPOCH_END - 1);
        let t = &leads;
        t.set(&mut rec, "FirstName", Val::text(first));
        t.set(&mut rec, "LastName", Val::text(last));
        t.set(
            &mut rec,
            "Email",
            Val::Text(format!(
                "{}.{}@{}.example",
                first.to_lowercase(),
                slug(last),
                slug(&company)
            )),
        );
        t.set(&mut rec, "Company", Val::text(company));
        t.set(
            &mut rec,
            "Status",
            Val::text(
                *["New", "Working", "Qualified", "Converted", "Disqualified"]
                    .choose(rng)
                    .unwrap_or(&"New"),
            ),
        );
        t.set(
            &mut rec,
            "LeadSource",
            Val::text(
                *["Web", "Event", "Partner Referral", "Campaign"]
                    .choose(rng)
                    .unwrap_or(&"Web"),
            ),
        );
        t.set(
            &mut rec,
            "PartnerAccountId",
            if rng.random_bool(0.85) && !partners.is_empty() {
                Val::Int(partners[p].id)
            } else {
                Val::Null
            },
        );
        t.set(
            &mut rec,
            "EstimatedValue",
            Val::Float(f64::from(rng.random_range(1..500u32)) * 100.0),
        );
        t.set(&mut rec, "Created", Val::Time(created));
        t.set(&mut rec, "Updated", Val::Time(updated));
        leads.push(rec);
    }
    (
        Impartner {
            accounts,
            users,
            leads,
        },
        partners,
        contacts,
    )
}

#[cfg(test)]
mod tests {
    use super::camel_case;

    #[test]
    fn camel_case_follows_newtonsoft() {
        assert_eq!(camel_case("Id"), "id");
        assert_eq!(camel_case("CRMAccountType"), "crmAccountType");
        assert_eq!(camel_case("TPA_Product_s__cf"), "tpA_Product_s__cf");
        assert_eq!(camel_case("LMS_Account_ID__cf"), "lmS_Account_ID__cf");
        assert_eq!(camel_case("Partner_Tier__cf"), "partner_Tier__cf");
        assert_eq!(camel_case("NFR_NGFW_Eval_Id__cf"), "nfR_NGFW_Eval_Id__cf");
        assert_eq!(camel_case("IsActive"), "isActive");
    }
}
