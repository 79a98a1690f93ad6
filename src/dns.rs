//! The client's DNS while its tunnel is up: its own `-dns`, else the servers the server pushed
//! (a [`crate::proto::Control::Dns`] message) when [`use_pushed_dns`] says so.
//!
//! Two methods, chosen once at start and named in the log line that sets the servers:
//!
//! - **systemd-resolved**, when `org.freedesktop.resolve1` has an owner on the system bus
//!   (`DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket): per-link DNS on the TUN
//!   (`SetLinkDNS`; with `-route all` also the routing domain `~.` and `SetLinkDefaultRoute`),
//!   `RevertLink` on exit; /etc/resolv.conf is not touched (`resolved`).
//! - else /etc/resolv.conf is rewritten *in place* (truncated and written, never renamed over:
//!   `ip netns exec` and containers bind-mount a file there, and a rename onto a mount point
//!   fails). The original bytes are first saved in [`BACKUP_DIR`] under a name made of the
//!   file's device and inode, so a dtun that was killed (`kill -9`) finds and restores them on
//!   its next start, whatever its TUN is called. Our content starts with [`MARKER`]: a file
//!   that no longer does was rewritten by someone else (DHCP, NetworkManager) while the tunnel
//!   was up and is left alone on restore. When /etc/resolv.conf is systemd-resolved's stub but
//!   resolved is not on the bus, dtun says so and changes nothing.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::ClientConfig;

mod resolved;
pub use resolved::{BUS_NAME, ROUTE_ALL_DOMAIN};

/// The file rewritten.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where the original is kept while dtun's content is in place.
pub const BACKUP_DIR: &str = "/run/dtun";
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

/// Whether the client takes the DNS servers the server pushes (its own `-dns` wins anyway).
/// A split-routing client does not: only `-accept-dns` or `-route all`.
pub fn use_pushed_dns(cfg: &ClientConfig) -> bool {
    cfg.accept_dns || cfg.routes.all
}

/// The client's DNS state; every method is quick file I/O, called from the session's task.
pub struct Dns {
    state: Mutex<State>,
}

struct State {
    resolv: PathBuf,
    backup_dir: PathBuf,
    /// The client's own `-dns`.
    own: Vec<IpAddr>,
    accept_pushed: bool,
    /// The TUN named in our resolv.conf's first line (and given to resolved), and its index.
    tun: String,
    index: u32,
    /// What is in place now, and the backup that holds the original.
    applied: Option<(Vec<IpAddr>, PathBuf)>,
    /// `-route all`: with resolved, the TUN also gets the routing domain `~.`.
    route_all: bool,
    /// systemd-resolved's task, when it is the method.
    resolved: Option<tokio::sync::mpsc::UnboundedSender<resolved::Cmd>>,
    /// With resolved: the servers set on which link.
    link: Option<(Vec<IpAddr>, u32)>,
    /// Pushed servers that came before the first tunnel was up (a dtun server sends them
    /// before its Hello answer): applied once it is, when the TUN's name and index are known.
    pending: Option<Vec<IpAddr>>,
}

impl Dns {
    /// For the client of `cfg`: through systemd-resolved when it is on the system bus (asked
    /// only if this client may set DNS at all), else on the real /etc/resolv.conf. Either way
    /// restores what a dtun that did not exit cleanly left in /etc/resolv.conf.
    pub async fn new(cfg: &ClientConfig) -> Dns {
        let dns = Dns::with_paths(
            Path::new(RESOLV_CONF),
            Path::new(BACKUP_DIR),
            cfg.dns.clone(),
            use_pushed_dns(cfg),
        );
        // A -compat client is never pushed anything: only its own -dns counts.
        let may_set = !cfg.dns.is_empty() || (use_pushed_dns(cfg) && !cfg.common.compat);
        if may_set && let Some(conn) = resolved::detect().await {
            tracing::info!(
                "systemd-resolved is on the system bus: DNS will be set per link on the TUN (resolv.conf untouched)"
            );
            let mut st = dns.lock();
            st.resolved = Some(resolved::spawn(conn));
            st.route_all = cfg.routes.all;
        }
        dns
    }

