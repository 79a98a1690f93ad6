//! Isolation groups (`group=` in the credentials file) enforced by the server's nftables table
//! (src/nft.rs, src/nft/sets.rs): client-to-client traffic passes only within a group, and the
//! table's sets of TUN names follow the devices the manager creates and removes.
//!
//! ```text
//!  client ns c0 (red), c1 (red), c2 (blue or ungrouped) ── veth ── server ns
//! ```
//!
//! Needs root, /dev/net/tun, iproute2, iputils-ping and nftables (`nft`, to inspect and, in one
//! test, to delete the table behind the server's back).

mod common;

use std::time::Duration;

use common::*;

const KEY: &str = "groups-test-key-0123456789";

/// Starts the server with a credentials file of `lines` and `extra` flags; waits for its table.
fn server(topo: &Topo, port: u16, lines: &str, extra: &[&str]) -> Proc {
    let creds = topo.dir.file(&format!("clients-{port}"), lines.as_bytes());
    let p = port.to_string();
    let mut args = vec!["-clients", path_str(&creds), "-port", &p, "-linger", "1s"];
    args.extend_from_slice(extra);
    let mut s = start_server(&topo.server, port, &args);
    s.wait_log("in place", UP);
    s
}

/// Starts client `i` (id `c{i}`) and routes the pool into its TUN; returns its tunnel address.
fn client(topo: &Topo, i: usize, port: u16) -> (Proc, String) {
    let ns = &topo.clients[i];
    let (p, id, host) = (port.to_string(), format!("c{i}"), Topo::server_ip(i));
    let proc = start_client(ns, &["-host", &host, "-port", &p, "-key", KEY, "-id", &id]);
    let dev = only_tun(ns);
    let (local, _) = wait_p2p(ns, &dev);
    ns.ip(&["route", "replace", "10.86.0.0/16", "dev", &dev]);
    (proc, local.to_string())
}

/// The names in set `set` of table `inet dtun-dtun` in the server namespace (sorted).
fn members(topo: &Topo, set: &str) -> Vec<String> {
    let out = topo
        .server
        .run("nft", &["list", "set", "inet", "dtun-dtun", set]);
    assert!(out.status.success(), "nft list set {set}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names: Vec<String> = match text.split_once("elements = {") {
        Some((_, rest)) => rest
            .split('}')
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|n| n.trim().trim_matches('"').to_string())
            .filter(|n| !n.is_empty())
            .collect(),
        None => Vec::new(),
    };
    names.sort();
    names
}

/// The server's TUN names (sorted).
fn server_tuns(topo: &Topo) -> Vec<String> {
    let mut l = topo.server.links();
    l.sort();
    l
}

fn wait_members(topo: &Topo, set: &str, want: &[String]) {
    let mut got = Vec::new();
    wait_for(
        Duration::from_secs(10),
        &format!("set {set} to hold {want:?}"),
        || {
            got = members(topo, set);
            got == want
        },
    );
}

