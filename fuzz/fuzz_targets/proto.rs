//! Fuzzed bytes as address, peernet and control messages: see `checks::proto`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::proto(data));
