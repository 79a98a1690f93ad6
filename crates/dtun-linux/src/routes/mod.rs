//! Client routing: `-route all|CIDR,…`, `-exclude CIDR,…|@FILE` and the IPv6 leak block, over
//! rtnetlink (never by running `ip`). The flags are parsed and checked in `spec.rs`; the
//! constants of the server's LAN table are here too, beside the mark both share.
//!
//! Everything dtun routes lives in its own routing table [`TABLE`], consulted by policy rules:
//!
//! ```text
//! 25716: from all lookup main suppress_prefixlength 0      (-route all only)
//! 25717: not from all fwmark 0x6474 lookup 25716
//! table 25716: 0.0.0.0/1 dev TUN, 128.0.0.0/1 dev TUN      (-route all; else the -route CIDRs)
//!              throw EXCLUDED…, throw SERVER/32             (fall back to the main table)
//!              unreachable ::/1, unreachable 8000::/1       (-route all without IPv6 in the tunnel)
//!              ::/1 dev TUN, 8000::/1 dev TUN               (-route all, the tunnel carries IPv6)
//! ```
//!
//! - The main table's routes more specific than a default route (the LAN, the underlay subnet,
//!   the TUN's own peer) win over the tunnel with `-route all`, as with the original recipe's
//!   0/1 + 128/1 (wg-quick's `suppress_prefixlength 0`).
//! - dtun's own UDP socket carries the mark [`FWMARK`] (SO_MARK), so its datagrams never look
//!   at this table: they take whatever the main table says *now*, which follows a new default
//!   gateway (DHCP renew, another Wi-Fi) and a reconnect to another server address with no
//!   state of ours to update. The server's address also gets a `throw` route, so that other
//!   traffic to it, and the reverse-path check of its datagrams under a strict `rp_filter`,
//!   go the old way too.
//! - An excluded prefix is a `throw` route: the lookup falls back to the main table, whatever
//!   gateway it has at the moment.
//! - Every route carries the protocol number [`ROUTE_PROTOCOL`] and every rule one of two
//!   priorities, so a start after a `kill -9` finds and removes what is left.
//! - One dtun at a time owns a network namespace's routing: it holds the lock `routes` of
//!   /run/dtun (`owner.rs`), a second `-route` client is refused with the first one's pid and
//!   instance, and left-overs are removed only by a holder of the lock (a start, `dtun down`),
//!   so never from under a live dtun. Per-instance tables were weighed: two full tunnels
//!   cannot both own the default route anyway, and a few prefixes beside a full tunnel need
//!   no table of their own (an `-up` script's main-table routes win over `-route all`).
//! - `-kill-switch` (`kill_switch.rs`) keeps what the tunnel carries blocked whenever the
//!   tunnel is down, also after a `kill -9`, in a table and rules of its own.
//! - Routes are added and removed in pipelined batches of netlink requests (not one round trip
//!   each, `batch.rs`): a national list of 10 000 prefixes takes well under a second.

mod batch;
mod kill_switch;
mod owner;
mod spec;

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteMessage, RouteType};
use rtnetlink::packet_route::rule::{RuleAttribute, RuleMessage};

use crate::netlink::{Netlink, NetlinkError, route_table};

use batch::{add_batch, add_rules, del_batch, route_in};
use kill_switch::KillSwitch;
pub use kill_switch::{KILL_TABLE, PRIO_KILL, PRIO_KILL_SUPPRESS};
pub use owner::{Owner, RoutesError, down};

