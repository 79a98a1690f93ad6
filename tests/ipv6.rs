//! IPv6 inside the tunnel (issue 14), end to end: the real binary between network namespaces.
//! A dtun server gives each dtun client an IPv6 pair from `-pool6` (Addr6 control message);
//! original peers (`-compat` stands in) get nothing of it and carry IPv4 as before.
//!
//! Run one test: `cargo test --test ipv6 ping6_iperf6 -- --nocapture`.

mod common;

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

use common::{
    Netns, Proc, Topo, UP, lines_with, only_tun, parse_env, path_str, start_client, start_server,
    wait_for, wait_p2p,
};

const KEY: &str = "ipv6-test-key-0123456789";
const LOG_IPV6_UP: &str = dtun::client::LOG_IPV6_UP;
/// The server's log line when it sends a client its IPv6 pair.
const SERVER_IPV6: &str = "IPv6 inside, local";
const DEFAULT_POOL6: &str = dtun::pool6::DEFAULT_POOL6;

/// The global point-to-point IPv6 address of `dev` as (local, peer), if it has one.
fn p2p6(ns: &Netns, dev: &str) -> Option<(Ipv6Addr, Ipv6Addr)> {
    let out = ns.run(
        "ip",
        &["-o", "-6", "addr", "show", "dev", dev, "scope", "global"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "inet6")?;
    let local = words.get(at + 1)?.split('/').next()?.parse().ok()?;
    if words.get(at + 2) != Some(&"peer") {
        return None;
    }
    let peer = words.get(at + 3)?.split('/').next()?.parse().ok()?;
    Some((local, peer))
}

fn wait_p2p6(ns: &Netns, dev: &str) -> (Ipv6Addr, Ipv6Addr) {
    let mut got = None;
    wait_for(UP, &format!("IPv6 point-to-point address on {dev}"), || {
        got = p2p6(ns, dev);
        got.is_some()
    });
    got.expect("IPv6 pair")
}

/// Global IPv6 addresses of `dev` (none expected where IPv6 is off).
fn global6(ns: &Netns, dev: &str) -> String {
    let out = ns.run(
        "ip",
        &["-o", "-6", "addr", "show", "dev", dev, "scope", "global"],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_prefix(ip: Ipv6Addr, prefix: &str) -> bool {
    prefix.parse::<ipnet::Ipv6Net>().unwrap().contains(&ip)
}

/// A script that dumps its environment to `NAME.env` (server: one line set per device, the
/// last one wins); returns (script, dump file).
fn env_dump(dir: &common::TestDir, name: &str) -> (PathBuf, PathBuf) {
    let out = dir.path().join(format!("{name}.env"));
    let script = dir.script(
        &format!("{name}.sh"),
        &format!(
            "#!/bin/sh\ntr '\\0' '\\n' < /proc/$$/environ > '{0}.tmp' && mv '{0}.tmp' '{0}'\n",
            out.display()
        ),
    );
    (script, out)
}

fn read_env(file: &PathBuf) -> std::collections::BTreeMap<String, String> {
    wait_for(Duration::from_secs(10), "script environment dump", || {
        file.exists()
    });
    parse_env(&std::fs::read_to_string(file).unwrap())
}

/// A dtun client of the pair topology's server; waits for its tunnel.
fn client(topo: &Topo, extra: &[&str]) -> Proc {
    let mut args = vec!["-host", "172.31.250.1", "-key", KEY, "-id", "six"];
    args.extend_from_slice(extra);
    start_client(topo.client(), &args)
}

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
    let topo = Topo::pair("v6f");
    let mut server = start_server(&topo.server, 443, &["-key", KEY, "-v"]);
    let mut c = client(&topo, &[]);
    c.wait_log(LOG_IPV6_UP, UP);
    let dev = only_tun(topo.client());
    let (_, peer) = wait_p2p6(topo.client(), &dev);
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    topo.client()
        .ip(&["-6", "addr", "add", "fd99::5/128", "dev", &dev, "nodad"]);
    let out = topo.client().run(
        "ping",
        &[
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "fd99::5",
            &peer.to_string(),
        ],
    );
    assert!(!out.status.success(), "forged-source ping6 got through");
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
    // dtun server, -compat client.
    let topo = Topo::pair("v6c");
    let mut server = start_server(&topo.server, 443, &["-key", KEY, "-v"]);
    let (c_up, c_env) = env_dump(&topo.dir, "compat-up");
    let mut c = client(&topo, &["-compat", "-v", "-up", path_str(&c_up)]);
    let dev = only_tun(topo.client());
    let (_, peer) = wait_p2p(topo.client(), &dev);
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    assert_eq!(global6(topo.client(), &dev), "", "IPv6 on a -compat client");
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
    let topo = Topo::pair("v6u");
    topo.server.ip(&[
        "-6",
        "addr",
        "add",
        "fd31:250::1/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    topo.client().ip(&[
        "-6",
        "addr",
        "add",
        "fd31:250::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
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
    // The default MTU over an IPv6 underlay (1415 with GCM) still allows IPv6 inside.
    let mtu = topo.client().ip(&["-o", "link", "show", "dev", &dev]);
    assert!(mtu.contains("mtu 1415"), "{mtu}");
}

/// The pair topology plus an "internet" host behind the server (`wan`, 2001:db8:113::/64; the
/// server forwards IPv6). The client has no IPv6 underlay at all, so whatever IPv6 reaches
/// the inet host went through the tunnel.
fn with_inet(tag: &str) -> (Topo, Netns) {
    let topo = Topo::pair(tag);
    let inet = Netns::new(&format!("{tag}i"), &topo.dir);
    common::veth(
        &topo.server,
        "wan",
        "203.0.113.1/24",
        &inet,
        "eth0",
        "203.0.113.10/24",
    );
    topo.server.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:113::1/64",
        "dev",
        "wan",
        "nodad",
    ]);
    inet.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:113::10/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let out = topo.server.sh("sysctl -qw net.ipv6.conf.all.forwarding=1");
    assert!(out.status.success(), "{out:?}");
    (topo, inet)
}

const INET6: &str = "2001:db8:113::10";

/// `-route all` with IPv6 inside sends IPv6 through the tunnel (::/1 and 8000::/1 on the TUN
/// instead of the unreachable block): a ping6 from a client with no IPv6 of its own reaches a
/// host behind the server (which routes back to the pool here; no NAT66 yet).
#[test]
fn route_all_sends_ipv6_through_the_tunnel() {
    let (topo, inet) = with_inet("v6R");
    inet.ip(&["-6", "route", "add", "default", "via", "2001:db8:113::1"]);
    let _server = start_server(&topo.server, 443, &["-key", KEY]);
    let mut c = client(&topo, &["-route", "all"]);
    c.wait_log(dtun::routes::LOG_IPV6_ROUTED, UP);
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

fn sysctl(ns: &Netns, key: &str) -> String {
    let out = ns.run("sysctl", &["-n", key]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `-nat` with IPv6 inside: NAT66 to the server's address (the inet host has no route back to
/// the pool, so only a masqueraded ping6 is answered), IPv6 forwarding on while dtun runs but
/// opening nothing else (the inet host cannot reach a client's tunnel address through the
/// server), `accept_ra` 2 meanwhile on the interfaces that take router advertisements, and all
/// of it back as it was on exit, also after a `kill -9` and a restart.
#[test]
fn nat66_forwarding_and_accept_ra_restored_even_after_kill_9() {
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
    c.wait_log(dtun::routes::LOG_IPV6_ROUTED, UP);
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

/// `-peernet` with CIDRs of both families: the peernet message carries the IPv4 one, a Lans
/// control message the rest; the server routes both through the client's TUN and accepts both
/// as inner sources (a ping6 from the server to an address in the client's IPv6 LAN is
/// answered from it).
#[test]
fn several_peernets_of_both_families_are_routed() {
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
                .ip(&["-6", "route"])
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

/// A full tunnel over an IPv6 underlay whose server address is reached through the default
/// route (so `::/1` covers it): with IPv6 inside, `-route all` sends IPv6 into the tunnel, yet
/// dtun's own datagrams keep their old path, and both families cross.
#[test]
fn full_tunnel_over_an_ipv6_underlay_keeps_its_own_path() {
    let topo = Topo::pair("v6U");
    topo.server.ip(&[
        "-6",
        "addr",
        "add",
        "fd31:250::1/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    topo.server
        .ip(&["-6", "addr", "add", "fd31:999::1/128", "dev", "lo"]);
    topo.client().ip(&[
        "-6",
        "addr",
        "add",
        "fd31:250::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
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
    c.wait_log(dtun::routes::LOG_IPV6_ROUTED, UP);
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
