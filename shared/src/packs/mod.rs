//! Packs: the chains and step handlers of each kind of source.

pub mod demo;

use crate::step::Pack;

/// Every pack built into this version.
pub fn all() -> Vec<Pack> {
    vec![demo::pack()]
}
