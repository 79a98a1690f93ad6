//! Drives `dtun_linux::netlink` against the real kernel, each test inside a network namespace of its
//! own so the host's links, addresses and routes are never touched.
//!
//! ```text
//!   test thread ── unshare(CLONE_NEWNET) ──> fresh netns (only `lo`, down)
//!                                              └── dtnlN  TUN device made by the `tun` crate
//!                                                   10.86.0.1 peer 10.86.0.2/32
//!                                                   10.200.0.0/24 via 10.86.0.2
//!                                                   fd86:1::/64 dev dtnlN
//! ```
//!
//! Only the test's thread enters the namespace; it dies with the thread, taking the TUN device
//! and everything on it along, so a failing test leaves nothing behind. Needs root and
//! /dev/net/tun.

mod common;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};

use dtun_linux::netlink::Netlink;
use futures::TryStreamExt;
use ipnet::IpNet;
use nix::sched::{CloneFlags, unshare};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};

/// Runs `test` on a current-thread runtime in a thread that has its own network namespace.
fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    common::root::assert_gated();
    let thread = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) needs root");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build tokio runtime");
        runtime.block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// A TUN device named `dtnl%d` in the current namespace; it lives as long as the value.
fn tun_device() -> (tun_rs::AsyncDevice, String, u32) {
    let device = tun_rs::DeviceBuilder::new()
        .name("dtnl%d")
        .enable(false)
        .build_async()
        .expect("create TUN device");
    let name = device.name().expect("TUN name");
    let index = device.if_index().expect("TUN index");
    (device, name, index)
}

/// MTU and up flag of a link, read with a netlink connection of the test's own.
async fn mtu_and_up(index: u32) -> (Option<u32>, bool) {
    let (connection, handle, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(connection);
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .unwrap()
        .expect("link message");
    let mtu = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    });
    (mtu, link.header.flags.contains(LinkFlags::Up))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn every_operation_on_a_tun_device() {
    common::need_root!();
    in_netns(|| async {
        let (_device, name, tun_index) = tun_device();
        let nl = Netlink::new().unwrap();

        let index = nl.link_index(&name).await.unwrap();
        assert_eq!(index, tun_index);

        nl.set_link_up(index, 1380).await.unwrap();
        assert_eq!(mtu_and_up(index).await, (Some(1380), true));

        let local = Ipv4Addr::new(10, 86, 0, 1);
        let peer = Ipv4Addr::new(10, 86, 0, 2);
        nl.add_p2p_address(index, local, peer).await.unwrap();
        nl.add_p2p_address(index, local, peer)
            .await
            .expect("adding the same address again is Ok");
        assert_eq!(nl.addresses(index).await.unwrap(), vec![(local, peer)]);

        let v4 = net("10.200.0.0/24");
        let v6 = net("fd86:1::/64");
        nl.add_route(v4, Some(IpAddr::V4(peer)), index)
            .await
            .unwrap();
        nl.add_route(v6, None, index).await.unwrap();
        nl.add_route(v4, Some(IpAddr::V4(peer)), index)
            .await
            .expect("replace is idempotent");
        let routes = nl.routes_on(index).await.unwrap();
        for expected in [v4, v6, net("10.86.0.2/32")] {
            assert!(routes.contains(&expected), "{expected} not in {routes:?}");
        }

        let unreachable = nl
            .add_route(
                net("10.201.0.0/24"),
                Some("192.0.2.1".parse().unwrap()),
                index,
            )
            .await
            .unwrap_err();
        assert_eq!(
            unreachable.to_string(),
            format!(
                "failed to add route 10.201.0.0/24 via 192.0.2.1 on {name}: \
                 Network is unreachable (os error 101)"
            )
        );

        nl.del_route(v4, index).await.unwrap();
        nl.del_route(v6, index).await.unwrap();
        let routes = nl.routes_on(index).await.unwrap();
        assert!(!routes.contains(&v4) && !routes.contains(&v6), "{routes:?}");
        nl.del_route(v4, index).await.expect("already gone is Ok");
        nl.del_route(v6, index).await.expect("already gone is Ok");

        let (local2, peer2) = (Ipv4Addr::new(10, 86, 0, 3), Ipv4Addr::new(10, 86, 0, 4));
        nl.add_p2p_address(index, local2, peer2).await.unwrap();
        assert_eq!(nl.addresses(index).await.unwrap().len(), 2);
        nl.flush_addresses(index).await.unwrap();
        assert_eq!(nl.addresses(index).await.unwrap(), vec![]);
        nl.flush_addresses(index)
            .await
            .expect("flushing nothing is Ok");

        nl.del_link(index).await.unwrap();
        let gone = nl.link_index(&name).await.unwrap_err();
        assert!(gone.is_not_found(), "{gone}");
        assert_eq!(
            gone.to_string(),
            format!("failed to look up link {name}: No such device (os error 19)")
        );
        nl.del_link(index).await.expect("already gone is Ok");
    });
}

#[test]
fn missing_things_are_not_found_or_benign() {
    common::need_root!();
    in_netns(|| async {
        let nl = Netlink::new().unwrap();
        let err = nl.link_index("nosuchdev0").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(!err.is_already_exists());
        nl.del_link(987_654).await.unwrap();
        nl.del_route(net("10.9.0.0/16"), 987_654).await.unwrap();
        let err = nl.set_link_up(987_654, 1400).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert_eq!(
            err.to_string(),
            "failed to set MTU 1400 and bring up ifindex 987654: No such device (os error 19)"
        );
    });
}

#[test]
fn without_cap_net_admin_the_message_says_what_to_do() {
    common::need_root!();
    in_netns(|| async {
        let (_device, name, index) = tun_device();
        // Capabilities are per thread: this drops CAP_NET_ADMIN for the test's thread only,
        // which is where the runtime sends its netlink requests from.
        caps::drop(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_NET_ADMIN,
        )
        .unwrap();
        let nl = Netlink::new().unwrap();
        let err = nl.set_link_up(index, 1400).await.unwrap_err();
        assert!(err.is_permission_denied());
        assert_eq!(err.errno(), Some(nix::libc::EPERM));
        assert_eq!(
            err.to_string(),
            format!(
                "failed to set MTU 1400 and bring up {name}: dtun needs CAP_NET_ADMIN: {}",
                dtun_linux::privilege::GRANT_NET_ADMIN
            )
        );
        let err = nl
            .add_p2p_address(
                index,
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2),
            )
            .await
            .unwrap_err();
        assert!(err.is_permission_denied(), "{err}");
        // Reading needs no privilege.
        assert_eq!(nl.link_index(&name).await.unwrap(), index);
    });
}
