//! Running dtun as an operator's service: readiness for systemd, what to say when a privilege
//! is missing, shell completions and the man page.

pub mod docs;
pub mod notify;
pub mod privilege;
