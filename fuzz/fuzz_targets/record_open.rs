//! Fuzzed bytes as epoch-1 records opened with fixed keys: see `checks::record_open`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::record_open(data);
});
