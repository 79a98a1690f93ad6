//! `-kill-switch`: what the tunnel carries is blocked whenever the tunnel is not there, also
//! after a `kill -9` (the TUN and the routes on it go with the process; without this, the
//! tunnel's table is then left with only throw routes and IPv4 falls back to the main table's
//! default route: a leak). A table of its own behind rules of its own, after the tunnel's:
//!
//! ```text
//! 25719: from all lookup main suppress_prefixlength 0      (-route all)
//! 25720: not from all fwmark 0x6474 lookup 25718
//! table 25718: unreachable 0.0.0.0/1, unreachable 128.0.0.0/1   (or each -route CIDR)
//!              unreachable ::/1, unreachable 8000::/1           (-route all, no -allow-ipv6-leak)
//!              throw EXCLUDED…, throw SERVER…                    (the old path)
//! ```
//!
//! While the tunnel is up its own table (25716, rule 25717) answers first; its throw routes
//! fall through to here, so excluded prefixes and the server are thrown here too. The LAN and
//! the rest of the main table but its default route still win (rule 25719).
//!
//! - It goes on once `-host` is resolved (a first start can still look the name up), stays
//!   across reconnects and a `kill -9`, and goes at a clean stop (SIGINT, SIGTERM); after a
//!   failure it stays. A start with `-kill-switch` keeps the one it finds (made anew in place,
//!   with no gap); a start without removes it; `dtun down` removes it once no dtun owns the
//!   routing (src/routes/owner.rs).
//! - The client's own datagrams carry the mark and skip it, whatever the server's address.
//!   Name lookups do not (the resolver's sockets are not ours): while the tunnel is down they
//!   are blocked like anything else. So the kill switch notes the server's last addresses (up
//!   to [`MAX_ADDRESSES`], newest first) in the state file `NETNS.kill-switch` of /run/dtun
//!   ([`RunDir::write_state`]: ours, never followed through a link), and a client that cannot
//!   look `-host` up uses the newest one of the same `-host`. Those addresses get throw routes.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteMessage, RouteType};
use rtnetlink::packet_route::rule::{RuleAttribute, RuleMessage};

use super::{RouteSpec, add_batch, add_rules, del_batch, route_in};
use crate::netlink::{Netlink, NetlinkError, route_destination, route_table};
use crate::rundir::RunDir;

/// The kill switch's routing table ("dv").
pub const KILL_TABLE: u32 = 0x6476;
/// Priority of its `lookup main suppress_prefixlength 0` rule (`-route all`).
pub const PRIO_KILL_SUPPRESS: u32 = 25719;
/// Priority of its `not fwmark FWMARK lookup KILL_TABLE` rule.
pub const PRIO_KILL: u32 = 25720;
/// Its state file (per network namespace): `-host` and the server's last addresses.
const STATE: &str = "kill-switch";
/// How many of the server's addresses it remembers.
pub const MAX_ADDRESSES: usize = 8;
/// The state file's first line.
const MAGIC: &str = "dtun kill switch";

/// One client's kill switch.
pub(super) struct KillSwitch {
    nl: Netlink,
    rundir: RunDir,
    /// `-route all`: the suppress rule goes in front.
    all: bool,
    /// What is unreachable while the tunnel is not there.
    blocked: Vec<IpNet>,
    /// `-exclude`: thrown to the old path.
    exclude: Vec<IpNet>,
    /// `-host` as given, so that the notes of another `-host` are never used.
    host: String,
    /// The server's last addresses, newest first: thrown to the old path, and noted.
    servers: Vec<IpAddr>,
    /// Its rules and routes are in place (this process put them there).
    installed: bool,
    /// An earlier dtun's kill switch was found on at start (and is kept).
    found: bool,
}

