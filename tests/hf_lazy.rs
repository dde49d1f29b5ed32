//! Loading is lazy: building the graph of a Llama-3.2-1B-shaped checkpoint
//! (2.5 GB of bf16 weights, in a sparse file) maps the file but reads no
//! weight bytes, so the process's resident memory barely moves.

use optc::fixtures::{write_sparse_llama, LlamaShape};
use optc::frontends::hf;

/// Resident set size in KiB (Linux).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn building_a_1b_graph_reads_no_weights() {
    let dir = std::env::temp_dir().join(format!("optc-lazy-{}", std::process::id()));
    let bytes = write_sparse_llama(&dir, &LlamaShape::llama_3_2_1b()).unwrap();
    assert!(bytes > 2_400_000_000);
    let before = rss_kib();
    let m = hf::load(&dir).unwrap();
    let after = rss_kib();
    assert_eq!(m.config.num_layers, 16);
    assert_eq!(m.graph.weights().len(), 2 + 16 * 9);
    assert_eq!(m.graph.outputs()[0].ty.to_string(), "bf16[B, S, 128256]");
    if let (Some(b), Some(a)) = (before, after) {
        let grew_mib = a.saturating_sub(b) / 1024;
        assert!(
            grew_mib < 64,
            "loading grew resident memory by {grew_mib} MiB: weights were read"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
