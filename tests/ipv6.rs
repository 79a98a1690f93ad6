//! IPv6 inside the tunnel, end to end: the real binary between network namespaces.
//! A dtun server gives each dtun client an IPv6 pair from `-pool6` (Addr6 control message);
//! original peers (`-compat` stands in) get nothing of it and carry IPv4 as before. Routing,
//! forwarding and NAT66 are in `tests/ipv6_routing.rs`.
//!
//! Run one test: `cargo test --test ipv6 ping6_iperf6 -- --nocapture`.

mod common;

use std::time::Duration;

use common::ipv6::*;
use common::{
    Netns, Topo, UP, env_dump, lines_with, only_tun, path_str, start_client, start_server,
    wait_for, wait_p2p,
};

/// iperf3 TCP over IPv6 from `client_ns` to `server_addr` (a server started in `server_ns`),
/// forward and reverse, 3 s each; returns the receiver's Mbit/s of each.
fn iperf6(server_ns: &Netns, client_ns: &Netns, server_addr: &str) -> (f64, f64) {
    let mut srv = server_ns.spawn("iperf3", &["-s", "-B", server_addr], &[]);
    let mut rates = Vec::new();
    for reverse in [false, true] {
        let mut args = vec!["-6", "-c", server_addr, "-t", "3", "-f", "m"];
        if reverse {
            args.push("-R");
        }
        let mut out = None;
        wait_for(Duration::from_secs(20), "iperf3 -6 run", || {
            let o = client_ns.run("iperf3", &args);
            let ok = o.status.success();
            out = Some(o);
            ok
        });
        let text = String::from_utf8_lossy(&out.unwrap().stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.trim_end().ends_with("receiver"))
            .unwrap_or_else(|| panic!("no receiver line in iperf3 output:\n{text}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == "Mbits/sec")
            .expect("Mbits/sec");
        rates.push(words[at - 1].parse::<f64>().expect("rate"));
    }
    srv.stop(Duration::from_secs(2));
    (rates[0], rates[1])
}

/// A dtun client of a dtun server gets an IPv6 pair from the default `-pool6`, both TUNs
/// carry it, ping6 and iperf3 -6 TCP cross both ways, MSS clamping keeps IPv6 TCP working, and
/// both sides' scripts see LOCAL_IP6 and PEER_IP6.
#[test]
fn ping6_iperf6_and_script_env() {
    common::need_root!();
    let topo = Topo::pair("v6a");
    let (s_up, s_env) = env_dump(&topo.dir, "server-up");
    let (c_up, c_env) = env_dump(&topo.dir, "client-up");
    let mut server = start_server(
        &topo.server,
        443,
        &["-key", KEY, "-v", "-up", path_str(&s_up)],
    );
    let mut c = client(&topo, &["-up", path_str(&c_up)]);
    c.wait_log(LOG_IPV6_UP, UP);
    server.wait_log(SERVER_IPV6, UP);
    let cdev = only_tun(topo.client());
    let sdev = only_tun(&topo.server);
    let (c_local, c_peer) = wait_p2p6(topo.client(), &cdev);
    assert_eq!(wait_p2p6(&topo.server, &sdev), (c_peer, c_local));
    assert!(in_prefix(c_local, DEFAULT_POOL6) && in_prefix(c_peer, DEFAULT_POOL6));
    assert!(
        topo.client().ping_ok(&c_peer.to_string(), 3),
        "ping6 client -> server"
    );
    assert!(
        topo.server.ping_ok(&c_local.to_string(), 3),
        "ping6 server -> client"
    );
    // IPv4 still crosses.
    let (_, v4_peer) = wait_p2p(topo.client(), &cdev);
    assert!(topo.client().ping_ok(&v4_peer.to_string(), 2));

    let (fwd, rev) = iperf6(&topo.server, topo.client(), &c_peer.to_string());
    eprintln!(
        "iperf3 -6 TCP through the tunnel: client->server {fwd} Mbit/s, reverse {rev} Mbit/s"
    );
    assert!(
        fwd > 1.0 && rev > 1.0,
        "IPv6 TCP barely moves: {fwd} / {rev}"
    );

    let cenv = read_env(&c_env);
    assert_eq!(
        cenv.get("LOCAL_IP6"),
        Some(&c_local.to_string()),
        "{cenv:?}"
    );
    assert_eq!(cenv.get("PEER_IP6"), Some(&c_peer.to_string()), "{cenv:?}");
    let senv = read_env(&s_env);
    assert_eq!(senv.get("LOCAL_IP6"), Some(&c_peer.to_string()), "{senv:?}");
    assert_eq!(senv.get("PEER_IP6"), Some(&c_local.to_string()), "{senv:?}");
    c.stop(Duration::from_secs(5));
    let log = c.log();
    assert!(!log.contains("unexpected_type"), "{log}");
    // Nothing the client's kernel sends on its own (MLD, router solicitations) nor the
    // traffic above counts as a forged source.
    server.stop(Duration::from_secs(5));
    assert!(!server.log().contains("forged_source"), "{}", server.log());
}

/// An IPv6 packet whose inner source is not the client's IPv6 tunnel address (nor an accepted
/// LAN) is dropped and counted by the server; the tunnel goes on.
#[test]
fn forged_ipv6_source_is_dropped_and_counted() {
    common::need_root!();
    let topo = Topo::pair("v6f");
    let mut server = start_server(&topo.server, 443, &["-key", KEY, "-v"]);
    let mut c = client(&topo, &[]);
    c.wait_log(LOG_IPV6_UP, UP);
    let dev = only_tun(topo.client());
    let (_, peer) = wait_p2p6(topo.client(), &dev);
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    topo.client()
        .ip(&["-6", "addr", "add", "fd99::5/128", "dev", &dev, "nodad"]);
    assert!(
        !topo.client().ping_from_ok("fd99::5", &peer.to_string()),
        "forged-source ping6 got through"
    );
    server.wait_log("drop reason=forged_source", UP);
    assert!(
        topo.client().ping_ok(&peer.to_string(), 2),
        "tunnel still works"
    );
    server.stop(Duration::from_secs(5));
    assert!(
        lines_with(&server.log(), &["forged_source="]) >= 1,
        "the drop is counted in the session summary:\n{}",
        server.log()
    );
}

/// The original/new pairings carry IPv4 only: a dtun server with a `-compat` client sends it
/// no control record and the client's TUN gets no IPv6 address; a `-compat` server gives a
/// dtun client none either. Scripts then see no LOCAL_IP6 / PEER_IP6 at all.
#[test]
fn compat_pairings_carry_ipv4_only() {
    common::need_root!();
    // dtun server, -compat client.
    let topo = Topo::pair("v6c");
    let (s_up, s_env) = env_dump(&topo.dir, "server-up");
    let mut server = start_server(
        &topo.server,
        443,
        &["-key", KEY, "-v", "-up", path_str(&s_up)],
    );
    let (c_up, c_env) = env_dump(&topo.dir, "compat-up");
    let mut c = client(&topo, &["-compat", "-v", "-up", path_str(&c_up)]);
    let dev = only_tun(topo.client());
    let (_, peer) = wait_p2p(topo.client(), &dev);
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    assert_eq!(global6(topo.client(), &dev), "", "IPv6 on a -compat client");
    // Nor on the server's side: an original peer never says Hello, so its device gets no
    // -pool6 pair (an address routed into a TUN whose peer drops it). Its up script has run
    // by now (it starts at the Hello or, without one, HELLO_GRACE after the device).
    let sdev = only_tun(&topo.server);
    assert_eq!(
        global6(&topo.server, &sdev),
        "",
        "the server gave a -compat client's device an IPv6 pair"
    );
    wait_for(UP, "the server's up script", || s_env.exists());
    let senv = read_env(&s_env);
    assert!(
        senv.contains_key("PEER_IP") && !senv.contains_key("LOCAL_IP6"),
        "{senv:?}"
    );
    let env = read_env(&c_env);
    assert!(
        !env.contains_key("LOCAL_IP6") && !env.contains_key("PEER_IP6"),
        "{env:?}"
    );
    c.stop(Duration::from_secs(5));
    let log = c.log();
    assert!(
        !log.contains("not_ip"),
        "a control record reached the -compat client:\n{log}"
    );
    assert_eq!(lines_with(&server.log(), &[SERVER_IPV6]), 0);
    server.stop(Duration::from_secs(5));

    // -compat server, dtun client.
    let mut server = start_server(&topo.server, 443, &["-key", KEY, "-compat", "-v"]);
    let (c_up, c_env) = env_dump(&topo.dir, "dtun-up");
    let mut c = client(&topo, &["-up", path_str(&c_up)]);
    let dev = only_tun(topo.client());
    let (_, peer) = wait_p2p(topo.client(), &dev);
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    assert_eq!(
        global6(topo.client(), &dev),
        "",
        "IPv6 from a -compat server"
    );
    let sdev = only_tun(&topo.server);
    assert_eq!(global6(&topo.server, &sdev), "", "IPv6 on a -compat server");
    let env = read_env(&c_env);
    assert!(!env.contains_key("LOCAL_IP6"), "{env:?}");
    c.stop(Duration::from_secs(5));
    assert_eq!(lines_with(&c.log(), &[LOG_IPV6_UP]), 0);
    server.stop(Duration::from_secs(5));
    assert!(!server.log().contains("not_ip"), "{}", server.log());
}

/// The IPv6 pair is the id's: the same after a reconnect to a restarted server; `addr6=` fixes
/// it in a `-pool6` of the operator's; `-pool6 off` gives none.
#[test]
fn reconnect_keeps_the_pair_and_addr6_fixes_it() {
    common::need_root!();
    let topo = Topo::pair("v6r");
    let mut server = start_server(&topo.server, 443, &["-key", KEY]);
    let mut c = client(&topo, &["-keepalive", "1s"]);
    c.wait_log(LOG_IPV6_UP, UP);
    let dev = only_tun(topo.client());
    let first = wait_p2p6(topo.client(), &dev);
    server.stop(Duration::from_secs(5));
    let mut server = start_server(&topo.server, 443, &["-key", KEY]);
    server.wait_log(SERVER_IPV6, Duration::from_secs(40));
    let sdev = only_tun(&topo.server);
    let (s_local, s_peer) = wait_p2p6(&topo.server, &sdev);
    assert_eq!(
        (s_peer, s_local),
        first,
        "the restarted server gave another pair"
    );
    assert_eq!(only_tun(topo.client()), dev, "the client kept its TUN");
    assert_eq!(p2p6(topo.client(), &dev), Some(first));
    wait_for(UP, "ping6 after the reconnect", || {
        topo.client().ping_ok(&first.1.to_string(), 1)
    });
    c.stop(Duration::from_secs(5));
    server.stop(Duration::from_secs(5));

    // A fixed address in the operator's prefix.
    let creds = topo.dir.file(
        "clients",
        format!("six key={KEY} addr6=fd00:5::a\n").as_bytes(),
    );
    let mut server = start_server(
        &topo.server,
        443,
        &["-clients", path_str(&creds), "-pool6", "fd00:5::/64"],
    );
    let mut c = client(&topo, &[]);
    c.wait_log(LOG_IPV6_UP, UP);
    let dev = only_tun(topo.client());
    assert_eq!(
        wait_p2p6(topo.client(), &dev),
        ("fd00:5::a".parse().unwrap(), "fd00:5::9".parse().unwrap())
    );
    c.stop(Duration::from_secs(5));
    server.stop(Duration::from_secs(5));

    // -pool6 off.
    let mut server = start_server(&topo.server, 443, &["-key", KEY, "-pool6", "off"]);
    let mut c = client(&topo, &[]);
    let dev = only_tun(topo.client());
    let (_, peer) = wait_p2p(topo.client(), &dev);
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    assert_eq!(global6(topo.client(), &dev), "");
    c.stop(Duration::from_secs(5));
    assert_eq!(lines_with(&c.log(), &[LOG_IPV6_UP]), 0);
    server.stop(Duration::from_secs(5));
}

/// A client reaching the server over an IPv6 underlay (server on `[::]`, the default) carries
/// both families inside.
#[test]
fn ipv6_underlay_carries_both_families() {
    common::need_root!();
    let topo = Topo::pair("v6u");
    ipv6_underlay(&topo);
    let _server = start_server(&topo.server, 443, &["-key", KEY]);
    let mut c = start_client(
        topo.client(),
        &["-host", "fd31:250::1", "-key", KEY, "-id", "six"],
    );
    c.wait_log(LOG_IPV6_UP, UP);
    assert!(c.log().contains("server [fd31:250::1]:443"), "{}", c.log());
    let dev = only_tun(topo.client());
    let (_, peer4) = wait_p2p(topo.client(), &dev);
    let (_, peer6) = wait_p2p6(topo.client(), &dev);
    assert!(topo.client().ping_ok(&peer4.to_string(), 2), "IPv4 inside");
    assert!(topo.client().ping_ok(&peer6.to_string(), 2), "IPv6 inside");
    // The default MTU over an IPv6 underlay (1415 with GCM, 1406 on a client that sends
    // connection ID records) still allows IPv6 inside.
    let mtu = topo.client().ip(&["-o", "link", "show", "dev", &dev]);
    assert!(mtu.contains("mtu 1406"), "{mtu}");
}

/// `-peernet` with CIDRs of both families: the peernet message carries the IPv4 one, a Lans
/// control message the rest; the server routes both through the client's TUN and accepts both
/// as inner sources (a ping6 from the server to an address in the client's IPv6 LAN is
/// answered from it).
#[test]
fn several_peernets_of_both_families_are_routed() {
    common::need_root!();
    let topo = Topo::pair("v6L");
    topo.client()
        .ip(&["-6", "addr", "add", "fd77::1/64", "dev", "lo", "nodad"]);
    topo.client()
        .ip(&["addr", "add", "192.168.77.1/24", "dev", "lo"]);
    let mut server = start_server(&topo.server, 443, &["-key", KEY, "-v"]);
    let mut c = client(&topo, &["-peernet", "fd77::/64,192.168.77.0/24"]);
    c.wait_log(LOG_IPV6_UP, UP);
    let sdev = only_tun(&topo.server);
    wait_for(UP, "both LAN routes on the server", || {
        topo.server.routes().contains("192.168.77.0/24 via")
            && topo
                .server
                .routes6()
                .contains(&format!("fd77::/64 dev {sdev}"))
    });
    assert!(topo.server.ping_ok("192.168.77.1", 2), "IPv4 LAN");
    assert!(topo.server.ping_ok("fd77::1", 2), "IPv6 LAN");
    c.stop(Duration::from_secs(5));
    server.stop(Duration::from_secs(5));
    assert!(!server.log().contains("forged_source"), "{}", server.log());
}

/// IPv6 needs an MTU of 1280: below it IPv6 inside is off with a warning, on the server's side
/// (no pair, no Addr6) and on the client's (the Addr6 is not applied), and IPv4 goes on.
#[test]
fn below_1280_ipv6_is_off_with_a_warning() {
    common::need_root!();
    let topo = Topo::pair("v6m");
    let mut server = start_server(&topo.server, 443, &["-key", KEY, "-mtu", "1200"]);
    let mut c = client(&topo, &[]);
    server.wait_log("below IPv6's minimum of 1280", UP);
    let dev = only_tun(topo.client());
    let (_, peer) = wait_p2p(topo.client(), &dev);
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    assert_eq!(global6(topo.client(), &dev), "");
    assert_eq!(global6(&topo.server, &only_tun(&topo.server)), "");
    c.stop(Duration::from_secs(5));
    assert_eq!(lines_with(&c.log(), &[LOG_IPV6_UP]), 0);
    server.stop(Duration::from_secs(5));

    let _server = start_server(&topo.server, 443, &["-key", KEY]);
    let mut c = client(&topo, &["-mtu", "1200"]);
    c.wait_log("below IPv6's minimum of 1280", UP);
    let dev = only_tun(topo.client());
    let (_, peer) = wait_p2p(topo.client(), &dev);
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    assert_eq!(global6(topo.client(), &dev), "");
    assert_eq!(lines_with(&c.log(), &[LOG_IPV6_UP]), 0);
}
