//! `dtun client add NAME`: adds a client to a server's config file in one step, as an operator
//! of wg-quick or openvpn would script it by hand: a `[clients.NAME]` table with a fresh key
//! (a key file beside the config, or none when the server derives keys from
//! `-master-key-file`) and a fixed tunnel address, the running server reloaded, and a client
//! config printed (with a QR code on request) to copy to the client.
//!
//! Safety of the write:
//! - one writer at a time: an exclusive `flock` on the config file, re-taken when another
//!   writer replaced the file meanwhile (the lock must be on the inode the path names);
//! - the new text is checked as a start would check it (`-check`) before it replaces the old,
//!   and replaces it by `rename` from a fresh file in the same directory, with the old
//!   owner, group and mode: a reload (or a start) reading meanwhile sees the old or the new
//!   file, never a half-written one;
//! - the client's id must be a safe file name (`is_file_name`: no `/`, no leading dot), as
//!   the key file is named after it;
//! - the key file is created with `O_EXCL | O_NOFOLLOW`, mode 0640, the config's group (the
//!   service's group reads keys), in `clients/` beside the config (made 0750 if missing);
//!   nothing already there is overwritten or followed.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::file as config_file;

/// What `dtun client add` was asked.
pub struct AddRequest<'a> {
    pub name: &'a str,
    pub config: &'a Path,
    /// The server as clients reach it (`-host` in the printed config); None: a placeholder.
    pub host: Option<&'a str>,
    pub group: Option<&'a str>,
}

/// What was done: the client config to hand over, and what the reload said.
pub struct Added {
    pub client_toml: String,
    pub key_file: Option<PathBuf>,
    pub addr: std::net::Ipv4Addr,
}

