//! `dtun [-config FILE] -check`: everything a start would read or refuse, checked without
//! touching the kernel (like `nginx -t`): the key or key files, every client's key, CIDRs,
//! exclude files, fixed addresses and LANs against the pool, the scripts.

use std::path::Path;

use crate::config::ServerConfig;
use crate::config::file::Loaded;

/// Checks the configuration; the one-line OK on success, else the error.
pub fn check(l: &Loaded) -> Result<String, String> {
    let what = match &l.file {
        Some(f) => format!("configuration {}", f.display()),
        None => "command line".to_string(),
    };
    let err = |e: String| format!("{what}: {e}");
    super::metrics::access(l.cli.metrics, l.cli.metrics_token.as_deref())
        .map_err(|e| err(e.to_string()))?;
    for w in super::perms::check(l).map_err(err)? {
        tracing::warn!("{w}");
    }
    match &l.cli.host {
        Some(host) => {
            let cfg = l.client_config(host).map_err(|e| err(e.to_string()))?;
            scripts(cfg.common.up.as_deref(), cfg.common.down.as_deref()).map_err(err)?;
            Ok(format!(
                "dtun: {what} is OK: client of {} as {:?}, instance {}",
                cfg.servers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                cfg.id,
                cfg.instance
            ))
        }
        None => {
            let cfg = l.server_config().map_err(|e| err(e.to_string()))?;
            validate_server(&cfg).map_err(|e| match (&l.file, e.id.as_ref()) {
                (Some(f), Some(id)) if l.client_lines.contains_key(id) => format!(
                    "{} line {}: [clients.{id}]: {}",
                    f.display(),
                    l.client_lines[id],
                    e.why
                ),
                _ => err(e.to_string()),
            })?;
            Ok(format!(
                "dtun: {what} is OK: server on port {}, pool {}, {} listed client(s), instance {}",
                cfg.listen.port(),
                cfg.pool,
                cfg.keys.clients.len(),
                cfg.instance
            ))
        }
    }
}

/// A server configuration refused by [`validate_server`]: why, and the client it is about.
#[derive(Debug)]
pub struct Invalid {
    pub id: Option<String>,
    pub why: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "client {id}: {}", self.why),
            None => f.write_str(&self.why),
        }
    }
}

/// What a server start (or a reload) refuses beyond the config's own checks: fixed addresses
/// outside the pool or twice, LANs inside the pool, missing or non-executable scripts.
pub fn validate_server(cfg: &ServerConfig) -> Result<(), Invalid> {
    pool_fits(cfg)?;
    scripts(cfg.common.up.as_deref(), cfg.common.down.as_deref())
        .map_err(|why| Invalid { id: None, why })
}

/// Fixed addresses and LANs against the pool.
pub fn pool_fits(cfg: &ServerConfig) -> Result<(), Invalid> {
    let bad = |id: &str, why: String| Invalid {
        id: Some(id.to_string()),
        why,
    };
    let mut pool = dtun_proto::pool::Pool::new(cfg.pool).map_err(|e| Invalid {
        id: None,
        why: e.to_string(),
    })?;
    let mut ids: Vec<&String> = cfg.keys.clients.keys().collect();
    ids.sort();
    for id in ids {
        let c = &cfg.keys.clients[id];
        if let Some(a) = c.addr {
            pool.assign_fixed(id, a)
                .map_err(|e| bad(id, format!("addr: {e}: change one of them or -pool")))?;
        }
        for lan in c.lans.iter().flatten() {
            let pool_net = ipnet::IpNet::V4(cfg.pool);
            if lan.contains(&pool_net) || pool_net.contains(lan) {
                return Err(bad(
                    id,
                    format!(
                        "lans: {lan} overlaps the pool {}: a LAN behind a client must lie outside the tunnel addresses",
                        cfg.pool
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The scripts exist, are files and are executable.
fn scripts(up: Option<&Path>, down: Option<&Path>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for (flag, p) in [("up", up), ("down", down)] {
        let Some(p) = p else { continue };
        let m = std::fs::metadata(p)
            .map_err(|e| format!("-{flag} script {}: {e}: check the path", p.display()))?;
        if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
            return Err(format!(
                "-{flag} script {} is not an executable file: chmod +x {}",
                p.display(),
                p.display()
            ));
        }
    }
    Ok(())
}
