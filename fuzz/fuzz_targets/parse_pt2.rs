//! Fuzzes the torch.export archive reader end to end (zip container,
//! program JSON, symbolic sizes, weights, the graph walk): no input may
//! panic; malformed archives must come back as errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = optc_frontends::fx::load_bytes(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = optc_frontends::fx::sym::parse_dim(text);
    }
});
