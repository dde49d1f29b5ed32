//! Fuzzes the text-form parser: no input may panic, and anything that parses
//! and verifies must print to text that parses back to the same graph.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(g) = optc_ir::parse(text) else {
        return;
    };
    // Printing must work on any parsed graph, valid or not.
    let printed = optc_ir::print(&g);
    if optc_ir::verify(&g).is_ok() {
        let again = optc_ir::parse(&printed).expect("printed text of a valid graph parses");
        assert!(again == g, "round trip changed the graph:\n{printed}");
    }
});
