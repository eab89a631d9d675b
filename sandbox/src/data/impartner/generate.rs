//! Generation of partners (accounts), contacts (users) and leads.

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use super::{
    ContactSeed, INTERNAL_DOMAIN, Impartner, PartnerSeed, Table, Val, account_schema, lead_schema, user_schema,
};
use crate::data::Sizes;
use crate::data::words::*;
use crate::util::{DAY, EPOCH_END, before_end};

fn slug(name: &str) -> String {
    name.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase()
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
pub fn generate(rng: &mut ChaCha8Rng, sizes: &Sizes) -> (Impartner, Vec<PartnerSeed>, Vec<ContactSeed>) {
    let mut accounts = Table::new(account_schema(), 1_295_000);
    let mut users = Table::new(user_schema(), 3_990_000);
    let mut leads = Table::new(lead_schema(), 7_100_000);
    let mut partners = Vec::with_capacity(sizes.partners);
    let mut used_names = std::collections::HashSet::new();
    let mut used_domains = std::collections::HashSet::new();

    for i in 0..sizes.partners {
        let head = COMPANY_HEADS.choose(rng).copied().unwrap_or("Acme");
        let tail = COMPANY_TAILS.choose(rng).copied().unwrap_or("Group");
        let region = REGIONS.choose(rng).copied().unwrap_or("Global");
        let mut base = format!("{head} {tail}");
        if used_names.contains(&base) {
            base = format!("{head} {region} {tail}");
        }
        if !used_names.insert(base.clone()) {
            base = format!("{base} {i}");
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
        let updated = before_end(created, created + rng.random_range(0..400) * DAY + rng.random_range(0..DAY));
        let is_test = rng.random_bool(0.015);
        let name = if is_test { format!("Test Partner {i}") } else { name };
        let inactive = rng.random_bool(0.12);
        let (city, country, code) = *CITIES.choose(rng).unwrap_or(&CITIES[0]);
        let owner_first = FIRST_NAMES.choose(rng).unwrap_or(&"Jane");
        let owner_last = LAST_NAMES.choose(rng).unwrap_or(&"Doe");
        let a = &accounts;
        a.set(&mut rec, "Name", Val::text(name.clone()));
        a.set(&mut rec, "CrmId", Val::Text(crm_id(rng, "0015g")));
        a.set(&mut rec, "Partner_Tier__cf", pick_tier(rng));
        a.set(&mut rec, "Account_Status__cf", Val::text(if inactive { "Inactive" } else { "Active" }));
        a.set(&mut rec, "Account_Owner__cf", Val::Text(format!("{owner_first} {owner_last}")));
        a.set(
            &mut rec,
            "Account_Owner_Email__cf",
            Val::Text(format!("{}.{}@{INTERNAL_DOMAIN}", owner_first.to_lowercase(), slug(owner_last))),
        );
        a.set(
            &mut rec,
            "Partner_Type__cf",
            Val::text(
                *["Reseller", "Referral", "Services", "Technology", "Distributor"].choose(rng).unwrap_or(&"Reseller"),
            ),
        );
        a.set(
            &mut rec,
            "Website",
            if rng.random_bool(0.9) { Val::Text(format!("https://www.{domain}")) } else { Val::Null },
        );
        a.set(&mut rec, "MailingCity", Val::text(city));
        a.set(&mut rec, "MailingCountry", Val::text(country));
        a.set(&mut rec, "MailingCountryCode", Val::text(code));
        a.set(&mut rec, "RegionId", Val::Int(1785 + rng.random_range(0..6)));
        a.set(&mut rec, "IsActive", Val::Bool(!inactive));
        a.set(&mut rec, "IsTest", Val::Bool(is_test));
        a.set(&mut rec, "RecordLink", Val::Text(format!("https://prod.impartner.live/load/ACT/{id}")));
        a.set(&mut rec, "Practitioner_Certifications__cf", Val::Float(f64::from(rng.random_range(0..4u8))));
        a.set(&mut rec, "Master_Certifications__cf", Val::Float(f64::from(rng.random_range(0..2u8))));
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
        let domain = if kind < 0.02 { INTERNAL_DOMAIN.to_string() } else { partners[p].domain.clone() };
        let is_test = (0.02..0.035).contains(&kind);
        let local = if is_test { format!("test.user{i}") } else { format!("{}.{}", first.to_lowercase(), slug(last)) };
        let mut email = format!("{local}@{domain}");
        if !used_emails.insert(email.clone()) {
            email = format!("{local}{i}@{domain}");
            used_emails.insert(email.clone());
        }
        let (first, last) = if is_test { ("Test", "User") } else { (first, last) };
        let mut rec = users.blank();
        let uid = rec.id();
        let created = EPOCH_END - rng.random_range(30..2000) * DAY + rng.random_range(0..DAY);
        let updated = before_end(created, created + rng.random_range(0..300) * DAY + rng.random_range(0..DAY));
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
        t.set(&mut rec, "Contact_Status__cf", Val::text(if active { "Active" } else { "Inactive" }));
        t.set(&mut rec, "CrmId", Val::Text(crm_id(rng, "0035g")));
        t.set(&mut rec, "Created", Val::Time(created));
        t.set(&mut rec, "Updated", Val::Time(updated));
        users.push(rec);
        member_counts[p] += 1;
        primary[p].get_or_insert(uid);
        contacts.push(ContactSeed { email, first: first.to_string(), last: last.to_string(), partner: p });
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
        let updated = before_end(created, created + rng.random_range(0..60) * DAY);
        let t = &leads;
        t.set(&mut rec, "FirstName", Val::text(first));
        t.set(&mut rec, "LastName", Val::text(last));
        t.set(
            &mut rec,
            "Email",
            Val::Text(format!("{}.{}@{}.example", first.to_lowercase(), slug(last), slug(&company))),
        );
        t.set(&mut rec, "Company", Val::text(company));
        t.set(
            &mut rec,
            "Status",
            Val::text(*["New", "Working", "Qualified", "Converted", "Disqualified"].choose(rng).unwrap_or(&"New")),
        );
        t.set(
            &mut rec,
            "LeadSource",
            Val::text(*["Web", "Event", "Partner Referral", "Campaign"].choose(rng).unwrap_or(&"Web")),
        );
        t.set(
            &mut rec,
            "PartnerAccountId",
            if rng.random_bool(0.85) && !partners.is_empty() { Val::Int(partners[p].id) } else { Val::Null },
        );
        t.set(&mut rec, "EstimatedValue", Val::Float(f64::from(rng.random_range(1..500u32)) * 100.0));
        t.set(&mut rec, "Created", Val::Time(created));
        t.set(&mut rec, "Updated", Val::Time(updated));
        leads.push(rec);
    }
    (Impartner { accounts, users, leads }, partners, contacts)
}
