//! Impartner PRM objects (`Account`, `User`, `Lead`): typed schemas with the tenant's field names and
//! the generated partners, contacts and leads.
//!
//! Records hold one [`Val`] per schema field, in schema order; field 0 is always `Id`.
//! Responses use camelCase keys derived with Newtonsoft's rule ([`camel_case`]).

use std::collections::HashMap;

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
    pub(super) fn new(entity: &'static str, defs: &[(&'static str, FieldType, bool)]) -> Schema {
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
        let by_lower = fields.iter().enumerate().map(|(i, f)| (f.lower.clone(), i)).collect();
        Schema { entity, fields, by_lower }
    }

    /// Field index by name, case-insensitive.
    pub fn field(&self, name: &str) -> Option<usize> {
        self.by_lower.get(&name.trim().to_ascii_lowercase()).copied()
    }

    pub(super) fn idx(&self, name: &str) -> usize {
        self.field(name).unwrap_or_else(|| panic!("schema {} lacks {name}", self.entity))
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
        self.by_id = self.records.iter().enumerate().map(|(i, r)| (r.id(), i)).collect();
    }

    pub fn set(&self, rec: &mut Record, field: &str, v: Val) {
        rec.vals[self.schema.idx(field)] = v;
    }

    pub fn val<'a>(&self, rec: &'a Record, field: &str) -> &'a Val {
        &rec.vals[self.schema.idx(field)]
    }
}

mod generate;
mod schemas;

pub use generate::generate;
pub use schemas::{account_schema, lead_schema, user_schema};

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
