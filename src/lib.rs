//! dtun: a point-to-point VPN over DTLS 1.2 with a pre-shared key, wire-compatible with the
//! original Go dtun. The binary in `main.rs` only parses the command line and calls into here.
//!
//! # Layout
//!
//! Three crates, each depending only on the ones below it (the compiler keeps it so):
//!
//! ```text
//!   dtun         roles and operations: client, server, ops, config, cli, the data path (pump)
//!    │  │
//!    │  └──────► dtun-linux   kernel plumbing: tun, udp, netlink, routes, nft, nat6, dns, hooks,
//!    │              │          rundir, privilege, sys (the one module allowed `unsafe`)
//!    ▼              ▼
//!   dtun-proto   the protocol without I/O: record, ccm8, kdf, handshake (both roles),
//!                session (both roles' sessions as state machines), admission, inbound,
//!                proto, mss, keys, authz, pool, pool6, cidr (no async runtime, no sockets;
//!                `scripts/test.sh` holds its dependency tree against a deny list)
//! ```
//!
//! This crate:
//! - [`client`]: the reconnect loop, and the thin loop around `dtun_proto::session`'s
//!   `ClientSession` (`wire`: the socket and timer feeding the setup, `session`: what its
//!   events do to the host: TUN, routes, IPv6, DNS, scripts; `forward`: the batched data
//!   path while it is up; `sink`: the TUN sink and MSS clamp both share; `pair`: the checks
//!   of the addresses a server gives);
//! - [`server`]: `demux` (the socket's reader: handshakes to admission, records to sessions),
//!   `manager` (sessions and devices, reloads, status; the only owner of that state), `events`
//!   (what the tasks tell the manager), `device`, `session`, `lan_table`, `host_view`;
//! - [`pump`]: the data path of a session, TUN ⇄ records (batches, GSO, no allocation per
//!   packet);
//! - [`config`] and [`cli`]: the command line, the `-config` file, the checked configuration of
//!   each role;
//! - [`ops`]: operating a running dtun: control sockets, `dtun status`/`reload`, metrics,
//!   `-check`, `dtun client add`, systemd notification, man page and completions;
//! - [`supervise`]: tasks that must not die alone.
//!
//! # Reading order
//!
//! A newcomer reads `docs/PROTOCOL.md` (the wire), then `dtun_proto::record` and
//! `dtun_proto::handshake` (what a datagram becomes), then [`server`]'s module docs and
//! `server::demux` (how a datagram finds its session), then [`pump`] (the fast path), then
//! `dtun_proto::session` (the protocol of a session, both roles, with its in-memory tests) and
//! [`client`]. `docs/DESIGN.md` has the module table and the design decisions.
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod ops;
pub mod pump;
pub mod server;
pub mod supervise;
