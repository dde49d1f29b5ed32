//! Cleanup passes: small, always-safe rewrites that keep graphs tidy for the
//! fusion passes and make their snapshots readable.

mod canonicalize;
mod constant_fold;
mod cse;
mod dce;
mod outer_product;

pub use canonicalize::Canonicalize;
pub use constant_fold::ConstantFold;
pub use cse::Cse;
pub use dce::{remove_dead, Dce};
pub use outer_product::SimplifyOuterProducts;

use optc_ir::{Graph, NodeId};

/// Op nodes in a deterministic topological order.
pub(crate) fn op_order(g: &Graph) -> Vec<NodeId> {
    g.topo_order()
        .unwrap_or_else(|_| g.node_ids().collect())
        .into_iter()
        .filter(|&n| g.node(n).op().is_some())
        .collect()
}
