//! The client's DNS while its tunnel is up: its own `-dns`, else the servers the server pushed
//! (a [`dtun_proto::proto::Control::Dns`] message) when the client's [`DnsPolicy`] takes them.
//!
//! Two methods, chosen once at start and named in the log line that sets the servers:
//!
//! - **systemd-resolved**, when `org.freedesktop.resolve1` has an owner on the system bus
//!   (`DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket): per-link DNS on the TUN
//!   (`SetLinkDNS`; with `-route all` also the routing domain `~.` and `SetLinkDefaultRoute`),
//!   `RevertLink` on exit; /etc/resolv.conf is not touched (`resolved`).
//! - else /etc/resolv.conf is rewritten in place (`file`: one owner at a time, its original
//!   kept in /run/dtun under a name made of the file's device and inode, so a dtun that was
//!   killed (`kill -9`) finds and restores it on its next start once no live dtun owns the
//!   file; nothing planted there or on the way to resolv.conf is followed). Our content starts
//!   with [`MARKER`]: a file that no longer does was rewritten by someone else (DHCP,
//!   NetworkManager) while the tunnel was up and is left alone on restore. When
//!   /etc/resolv.conf is systemd-resolved's stub but resolved is not on the bus, dtun says so
//!   and changes nothing.
//!
//! Pushed servers no resolver should be given (unspecified, broadcast, loopback, multicast,
//! link-local: the wire carries no scope) are refused and counted ([`Dns::pushed`]). A server
//! may push often: the servers change at most once per [`MIN_SET_INTERVAL`], the last list
//! winning ([`Dns::tick`] applies one that had to wait). Pushed servers the host would route
//! past the tunnel get a host route on the TUN (`via_tunnel`).

mod file;
mod resolved;
mod via_tunnel;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use resolved::{BUS_NAME, ROUTE_ALL_DOMAIN};
pub use via_tunnel::LOG_DNS_ROUTED;

/// The file rewritten.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where the original is kept while dtun's content is in place.
pub const BACKUP_DIR: &str = crate::rundir::BASE;
/// Shortest time between two changes of the servers (a server pushing list after list costs
/// one rewrite and fsync of resolv.conf, or one D-Bus call, a second).
pub const MIN_SET_INTERVAL: Duration = Duration::from_secs(1);
/// Where pushed servers come from, in log lines.
const FROM_SERVER: &str = "the server";
/// Log line of pushed servers refused as unusable.
pub const LOG_DNS_REFUSED: &str = "refused DNS servers pushed by the server";
/// First bytes of the resolv.conf dtun writes.
pub const MARKER: &str = "# dtun: ";
/// Log line when the servers are in place (tests look for it).
pub const LOG_DNS_SET: &str = "DNS set";
/// Log line when the original resolv.conf is back.
pub const LOG_DNS_RESTORED: &str = "DNS restored";
/// Log line of a client that got servers it does not use.
pub const LOG_DNS_IGNORED: &str = "DNS pushed by the server not applied";
/// Server log line when it sends its `-dns` to a client.
pub const LOG_DNS_PUSHED: &str = "pushing DNS";

/// What the client's flags say about DNS (the client builds it from its configuration).
#[derive(Clone, Debug, Default)]
pub struct DnsPolicy {
    /// The client's own `-dns`: set whatever the server pushes.
    pub own: Vec<IpAddr>,
    /// Whether the servers the server pushes are taken (`-accept-dns` or `-route all`; the
    /// client's own `-dns` wins anyway).
    pub accept_pushed: bool,
    /// `-route all`: with systemd-resolved, the TUN also gets the routing domain `~.`.
    pub route_all: bool,
    /// `-compat`: the server is never asked for anything, so only `own` counts.
    pub compat: bool,
}

/// The client's DNS state; every method is quick file I/O, called from the session's task.
pub struct Dns {
    state: Mutex<State>,
}

