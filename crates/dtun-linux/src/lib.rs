//! dtun's Linux plumbing: the kernel interfaces the client and server drive, each behind a
//! small API, with no protocol logic (that is `dtun-proto`) and no policy (that is `dtun`).
//!
//! Layout:
//! - [`tun`], [`udp`]: the TUN device (offloads) and the UDP socket (GSO/GRO batches);
//! - [`netlink`], [`inet6`], [`routes`]: links, addresses, routes and rules over rtnetlink;
//! - [`nft`], [`nat6`]: nftables over netlink (NAT, forwarding rules, sets);
//! - [`dns`]: the client's resolvers (systemd-resolved over D-Bus, or resolv.conf);
//! - [`hooks`]: the `-up`/`-down` scripts;
//! - [`rundir`]: the checked runtime directory `/run/dtun` (locks, state files);
//! - [`privilege`]: what dtun needs from the kernel and how to grant it;
//! - [`sys`]: the few system calls no crate wraps (the one module allowed `unsafe`);
//! - [`rate_limit`]: a per-second budget for log lines a peer can trigger.
#![deny(unsafe_code)]

pub mod dns;
pub mod hooks;
pub mod inet6;
pub mod nat6;
pub mod netlink;
pub mod nft;
pub mod privilege;
pub mod rate_limit;
pub mod routes;
pub mod rundir;
pub mod sys;
pub mod tun;
pub mod udp;
