//! Reload (SIGHUP on the server; the control socket's `dtun reload` calls the same
//! [`ReloadHandle::reload`]): the command line and its `-config` file are read again with
//! `-clients` and `-master-key-file`; a configuration that fails to load or check keeps the
//! running one. Credentials and `linger`, `max_clients`, `dns` apply at once (the server's half
//! is the server manager's (`crate::server`), which takes a [`Reconfigure`]); any other changed setting is logged as needing a restart
//! and ignored.

use std::ffi::OsString;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::config::ServerConfig;
use dtun_proto::keys::KeyStore;

/// What a reload hands the running server.
pub struct Reconfigure {
    pub keys: KeyStore,
    pub linger: Duration,
    pub max_clients: usize,
    pub dns: Vec<IpAddr>,
    /// What was done, once it is; or why nothing was (the running configuration stays).
    pub done: oneshot::Sender<Result<Applied, String>>,
}

/// What a reload changed; ids sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Ids listed now and not before.
    pub added: Vec<String>,
    /// Ids listed before and not now.
    pub removed: Vec<String>,
    /// Listed ids whose key changed.
    pub rekeyed: Vec<String>,
    /// Listed ids whose fixed address (`addr`, `addr6`) changed (applies at their next connect).
    pub readdressed: Vec<String>,
    /// Ids whose isolation group changed while they had a device: the device goes (its TUN is
    /// in the old group's set), the id gets a new one in its new group at its next connect.
    pub regrouped: Vec<String>,
    /// Ids whose session was ended (Close "revoked").
    pub ended: Vec<String>,
    /// Ids whose LAN routes a changed `lans=` changed, with what: `id (-NET +NET)`.
    pub lans: Vec<String>,
    /// Isolation groups were turned on by this reload (the first `group=`): the nftables
    /// rules and sets now enforce them.
    pub groups_enforced: bool,
    /// Ids this reload turned off (`disabled = true`) or on again.
    pub disabled: Vec<String>,
    pub enabled: Vec<String>,
    /// Settings applied at once, as `name old -> new` (`linger`, `max_clients`, `dns`).
    pub settings: Vec<String>,
}

/// Log line of a reload that applied (tests look for it).
pub const LOG_RELOADED: &str = "reloaded";
/// Log line of a reload that failed and kept the running configuration.
pub const LOG_RELOAD_FAILED: &str = "reload failed";

/// Reloads a running server. Cheap to clone; reloads run one at a time.
#[derive(Clone)]
pub struct ReloadHandle {
    inner: Arc<Inner>,
}

struct Inner {
    /// The process's command line, read again at each reload.
    args: Vec<OsString>,
    /// The configuration running now (settings that need a restart keep their start value).
    running: Mutex<ServerConfig>,
    tx: mpsc::Sender<Reconfigure>,
}

