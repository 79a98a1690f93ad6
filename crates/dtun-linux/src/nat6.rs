//! The server's IPv6 half of `-nat` / `-client-to-client on` when the tunnel carries IPv6
//! (`-pool6`): the table of [`crate::nft`] is `inet`, so its masquerade and forward rules
//! already match IPv6 (NAT66 to the server's address); this module turns IPv6 forwarding on
//! while dtun runs and keeps what that would cost:
//!
//! - **Forwarding opens nothing else.** When IPv6 forwarding was off before, a chain of its own
//!   in dtun's table drops every forwarded IPv6 packet but tunnel → out and its replies (and
//!   client ↔ client with `on` or groups, which the table's `forward` chain has already
//!   sorted by group), like the table's IPv4 catch-all drop. `@tuns` is the table's set of
//!   this server's TUNs (`crate::nft`):
//!
//!   ```text
//!   chain forward6 {
//!     type filter hook forward priority 1; policy accept;
//!     iif @tuns oif @tuns accept|drop                      # accept with `on` or groups
//!     iif @tuns accept                                     # -nat
//!     oif @tuns ct state established,related accept        # -nat: the replies
//!     meta nfproto ipv6 drop
//!   }
//!   ```
//! - **The server keeps its SLAAC default route.** With forwarding on, the kernel ignores
//!   router advertisements on interfaces whose `accept_ra` is 1; those get 2 (take them even
//!   when forwarding) while dtun runs, and 1 again on exit.
//! - **A `kill -9` loses nothing.** The values from before are written to the state file
//!   `/run/dtun/NETNS.INSTANCE.ipv6-forwarding` ([`RunDir::write_state`]: never through a link
//!   or a file someone else planted) before anything changes; the next start takes them from
//!   there, and a clean exit restores them and removes the file.

use std::io;
use std::path::{Path, PathBuf};

use rustables::expr::{Cmp, CmpOp, Immediate, Meta, MetaType, VerdictKind};
use rustables::{Batch, Chain, ChainPolicy, ChainType, Hook, HookClass, MsgType, ProtocolFamily};

use crate::nft::sets::{TUNS, dev_in, empty_set};
use crate::nft::{Policy, TABLE_PREFIX, nat_forward, rule};
use crate::rundir::RunDir;

/// The IPv6 forwarding switch of this network namespace (every interface's, as `sysctl -w
/// net.ipv6.conf.all.forwarding` sets it).
pub const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const CONF: &str = "/proc/sys/net/ipv6/conf";
/// NFPROTO_IPV6.
const NFPROTO_IPV6: u8 = 10;

#[derive(Debug, thiserror::Error)]
pub enum Nat6Error {
    #[error("this host has no IPv6 ({IPV6_FORWARDING} is missing)")]
    NoIpv6,
    #[error("cannot turn on IPv6 forwarding ({0}: {1})")]
    Io(String, io::Error),
    #[error(transparent)]
    RunDir(#[from] crate::rundir::RunDirError),
    #[error("cannot add the IPv6 forward guard to nftables table inet {0}: {1}")]
    Nft(String, rustables::error::QueryError),
}

/// IPv6 forwarding turned on by dtun; [`Ipv6Forwarding::remove`] puts things back.
#[derive(Debug)]
pub struct Ipv6Forwarding {
    table: String,
    dir: RunDir,
    state: PathBuf,
    before: u8,
    /// Interfaces whose `accept_ra` dtun moved from 1 to 2.
    ra: Vec<String>,
}

fn read_value(path: &Path) -> Result<String, Nat6Error> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Nat6Error::Io(path.display().to_string(), e))
}

fn write_value(path: &Path, v: &str) -> Result<(), Nat6Error> {
    std::fs::write(path, format!("{v}\n")).map_err(|e| Nat6Error::Io(path.display().to_string(), e))
}

/// The state file of `instance` in this network namespace.
fn state_path(dir: &RunDir, instance: &str) -> PathBuf {
    dir.path(&format!("{instance}.ipv6-forwarding"))
}

/// `forwarding=V` and `accept_ra=IFACE` lines.
fn parse_state(text: &str) -> Option<(u8, Vec<String>)> {
    let mut before = None;
    let mut ra = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("forwarding=") {
            before = v.trim().parse::<u8>().ok().map(|v| v.min(1));
        } else if let Some(i) = line.strip_prefix("accept_ra=") {
            ra.push(i.trim().to_string());
        }
    }
    Some((before?, ra))
}

fn state_text(before: u8, ra: &[String]) -> String {
    let mut s = format!("forwarding={before}\n");
    for i in ra {
        s.push_str(&format!("accept_ra={i}\n"));
    }
    s
}

/// The batch that adds the IPv6 guard chain to dtun's table (see the module header).
fn guard(table_name: &str, policy: &Policy) -> Result<Batch, rustables::error::QueryError> {
    let table = rustables::Table::new(ProtocolFamily::Inet).with_name(table_name);
    let mut batch = Batch::new();
    let chain = Chain::new(&table)
        .with_name("forward6")
        .with_hook(Hook::new(HookClass::Forward, 1))
        .with_type(ChainType::Filter)
        .with_policy(ChainPolicy::Accept);
    batch.add(&chain, MsgType::Add);
    // The table's set, looked up by name (it is not part of this batch).
    let tuns = empty_set(&table, TUNS, 1)?;
    let verdict =
        |k: VerdictKind| -> rustables::expr::RawExpression { Immediate::new_verdict(k).into() };
    // Client to client first, so that the -nat rule below never accepts it.
    let mut e = dev_in(&tuns, true)?;
    e.extend(dev_in(&tuns, false)?);
    e.push(verdict(
        if policy.client_to_client == Some(true) || policy.grouped() {
            VerdictKind::Accept
        } else {
            VerdictKind::Drop
        },
    ));
    batch.add(&rule(&chain, e)?, MsgType::Add);
    if policy.nat {
        for e in nat_forward(&tuns)? {
            batch.add(&rule(&chain, e)?, MsgType::Add);
        }
    }
    let drop = vec![
        Meta::new(MetaType::NfProto).into(),
        Cmp::new(CmpOp::Eq, vec![NFPROTO_IPV6]).into(),
        verdict(VerdictKind::Drop),
    ];
    batch.add(&rule(&chain, drop)?, MsgType::Add);
    Ok(batch)
}

