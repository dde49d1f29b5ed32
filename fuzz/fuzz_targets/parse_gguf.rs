//! Fuzzes the GGUF header reader: no input may panic or allocate without
//! bound; malformed files must come back as errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = optc_frontends::gguf::reader::parse_header(data) {
        for t in &h.tensors {
            let _ = t.shape();
        }
    }
});
