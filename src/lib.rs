//! dtun: a point-to-point VPN over DTLS 1.2 with a pre-shared key, wire-compatible with the
//! original Go dtun. The binary in `main.rs` only parses the command line and calls into here.
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod ops;
pub mod pump;
pub mod server;
pub mod supervise;
