//! dtun's protocol core, without I/O: everything a dtun peer computes, and nothing it waits
//! for. The binary crate `dtun` drives it from sockets and TUN devices; tests drive it from
//! memory. No async runtime, no socket, no netlink reaches this crate (scripts/test.sh holds its
//! dependency tree against a deny list); time and randomness are passed in.
//!
//! Layout, from the wire up:
//! - [`consts`]: wire constants and protocol timers;
//! - [`ccm8`], [`kdf`], [`record`]: AES-128-CCM_8, the TLS 1.2 PRF and key block, the DTLS 1.2
//!   record layer (seal/open of batches, replay window, AEAD usage limits);
//! - [`handshake`]: the DTLS 1.2 PSK handshake of both roles (RFC 6347, 4279, 7627);
//! - [`session`]: the sessions of both roles as state machines: the client's (handshake,
//!   setup, Hello exchange, keepalive, close) and the server's (`session::server`: the inlet
//!   that meets every record, and the control logic: setup deadline, Hello answers, keepalive,
//!   endings), with `session::pair::Pair` running both over a simulated link and clock;
//! - [`rekey`]: forward secrecy between dtun peers: the hybrid X25519 + ML-KEM-768 exchange,
//!   the chained key schedule of epochs, the rekey messages and their fragments;
//! - [`admission`]: the server's admission of handshakes under a flood (cookies, per-source
//!   budgets);
//! - [`proto`]: dtun's messages inside the tunnel (the original's address message, the Hello
//!   exchange, control messages);
//! - [`inbound`]: a receive buffer's records opened in place, classified and counted;
//! - [`mss`]: TCP MSS clamping of tunnelled packets;
//! - [`keys`], [`authz`], [`pool`], [`pool6`], [`cidr`]: who may connect, what each may route,
//!   and the address pairs each id gets.
#![forbid(unsafe_code)]

pub mod admission;
pub mod authz;
pub mod ccm8;
pub mod cidr;
pub mod consts;
pub mod handshake;
pub mod inbound;
pub mod kdf;
pub mod keys;
pub mod mss;
pub mod pool;
pub mod pool6;
pub mod proto;
pub mod record;
pub mod rekey;
pub mod session;
