//! Runs a subset of the ONNX backend node tests, for quick turnaround while
//! adding an op (it builds only the IR and the frontends, not the whole
//! driver):
//!
//! ```sh
//! cargo run -p optc-frontends --example onnx_cases -- target/onnx-node resize gridsample
//! ```
//!
//! Every case whose folder name contains one of the (lowercase) filters runs;
//! with no filter, all of them. Prints one line per case and the summary.

use std::path::PathBuf;

use optc_frontends::onnx::conformance::{run_case, Outcome};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(root) = args.next().map(PathBuf::from) else {
        eprintln!("usage: onnx_cases DIR [FILTER ...]");
        std::process::exit(2);
    };
    let filters: Vec<String> = args.map(|a| a.to_lowercase()).collect();
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&root) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("model.onnx").exists())
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_lowercase())
                    .unwrap_or_default();
                filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
            })
            .collect(),
        Err(e) => {
            eprintln!("{}: {e}", root.display());
            std::process::exit(1);
        }
    };
    dirs.sort();
    let (mut passed, mut failed, mut unsupported) = (0, 0, 0);
    for d in &dirs {
        let c = run_case(d);
        match &c.outcome {
            Outcome::Passed => {
                passed += 1;
                println!("ok          {}", c.name);
            }
            Outcome::Failed(m) => {
                failed += 1;
                println!("FAILED      {}: {m}", c.name);
            }
            Outcome::Unsupported(m) => {
                unsupported += 1;
                println!("UNSUPPORTED {}: {m}", c.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed, {unsupported} unsupported");
}