/// What a reload did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub applied: Applied,
    /// Settings that changed but apply only at the next start.
    pub needs_restart: Vec<&'static str>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.applied;
        let mut parts = Vec::new();
        for (what, ids) in [
            ("added", &a.added),
            ("removed", &a.removed),
            ("key changed", &a.rekeyed),
            ("fixed address changed (at next connect)", &a.readdressed),
            ("group changed (device removed)", &a.regrouped),
            ("LAN routes changed", &a.lans),
            ("disabled", &a.disabled),
            ("enabled again", &a.enabled),
            ("sessions ended", &a.ended),
            ("applied", &a.settings),
        ] {
            if !ids.is_empty() {
                parts.push(format!("{what}: {}", ids.join(", ")));
            }
        }
        if a.groups_enforced {
            parts.push("isolation groups now enforced".into());
        }
        if parts.is_empty() {
            parts.push("nothing changed".into());
        }
        if !self.needs_restart.is_empty() {
            parts.push(format!(
                "changed but needs a restart (ignored): {}",
                self.needs_restart.join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

impl ReloadHandle {
    /// A handle for a server started from `args` (the whole command line, program name
    /// first) with `running`; the receiver goes to `crate::server::run_with_reload`.
    pub fn new(
        args: Vec<OsString>,
        running: &ServerConfig,
    ) -> (ReloadHandle, mpsc::Receiver<Reconfigure>) {
        let (tx, rx) = mpsc::channel(4);
        let inner = Inner {
            args,
            running: Mutex::new(running.clone()),
            tx,
        };
        (
            ReloadHandle {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// [`reload`](Self::reload), logged and announced to systemd; `trigger` says who asked
    /// (`SIGHUP`, `dtun reload`). The reload runs in a task of its own: whoever asked may stop
    /// waiting (the control connection's timeout ends its task), yet the reload still finishes,
    /// is logged, and `READY=1` follows `RELOADING=1` (else systemd would wait for it until its
    /// own timeout and count the reload as failed).
    pub async fn reload_logged(&self, trigger: &str) -> Result<Summary, String> {
        let (this, trigger) = (self.clone(), trigger.to_string());
        let task = tokio::spawn(async move {
            tracing::info!("{trigger}: reloading the configuration");
            notify_reloading();
            let r = this.reload().await;
            match &r {
                Ok(summary) => tracing::info!("{LOG_RELOADED}: {summary}"),
                Err(e) => {
                    tracing::error!("{LOG_RELOAD_FAILED}, keeping the running configuration: {e}")
                }
            }
            notify_reloaded();
            r
        });
        task.await
            .unwrap_or_else(|e| Err(format!("the reload task ended: {e}")))
    }

    /// Reads the configuration again and applies what can change while running. On an error
    /// (the text says what and where) nothing changes.
    pub async fn reload(&self) -> Result<Summary, String> {
        let mut running = self.inner.running.lock().await;
        // Files are read on a blocking thread: a slow one (a network file system, a FIFO)
        // must not hold up a runtime worker.
        let args = self.inner.args.clone();
        let new = tokio::task::spawn_blocking(move || {
            let loaded = crate::config::file::load(&args)?;
            let new = loaded.server_config().map_err(|e| e.to_string())?;
            crate::ops::check::pool_fits(&new).map_err(|e| e.to_string())?;
            Ok::<_, String>(new)
        })
        .await
        .map_err(|e| format!("reading the configuration failed: {e}"))??;
        let needs_restart = needs_restart(&running, &new);
        let (done, applied) = oneshot::channel();
        let msg = Reconfigure {
            keys: new.keys.clone(),
            linger: new.linger,
            max_clients: new.max_clients,
            dns: new.dns.clone(),
            done,
        };
        let gone = || "the server is shutting down".to_string();
        self.inner.tx.send(msg).await.map_err(|_| gone())?;
        let applied = applied.await.map_err(|_| gone())??;
        running.keys = new.keys;
        running.linger = new.linger;
        running.max_clients = new.max_clients;
        running.dns = new.dns;
        Ok(Summary {
            applied,
            needs_restart,
        })
    }
}

/// `-nat` and `-client-to-client` of a firewall policy.
fn flags(policy: &Option<dtun_linux::nft::Policy>) -> (bool, Option<bool>) {
    policy.map_or((false, None), |p| (p.nat, p.client_to_client))
}

/// The settings that differ and cannot change while running.
fn needs_restart(old: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let d = |v: &dyn std::fmt::Debug| format!("{v:?}");
    let (oc, nc) = (&old.common, &new.common);
    [
        ("port/listen", d(&old.listen) != d(&new.listen)),
        ("id (hint)", old.hint != new.hint),
        ("pool", old.pool != new.pool),
        ("name", old.tun.name != new.tun.name),
        ("mtu", old.tun.mtu != new.tun.mtu),
        ("up", oc.up != nc.up),
        ("down", oc.down != nc.down),
        ("keepalive", oc.keepalive != nc.keepalive),
        ("rekey", oc.rekey != nc.rekey),
        ("compat", oc.compat != nc.compat),
        ("cipher", oc.suites != nc.suites),
        ("instance", old.instance != new.instance),
        // Not the groups: they follow the credentials and apply at a reload.
        (
            "nat/client_to_client",
            flags(&old.firewall) != flags(&new.firewall),
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(name, _)| name)
    .collect()
}

/// systemd: `RELOADING=1` with `MONOTONIC_USEC` (`Type=notify` units, `systemctl reload`).
fn notify_reloading() {
    super::notify::reloading();
}

/// systemd: `READY=1` after a reload, applied or not (the running configuration is in force).
fn notify_reloaded() {
    super::notify::ready("reloaded");
}

/// Runs a reload at every SIGHUP until the process ends, logging what it did or why it kept
/// the running configuration. Install before the server starts (a SIGHUP would kill it).
pub fn on_sighup(handle: ReloadHandle) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = handle.reload_logged("SIGHUP").await;
        }
    }))
}

/// On a client a SIGHUP only says that reload is a server feature (its default action would
/// end the process).
pub fn client_sighup() -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(
                "SIGHUP ignored: reload is a server feature; restart the client to change its settings"
            );
        }
    }))
}