/// dtun's routing table ("dt").
pub const TABLE: u32 = 0x6474;
/// The firewall mark on dtun's own socket: its datagrams skip [`TABLE`].
pub const FWMARK: u32 = 0x6474;
/// Priority of the `lookup main suppress_prefixlength 0` rule (`-route all`).
pub const PRIO_SUPPRESS: u32 = 25716;
/// Priority of the `not fwmark FWMARK lookup TABLE` rule.
pub const PRIO_TABLE: u32 = 25717;
/// A server's table of its clients' LANs: every packet but dtun's own datagrams (marked
/// [`FWMARK`]) looks here first, so a LAN a client announced never captures another client's
/// outer address (src/server/lan_table.rs).
pub const LAN_TABLE: u32 = 0x6475;
/// Priority of the server's `not fwmark FWMARK lookup LAN_TABLE` rule.
pub const PRIO_LANS: u32 = 25718;
/// The `proto` of every route dtun adds for `-route` (shown as `proto 116` by `ip route`).
pub const ROUTE_PROTOCOL: u8 = 116;

/// Log line after the routes went in: `routes: installed N in X ms`.
pub const LOG_INSTALLED: &str = "routes: installed";
/// Log line after they were removed: `routes: removed N in X ms`.
pub const LOG_REMOVED: &str = "routes: removed";
/// Log line when IPv6 is blocked with `-route all`.
pub const LOG_IPV6_BLOCKED: &str = "IPv6 is blocked";
/// Log line when `-route all` sends IPv6 through the tunnel (it carries IPv6).
pub const LOG_IPV6_ROUTED: &str = "IPv6 goes through the tunnel";
/// Log line when a start finds the kill switch a killed dtun left and keeps it on.
pub const LOG_KILL_SWITCH_KEPT: &str = "kill switch kept";
/// Log line when `-host` cannot be looked up and the kill switch's note of the server's last
/// address is used: `… using the server's last address IP …`.
pub const LOG_LAST_ADDRESS: &str = "using the server's last address";

pub use spec::{RouteSpec, parse_cidr, parse_list, read_exclude_file};

/// The routes and rules of one client, installed once the TUN exists, kept across sessions,
/// removed on exit.
pub struct Routes {
    nl: Netlink,
    spec: RouteSpec,
    /// The rules and the table's throw/unreachable routes are in place.
    installed: bool,
    /// The server address that has a throw route (or will get one at install).
    server: Option<IpAddr>,
    /// The tunnel carries IPv6: with `-route all`, ::/1 and 8000::/1 go into it instead of
    /// being unreachable.
    ipv6_inside: bool,
    /// `-kill-switch`.
    kill: Option<KillSwitch>,
    /// The lock `routes` of this network namespace, held while this value lives: this dtun
    /// owns the namespace's routing (its table, rules and kill switch).
    _owner: Owner,
}

impl Routes {
    /// Takes the routing of this network namespace for the client `instance` (refused while
    /// another live dtun holds it), then removes what an earlier dtun left behind (after a
    /// `kill -9`): every rule at our priorities and every route in our table or with our
    /// protocol, and its kill switch unless this one has `-kill-switch` too (then it stays on
    /// until this tunnel is up).
    pub async fn take(
        nl: Netlink,
        spec: RouteSpec,
        instance: &str,
        host: &str,
    ) -> Result<Routes, RoutesError> {
        let owner = Owner::take(&format!("instance {instance}"))?;
        let n = flush_tunnel(&nl).await?;
        if n > 0 {
            tracing::info!("removed {n} routes and rules an earlier dtun left behind");
        }
        let kill = if spec.kill_switch {
            let mut k = KillSwitch::new(nl.clone(), owner.rundir(), &spec, host);
            if kill_switch::is_on(&nl).await? {
                k.keep_found();
                tracing::info!(
                    "{LOG_KILL_SWITCH_KEPT}: the kill switch an earlier dtun left blocks what the tunnel carries until it is up"
                );
            }
            Some(k)
        } else {
            let n = kill_switch::remove_all(&nl, owner.rundir()).await?;
            if n > 0 {
                tracing::info!(
                    "removed the kill switch an earlier dtun left ({n} routes and rules): this one runs without -kill-switch"
                );
            }
            None
        };
        Ok(Routes {
            nl,
            spec,
            installed: false,
            server: None,
            ipv6_inside: false,
            kill,
            _owner: owner,
        })
    }

