//! The text form, printed. It is what snapshots store and what users read, so
//! it is canonical: values are renumbered in topological order, attributes
//! print in a fixed order, and `parse(print(g))` gives back `g`.
//!
//! ```text
//! graph tiny(%ids: i64[B, S]) -> (%logits: f32[B, S, 16]) {
//!   weight @embed: f32[16, 8] = "embed.weight"
//!   weight @head: f32[16, 8] = "lm_head.weight"
//!   %0: f32[B, S, 8] = embedding(@embed, %ids)
//!   %1: f32[B, S, 16] = linear(%0, @head) loc("lm_head")
//!   return %1
//! }
//! ```

use std::fmt::Write;

use crate::graph::{Graph, NodeKind};

/// Writes a name bare when it is a plain identifier, quoted otherwise.
pub fn ident(name: &str) -> String {
    let mut chars = name.chars();
    let plain = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if plain {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// Prints a graph in the canonical text form.
pub fn print(g: &Graph) -> String {
    let names = g.value_names();
    let mut s = String::new();
    let ins: Vec<String> = g
        .inputs()
        .iter()
        .map(|&i| {
            format!(
                "%{}: {}",
                ident(g.node_name(i).unwrap_or("?")),
                g.node(i).outputs[0]
            )
        })
        .collect();
    let outs: Vec<String> = g
        .outputs()
        .iter()
        .map(|o| format!("%{}: {}", ident(&o.name), o.ty))
        .collect();
    let _ = writeln!(
        s,
        "graph {}({}) -> ({}) {{",
        ident(&g.name),
        ins.join(", "),
        outs.join(", ")
    );
    for &w in g.weights() {
        if let NodeKind::Weight { name, key } = &g.node(w).kind {
            let _ = writeln!(s, "  weight @{}: {} = {key:?}", ident(name), g.node(w).outputs[0]);
        }
    }
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
    for id in order {
        let node = g.node(id);
        let NodeKind::Op(op) = &node.kind else {
            continue;
        };
        let defs: Vec<String> = node
            .outputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let v = crate::graph::Value {
                    node: id,
                    index: i as u32,
                };
                format!("{}: {t}", names.get(&v).map_or("%?", String::as_str))
            })
            .collect();
        let args: Vec<&str> = g
            .operands(id)
            .iter()
            .map(|v| names.get(v).map_or("%?", String::as_str))
            .collect();
        let _ = write!(s, "  {} = {}({})", defs.join(", "), op.name(), args.join(", "));
        let attrs = op.attrs();
        if !attrs.is_empty() {
            let a: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            let _ = write!(s, " {{{}}}", a.join(", "));
        }
        if let Some(loc) = &node.loc {
            let _ = write!(s, " loc({loc:?})");
        }
        s.push('\n');
    }
    let rets: Vec<&str> = g
        .outputs()
        .iter()
        .map(|o| names.get(&o.value).map_or("%?", String::as_str))
        .collect();
    let _ = writeln!(s, "  return {}", rets.join(", "));
    s.push_str("}\n");
    s
}