impl KillSwitch {
    /// The kill switch for `spec` and `host`, not yet on; it knows the addresses noted for the
    /// same `host`.
    pub(super) fn new(nl: Netlink, rundir: &RunDir, spec: &RouteSpec, host: &str) -> KillSwitch {
        let mut blocked = spec.tunnel_routes();
        if spec.blocks_ipv6() {
            blocked.extend([
                IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 1).expect("valid /1"),
                IpNet::new(Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0).into(), 1).expect("valid /1"),
            ]);
        }
        let servers = match rundir.read_state(&rundir.path(STATE)) {
            Ok(Some(data)) => parse_state(&String::from_utf8_lossy(&data), host),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!("cannot read the kill switch's notes: {e}");
                Vec::new()
            }
        };
        KillSwitch {
            nl,
            rundir: rundir.clone(),
            all: spec.all,
            blocked,
            exclude: spec.exclude.clone(),
            host: host.to_string(),
            servers,
            installed: false,
            found: false,
        }
    }

    /// Keeps the kill switch an earlier dtun left on (it is made anew at [`Self::set_server`]).
    pub(super) fn keep_found(&mut self) {
        self.found = true;
    }

    /// Whether a kill switch is on: ours, or the one found at start.
    pub(super) fn is_on(&self) -> bool {
        self.installed || self.found
    }

    /// The server's newest noted address.
    pub(super) fn last_address(&self) -> Option<IpAddr> {
        self.servers.first().copied()
    }

    /// The server we are about to talk to: noted, thrown to the old path; the kill switch goes
    /// on if it is not yet.
    pub(super) async fn set_server(&mut self, server: IpAddr) -> Result<(), NetlinkError> {
        let changed = self.servers.first() != Some(&server);
        let mut dropped = Vec::new();
        if changed {
            self.servers.retain(|a| *a != server);
            self.servers.insert(0, server);
            dropped = self
                .servers
                .split_off(self.servers.len().min(MAX_ADDRESSES));
            self.note();
        }
        if !self.installed {
            return self.install().await;
        }
        if changed {
            add_batch(&self.nl, vec![throw(IpNet::from(server))]).await?;
            del_batch(
                &self.nl,
                dropped.into_iter().map(|a| throw(a.into())).collect(),
            )
            .await?;
        }
        Ok(())
    }

    /// Puts the table's routes in place (replacing what is there, then removing what is no
    /// longer wanted: an earlier dtun's kill switch never has a gap), then the rules.
    async fn install(&mut self) -> Result<(), NetlinkError> {
        let wanted = self.messages();
        let keys: Vec<_> = wanted.iter().map(key).collect();
        add_batch(&self.nl, wanted).await?;
        let stale = table_routes(&self.nl)
            .await?
            .into_iter()
            .filter(|r| !keys.contains(&key(r)))
            .collect();
        del_batch(&self.nl, stale).await?;
        if !self.all {
            // An earlier `-route all` kill switch's suppress rule: not ours to keep.
            self.nl
                .del_rules(|r| has_priority(r, PRIO_KILL_SUPPRESS))
                .await?;
        }
        add_rules(
            &self.nl,
            self.all,
            KILL_TABLE,
            PRIO_KILL_SUPPRESS,
            PRIO_KILL,
        )
        .await?;
        self.installed = true;
        tracing::info!(
            "kill switch on (table {KILL_TABLE}): what the tunnel carries is blocked whenever it is down, until dtun stops cleanly or `dtun down`"
        );
        Ok(())
    }

    /// Lifts it (a clean stop).
    pub(super) async fn remove(&mut self) -> Result<(), NetlinkError> {
        let n = remove_all(&self.nl, &self.rundir).await?;
        self.installed = false;
        self.found = false;
        tracing::info!("kill switch off ({n} routes and rules removed)");
        Ok(())
    }

    fn messages(&self) -> Vec<RouteMessage> {
        let unreachable = self
            .blocked
            .iter()
            .map(|n| route_in(KILL_TABLE, *n, RouteType::Unreachable, None));
        let thrown = self
            .exclude
            .iter()
            .copied()
            .chain(self.servers.iter().map(|a| IpNet::from(*a)))
            .map(throw);
        unreachable.chain(thrown).collect()
    }

    /// Writes the notes; a failure costs only the fallback, so it is a warning.
    fn note(&self) {
        let mut text = format!("{MAGIC}\nhost {}\n", self.host);
        for a in &self.servers {
            text += &format!("{a}\n");
        }
        let path = self.rundir.path(STATE);
        if let Err(e) = self.rundir.write_state(&path, text.as_bytes()) {
            tracing::warn!(
                "cannot note the server's address in {}: {e}",
                path.display()
            );
        }
    }
}

/// Whether a kill switch is on in this network namespace.
pub(super) async fn is_on(nl: &Netlink) -> Result<bool, NetlinkError> {
    Ok(!table_routes(nl).await?.is_empty())
}

/// Removes any kill switch of this network namespace (its rules, its table, its notes);
/// returns how many rules and routes there were.
pub(super) async fn remove_all(nl: &Netlink, rundir: &RunDir) -> Result<usize, NetlinkError> {
    let mut n = nl
        .del_rules(|r| has_priority(r, PRIO_KILL_SUPPRESS) || has_priority(r, PRIO_KILL))
        .await?;
    let routes = table_routes(nl).await?;
    n += routes.len();
    del_batch(nl, routes).await?;
    if let Err(e) = rundir.remove_state(&rundir.path(STATE)) {
        tracing::warn!("{e}");
    }
    Ok(n)
}

/// The noted addresses, if they are for `host` (anything else in the file is skipped).
fn parse_state(text: &str, host: &str) -> Vec<IpAddr> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) || lines.next() != Some(&format!("host {host}")) {
        return Vec::new();
    }
    let mut addrs: Vec<IpAddr> = lines.filter_map(|l| l.trim().parse().ok()).collect();
    addrs.truncate(MAX_ADDRESSES);
    addrs
}

async fn table_routes(nl: &Netlink) -> Result<Vec<RouteMessage>, NetlinkError> {
    let mut ours = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let routes = nl
            .routes(family, || "list the kill switch's routes".into())
            .await?;
        ours.extend(routes.into_iter().filter(|r| route_table(r) == KILL_TABLE));
    }
    Ok(ours)
}

fn has_priority(rule: &RuleMessage, prio: u32) -> bool {
    rule.attributes
        .iter()
        .any(|a| matches!(a, RuleAttribute::Priority(p) if *p == prio))
}

fn throw(dst: IpNet) -> RouteMessage {
    route_in(KILL_TABLE, dst, RouteType::Throw, None)
}

/// What tells two routes of the table apart here: destination and type.
fn key(r: &RouteMessage) -> (Option<IpNet>, RouteType) {
    (route_destination(r), r.header.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_used_only_for_the_same_host() {
        let text = format!("{MAGIC}\nhost vpn.example.com\n192.0.2.1\nnonsense\n2001:db8::1\n");
        assert_eq!(
            parse_state(&text, "vpn.example.com"),
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert!(parse_state(&text, "other.example.com").is_empty());
        assert!(parse_state("host vpn.example.com\n192.0.2.1\n", "vpn.example.com").is_empty());
        let many: String = (0..20).map(|i| format!("192.0.2.{i}\n")).collect();
        let text = format!("{MAGIC}\nhost h\n{many}");
        assert_eq!(parse_state(&text, "h").len(), MAX_ADDRESSES);
    }
}