struct State {
    /// The resolv.conf method.
    file: file::ResolvFile,
    /// The client's own `-dns`.
    own: Vec<IpAddr>,
    accept_pushed: bool,
    /// The TUN named in our resolv.conf's first line (and given to resolved), and its index.
    tun: String,
    index: u32,
    /// What is in place now (resolv.conf method).
    applied: Option<Vec<IpAddr>>,
    /// `-route all`: with resolved, the TUN also gets the routing domain `~.`.
    route_all: bool,
    /// The task that routes pushed servers into the tunnel (src/dns/via_tunnel.rs), for a
    /// client that takes them; the list and the TUN it last got.
    routes: Option<tokio::sync::mpsc::UnboundedSender<via_tunnel::Cmd>>,
    routed: Option<(Vec<IpAddr>, u32)>,
    /// systemd-resolved's task, when it is the method.
    resolved: Option<tokio::sync::mpsc::UnboundedSender<resolved::Cmd>>,
    /// With resolved: the servers set on which link.
    link: Option<(Vec<IpAddr>, u32)>,
    /// Pushed servers that came before the first tunnel was up (a dtun server sends them
    /// before its Hello answer): applied once it is, when the TUN's name and index are known.
    pending: Option<Vec<IpAddr>>,
    /// When the servers last changed, and the list (and its origin) waiting for
    /// [`MIN_SET_INTERVAL`] to pass.
    last_set: Option<Instant>,
    deferred: Option<(Vec<IpAddr>, &'static str)>,
    /// How many times the servers were changed (tests count them).
    sets: u64,
    /// For the log lines about what the server pushed.
    log_limit: crate::rate_limit::RateLimit,
    /// Told what is in place after every change (the client's status board).
    watcher: Option<Watcher>,
}

/// Called with the DNS servers in place and how they were set ("systemd-resolved" or
/// "resolv.conf"), or with nothing when none of ours are.
pub type Watcher = Box<dyn Fn(&[IpAddr], Option<&'static str>) + Send>;

impl Dns {
    /// For a client with this policy: through systemd-resolved when it is on the system bus (asked
    /// only if this client may set DNS at all), else on the real /etc/resolv.conf. Either way
    /// restores what a dtun that did not exit cleanly left in /etc/resolv.conf.
    pub async fn new(policy: &DnsPolicy, nl: &crate::netlink::Netlink) -> Dns {
        let dns = Dns::with_paths(
            Path::new(RESOLV_CONF),
            Path::new(BACKUP_DIR),
            policy.own.clone(),
            policy.accept_pushed,
        );
        // A -compat client is never pushed anything: only its own -dns counts.
        let takes_pushed = policy.own.is_empty() && policy.accept_pushed && !policy.compat;
        let may_set = !policy.own.is_empty() || takes_pushed;
        if takes_pushed {
            dns.lock().routes = Some(via_tunnel::spawn(nl.clone()));
        }
        if may_set && let Some(conn) = resolved::detect().await {
            tracing::info!(
                "systemd-resolved is on the system bus: DNS will be set per link on the TUN (resolv.conf untouched)"
            );
            let mut st = dns.lock();
            st.resolved = Some(resolved::spawn(conn));
            st.route_all = policy.route_all;
        }
        dns
    }

    /// Like [`Dns::new`] on other files (tests): `backup_dir` is a runtime directory
    /// ([`crate::rundir::RunDir::at`]).
    pub fn with_paths(
        resolv: &Path,
        backup_dir: &Path,
        own: Vec<IpAddr>,
        accept_pushed: bool,
    ) -> Dns {
        let mut st = State {
            file: file::ResolvFile::new(resolv, backup_dir),
            own,
            accept_pushed,
            tun: String::new(),
            index: 0,
            applied: None,
            route_all: false,
            routes: None,
            routed: None,
            resolved: None,
            link: None,
            pending: None,
            last_set: None,
            deferred: None,
            sets: 0,
            log_limit: crate::rate_limit::RateLimit::new(5),
            watcher: None,
        };
        st.file.recover();
        Dns {
            state: Mutex::new(st),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells `watcher` what is in place after every change (for `dtun status`).
    pub fn watch(&self, watcher: Watcher) {
        let mut st = self.lock();
        st.watcher = Some(watcher);
        st.tell();
    }

    /// The tunnel `tun` (interface index `index`) is up: puts the client's own `-dns` in place
    /// (once; kept across reconnects; with resolved, set again on a TUN made anew).
    pub fn tunnel_up(&self, tun: &str, index: u32) {
        let mut st = self.lock();
        st.tun = tun.to_string();
        st.index = index;
        // A TUN made anew lost the host routes of the pushed servers.
        if let Some((servers, old)) = st.routed.clone()
            && old != index
        {
            st.route(servers);
        }
        if !st.own.is_empty() {
            let own = st.own.clone();
            st.apply_at(&own, "-dns", Instant::now());
        } else if let Some(servers) = st.pending.take() {
            st.apply_at(&servers, FROM_SERVER, Instant::now());
        } else if let Some((servers, old)) = st.link.clone()
            && old != index
        {
            // A TUN made anew: resolved forgot the old link; not a change of servers.
            st.set(&servers, FROM_SERVER);
        }
    }

    /// The server pushed `servers`: the unusable ones ([`unusable`]) are refused and logged,
    /// and their number returned (the caller counts them as drops); the rest is applied if
    /// this client takes pushed DNS and has no `-dns` of its own, otherwise only logged.
    pub fn pushed(&self, servers: &[IpAddr]) -> usize {
        self.pushed_at(servers, Instant::now())
    }

    fn pushed_at(&self, servers: &[IpAddr], now: Instant) -> usize {
        let mut refused = Vec::new();
        let servers: Vec<IpAddr> = servers
            .iter()
            .filter(|ip| match unusable(**ip) {
                Some(why) => {
                    refused.push(format!("{ip} ({why})"));
                    false
                }
                None => true,
            })
            .copied()
            .collect();
        let mut st = self.lock();
        // What the server sends is logged at most a few times a second.
        let log = st.log_limit.allow();
        if !refused.is_empty() && log {
            tracing::warn!(
                "{LOG_DNS_REFUSED}: {}; {}",
                refused.join(", "),
                if servers.is_empty() {
                    "nothing left to apply"
                } else {
                    "the others apply"
                }
            );
        }
        if servers.is_empty() {
            return refused.len();
        }
        let list = join(&servers);
        if !st.own.is_empty() {
            if log {
                tracing::info!("{LOG_DNS_IGNORED} ({list}): -dns {} wins", join(&st.own));
            }
        } else if !st.accept_pushed {
            if log {
                tracing::info!(
                    "{LOG_DNS_IGNORED} ({list}): use -accept-dns (or -route all) to take it"
                );
            }
        } else if st.index == 0 {
            st.pending = Some(servers);
        } else {
            st.apply_at(&servers, FROM_SERVER, now);
        }
        refused.len()
    }

    /// Applies a list that had to wait for [`MIN_SET_INTERVAL`] once it has passed (the
    /// forwarding loop calls it every second).
    pub fn tick(&self) {
        self.lock().tick(Instant::now());
    }

    /// Puts the original resolv.conf back, or (resolved) asks for the link's DNS settings to
    /// be reverted (tunnel down, dtun exiting).
    pub fn restore(&self) {
        self.lock().restore();
    }

    /// [`Dns::restore`], then waits (at most a few seconds) until resolved has been told: the
    /// last step before the TUN goes.
    pub async fn shutdown(&self) {
        self.restore();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .lock()
            .resolved
            .as_ref()
            .is_some_and(|r| r.send(resolved::Cmd::Flush(tx)).is_ok());
        if sent {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .lock()
            .routes
            .as_ref()
            .is_some_and(|r| r.send(via_tunnel::Cmd::Flush(tx)).is_ok());
        if sent {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
        }
    }
}

#[cfg(test)]
impl Dns {
    /// As `kill -9` leaves things: the owner lock goes with the process, the rest stays.
    fn crash(self) {
        self.lock().file.crash();
        std::mem::forget(self);
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.lock().restore();
    }
}

/// Why a pushed server is no use to a resolver, if it is not: unspecified (and the rest of
/// 0.0.0.0/8), broadcast, loopback, multicast, or link-local (the wire carries no scope; an
/// IPv4 link-local server would be a host on the client's own link). IPv4-mapped IPv6
/// addresses are judged as the IPv4 address.
pub fn unusable(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("unspecified"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some("link-local without a scope"),
        ip if ip.is_unspecified() => Some("unspecified"),
        ip if ip.is_loopback() => Some("loopback"),
        ip if ip.is_multicast() => Some("multicast"),
        _ => None,
    }
}

impl State {
    /// Puts `servers` in place, or keeps them for [`State::tick`] if the servers changed less
    /// than [`MIN_SET_INTERVAL`] ago (the last list waiting wins).
    fn apply_at(&mut self, servers: &[IpAddr], from: &'static str, now: Instant) {
        let in_place = match &self.resolved {
            Some(_) => self
                .link
                .as_ref()
                .is_some_and(|(s, i)| s == servers && *i == self.index),
            None => self.applied.as_deref() == Some(servers),
        };
        if in_place {
            self.deferred = None;
            return;
        }
        if self
            .last_set
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_SET_INTERVAL)
        {
            self.deferred = Some((servers.to_vec(), from));
            return;
        }
        self.deferred = None;
        self.last_set = Some(now);
        self.set(servers, from);
    }

    fn tick(&mut self, now: Instant) {
        if let Some((servers, from)) = self.deferred.take() {
            self.apply_at(&servers, from, now);
        }
    }

    /// Tells the routing task which pushed servers are in use on which TUN.
    fn route(&mut self, servers: Vec<IpAddr>) {
        if let Some(r) = &self.routes {
            let _ = r.send(via_tunnel::Cmd::Set {
                index: self.index,
                tun: self.tun.clone(),
                servers: servers.clone(),
            });
            self.routed = Some((servers, self.index));
        }
    }

    /// What is in place now, to the watcher.
    fn tell(&self) {
        if let Some(w) = &self.watcher {
            match (&self.link, &self.applied) {
                (Some((servers, _)), _) => w(servers, Some("systemd-resolved")),
                (None, Some(servers)) => w(servers, Some("resolv.conf")),
                (None, None) => w(&[], None),
            }
        }
    }

    fn set(&mut self, servers: &[IpAddr], from: &str) {
        self.sets += 1;
        let pushed = if from == FROM_SERVER {
            servers.to_vec()
        } else {
            Vec::new()
        };
        if let Some(r) = &self.resolved {
            let _ = r.send(resolved::Cmd::Set {
                index: self.index,
                tun: self.tun.clone(),
                servers: servers.to_vec(),
                route_all: self.route_all,
                from: from.to_string(),
            });
            self.link = Some((servers.to_vec(), self.index));
            self.route(pushed);
            self.tell();
            return;
        }
        let resolv = self.file.path.display().to_string();
        match self.file.set(servers, &self.tun) {
            Ok(backup) => {
                tracing::info!(
                    "{LOG_DNS_SET}: {} from {from}, by rewriting {resolv} in place (original saved in {}, restored on exit; systemd-resolved not used)",
                    join(servers),
                    backup.display()
                );
                self.applied = Some(servers.to_vec());
                self.route(pushed);
                self.tell();
            }
            Err(file::SetError::Stub(stub)) => tracing::warn!(
                "DNS {} from {from} not applied: {resolv} is systemd-resolved's ({}), but {BUS_NAME} is not on the system bus; set it in an -up script: resolvectl dns \"$TUN\" {}; resolvectl domain \"$TUN\" '~.'",
                join(servers),
                stub.display(),
                servers
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Err(e) => tracing::warn!(
                "cannot set DNS {} from {from} in {resolv}: {e}; the tunnel stays up with the system's DNS{}",
                join(servers),
                if e.permission_denied() {
                    format!(": {}", crate::privilege::GRANT_RESOLV_CONF)
                } else {
                    String::new()
                }
            ),
        }
    }

    fn restore(&mut self) {
        self.pending = None;
        self.deferred = None;
        if self.routed.is_some() {
            self.route(Vec::new());
            self.routed = None;
        }
        if let (Some(r), Some((_, index))) = (&self.resolved, self.link.take()) {
            let _ = r.send(resolved::Cmd::Revert {
                index,
                tun: self.tun.clone(),
            });
        }
        if self.applied.take().is_some() || self.file.is_set() {
            self.file.restore();
        }
        self.tell();
    }
}

fn join(servers: &[IpAddr]) -> String {
    servers
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests;
