//! The DTLS 1.2 PSK handshake (RFC 6347, RFC 4279, RFC 7627), both sides, as plain code
//! without I/O: the caller feeds each side datagrams and the time, and sends what it returns.
//!
//! The server's side ([`ServerHandshake`], with [`crate::admission`]) is ours so that admission
//! holds under a flood of spoofed ClientHellos: a ClientHello without a valid cookie gets a
//! HelloVerifyRequest whose cookie is an HMAC of the peer's address and hello random under a
//! rotating secret ([`Cookies`]), and nothing is kept (RFC 6347 §4.2.1). State exists only
//! once a peer has echoed a cookie, that is, once it has shown it receives at its address.
//! The client's side ([`ClientHandshake`]) is ours so that a client's setup runs without an
//! async runtime: in memory in the tests, many at once in a load generator.
//!
//! Flights (message_seq in parentheses; the HelloVerifyRequest is 0, so the server's go on
//! from 1):
//! 1. client: ClientHello (0) → server: HelloVerifyRequest (0), stateless;
//! 2. client: ClientHello (1) with the cookie → server: ServerHello (1), ServerKeyExchange (2,
//!    the identity hint), ServerHelloDone (3), in one datagram;
//! 3. client: ClientKeyExchange (2, the identity), ChangeCipherSpec, Finished (3, epoch 1)
//!    → server: ChangeCipherSpec, Finished (4, epoch 1), kept for resending (see
//!    `server::demux`).
//!
//! Files: `wire` frames messages and records for both sides, `finished` runs the key
//! schedule and the Finished messages for both, `hello` is the server's first flight,
//! `server` and `client` are the two state machines (`client::messages`: the messages the
//! client builds and reads).

mod client;
mod finished;
mod hello;
mod server;
mod wire;

pub use client::{ClientHandshake, Established, Failure, HandshakeError, Progress};
pub use hello::{
    COOKIE_LEN, COOKIE_ROTATION, ClientHello, Cookies, HVR_LEN, hello_verify_request,
    parse_client_hello,
};
pub use server::{Completed, ServerHandshake, Step};
pub use wire::{
    ALERT_DECRYPT_ERROR, ALERT_HANDSHAKE_FAILURE, ALERT_ILLEGAL_PARAMETER,
    ALERT_UNEXPECTED_MESSAGE, HS_HEADER, alert, is_final_flight, server_hello_suite,
};

/// Longest PSK identity we read (RFC 4279 allows 2^16 - 1; ours are at most 128 bytes).
pub const MAX_IDENTITY: usize = 256;

#[cfg(any(test, feature = "test-util"))]
pub mod testing;
#[cfg(test)]
mod tests;