    /// With `-kill-switch`: the server address the kill switch noted last, for when `-host`
    /// cannot be looked up (the kill switch blocks name lookups while the tunnel is down).
    pub fn last_address(&self) -> Option<IpAddr> {
        self.kill.as_ref().and_then(KillSwitch::last_address)
    }

    /// At exit, after [`Routes::remove`]: a clean stop (`clean`) lifts the kill switch; after a
    /// failure it stays, and says so.
    pub async fn finish(&mut self, clean: bool) {
        let Some(k) = self.kill.as_mut() else { return };
        if !k.is_on() {
            return;
        }
        if clean {
            if let Err(e) = k.remove().await {
                tracing::warn!("{e}");
            }
        } else {
            tracing::warn!(
                "the kill switch stays on: what the tunnel carried is blocked until dtun runs again, or `dtun down` lifts it"
            );
        }
    }

    /// The server we are about to talk to: its address gets a throw route (and an earlier one
    /// loses its own) if the routes are in place; with `-kill-switch`, the kill switch goes on
    /// (it notes the address, for a restart that cannot look up `-host`).
    pub async fn set_server(&mut self, server: IpAddr) -> Result<(), NetlinkError> {
        if let Some(k) = self.kill.as_mut() {
            k.set_server(server).await?;
        }
        let old = self.server.replace(server);
        if !self.installed || old == Some(server) {
            return Ok(());
        }
        add_batch(&self.nl, vec![throw(IpNet::from(server))]).await?;
        if let Some(old) = old {
            let stale = route_message(IpNet::from(old), RouteType::Throw, None);
            del_batch(&self.nl, vec![stale]).await?;
        }
        Ok(())
    }

