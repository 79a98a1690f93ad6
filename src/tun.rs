//! TUN devices: created through the `tun` crate (a non-persistent device lives exactly as long
//! as its file descriptor), then MTU and link state set over netlink.

use std::sync::Arc;

use tun::AbstractDevice;

use crate::netlink::{Netlink, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error(
        "dtun needs CAP_NET_ADMIN to create TUN device {0}: run as root or setcap cap_net_admin+ep"
    )]
    Permission(String),
    #[error("/dev/net/tun is missing: load the tun module (modprobe tun)")]
    NoTunDevice,
    #[error("failed to create TUN device {name}: {why}")]
    Create { name: String, why: String },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// A TUN device that is up.
pub struct Tun {
    pub dev: Arc<tun::AsyncDevice>,
    pub name: String,
    pub index: u32,
    /// The MTU we set; it follows the session's cipher suite unless `-mtu` fixes it.
    pub mtu: u32,
}

impl Tun {
    /// Sets a new MTU if it differs (a reconnect negotiated another suite or address family).
    pub async fn follow_mtu(&mut self, nl: &Netlink, mtu: u32) -> Result<(), TunError> {
        if mtu != self.mtu {
            tracing::info!("{}: MTU {} -> {mtu}", self.name, self.mtu);
            nl.set_link_up(self.index, mtu).await?;
            self.mtu = mtu;
        }
        Ok(())
    }
}

/// Creates a device from `pattern` (e.g. `dtun%d`), sets its MTU and brings it up.
pub async fn create(nl: &Netlink, pattern: &str, mtu: u32) -> Result<Tun, TunError> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(TunError::NoTunDevice);
    }
    let mut cfg = tun::Configuration::default();
    cfg.tun_name(pattern);
    let dev = tun::create_as_async(&cfg).map_err(|e| {
        let why = e.to_string();
        if why.contains("ermission") || why.contains("not permitted") {
            TunError::Permission(pattern.to_string())
        } else {
            TunError::Create {
                name: pattern.to_string(),
                why,
            }
        }
    })?;
    let name = dev.tun_name().map_err(|e| TunError::Create {
        name: pattern.to_string(),
        why: e.to_string(),
    })?;
    let index = nl.link_index(&name).await?;
    nl.set_link_up(index, mtu).await?;
    Ok(Tun {
        dev: Arc::new(dev),
        name,
        index,
        mtu,
    })
}
