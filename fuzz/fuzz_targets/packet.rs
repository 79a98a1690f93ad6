//! Fuzzed bytes as the plaintext of an authenticated data record: see `checks::packet`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::packet(data));
