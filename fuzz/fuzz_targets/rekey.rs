//! Fuzzed control records into both sides of a rekey exchange: see `checks::rekey`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::rekey(data);
});
