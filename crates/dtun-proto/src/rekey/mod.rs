//! Forward secrecy between dtun peers: after the handshake, a hybrid key exchange (X25519 and
//! ML-KEM-768) in our own control messages gives each new epoch its keys, chained from the
//! last epoch's secret, so neither the PSK alone, nor X25519 broken alone, nor ML-KEM broken
//! alone gives a later epoch's keys.
//!
//! The key schedule (docs/PROTOCOL.md, "Rekeying", has it with test vectors):
//!
//! ```text
//! S1      = PRF(master_secret, "EXPORTER-dtun-epoch-secret", client_random ‖ server_random)[..32]
//!           (the RFC 5705 exporter of the handshake, no context)
//! Init    = u16 epoch ‖ X25519 share of the client (32) ‖ ML-KEM-768 encapsulation key (1184)
//! Reply   = u16 epoch ‖ X25519 share of the server (32) ‖ ML-KEM-768 ciphertext (1088)
//! T       = SHA-256("dtun rekey 1" ‖ Init ‖ Reply)
//! PRK     = HKDF-Extract(salt = S_n, IKM = X25519 shared ‖ ML-KEM shared)
//! S_n+1   = HKDF-Expand(PRK, "dtun epoch secret" ‖ u16 n+1 ‖ T, 32)
//! keys(e) = HKDF-Expand(S_e, label ‖ u16 e, len) for the labels "dtun client key" (16),
//!           "dtun server key" (16), "dtun client iv" (4), "dtun server iv" (4)
//! ```
//!
//! Here: the key exchange ([`hybrid`]), the schedule ([`schedule`]), the messages with their
//! fragments ([`message`]), and each role's side of an exchange ([`exchange`]: when to start,
//! retries, the give-up, answering once per epoch), which the sessions of both roles run.

pub mod exchange;
#[cfg(test)]
mod exchange_tests;
pub mod hybrid;
pub mod message;
pub mod schedule;
#[cfg(test)]
mod tests;

pub use hybrid::{Initiator, Shared, respond};
pub use schedule::EpochSecret;

/// What can go wrong in an exchange; none of it ends a session (the exchange is retried, or
/// the peer is treated as dead when it never completes).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RekeyError {
    #[error("the system's random number generator failed")]
    Random,
    #[error("the peer's X25519 share is not usable (a low-order point)")]
    X25519,
    #[error("the peer's ML-KEM-768 encapsulation key is not valid (FIPS 203 §7.2 check)")]
    EncapsulationKey,
    #[error("malformed rekey message")]
    Malformed,
    #[error("a rekey message that belongs to no exchange in progress")]
    Unexpected,
}