    /// Puts the routes in place for the TUN `tun` (again after a reconnect: replacing a route
    /// that is there already changes nothing, and a TUN made anew gets its routes back). On
    /// failure everything dtun had added is removed again.
    pub async fn apply(&mut self, tun: u32) -> Result<(), NetlinkError> {
        match self.try_apply(tun).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(e2) = self.remove().await {
                    tracing::warn!("{e2}");
                }
                Err(e)
            }
        }
    }

    async fn try_apply(&mut self, tun: u32) -> Result<(), NetlinkError> {
        let tunnel: Vec<RouteMessage> = self
            .spec
            .tunnel_routes()
            .into_iter()
            .map(|dst| route_message(dst, RouteType::Unicast, Some(tun)))
            .collect();
        if self.installed {
            let mut tunnel = tunnel;
            tunnel.extend(self.ipv6_halves(tun));
            return add_batch(&self.nl, tunnel).await;
        }
        let started = Instant::now();
        let mut messages: Vec<RouteMessage> = self.spec.exclude.iter().map(|n| throw(*n)).collect();
        messages.extend(self.server.map(|s| throw(IpNet::from(s))));
        messages.extend(self.ipv6_halves(tun));
        messages.extend(tunnel);
        let count = messages.len();
        self.installed = true;
        add_batch(&self.nl, messages).await?;
        self.add_rules().await?;
        tracing::info!(
            "{LOG_INSTALLED} {count} in {} ms (table {TABLE}: {}{} excluded)",
            started.elapsed().as_millis(),
            if self.spec.all {
                "everything through the tunnel, ".to_string()
            } else {
                format!("{} prefixes through the tunnel, ", self.spec.routes.len())
            },
            self.spec.exclude.len()
        );
        if self.spec.blocks_ipv6() && self.ipv6_inside {
            tracing::info!("{LOG_IPV6_ROUTED} (::/1 and 8000::/1)");
        } else if self.spec.blocks_ipv6() {
            tracing::info!(
                "{LOG_IPV6_BLOCKED}: the tunnel carries none (yet), so ::/1 and 8000::/1 are unreachable while it is up; -allow-ipv6-leak lets IPv6 go the old way"
            );
        } else if self.spec.all {
            tracing::warn!("IPv6 bypasses the tunnel (-allow-ipv6-leak)");
        }
        Ok(())
    }

    /// With `-route all` (and no `-allow-ipv6-leak`): ::/1 and 8000::/1 through the TUN when
    /// the tunnel carries IPv6, else unreachable (so IPv6 cannot leak past it).
    fn ipv6_halves(&self, tun: u32) -> Vec<RouteMessage> {
        if !self.spec.blocks_ipv6() {
            return Vec::new();
        }
        [
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0),
        ]
        .into_iter()
        .map(|half| {
            let net = IpNet::new(half.into(), 1).expect("valid /1");
            if self.ipv6_inside {
                route_message(net, RouteType::Unicast, Some(tun))
            } else {
                route_message(net, RouteType::Unreachable, None)
            }
        })
        .collect()
    }

    /// The session's tunnel carries IPv6 (or no longer does): with `-route all`, IPv6 goes
    /// into it instead of being blocked (or is blocked again).
    pub async fn set_ipv6(&mut self, tun: u32, inside: bool) -> Result<(), NetlinkError> {
        if inside == self.ipv6_inside {
            return Ok(());
        }
        self.ipv6_inside = inside;
        if !self.installed || !self.spec.blocks_ipv6() {
            return Ok(());
        }
        // A replace turns an unreachable route into one through the TUN and back in one
        // step: there is no moment without either.
        add_batch(&self.nl, self.ipv6_halves(tun)).await?;
        if inside {
            tracing::info!("{LOG_IPV6_ROUTED} (::/1 and 8000::/1)");
        } else {
            tracing::info!(
                "{LOG_IPV6_BLOCKED}: the tunnel carries none now, so ::/1 and 8000::/1 are unreachable while it is up"
            );
        }
        Ok(())
    }

    /// Removes every rule and route dtun added. Logs how many and how long it took.
    pub async fn remove(&mut self) -> Result<(), NetlinkError> {
        if !self.installed {
            return Ok(());
        }
        let started = Instant::now();
        let n = self.flush().await?;
        self.installed = false;
        let took: Duration = started.elapsed();
        tracing::info!("{LOG_REMOVED} {n} in {} ms", took.as_millis());
        Ok(())
    }

    async fn add_rules(&self) -> Result<(), NetlinkError> {
        add_rules(&self.nl, self.spec.all, TABLE, PRIO_SUPPRESS, PRIO_TABLE).await
    }

    /// Deletes our rules, then our routes; returns how many there were.
    async fn flush(&self) -> Result<usize, NetlinkError> {
        flush_tunnel(&self.nl).await
    }
}

/// Deletes the tunnel's rules, then its routes (in [`TABLE`], or with our protocol outside the
/// kill switch's table); returns how many there were.
async fn flush_tunnel(nl: &Netlink) -> Result<usize, NetlinkError> {
    let mut count = nl.del_rules(is_our_rule).await?;
    let mut ours = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let routes = nl.routes(family, || "list routes".into()).await?;
        ours.extend(routes.into_iter().filter(|r| {
            let table = route_table(r);
            table == TABLE || (u8::from(r.header.protocol) == ROUTE_PROTOCOL && table != KILL_TABLE)
        }));
    }
    count += ours.len();
    del_batch(nl, ours).await?;
    Ok(count)
}

/// A rule dtun made: one of its two priorities.
fn is_our_rule(rule: &RuleMessage) -> bool {
    rule.attributes
        .iter()
        .any(|a| matches!(a, RuleAttribute::Priority(p) if *p == PRIO_SUPPRESS || *p == PRIO_TABLE))
}

fn throw(dst: IpNet) -> RouteMessage {
    route_message(dst, RouteType::Throw, None)
}

/// A route in [`TABLE`] with dtun's protocol: `dst dev OIF` (unicast) or `throw dst`,
/// `unreachable dst`.
fn route_message(dst: IpNet, kind: RouteType, oif: Option<u32>) -> RouteMessage {
    route_in(TABLE, dst, kind, oif)
}
