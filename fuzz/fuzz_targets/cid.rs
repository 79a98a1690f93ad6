//! Fuzzed datagrams into an opener with a connection ID, and fuzzed plaintext sealed as CID
//! records and opened back: see `checks::cid`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::cid(data);
});