#[test]
fn groups_isolate_clients_and_the_sets_follow_the_devices() {
    common::need_root!();
    let topo = Topo::star("grA", 3);
    let creds =
        format!("c0 key={KEY} group=red\nc1 key={KEY} group=red\nc2 key={KEY} group=blue\n");
    let mut srv = server(&topo, 4701, &creds, &["-client-to-client", "on"]);
    let (_c0, a0) = client(&topo, 0, 4701);
    let (_c1, a1) = client(&topo, 1, 4701);
    let (mut c2, a2) = client(&topo, 2, 4701);
    let all = server_tuns(&topo);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(members(&topo, "tuns"), all);
    assert_eq!(members(&topo, "group-red").len(), 2);
    assert_eq!(members(&topo, "group-blue").len(), 1);
    assert!(members(&topo, "ungrouped").is_empty());

    let (red0, red1, blue) = (&topo.clients[0], &topo.clients[1], &topo.clients[2]);
    assert!(red0.ping_ok(&a1, 3), "red c0 cannot ping red c1 ({a1})");
    assert!(red1.ping_ok(&a0, 3), "red c1 cannot ping red c0 ({a0})");
    assert!(!red0.ping_ok(&a2, 3), "red c0 reached blue c2 ({a2})");
    assert!(!blue.ping_ok(&a1, 3), "blue c2 reached red c1 ({a1})");
    // c2 goes: after -linger its TUN leaves both sets.
    let blue_tun = members(&topo, "group-blue");
    c2.stop(Duration::from_secs(5));
    srv.wait_log("client c2: removed", Duration::from_secs(15));
    let left: Vec<String> = all
        .iter()
        .filter(|t| !blue_tun.contains(t))
        .cloned()
        .collect();
    wait_members(&topo, "tuns", &left);
    assert!(members(&topo, "group-blue").is_empty());
    assert_eq!(members(&topo, "group-red").len(), 2);

    // It comes back: a new TUN, in the sets again, still cut off from red.
    let (_c2, a2) = client(&topo, 2, 4701);
    let now = server_tuns(&topo);
    assert_eq!(now.len(), 3, "{now:?}");
    wait_members(&topo, "tuns", &now);
    assert_eq!(members(&topo, "group-blue").len(), 1);
    assert!(
        !red0.ping_ok(&a2, 3),
        "red c0 reached blue c2 ({a2}) after its reconnect"
    );
    assert!(
        red1.ping_ok(&a0, 3),
        "red lost its way after blue's reconnect"
    );

    // A reload moves c2 into red: its device (its TUN in blue's set) goes at once, and the
    // device it gets at its next connect is red's.
    let creds = format!("c0 key={KEY} group=red\nc1 key={KEY} group=red\nc2 key={KEY} group=red\n");
    topo.dir.file("clients-4701", creds.as_bytes());
    srv.signal("HUP");
    srv.wait_log("group changed (device removed): c2", UP);
    wait_for(UP, "c2 back, in group red", || {
        members(&topo, "group-red").len() == 3
    });
    assert!(members(&topo, "group-blue").is_empty());
    let (_, a2) = wait_p2p(blue, &only_tun(blue));
    wait_for(UP, "red c0 to reach c2, now red", || {
        red0.ping_ok(&a2.to_string(), 1)
    });
    srv.stop(Duration::from_secs(10));
    assert!(
        !String::from_utf8_lossy(&topo.server.run("nft", &["list", "tables"]).stdout)
            .contains("dtun-dtun"),
        "table left behind"
    );
}

