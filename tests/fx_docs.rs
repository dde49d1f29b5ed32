//! docs/frontends.md lists every ATen target the torch.export importer
//! maps (so the documented list cannot drift from the code).

use optc::frontends::fx;

#[test]
fn every_supported_target_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/frontends.md")).unwrap();
    let section = doc
        .split("## torch.export archives")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the torch.export section");
    let mut missing = Vec::new();
    for t in fx::supported_targets() {
        let t = t.strip_prefix("aten.").unwrap_or(t);
        let (op, overload) = t.rsplit_once('.').unwrap_or((t, ""));
        // Listed whole (`add.Tensor`), or as a name with its overloads given
        // once for the group (`neg ... cos` (`.default`)).
        let whole = section.contains(t);
        let grouped = section
            .split('`')
            .any(|chunk| chunk.split_whitespace().any(|w| w == op))
            && section.contains(&format!(".{overload}"));
        let operator = t.starts_with("_operator.") || t.starts_with("torch.sym_");
        if !(whole || grouped || operator) {
            missing.push(t.to_string());
        }
    }
    assert!(missing.is_empty(), "not in docs/frontends.md: {missing:?}");
}