/// The fixed start of a TUN name pattern (`dtun%d` → `dtun`): names that start with it are
/// taken for ours when choosing which interfaces' `accept_ra` to raise.
fn tun_prefix(pattern: &str) -> &str {
    pattern.split('%').next().unwrap_or(pattern)
}

/// Interfaces (not `lo`, not ours) that take router advertisements only while not forwarding.
fn ra_interfaces(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(CONF) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !matches!(n.as_str(), "all" | "default" | "lo") && !n.starts_with(prefix))
        .filter(|n| read_value(&Path::new(CONF).join(n).join("accept_ra")).is_ok_and(|v| v == "1"))
        .collect();
    out.sort();
    out
}

impl Ipv6Forwarding {
    /// Turns IPv6 forwarding on for `policy` (which needs forwarding), with the guard chain in
    /// the table of `fw` (sent over the socket that owns it) when it was off, and `accept_ra` 2
    /// where the host takes router advertisements.
    pub fn apply(
        fw: &crate::nft::Firewall,
        tun_pattern: &str,
        policy: Policy,
        instance: &str,
    ) -> Result<Ipv6Forwarding, Nat6Error> {
        let table = fw.table();
        let fwd = Path::new(IPV6_FORWARDING);
        if !fwd.exists() {
            return Err(Nat6Error::NoIpv6);
        }
        let dir = RunDir::open()?;
        let state = state_path(&dir, instance);
        let now = u8::from(read_value(fwd)? != "0");
        // After a kill -9 the file knows what was there before any of this (a link or a file
        // of another user's is not believed).
        let recorded = dir
            .read_state(&state)
            .ok()
            .flatten()
            .and_then(|t| parse_state(&String::from_utf8_lossy(&t)));
        // A file from another life of this namespace's inode (a namespace deleted after a
        // kill -9) cannot say "was off" while forwarding is off now: only trust it when its
        // story fits what we see.
        let (before, mut ra) = match recorded {
            Some((before, ra)) if now == 1 => (before, ra),
            _ => (now, Vec::new()),
        };
        let prefix = tun_prefix(tun_pattern);
        if before == 0 {
            guard(table, &policy)
                .and_then(|b| fw.send(b))
                .map_err(|e| Nat6Error::Nft(table.to_string(), e))?;
        }
        if now == 0 {
            for i in ra_interfaces(prefix) {
                if !ra.contains(&i) {
                    ra.push(i);
                }
            }
        }
        dir.write_state(&state, state_text(before, &ra).as_bytes())
            .map_err(|e| Nat6Error::Io(state.display().to_string(), e))?;
        let six = Ipv6Forwarding {
            table: table.to_string(),
            dir,
            state,
            before,
            ra,
        };
        for i in &six.ra {
            let _ = write_value(&Path::new(CONF).join(i).join("accept_ra"), "2");
        }
        if now == 0
            && let Err(e) = write_value(fwd, "1")
        {
            six.remove();
            return Err(e);
        }
        tracing::info!(
            "IPv6 forwarding on (was {before}){}{}",
            if before == 0 {
                "; forwarded IPv6 other than the tunnel's is dropped"
            } else {
                ""
            },
            if six.ra.is_empty() {
                String::new()
            } else {
                format!(
                    "; accept_ra 2 on {} so they keep their router advertisements",
                    six.ra.join(", ")
                )
            }
        );
        Ok(six)
    }

    /// Puts IPv6 forwarding and `accept_ra` back (forwarding only when no other dtun table is
    /// left) and removes the state file. The guard chain goes with dtun's table.
    pub fn remove(self) {
        let others = rustables::list_tables()
            .map(|t| {
                t.iter()
                    .filter_map(|t| t.get_name())
                    .filter(|n| n.starts_with(TABLE_PREFIX) && **n != self.table)
                    .count()
            })
            .unwrap_or(0);
        let fwd = Path::new(IPV6_FORWARDING);
        if others == 0 && read_value(fwd).ok().as_deref() != Some(&self.before.to_string()) {
            match write_value(fwd, &self.before.to_string()) {
                Ok(()) => tracing::info!("IPv6 forwarding back to {}", self.before),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        for i in &self.ra {
            let path = Path::new(CONF).join(i).join("accept_ra");
            if read_value(&path).is_ok_and(|v| v == "2") {
                let _ = write_value(&path, "1");
            }
        }
        if let Err(e) = self.dir.remove_state(&self.state) {
            tracing::warn!("cannot remove {}: {e}", self.state.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let ra = vec!["eth0".to_string(), "wlan0".to_string()];
        assert_eq!(parse_state(&state_text(0, &ra)), Some((0, ra)));
        assert_eq!(parse_state("forwarding=1\n"), Some((1, vec![])));
        assert_eq!(parse_state("garbage"), None);
        assert_eq!(parse_state(""), None);
    }
}
