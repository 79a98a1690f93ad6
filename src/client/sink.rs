//! Where a live session's packets go and how their TCP MSS follows the path: the TUN sink
//! (coalesced batches, MSS clamp) and the path-MTU-driven clamp, shared by the setup's loop
//! (`wire`) and the forwarding loop (`forward`).

use tokio::net::UdpSocket;

use dtun_linux::tun::TunWriter;

use super::{LOG_MSS_CLAMPED, MIN_PATH_MTU};
use crate::pump;

/// Where a session's packets go: the TUN, in coalesced batches.
pub(super) struct Sink<'a> {
    pub(super) dev: &'a tun_rs::AsyncDevice,
    pub(super) writer: TunWriter,
    /// MSS clamps (IPv4, IPv6) for SYNs from the server's side, read from the session's
    /// [`PathMss`] once per receive batch.
    pub(super) mss: (u16, u16),
}

/// The session's MSS clamp, following the path MTU: the smaller of what the TUN MTU allows and
/// what fits the path MTU the kernel knows for the connected socket (lowered by ICMP
/// "fragmentation needed" after a too-big datagram with don't-fragment). Clamping on the client
/// covers both directions: both the SYN and the SYN-ACK of a connection pass it.
pub(super) struct PathMss {
    pub(super) clamp: pump::MssClamp,
    /// The clamps from the TUN MTU: the path never raises the clamp above them.
    pub(super) tun: (u16, u16),
    /// Outer IP and UDP headers plus the record overhead of the session's suite.
    pub(super) overhead: usize,
    /// The path MTU last read, 0 before the first reading.
    pub(super) last: u32,
}

impl PathMss {
    pub(super) fn new(tun_mtu: u32, overhead: usize) -> PathMss {
        PathMss {
            clamp: pump::MssClamp::new(tun_mtu),
            tun: pump::mss_clamps(tun_mtu),
            overhead,
            last: 0,
        }
    }

    /// The clamps for a path MTU of `path_mtu`.
    pub(super) fn for_path(&self, path_mtu: u32) -> (u16, u16) {
        let path = dtun_proto::mss::mss_for_path(path_mtu, self.overhead);
        (self.tun.0.min(path.0), self.tun.1.min(path.1))
    }

    /// Re-reads the path MTU of `sock` and updates the clamp, logging when it changes.
    pub(super) fn refresh(&mut self, sock: &UdpSocket) {
        let path_mtu = match dtun_linux::sys::path_mtu(&socket2::SockRef::from(sock)) {
            Ok(m) if m >= MIN_PATH_MTU => m,
            Ok(_) => return,
            Err(e) => {
                if self.last == 0 {
                    tracing::debug!("path MTU unknown: {e}");
                    self.last = 1;
                }
                return;
            }
        };
        if path_mtu == self.last {
            return;
        }
        self.last = path_mtu;
        let mss = self.for_path(path_mtu);
        if mss != self.clamp.get() {
            self.clamp.set(mss);
            tracing::info!(
                "path MTU {path_mtu}: {LOG_MSS_CLAMPED} {} (IPv6 {})",
                mss.0,
                mss.1
            );
        }
    }
}

impl Sink<'_> {
    pub(super) async fn push(&mut self, packet: &mut [u8]) {
        dtun_proto::mss::clamp(packet, self.mss.0, self.mss.1);
        if self.writer.push(packet) {
            self.flush().await;
        }
    }

    pub(super) async fn flush(&mut self) {
        if let Err(e) = self.writer.flush(self.dev).await {
            tracing::debug!("writing to TUN failed: {e}");
        }
    }
}