/// Ungrouped ids form a group of their own; with -client-to-client unset the groups still
/// apply and forwarding is left as the host has it; with off nothing passes.
#[test]
fn ungrouped_ids_are_a_group_and_off_overrides_groups() {
    common::need_root!();
    let topo = Topo::star("grB", 3);
    let fwd = |v: &str| {
        let out = topo
            .server
            .sh(&format!("echo {v} > /proc/sys/net/ipv4/ip_forward"));
        assert!(out.status.success(), "{out:?}");
    };
    let creds = format!("c0 key={KEY} group=red\nc1 key={KEY}\nc2 key={KEY}\n");
    // The host forwards by itself; dtun adds only the group rules.
    fwd("1");
    let mut srv = server(&topo, 4702, &creds, &[]);
    assert!(srv.log().contains("isolation groups"), "{}", srv.log());
    let (c0, a0) = client(&topo, 0, 4702);
    let (c1, _) = client(&topo, 1, 4702);
    let (c2, a2) = client(&topo, 2, 4702);
    assert_eq!(members(&topo, "ungrouped").len(), 2);
    assert!(
        topo.clients[1].ping_ok(&a2, 3),
        "ungrouped c1 cannot ping c2"
    );
    assert!(
        !topo.clients[1].ping_ok(&a0, 3),
        "ungrouped c1 reached red c0"
    );
    assert!(
        !topo.clients[0].ping_ok(&a2, 3),
        "red c0 reached ungrouped c2"
    );
    drop((c0, c1, c2));
    srv.stop(Duration::from_secs(10));
    let fw = topo.server.run("cat", &["/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(String::from_utf8_lossy(&fw.stdout).trim(), "1");

    // off: groups are irrelevant, even the ungrouped pair is cut off.
    let mut srv = server(&topo, 4703, &creds, &["-client-to-client", "off"]);
    let (_c1, _) = client(&topo, 1, 4703);
    let (_c2, a2) = client(&topo, 2, 4703);
    assert!(!topo.clients[1].ping_ok(&a2, 3), "c1 reached c2 with off");
    let table = topo
        .server
        .run("nft", &["list", "table", "inet", "dtun-dtun"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(!table.contains("ungrouped"), "group sets with off: {table}");
    srv.stop(Duration::from_secs(10));
}

/// The table belongs to the server (the nftables owner flag): nobody else can delete it or
/// change its sets, root's `nft` included, so the group rules cannot be taken away under a
/// running server (the way a set update used to be made to fail here); the sets keep
/// following the devices.
#[test]
fn nobody_else_can_change_the_table() {
    common::need_root!();
    let topo = Topo::star("grC", 1);
    let creds = format!("c0 key={KEY} group=red\n");
    let mut srv = server(&topo, 4704, &creds, &["-client-to-client", "on"]);
    for args in [
        &["delete", "table", "inet", "dtun-dtun"][..],
        &["flush", "table", "inet", "dtun-dtun"][..],
        &["add", "element", "inet", "dtun-dtun", "tuns", "{ 1 }"][..],
    ] {
        let out = topo.server.run("nft", args);
        assert!(
            !out.status.success(),
            "nft {args:?} changed the table: {out:?}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Operation not permitted"), "{err}");
    }
    let (_c0, _) = client(&topo, 0, 4704);
    let table = topo
        .server
        .run("nft", &["list", "table", "inet", "dtun-dtun"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("flags owner"), "{table}");
    assert!(table.contains("type iface_index"), "{table}");
    assert!(!table.contains("iifname"), "matched by name: {table}");
    assert_running(&mut srv, "dtun server");
    srv.stop(Duration::from_secs(10));
}

/// Groups a reload brings to a server that started without any `group=` are enforced at once, with
/// no table at start (groups alone) and with a table made without groups (`-client-to-client on`).
/// c0 moves into red (its device goes, it comes back in red); c1 and c2 stay ungrouped, their
/// devices untouched, and still reach each other.
#[test]
fn groups_added_by_a_reload_are_enforced() {
    common::need_root!();
    let topo = Topo::star("grD", 3);
    let fwd = topo.server.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    assert!(fwd.status.success(), "{fwd:?}");
    for (port, extra) in [(4705u16, &[][..]), (4706, &["-client-to-client", "on"][..])] {
        let name = format!("clients-{port}");
        let creds = topo.dir.file(
            &name,
            format!("c0 key={KEY}\nc1 key={KEY}\nc2 key={KEY}\n").as_bytes(),
        );
        let p = port.to_string();
        let mut args = vec!["-clients", path_str(&creds), "-port", &p, "-linger", "60s"];
        args.extend_from_slice(extra);
        let mut srv = start_server(&topo.server, port, &args);
        let (_c0, a0) = client(&topo, 0, port);
        let (_c1, a1) = client(&topo, 1, port);
        let (_c2, a2) = client(&topo, 2, port);
        assert!(topo.clients[0].ping_ok(&a1, 3), "{port}: c0 cannot ping c1");
        let tun1 = only_tun(&topo.clients[1]);
        topo.dir.file(
            &name,
            format!("c0 key={KEY} group=red\nc1 key={KEY}\nc2 key={KEY}\n").as_bytes(),
        );
        srv.signal("HUP");
        srv.wait_log(dtun::ops::reload::LOG_RELOADED, UP);
        let line = srv
            .log()
            .lines()
            .find(|l| l.contains(dtun::ops::reload::LOG_RELOADED))
            .unwrap()
            .to_string();
        assert!(
            line.contains("group changed (device removed): c0"),
            "{line}"
        );
        wait_for(UP, "c0 back", || {
            srv.log().matches("client c0 connected").count() == 2
        });
        let dev0 = only_tun(&topo.clients[0]);
        let (a0new, _) = wait_p2p(&topo.clients[0], &dev0);
        topo.clients[0].ip(&["route", "replace", "10.86.0.0/16", "dev", &dev0]);
        let _ = a0;
        assert!(
            !topo.clients[0].ping_ok(&a1, 3),
            "{port}: red c0 ({a0new}) reached ungrouped c1 ({a1}) after the reload"
        );
        assert!(
            !topo.clients[1].ping_ok(&a0new.to_string(), 3),
            "{port}: ungrouped c1 reached red c0 after the reload"
        );
        assert!(
            topo.clients[1].ping_ok(&a2, 3),
            "{port}: ungrouped c1 lost ungrouped c2"
        );
        assert_eq!(only_tun(&topo.clients[1]), tun1, "c1's tunnel was touched");
        assert!(line.contains("isolation groups now enforced"), "{line}");
        assert!(!line.contains("needs a restart"), "{line}");
        assert_eq!(members(&topo, "group-red").len(), 1);
        assert_eq!(members(&topo, "ungrouped").len(), 2);
        srv.stop(Duration::from_secs(10));
    }
}
