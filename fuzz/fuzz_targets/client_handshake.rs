//! Fuzzed datagrams into the client's handshake: see `checks::client_handshake`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::client_handshake(data);
});