/// Adds the client (see the module header). The caller reloads the running server.
pub fn add(req: &AddRequest<'_>) -> Result<Added, String> {
    let name = req.name;
    if !is_file_name(name) || dtun_proto::keys::valid_identity(name.as_bytes()).is_none() {
        return Err(format!(
            "client id {:?}: dtun client add names the key file clients/ID.key after it, so the id must be a safe file name: 1 to 128 letters, digits, '-', '_', '.' or '@', not starting with '.' (a client with another id goes into the config by hand)",
            name.escape_debug()
        ));
    }
    if let Some(g) = req.group
        && !dtun_proto::keys::valid_group(g)
    {
        return Err(format!(
            "group {g:?} must be 1 to 32 letters, digits, '-' or '_'"
        ));
    }
    let (_lock, text) = lock_and_read(req.config)?;
    let loaded = load(req.config)?;
    let cfg = loaded.server_config().map_err(|e| e.to_string())?;
    if loaded.cli.host.is_some() {
        return Err(format!(
            "{} is a client's config (it has host): give the server's -config",
            req.config.display()
        ));
    }
    if cfg.keys.clients.contains_key(name) {
        return Err(format!(
            "client {name} is already in {} (or its clients file): pick another name",
            req.config.display()
        ));
    }
    // The address: the one the pool gives this id, among the fixed ones already handed out.
    let mut pool = dtun_proto::pool::Pool::new(cfg.pool).map_err(|e| e.to_string())?;
    for (id, c) in &cfg.keys.clients {
        if let Some(a) = c.addr {
            pool.assign_fixed(id, a).map_err(|e| e.to_string())?;
        }
    }
    let addr = pool.assign(name).map_err(|e| e.to_string())?.client;
    let dir = req
        .config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let meta = std::fs::metadata(req.config)
        .map_err(|e| format!("cannot read {}: {e}", req.config.display()))?;

    // The key: derived from the master secret, or a new one in a key file.
    let (key, key_file) = match &cfg.keys.master {
        Some(master) => (dtun_proto::keys::derive(master, name.as_bytes()), None),
        None => {
            let key = dtun_proto::keys::genkey().map_err(|e| e.to_string())?;
            let path = write_key_file(dir, name, &key, meta.gid())?;
            (key, Some(path))
        }
    };
    let mut table = format!("\n[clients.\"{name}\"]\n");
    if let Some(p) = &key_file {
        let rel = p.strip_prefix(dir).unwrap_or(p);
        table.push_str(&format!("key_file = {:?}\n", rel.display().to_string()));
    }
    table.push_str(&format!("addr = \"{addr}\"\n"));
    if let Some(g) = req.group {
        table.push_str(&format!("group = \"{g}\"\n"));
    }
    let mut new_text = text.clone();
    if !new_text.is_empty() && !new_text.ends_with('\n') {
        new_text.push('\n');
    }
    new_text.push_str(&table);
    if let Err(e) = replace_checked(req.config, &new_text, &meta) {
        if let Some(p) = &key_file {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    let client_toml = client_toml(name, &key, req.host, &cfg);
    Ok(Added {
        client_toml,
        key_file,
        addr,
    })
}

/// Whether `name` is safe as the stem of a file in `clients/`: ASCII letters, digits, '-', '_',
/// '.' and '@' only (so never a '/', a quote or a control character), 1 to 128 of them, not
/// starting with '.' (no `..`, no hidden file).
fn is_file_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// The config as a start would read it (the instance named, so a temporary file's name does
/// not have to be one).
fn load(config: &Path) -> Result<config_file::Loaded, String> {
    let args: Vec<OsString> = vec![
        "dtun".into(),
        "-config".into(),
        config.as_os_str().into(),
        "-instance".into(),
        "dtun".into(),
    ];
    config_file::load(&args)
}

/// Takes the config file's lock and reads it; retries when another writer replaced the file
/// between our open and our lock.
fn lock_and_read(config: &Path) -> Result<(File, String), String> {
    let err = |e: std::io::Error| format!("cannot read {}: {e}", config.display());
    for _ in 0..100 {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(config)
            .map_err(err)?;
        f.lock().map_err(err)?;
        let now = std::fs::symlink_metadata(config).map_err(err)?;
        let ours = f.metadata().map_err(err)?;
        if now.ino() == ours.ino() && now.dev() == ours.dev() {
            let text = std::fs::read_to_string(config).map_err(err)?;
            return Ok((f, text));
        }
    }
    Err(format!(
        "{} keeps changing under us: is another dtun client add looping?",
        config.display()
    ))
}

/// `DIR/clients/NAME.key`, new (never overwritten), 0640, group `gid`.
fn write_key_file(dir: &Path, name: &str, key: &str, gid: u32) -> Result<PathBuf, String> {
    let keys = dir.join("clients");
    match std::fs::DirBuilder::new().mode(0o750).create(&keys) {
        Ok(()) => {
            let _ = std::os::unix::fs::chown(&keys, Some(0), Some(gid));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", keys.display())),
    }
    let meta = std::fs::symlink_metadata(&keys)
        .map_err(|e| format!("cannot use {}: {e}", keys.display()))?;
    if !meta.is_dir() || meta.mode() & 0o002 != 0 {
        return Err(format!(
            "{} is not a directory only root and its group may write to: fix it (chmod 750)",
            keys.display()
        ));
    }
    let path = keys.join(format!("{name}.key"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} already exists: remove it or pick another name",
                path.display()
            ),
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    let _ = std::os::unix::fs::fchown(&f, Some(0), Some(gid));
    // The mode again: a umask may have taken bits away, never added.
    f.set_permissions(std::fs::Permissions::from_mode(0o640))
        .and_then(|()| f.write_all(format!("{key}\n").as_bytes()))
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Checks `text` as the config (a start's checks) from a fresh file beside it, then renames it
/// over the config with the old owner, group and mode.
fn replace_checked(config: &Path, text: &str, old: &std::fs::Metadata) -> Result<(), String> {
    let file_name = config.file_name().unwrap_or_default().to_string_lossy();
    let tmp = config.with_file_name(format!(".{file_name}.dtun-add.{}", std::process::id()));
    let cleanup = |e: String| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| format!("cannot write beside {}: {e}", config.display()))?;
    let _ = std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()));
    f.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| f.sync_all())
        .map_err(|e| cleanup(format!("cannot write beside {}: {e}", config.display())))?;
    let loaded = load(&tmp).map_err(|e| cleanup(format!("the new config would not load: {e}")))?;
    let cfg = loaded
        .server_config()
        .map_err(|e| cleanup(format!("the new config would not load: {e}")))?;
    crate::ops::check::validate_server(&cfg)
        .map_err(|e| cleanup(format!("the new config would not load: {e}")))?;
    std::fs::rename(&tmp, config)
        .map_err(|e| cleanup(format!("cannot replace {}: {e}", config.display())))?;
    Ok(())
}

/// The client's config file, ready to copy to it.
fn client_toml(
    name: &str,
    key: &str,
    host: Option<&str>,
    cfg: &crate::config::ServerConfig,
) -> String {
    let mut t = format!(
        "# dtun client {name}: save as /etc/dtun/{name}.toml on the client (chmod 640, chown root:dtun),\n# then: systemctl enable --now dtun@{name}\n"
    );
    match host {
        Some(h) => t.push_str(&format!("host = {h:?}\n")),
        None => t.push_str("host = \"SERVER\"   # the server's public name or address\n"),
    }
    let port = cfg.listen.port();
    if port != dtun_proto::consts::DEFAULT_PORT && !host.is_some_and(|h| h.contains(':')) {
        t.push_str(&format!("port = {port}\n"));
    }
    t.push_str(&format!("id = {name:?}\nkey = {key:?}\n"));
    if cfg.firewall.is_some_and(|f| f.nat) {
        t.push_str("route = \"all\"          # everything through the server (it has nat)\n");
    }
    if !cfg.dns.is_empty() {
        t.push_str("accept_dns = true       # the DNS servers the server pushes\n");
    }
    t
}

/// The client config as a QR code drawn with half blocks, for a phone or a camera.
pub fn qr(text: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| format!("no QR code: {e}"))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build())
}
