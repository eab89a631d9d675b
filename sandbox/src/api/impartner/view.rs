//! Serializing Impartner records: camelCase keys, `null` for empty values, timestamps with the tenant
//! offset; malformed records (fault) lose `id` or carry a wrong-typed `updated`.

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::config::Api;
use crate::config::FaultSettings;
use crate::data::impartner::{Record, Schema, TENANT_OFFSET, Val};
use crate::util::fmt_offset;

pub struct RecordView<'a> {
    pub schema: &'a Schema,
    pub rec: &'a Record,
    pub fields: &'a [usize],
    pub malformed: bool,
}

pub fn is_malformed(faults: &FaultSettings, seed: u64, id: i64) -> bool {
    faults.serves_malformed(Api::Impartner, seed, id as u64)
}

struct V<'a>(&'a Val);

impl Serialize for V<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Val::Null => s.serialize_none(),
            Val::Int(i) => s.serialize_i64(*i),
            Val::Float(f) => s.serialize_f64(*f),
            Val::Text(t) if t.is_empty() => s.serialize_none(),
            Val::Text(t) => s.serialize_str(t),
            Val::Bool(b) => s.serialize_bool(*b),
            Val::Time(t) => s.serialize_str(&fmt_offset(*t, TENANT_OFFSET)),
        }
    }
}

impl Serialize for RecordView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.fields.len()))?;
        let odd = self.rec.id() % 2 != 0;
        for &f in self.fields {
            let def = &self.schema.fields[f];
            if self.malformed {
                if f == 0 && !odd {
                    continue;
                }
                if odd && def.pascal == "Updated" {
                    map.serialize_entry(&def.camel, &12345)?;
                    continue;
                }
            }
            map.serialize_entry(&def.camel, &V(&self.rec.vals[f]))?;
        }
        map.end()
    }
}
