//! IPv6 inside the tunnel, routing and forwarding: `-route all` through the tunnel,
//! NAT66 and IPv6 forwarding on the server, client ↔ client over IPv6, a full tunnel over an
//! IPv6 underlay. The real binary between network namespaces; helpers in `common/ipv6.rs`.
//!
//! Run one test: `cargo test --test ipv6_routing nat66 -- --nocapture`.

mod common;

use std::time::Duration;

use common::ipv6::*;
use common::{Topo, UP, lines_with, only_tun, start_client, start_server, wait_for, wait_p2p};

/// `-route all` with IPv6 inside sends IPv6 through the tunnel (::/1 and 8000::/1 on the TUN
/// instead of the unreachable block): a ping6 from a client with no IPv6 of its own reaches a
/// host behind the server (which routes back to the pool here; no NAT66 yet).
#[test]
fn route_all_sends_ipv6_through_the_tunnel() {
    common::need_root!();
    let (topo, inet) = with_inet("v6R");
    inet.ip(&["-6", "route", "add", "default", "via", "2001:db8:113::1"]);
    let _server = start_server(&topo.server, 443, &["-key", KEY]);
    let mut c = client(&topo, &["-route", "all"]);
    c.wait_log(dtun_linux::routes::LOG_IPV6_ROUTED, UP);
    let dev = only_tun(topo.client());
    let table = topo.client().ip(&["-6", "route", "show", "table", "25716"]);
    assert!(
        table.contains(&format!("::/1 dev {dev}"))
            && table.contains(&format!("8000::/1 dev {dev}")),
        "{table}"
    );
    assert!(!table.contains("unreachable"), "{table}");
    // The inet host's neighbour discovery of the server's new wan address may take a moment.
    wait_for(Duration::from_secs(10), "ping6 through the tunnel", || {
        topo.client().ping_ok(INET6, 1)
    });
    c.stop(Duration::from_secs(10));
    let table = topo.client().ip(&["-6", "route", "show", "table", "all"]);
    assert!(!table.contains("proto 116"), "left behind:\n{table}");
}

