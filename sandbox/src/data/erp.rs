//! ERP inventory items (the generic http-json source). Items are drawn one after another from the ERP
//! stream, so a larger `erp_items` keeps the smaller count's items as its prefix.

use std::borrow::Cow;

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use super::Sizes;
use super::words::{ITEM_ADJS, ITEM_NOUNS};
use crate::util::{DAY, EPOCH_END};

#[derive(Debug, Clone)]
pub struct Item {
    pub id: i64,
    pub sku: String,
    pub name: String,
    pub quantity: i64,
    /// One of the generated warehouse codes, or what a client patched in.
    pub warehouse: Cow<'static, str>,
    pub updated_at: i64,
}

/// The warehouses generated items are stocked in.
pub const WAREHOUSES: [&str; 4] = ["SYD-1", "MEL-2", "AKL-1", "LAX-3"];

#[derive(Debug, Clone, Default)]
pub struct Erp {
    /// Sorted by id (generation, mutations and client writes keep it so).
    pub items: Vec<Item>,
    pub next_id: i64,
}

pub fn generate(rng: &mut ChaCha8Rng, sizes: &Sizes) -> Erp {
    let mut items = Vec::with_capacity(sizes.erp_items);
    for i in 0..sizes.erp_items {
        let id = i as i64 + 1;
        items.push(Item {
            id,
            sku: format!("SKU-{:06}", 10_000 + i),
            name: format!(
                "{} {} {}mm",
                ITEM_ADJS.choose(rng).unwrap_or(&"Steel"),
                ITEM_NOUNS.choose(rng).unwrap_or(&"Bolt"),
                rng.random_range(2..200)
            ),
            quantity: if rng.random_bool(0.05) { 0 } else { rng.random_range(1..5000) },
            warehouse: Cow::Borrowed(WAREHOUSES.choose(rng).copied().unwrap_or("SYD-1")),
            updated_at: EPOCH_END - rng.random_range(0..700 * DAY),
        });
    }
    let next_id = items.len() as i64 + 1;
    Erp { items, next_id }
}

impl Erp {
    /// Position of item `id` in `items`.
    pub fn position(&self, id: i64) -> Option<usize> {
        self.items.binary_search_by_key(&id, |it| it.id).ok()
    }
}