    /// Like [`Dns::new`] on other files (tests).
    pub fn with_paths(
        resolv: &Path,
        backup_dir: &Path,
        own: Vec<IpAddr>,
        accept_pushed: bool,
    ) -> Dns {
        let mut st = State {
            resolv: resolv.to_path_buf(),
            backup_dir: backup_dir.to_path_buf(),
            own,
            accept_pushed,
            tun: String::new(),
            index: 0,
            applied: None,
            route_all: false,
            resolved: None,
            link: None,
            pending: None,
        };
        st.recover();
        Dns {
            state: Mutex::new(st),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tunnel `tun` (interface index `index`) is up: puts the client's own `-dns` in place
    /// (once; kept across reconnects; with resolved, set again on a TUN made anew).
    pub fn tunnel_up(&self, tun: &str, index: u32) {
        let mut st = self.lock();
        st.tun = tun.to_string();
        st.index = index;
        if !st.own.is_empty() {
            let own = st.own.clone();
            st.apply(&own, "-dns");
        } else if let Some(servers) = st.pending.take() {
            st.apply(&servers, "the server");
        } else if let Some((servers, old)) = st.link.clone()
            && old != index
        {
            st.apply(&servers, "the server");
        }
    }

    /// The server pushed `servers`: applied if this client takes pushed DNS and has no
    /// `-dns` of its own; otherwise only logged.
    pub fn pushed(&self, servers: &[IpAddr]) {
        let mut st = self.lock();
        let list = join(servers);
        if !st.own.is_empty() {
            tracing::info!("{LOG_DNS_IGNORED} ({list}): -dns {} wins", join(&st.own));
        } else if !st.accept_pushed {
            tracing::info!(
                "{LOG_DNS_IGNORED} ({list}): use -accept-dns (or -route all) to take it"
            );
        } else if st.index == 0 {
            st.pending = Some(servers.to_vec());
        } else {
            st.apply(servers, "the server");
        }
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
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.lock().restore();
    }
}

impl State {
    /// The backup's path for the resolv.conf in place now: named after its device and inode,
    /// which a rewrite in place keeps.
    fn backup_path(&self) -> std::io::Result<PathBuf> {
        let m = fs::metadata(&self.resolv)?;
        Ok(self
            .backup_dir
            .join(format!("resolv.conf.{}-{}.bak", m.dev(), m.ino())))
    }

    /// At start: a backup for our resolv.conf means a dtun died with its DNS in place.
    fn recover(&mut self) {
        let Ok(backup) = self.backup_path() else {
            return;
        };
        if backup.exists() {
            tracing::info!(
                "{} holds DNS a dtun that did not exit cleanly left behind: restoring it from {}",
                self.resolv.display(),
                backup.display()
            );
            self.applied = Some((Vec::new(), backup));
            self.restore();
        }
    }

    fn apply(&mut self, servers: &[IpAddr], from: &str) {
        if let Some(r) = &self.resolved {
            if self
                .link
                .as_ref()
                .is_some_and(|(s, i)| s == servers && *i == self.index)
            {
                return;
            }
            let _ = r.send(resolved::Cmd::Set {
                index: self.index,
                tun: self.tun.clone(),
                servers: servers.to_vec(),
                route_all: self.route_all,
                from: from.to_string(),
            });
            self.link = Some((servers.to_vec(), self.index));
            return;
        }
        if self.applied.as_ref().is_some_and(|(s, _)| s == servers) {
            return;
        }
        if let Some(stub) = resolved_stub(&self.resolv) {
            tracing::warn!(
                "DNS {} from {from} not applied: {} is systemd-resolved's ({}), but {BUS_NAME} is not on the system bus; set it in an -up script: resolvectl dns \"$TUN\" {}; resolvectl domain \"$TUN\" '~.'",
                join(servers),
                self.resolv.display(),
                stub.display(),
                servers
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            return;
        }
        match self.write(servers) {
            Ok(backup) => {
                tracing::info!(
                    "{LOG_DNS_SET}: {} from {from}, by rewriting {} in place (original saved in {}, restored on exit; systemd-resolved not used)",
                    join(servers),
                    self.resolv.display(),
                    backup.display()
                );
                self.applied = Some((servers.to_vec(), backup));
            }
            Err(e) => tracing::warn!(
                "cannot set DNS {} from {from} in {}: {e}; the tunnel stays up with the system's DNS{}",
                join(servers),
                self.resolv.display(),
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    format!(": {}", crate::ops::privilege::GRANT_RESOLV_CONF)
                } else {
                    String::new()
                }
            ),
        }
    }

    /// Saves the original (unless ours is already in place) and writes ours; on an error
    /// nothing is left changed. Returns the backup's path.
    fn write(&self, servers: &[IpAddr]) -> std::io::Result<PathBuf> {
        let current = fs::read(&self.resolv)?;
        let backup = self.backup_path()?;
        let ours = current.starts_with(MARKER.as_bytes());
        let original = match (&self.applied, ours) {
            (Some(_), true) => fs::read(&backup)?,
            _ => {
                save(&self.backup_dir, &backup, &current)?;
                current
            }
        };
        let text = render(&original, servers, &self.tun, &backup);
        if let Err(e) = write_in_place(&self.resolv, text.as_bytes()) {
            if self.applied.is_none() {
                let _ = write_in_place(&self.resolv, &original);
                let _ = fs::remove_file(&backup);
            }
            return Err(e);
        }
        Ok(backup)
    }

    fn restore(&mut self) {
        self.pending = None;
        if let (Some(r), Some((_, index))) = (&self.resolved, self.link.take()) {
            let _ = r.send(resolved::Cmd::Revert {
                index,
                tun: self.tun.clone(),
            });
        }
        let Some((_, backup)) = self.applied.take() else {
            return;
        };
        let original = match fs::read(&backup) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(
                    "cannot restore {}: its backup {} is unreadable: {e}",
                    self.resolv.display(),
                    backup.display()
                );
                return;
            }
        };
        let current = fs::read(&self.resolv).unwrap_or_default();
        if !current.starts_with(MARKER.as_bytes()) {
            tracing::warn!(
                "{} was rewritten by something else since dtun set it: left as it is",
                self.resolv.display()
            );
        } else if let Err(e) = write_in_place(&self.resolv, &original) {
            tracing::warn!(
                "cannot restore {}: {e}; its original is in {}",
                self.resolv.display(),
                backup.display()
            );
            return;
        } else {
            tracing::info!(
                "{LOG_DNS_RESTORED}: {} is back as it was",
                self.resolv.display()
            );
        }
        let _ = fs::remove_file(&backup);
    }
}

/// The file systemd-resolved manages that `resolv` links to, if it does.
fn resolved_stub(resolv: &Path) -> Option<PathBuf> {
    let target = fs::canonicalize(resolv).ok()?;
    target.starts_with("/run/systemd/resolve").then_some(target)
}

/// Writes `backup` whole or not at all (a temporary file renamed over it).
fn save(dir: &Path, backup: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = backup.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, backup)
}

/// Truncates and writes `path` in place: a bind-mounted file cannot be renamed over.
fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Our resolv.conf: the marker line, the servers, and the original's `options` lines.
fn render(original: &[u8], servers: &[IpAddr], tun: &str, backup: &Path) -> String {
    let mut s = format!(
        "{MARKER}DNS of the tunnel {tun}, set while it is up; the original is restored on exit (copy in {})\n",
        backup.display()
    );
    for ip in servers {
        s.push_str(&format!("nameserver {ip}\n"));
    }
    for line in String::from_utf8_lossy(original).lines() {
        if line.trim_start().starts_with("options") {
            s.push_str(line);
            s.push('\n');
        }
    }
    s
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