/// `-nat` with IPv6 inside: NAT66 to the server's address (the inet host has no route back to
/// the pool, so only a masqueraded ping6 is answered), IPv6 forwarding on while dtun runs but
/// opening nothing else (the inet host cannot reach a client's tunnel address through the
/// server), `accept_ra` 2 meanwhile on the interfaces that take router advertisements, and all
/// of it back as it was on exit, also after a `kill -9` and a restart.
#[test]
fn nat66_forwarding_and_accept_ra_restored_even_after_kill_9() {
    common::need_root!();
    let (topo, inet) = with_inet("v6N");
    // A host that forwards IPv4 (so the table's IPv4 catch-all drop is not there) but not
    // IPv6: only the IPv6 guard keeps the way in shut.
    let out = topo.server.sh(
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=0 net.ipv6.conf.wan.accept_ra=1",
    );
    assert!(out.status.success(), "{out:?}");
    let server_args = ["-key", KEY, "-nat", "-instance", "v6nat"];
    let mut server = start_server(&topo.server, 443, &server_args);
    server.wait_log("IPv6 forwarding on (was 0)", UP);
    assert_eq!(sysctl(&topo.server, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(sysctl(&topo.server, "net.ipv6.conf.wan.accept_ra"), "2");
    let mut c = client(&topo, &["-route", "all"]);
    c.wait_log(dtun_linux::routes::LOG_IPV6_ROUTED, UP);
    wait_for(
        Duration::from_secs(10),
        "ping6 masqueraded to the inet host",
        || topo.client().ping_ok(INET6, 1),
    );
    // The way in stays shut: the inet host, routing the pool via the server, gets nowhere.
    let dev = only_tun(topo.client());
    let (c_local, _) = wait_p2p6(topo.client(), &dev);
    inet.ip(&[
        "-6",
        "route",
        "add",
        "fd64:7475:6e00::/64",
        "via",
        "2001:db8:113::1",
    ]);
    assert!(
        !inet.ping_ok(&c_local.to_string(), 2),
        "forwarding opened the way in to {c_local}"
    );
    // kill -9: the switches stay as dtun left them; the next start and exit put them back.
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(5));
    assert_eq!(sysctl(&topo.server, "net.ipv6.conf.all.forwarding"), "1");
    let mut server = start_server(&topo.server, 443, &server_args);
    server.wait_log("IPv6 forwarding on (was 0)", UP);
    server.stop(Duration::from_secs(10));
    assert_eq!(sysctl(&topo.server, "net.ipv6.conf.all.forwarding"), "0");
    assert_eq!(sysctl(&topo.server, "net.ipv6.conf.wan.accept_ra"), "1");
    c.stop(Duration::from_secs(10));
}

/// A full tunnel over an IPv6 underlay whose server address is reached through the default
/// route (so `::/1` covers it): with IPv6 inside, `-route all` sends IPv6 into the tunnel, yet
/// dtun's own datagrams keep their old path, and both families cross.
#[test]
fn full_tunnel_over_an_ipv6_underlay_keeps_its_own_path() {
    common::need_root!();
    let topo = Topo::pair("v6U");
    ipv6_underlay(&topo);
    topo.server
        .ip(&["-6", "addr", "add", "fd31:999::1/128", "dev", "lo"]);
    topo.client()
        .ip(&["-6", "route", "add", "default", "via", "fd31:250::1"]);
    // Bound to that address, so replies come from it (as full_tunnel.rs does for IPv4).
    let _server = start_server(&topo.server, 443, &["-key", KEY, "-listen", "fd31:999::1"]);
    let mut c = start_client(
        topo.client(),
        &[
            "-host",
            "fd31:999::1",
            "-key",
            KEY,
            "-id",
            "six",
            "-route",
            "all",
        ],
    );
    c.wait_log(dtun_linux::routes::LOG_IPV6_ROUTED, UP);
    let dev = only_tun(topo.client());
    let (_, peer4) = wait_p2p(topo.client(), &dev);
    let (_, peer6) = wait_p2p6(topo.client(), &dev);
    // Several round trips, seconds apart: a loop of the outer datagrams into the TUN would
    // stop the tunnel at once.
    for _ in 0..3 {
        assert!(topo.client().ping_ok(&peer6.to_string(), 2), "IPv6 inside");
        assert!(topo.client().ping_ok(&peer4.to_string(), 2), "IPv4 inside");
    }
    let route = topo
        .client()
        .ip(&["-6", "route", "get", "fd31:999::1", "mark", "0x6474"]);
    assert!(route.contains("dev eth0"), "{route}");
    c.stop(Duration::from_secs(10));
    assert_eq!(lines_with(&c.log(), &["reconnecting"]), 0, "{}", c.log());
}

/// `-client-to-client on` with IPv6 inside: two clients reach each other's IPv6 tunnel
/// addresses through the server (IPv6 forwarding on, the guard letting client ↔ client by);
/// with `off` they do not.
#[test]
fn client_to_client_over_ipv6() {
    common::need_root!();
    let topo = Topo::star("v6cc", 2);
    for (setting, works) in [("on", true), ("off", false)] {
        let mut server = start_server(
            &topo.server,
            443,
            &[
                "-key",
                KEY,
                "-client-to-client",
                setting,
                "-instance",
                "v6cc",
            ],
        );
        let mut clients = Vec::new();
        let mut addrs = Vec::new();
        for (i, ns) in topo.clients.iter().enumerate() {
            let id = format!("c{i}");
            let mut c = start_client(ns, &["-host", &Topo::server_ip(i), "-key", KEY, "-id", &id]);
            c.wait_log(LOG_IPV6_UP, UP);
            let dev = only_tun(ns);
            let (local, _) = wait_p2p6(ns, &dev);
            // The pool through the tunnel (dtun routes only the server's address).
            ns.ip(&["-6", "route", "add", DEFAULT_POOL6, "dev", &dev]);
            clients.push(c);
            addrs.push(local);
        }
        let reached = topo.clients[0].ping_ok(&addrs[1].to_string(), 2);
        assert_eq!(reached, works, "-client-to-client {setting}");
        for mut c in clients {
            c.stop(Duration::from_secs(5));
        }
        server.stop(Duration::from_secs(10));
    }
}
