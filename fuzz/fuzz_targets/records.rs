//! Fuzzed datagrams split into records: see `checks::records_split`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::records_split(data));
