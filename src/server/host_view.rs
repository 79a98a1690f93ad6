//! What the server's LAN check (`device::set_lans`, `dtun_proto::authz`) needs to know of this host:
//! its networks, its own addresses and its routes' gateways. Reading them takes full netlink
//! dumps of every address and route (about 95 ms with 10 000 routes, debug build), and every
//! peernet or Lans message of every session asks (up to 8 a second each), so the manager keeps
//! the answer for [`HOST_VIEW_TTL`]: however many messages come, it dumps at most once in that
//! time. A route the host's operator adds is seen at most that much later.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use dtun_linux::netlink::{Netlink, NetlinkError};

/// How long one reading of the host's networks, addresses and gateways is used.
pub const HOST_VIEW_TTL: Duration = Duration::from_secs(1);

/// The host as the LAN check sees it, without the devices in `exclude` (ours).
pub(super) struct HostView {
    at: Instant,
    exclude: Vec<u32>,
    /// Networks of addresses and routes on other interfaces (`networks_elsewhere`).
    pub(super) host: Vec<IpNet>,
    /// Its own addresses, and its routes' gateways (`own_addresses_and_gateways`).
    pub(super) own: Vec<IpAddr>,
    pub(super) gateways: Vec<IpAddr>,
}

/// The last [`HostView`], if any.
#[derive(Default)]
pub(super) struct HostViewCache {
    last: Option<HostView>,
    /// Readings taken (for the test: how many dumps the checks cost).
    pub(super) readings: u64,
}

impl HostViewCache {
    /// The host's view without the devices `exclude`: the last one if it is younger than
    /// [`HOST_VIEW_TTL`] and was taken for the same devices, else a new reading.
    pub(super) async fn get(
        &mut self,
        nl: &Netlink,
        exclude: &[u32],
        now: Instant,
    ) -> Result<&HostView, NetlinkError> {
        let view = match self.last.take() {
            Some(v)
                if now.saturating_duration_since(v.at) < HOST_VIEW_TTL && v.exclude == exclude =>
            {
                v
            }
            _ => {
                let host = nl.networks_elsewhere(exclude).await?;
                let (own, gateways) = nl.own_addresses_and_gateways(exclude).await?;
                self.readings += 1;
                HostView {
                    at: now,
                    exclude: exclude.to_vec(),
                    host,
                    own,
                    gateways,
                }
            }
        };
        Ok(&*self.last.insert(view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sched::{CloneFlags, unshare};

    /// With 10 000 routes, eight LAN checks in a row (one session's Lans messages in a
    /// second) cost one reading, not eight; a reading older than the TTL is taken again and
    /// sees a route added meanwhile. Prints the times (issue 19: "two full netlink dumps per
    /// Lans message").
    #[test]
    fn eight_checks_in_a_second_cost_one_reading() {
        dtun_testgate::need_root!();
        std::thread::spawn(|| {
            // A network namespace of the thread's own: the host's routes are never touched.
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) needs root");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let nl = Netlink::new().unwrap();
                let tun = dtun_linux::tun::create(&nl, "dthv%d", 1400).await.unwrap();
                nl.set_link_up(tun.index, 1400).await.unwrap();
                for i in 0..10_000u32 {
                    let net: IpNet = format!("100.{}.{}.0/24", 64 + i / 256, i % 256)
                        .parse()
                        .unwrap();
                    nl.add_route(net, None, tun.index).await.unwrap();
                }
                let mut cache = HostViewCache::default();
                let t0 = Instant::now();
                let first = cache.get(&nl, &[], t0).await.unwrap().host.len();
                let one = t0.elapsed();
                assert!(first >= 10_000, "{first}");
                let t = Instant::now();
                for _ in 0..7 {
                    let n = cache.get(&nl, &[], Instant::now()).await.unwrap().host.len();
                    assert_eq!(n, first);
                }
                let seven = t.elapsed();
                eprintln!(
                    "10 000 routes: first check {one:?} (two dumps), the next 7 within the TTL {seven:?} in all (were about 7 x {one:?})"
                );
                assert_eq!(cache.readings, 1);
                assert!(seven < one, "{seven:?} for 7 cached checks, {one:?} for one reading");
                // Another set of our devices, or an old reading: read again.
                nl.add_route("100.200.0.0/24".parse().unwrap(), None, tun.index)
                    .await
                    .unwrap();
                let later = t0 + HOST_VIEW_TTL;
                let n = cache.get(&nl, &[], later).await.unwrap().host.len();
                assert_eq!((n, cache.readings), (first + 1, 2));
                let _ = cache.get(&nl, &[tun.index], later).await.unwrap();
                assert_eq!(cache.readings, 3);
            });
        })
        .join()
        .unwrap();
    }
}
