//! dtun: a point-to-point VPN over DTLS 1.2 with a pre-shared key, wire-compatible with the
//! original Go dtun. The binary in `main.rs` only parses the command line and calls into here.
#![deny(unsafe_code)]

pub mod authz;
pub mod ccm8;
pub mod cidr;
pub mod cli;
pub mod client;
pub mod config;
pub mod consts;
pub mod dns;
pub mod dtls;
pub mod handshake;
pub mod hooks;
pub mod inet6;
pub mod kdf;
pub mod keys;
pub mod mss;
pub mod nat6;
pub mod netlink;
pub mod nft;
pub mod ops;
pub mod pool;
pub mod pool6;
pub mod proto;
pub mod proto6;
pub mod pump;
pub mod record;
pub mod routes;
pub mod rundir;
pub mod server;
pub mod supervise;
pub mod sys;
pub mod tun;
pub mod udp;
