//! ATen targets to IR ops, one file per family. Each family's `TABLE`
//! lists `(target, lowering)`; a lowering reads the node's arguments
//! through [`Cx`] and returns one IR value per tensor output. Dtypes follow
//! torch's promotion rules, computed here from the operands (not read from
//! the recorded result), and become explicit casts; the importer then
//! checks each result against the dtype and sizes torch recorded.

mod creation;
mod elementwise;
mod index;
mod linalg;
mod meta;
mod nn;
mod reduce;
mod shape;

use optc_ir::Value;

use super::import::Cx;
use super::schema::Node;

/// One target's lowering.
pub type Lower = fn(&mut Cx, &Node) -> Result<Vec<Value>, String>;

const FAMILIES: [&[(&str, Lower)]; 8] = [
    elementwise::TABLE,
    linalg::TABLE,
    nn::TABLE,
    shape::TABLE,
    index::TABLE,
    creation::TABLE,
    reduce::TABLE,
    meta::TABLE,
];

/// The lowering of `target` (`aten.linear.default`), if optc has one.
pub fn lookup(target: &str) -> Option<Lower> {
    FAMILIES
        .iter()
        .flat_map(|t| t.iter())
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
}

/// Every ATen target the importer maps, sorted (for docs and `optc`).
pub fn supported_targets() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = FAMILIES.iter().flat_map(|t| t.iter().map(|(n, _)| *n)).collect();
    v.sort_unstable();
    v
}

/// One output.
fn one(v: Value) -> Result<Vec<Value>, String> {
    Ok(vec![v])
}

#[cfg(test)]
mod tests {
    #[test]
    fn targets_are_listed_once() {
        let v = super::supported_targets();
        let mut d = v.clone();
        d.dedup();
        assert_eq!(v, d, "a target is in two tables");
    }
}
