//! TUN devices through `tun-rs`, with offload: the kernel hands us 64 KB TCP super-packets
//! (which `recv_multiple` splits into MTU-sized packets) and takes coalesced ones back
//! ([`TunWriter`], a GRO batch). A non-persistent device lives exactly as long as its file
//! descriptor; MTU and link state are set over netlink.

use std::sync::Arc;

use tun_rs::{AsyncDevice, DeviceBuilder, GROTable};

use crate::netlink::{Netlink, NetlinkError};

/// Packets gathered before one coalesced write to the TUN.
pub const WRITE_BATCH: usize = 64;
/// Room in front of each packet of a write batch for the virtio-net header (10 bytes); also
/// where a record's plaintext is copied from, so it only has to fit the header.
pub const HEADROOM: usize = 16;
/// Capacity of each write-batch buffer: coalescing appends up to 64 KB to a flow's first packet.
const WRITE_CAPACITY: usize = 2 * HEADROOM + 65536;

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error(
        "dtun needs CAP_NET_ADMIN to create its TUN device {0}: {grant}",
        grant = crate::privilege::GRANT_NET_ADMIN
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
    pub dev: Arc<AsyncDevice>,
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

fn build(pattern: &str, offload: bool) -> std::io::Result<AsyncDevice> {
    DeviceBuilder::new()
        .name(pattern)
        .offload(offload)
        .build_async()
}

/// What a failed device creation means, in words a user can act on.
fn create_error(pattern: &str, e: &std::io::Error) -> TunError {
    let why = e.to_string();
    if e.kind() == std::io::ErrorKind::PermissionDenied || why.contains("not permitted") {
        return TunError::Permission(pattern.to_string());
    }
    // A device of another kind under the name gives EINVAL, a TUN in use EBUSY.
    let taken = !pattern.contains('%')
        && std::path::Path::new("/sys/class/net")
            .join(pattern)
            .exists();
    let why = match e.raw_os_error() {
        Some(libc::EBUSY) | Some(libc::EEXIST) | Some(libc::EINVAL) if taken => {
            "the name is taken by another device: choose another -name (with %d in it the kernel picks a free number: dtun%d)".to_string()
        }
        Some(libc::EINVAL) => format!("{pattern:?} is not a name the kernel takes: use letters, digits, '-', '_' and one %d"),
        _ => why,
    };
    TunError::Create {
        name: pattern.to_string(),
        why,
    }
}

/// Makes a device from `pattern` and drops it at once: a server checks at start, before it
/// says it is listening, that it can make its clients' devices (`/dev/net/tun`, privileges,
/// the name), instead of failing per client.
pub fn probe(pattern: &str) -> Result<(), TunError> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(TunError::NoTunDevice);
    }
    build(pattern, false)
        .map(drop)
        .map_err(|e| create_error(pattern, &e))
}

/// Creates a device from `pattern` (e.g. `dtun%d`), sets its MTU and brings it up. Offload is
/// asked for; a kernel without it gets a plain device (same behaviour, more system calls).
pub async fn create(nl: &Netlink, pattern: &str, mtu: u32) -> Result<Tun, TunError> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(TunError::NoTunDevice);
    }
    let dev = build(pattern, true)
        .or_else(|e| {
            tracing::debug!("TUN offload unavailable ({e}); using a plain device");
            build(pattern, false)
        })
        .map_err(|e| create_error(pattern, &e))?;
    let name = dev.name().map_err(|e| TunError::Create {
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

/// Packets on their way into a TUN, written together so the kernel gets coalesced TCP
/// segments (GRO) through an offload device. Buffers are allocated once and reused.
pub struct TunWriter {
    pkts: Vec<Vec<u8>>,
    len: usize,
    gro: GROTable,
}

impl Default for TunWriter {
    fn default() -> Self {
        TunWriter {
            pkts: (0..WRITE_BATCH)
                .map(|_| Vec::with_capacity(WRITE_CAPACITY))
                .collect(),
            len: 0,
            gro: GROTable::default(),
        }
    }
}

impl TunWriter {
    /// Queues a copy of `packet`; returns true when the batch is full and must be flushed.
    pub fn push(&mut self, packet: &[u8]) -> bool {
        if let Some(v) = self.pkts.get_mut(self.len) {
            v.clear();
            v.resize(HEADROOM, 0);
            v.extend_from_slice(packet);
            self.len += 1;
        }
        self.len >= WRITE_BATCH
    }

    /// Forgets the queued packets without writing them.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Writes the queued packets to `dev`: through an offload device coalesced, each with a
    /// virtio-net header; otherwise one write per packet.
    pub async fn flush(&mut self, dev: &AsyncDevice) -> std::io::Result<()> {
        let n = std::mem::take(&mut self.len);
        if n == 0 {
            return Ok(());
        }
        dev.send_multiple(&mut self.gro, &mut self.pkts[..n], HEADROOM)
            .await
            .map(|_| ())
    }
}

/// A [`TunWriter`] for a reader that feeds several devices (the server's demultiplexer): the
/// batch is written whenever the next packet is for another device, when it is full, and at
/// the end of each receive batch ([`TunBatch::flush`]).
#[derive(Default)]
pub struct TunBatch {
    writer: TunWriter,
    dev: Option<Arc<AsyncDevice>>,
}

impl TunBatch {
    pub async fn push(&mut self, dev: &Arc<AsyncDevice>, packet: &[u8]) {
        if self.dev.as_ref().is_some_and(|d| !Arc::ptr_eq(d, dev)) {
            self.flush().await;
        }
        if self.dev.is_none() {
            self.dev = Some(Arc::clone(dev));
        }
        if self.writer.push(packet) {
            self.flush().await;
        }
    }

    pub async fn flush(&mut self) {
        if let Some(dev) = self.dev.take()
            && let Err(e) = self.writer.flush(&dev).await
        {
            tracing::debug!("writing to TUN failed: {e}");
        }
    }
}
