//! Helpers of the IPv6-inside tests (`tests/ipv6.rs`, `tests/ipv6_routing.rs`): the IPv6 pair
//! of a TUN, reading script environment dumps (made by `env_dump`), a client of the pair topology, an "internet" host
//! behind the server.

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Netns, Proc, Topo, UP, parse_env, start_client, wait_for};

pub const KEY: &str = "ipv6-test-key-0123456789";

pub const LOG_IPV6_UP: &str = dtun::client::LOG_IPV6_UP;

/// The server's log line when it sends a client its IPv6 pair.
pub const SERVER_IPV6: &str = "IPv6 inside, local";

pub const DEFAULT_POOL6: &str = dtun_proto::pool6::DEFAULT_POOL6;

/// The global point-to-point IPv6 address of `dev` as (local, peer), if it has one.
pub fn p2p6(ns: &Netns, dev: &str) -> Option<(Ipv6Addr, Ipv6Addr)> {
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

pub fn wait_p2p6(ns: &Netns, dev: &str) -> (Ipv6Addr, Ipv6Addr) {
    let mut got = None;
    wait_for(UP, &format!("IPv6 point-to-point address on {dev}"), || {
        got = p2p6(ns, dev);
        got.is_some()
    });
    got.expect("IPv6 pair")
}

/// Global IPv6 addresses of `dev` (none expected where IPv6 is off).
pub fn global6(ns: &Netns, dev: &str) -> String {
    let out = ns.run(
        "ip",
        &["-o", "-6", "addr", "show", "dev", dev, "scope", "global"],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn in_prefix(ip: Ipv6Addr, prefix: &str) -> bool {
    prefix.parse::<ipnet::Ipv6Net>().unwrap().contains(&ip)
}

pub fn read_env(file: &PathBuf) -> std::collections::BTreeMap<String, String> {
    wait_for(Duration::from_secs(10), "script environment dump", || {
        file.exists()
    });
    parse_env(&std::fs::read_to_string(file).unwrap())
}

/// A dtun client of the pair topology's server; waits for its tunnel.
pub fn client(topo: &Topo, extra: &[&str]) -> Proc {
    let mut args = vec!["-host", "172.31.250.1", "-key", KEY, "-id", "six"];
    args.extend_from_slice(extra);
    start_client(topo.client(), &args)
}

/// The pair topology plus an "internet" host behind the server (`wan`, 2001:db8:113::/64; the
/// server forwards IPv6). The client has no IPv6 underlay at all, so whatever IPv6 reaches
/// the inet host went through the tunnel.
pub fn with_inet(tag: &str) -> (Topo, Netns) {
    let topo = Topo::pair(tag);
    let inet = Netns::new(&format!("{tag}i"), &topo.dir);
    super::veth(
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

pub const INET6: &str = "2001:db8:113::10";

pub fn sysctl(ns: &Netns, key: &str) -> String {
    let out = ns.run("sysctl", &["-n", key]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The IPv6 underlay of a `Topo::pair`: fd31:250::1/64 on the server's eth0, fd31:250::2/64 on
/// the client's (no DAD, usable at once).
pub fn ipv6_underlay(topo: &Topo) {
    for (ns, addr) in [
        (&topo.server, "fd31:250::1/64"),
        (topo.client(), "fd31:250::2/64"),
    ] {
        ns.ip(&["-6", "addr", "add", addr, "dev", "eth0", "nodad"]);
    }
}
