//! Per-client keys and route/source authorisation, end to end: the real binary between network
//! namespaces (`Topo::star` in `common/mod.rs`: one server namespace, one namespace per client).
//!
//! Run one test: `cargo test --test authz another_ids_key -- --nocapture`.

mod common;

use common::{DTUN, Netns, Proc, Topo, UP, start_server};
use std::time::Duration;

fn client(ns: &Netns, server_ip: &str, id: &str, key: &str, extra: &[&str]) -> Proc {
    common::spawn_client(ns, server_ip, id, key, "0", extra)
}

/// The second client of a `Topo::star` talks to the server from 10.77.0.2, which the server
/// reaches by its default route (so it is none of the server's own networks).
fn victim_from_10_77_0_2(topo: &Topo) {
    let victim_ns = &topo.clients[1];
    victim_ns.ip(&["addr", "add", "10.77.0.2/32", "dev", "eth0"]);
    victim_ns.ip(&[
        "route",
        "add",
        &format!("{}/32", Topo::server_ip(1)),
        "dev",
        "eth0",
        "src",
        "10.77.0.2",
    ]);
    topo.server
        .ip(&["route", "add", "default", "via", &Topo::client_ip(1)]);
}

/// With a credentials file, an id is bound to its own key: holding bob's key does not let a
/// client be alice; an id missing from the file is refused; bob may only announce his listed
/// LAN. A master-derived key (`dtun key derive`) works for an id not in the file.
#[test]
fn another_ids_key_cannot_take_the_id() {
    common::need_root!();
    let topo = Topo::star("az1", 2);
    let master = topo.dir.file("master", b"server-secret-0123456789");
    let creds = topo.dir.file(
        "clients",
        b"alice key=alice-key-0123456789\nbob key=bob-key-0123456789 lans=10.200.0.0/24\n",
    );
    let mut server = start_server(
        &topo.server,
        443,
        &["-clients", creds.to_str().unwrap(), "-v"],
    );

    // bob's key, alice's id: the handshake fails, alice gets no device.
    let mut thief = client(
        &topo.clients[0],
        &Topo::server_ip(0),
        "alice",
        "bob-key-0123456789",
        &["-once"],
    );
    let status = thief.wait_exit(UP).expect("thief still running");
    assert!(!status.success());
    assert!(thief.log().contains("handshake"), "{}", thief.log());
    assert!(
        topo.server.links().is_empty(),
        "a TUN was made for the thief"
    );

    // An id not in the file, with any key, is refused too (no -allow-unlisted).
    let mut stranger = client(
        &topo.clients[0],
        &Topo::server_ip(0),
        "carol",
        "anything-at-all-0123",
        &["-once"],
    );
    assert!(
        !stranger
            .wait_exit(UP)
            .expect("stranger still running")
            .success()
    );
    // The server's log tells the two apart (the wire does not): a wrong key for a listed id,
    // an id that is not listed.
    let log = server.log();
    assert!(
        log.contains("(claimed id \"alice\") failed: its Finished did not decrypt: the client has another -key")
            || log.contains("(claimed id \"alice\") failed: its Finished did not verify: the client has another -key"),
        "{log}"
    );
    assert!(
        log.contains("(claimed id \"carol\") failed: its id is not listed"),
        "{log}"
    );

    // bob with his key connects, but his unlisted LAN is refused and not routed.
    let mut bob = client(
        &topo.clients[1],
        &Topo::server_ip(1),
        "bob",
        "bob-key-0123456789",
        &["-peernet", "10.201.0.0/24"],
    );
    bob.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    server.wait_log("refused peernet 10.201.0.0/24", UP);
    assert!(
        !topo.server.routes().contains("10.201.0.0"),
        "unlisted LAN routed"
    );
    drop(bob);
    server.stop(Duration::from_secs(5));

    // A server with a master secret accepts the key `dtun key derive` prints for an id.
    let server = start_server(
        &topo.server,
        443,
        &["-master-key-file", master.to_str().unwrap(), "-port", "443"],
    );
    let out = std::process::Command::new(DTUN)
        .args([
            "key",
            "derive",
            "-key-file",
            master.to_str().unwrap(),
            "-id",
            "dave",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let derived = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(derived.len(), 64);
    let mut dave = client(&topo.clients[0], &Topo::server_ip(0), "dave", &derived, &[]);
    dave.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    let mut eve = client(
        &topo.clients[1],
        &Topo::server_ip(1),
        "eve",
        &derived,
        &["-once"],
    );
    assert!(
        !eve.wait_exit(UP).expect("eve still running").success(),
        "dave's key worked for eve"
    );
    drop(server);
}

/// A client announcing 0.0.0.0/0 gets its tunnel but no route; packets whose inner source is
/// neither its tunnel address nor an accepted LAN are dropped and counted.
#[test]
fn default_route_refused_and_forged_sources_dropped() {
    common::need_root!();
    let topo = Topo::star("az2", 1);
    let mut server = start_server(&topo.server, 443, &["-key", "shared-key-0123456789", "-v"]);
    let mut c = client(
        &topo.clients[0],
        &Topo::server_ip(0),
        "mallory",
        "shared-key-0123456789",
        &["-peernet", "0.0.0.0/0"],
    );
    c.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    server.wait_log("refused peernet 0.0.0.0/0", UP);
    assert!(
        !topo.server.routes().contains("default"),
        "default route installed:\n{}",
        topo.server.routes()
    );

    let dev = &topo.clients[0].links()[0];
    let (local, peer) = topo.clients[0].p2p(dev).expect("p2p address");
    assert!(
        topo.clients[0].ping_ok(&peer.to_string(), 2),
        "tunnel ping from {local}"
    );
    // A second address on the client's TUN: packets from it are forged as far as the server
    // is concerned.
    topo.clients[0].ip(&["addr", "add", "10.99.0.1/32", "dev", dev]);
    assert!(
        !topo.clients[0].ping_from_ok("10.99.0.1", &peer.to_string()),
        "forged-source ping got through"
    );
    server.wait_log("drop reason=forged_source", UP);
    assert!(
        topo.clients[0].ping_ok(&peer.to_string(), 2),
        "tunnel still works"
    );
}

/// A client must not route another client's outer (underlay) address into its own TUN: that
/// would send the victim's DTLS records to the attacker and cut the victim off. The victim's
/// underlay address here is 10.77.0.2, private and reached through the server's default route
/// (so it is none of the server's own networks): exactly what a real attacker would announce.
/// Refused without a `lans=` entry, and refused even when the operator listed a LAN that
/// covers it; the victim keeps pinging through its tunnel throughout.
#[test]
fn another_clients_underlay_is_never_routed() {
    common::need_root!();
    let topo = Topo::star("hB2u", 2);
    let (attacker_ns, victim_ns) = (&topo.clients[0], &topo.clients[1]);
    // The victim talks to the server from 10.77.0.2; the server reaches it by default route.
    victim_from_10_77_0_2(&topo);
    let creds = topo.dir.file(
        "clients",
        b"mallory key=mallory-key-0123456789 lans=10.0.0.0/8\n",
    );
    let mut server = start_server(
        &topo.server,
        443,
        &[
            "-clients",
            creds.to_str().unwrap(),
            "-key",
            "shared-key-0123456789",
            "-allow-unlisted",
            "-v",
        ],
    );
    let mut victim = client(
        victim_ns,
        &Topo::server_ip(1),
        "victim",
        "shared-key-0123456789",
        &[],
    );
    victim.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    server.wait_log("10.77.0.2", UP);
    let dev = common::only_tun(victim_ns);
    let (_, peer) = common::wait_p2p(victim_ns, &dev);
    let peer = peer.to_string();
    assert!(victim_ns.ping_ok(&peer, 3), "victim tunnel not working");

    // No lans= entry: the victim's underlay /32 is private, but it is a live session's.
    let mut eve = client(
        attacker_ns,
        &Topo::server_ip(0),
        "eve",
        "shared-key-0123456789",
        &["-peernet", "10.77.0.2/32"],
    );
    eve.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    common::wait_for(UP, "the server to decide on 10.77.0.2/32", || {
        server.log().contains("peernet 10.77.0.2/32") || server.log().contains("route 10.77.0.2/32")
    });
    assert!(
        victim_ns.ping_ok(&peer, 3),
        "victim cut off after eve announced its underlay address:\n{}",
        topo.server.routes()
    );
    assert!(
        server
            .log()
            .contains("refused peernet 10.77.0.2/32: it covers 10.77.0.2"),
        "not refused for covering the victim's outer address:\n{}",
        server.log()
    );
    assert!(!topo.server.routes().contains("10.77.0.2 via"));
    drop(eve);

    // A listed LAN that covers the victim's underlay address does not make it routable.
    let mut mallory = client(
        attacker_ns,
        &Topo::server_ip(0),
        "mallory",
        "mallory-key-0123456789",
        &["-peernet", "10.77.0.0/16"],
    );
    mallory.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    common::wait_for(UP, "the server to decide on 10.77.0.0/16", || {
        server.log().contains("peernet 10.77.0.0/16") || server.log().contains("route 10.77.0.0/16")
    });
    assert!(
        victim_ns.ping_ok(&peer, 3),
        "victim cut off after mallory announced a listed LAN covering its underlay:\n{}",
        topo.server.routes()
    );
    assert!(
        server
            .log()
            .contains("refused peernet 10.77.0.0/16: it covers 10.77.0.2"),
        "{}",
        server.log()
    );
    common::assert_running(&mut victim, "victim");
}

/// The other order: mallory's LAN 10.77.0.0/16 is routed first (private, no client inside it
/// yet), then the victim connects from 10.77.0.2. The server's own datagrams skip the LAN
/// table (SO_MARK and a `not fwmark` rule), so its handshake replies reach the victim by the
/// main table's path instead of going into mallory's TUN; everything else still reaches
/// mallory's LAN. The rule is gone after the server exits.
#[test]
fn a_later_clients_underlay_inside_an_earlier_lan_still_connects() {
    common::need_root!();
    let topo = Topo::star("hB2l", 2);
    let (mallory_ns, victim_ns) = (&topo.clients[0], &topo.clients[1]);
    victim_from_10_77_0_2(&topo);
    mallory_ns.ip(&["addr", "add", "10.77.5.1/24", "dev", "lo"]);
    let key = "shared-key-0123456789";
    let mut server = start_server(&topo.server, 443, &["-key", key, "-v"]);
    let mut mallory = client(
        mallory_ns,
        &Topo::server_ip(0),
        "mallory",
        key,
        &["-peernet", "10.77.0.0/16"],
    );
    mallory.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    common::wait_for(UP, "mallory's LAN routed", || {
        topo.server.routes().contains("10.77.0.0/16 via")
    });
    assert!(
        topo.server.ping_ok("10.77.5.1", 2),
        "mallory's LAN not reachable from the server"
    );

    let mut victim = client(victim_ns, &Topo::server_ip(1), "victim", key, &[]);
    victim.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    let dev = common::only_tun(victim_ns);
    let (_, peer) = common::wait_p2p(victim_ns, &dev);
    assert!(
        victim_ns.ping_ok(&peer.to_string(), 3),
        "victim's tunnel not working:\n{}",
        topo.server.routes()
    );
    assert!(
        topo.server.ping_ok("10.77.5.1", 2),
        "mallory's LAN lost when the victim came"
    );
    let rule = format!("lookup {}", dtun_linux::routes::LAN_TABLE);
    assert!(topo.server.ip(&["rule"]).contains(&rule));
    victim.stop(Duration::from_secs(5));
    mallory.stop(Duration::from_secs(5));
    server.stop(Duration::from_secs(5));
    for family in ["-4", "-6"] {
        let rules = topo.server.ip(&[family, "rule"]);
        assert!(!rules.contains(&rule), "rule left behind:\n{rules}");
    }
}

/// Without a `lans=` entry only private (RFC 1918), CGNAT and ULA ranges are routed: half the
/// IPv4 Internet, a quarter of it, a public /32 (TEST-NET-2, never sent to) and 2000::/3 are
/// refused; a private LAN is still routed and reachable.
#[test]
fn public_prefixes_need_a_lans_entry() {
    common::need_root!();
    let topo = Topo::star("hB2p", 5);
    let server = start_server(&topo.server, 443, &["-key", "shared-key-0123456789", "-v"]);
    let public = ["198.51.100.7/32", "2000::/3", "192.0.0.0/2", "128.0.0.0/1"];
    let mut clients = Vec::new();
    for (i, net) in public.iter().enumerate() {
        clients.push(client(
            &topo.clients[i],
            &Topo::server_ip(i),
            &format!("pub{i}"),
            "shared-key-0123456789",
            &["-peernet", net],
        ));
    }
    let lan_ns = &topo.clients[4];
    lan_ns.ip(&["addr", "add", "10.201.0.1/32", "dev", "lo"]);
    let mut lan = client(
        lan_ns,
        &Topo::server_ip(4),
        "lan",
        "shared-key-0123456789",
        &["-peernet", "10.201.0.0/24"],
    );
    for c in clients.iter_mut().chain([&mut lan]) {
        c.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    }
    for net in public {
        common::wait_for(UP, &format!("the server to decide on {net}"), || {
            let log = server.log();
            log.contains(&format!("peernet {net}")) || log.contains(&format!("route {net}"))
        });
        // 128.0.0.0/1 also covers the server's own 172.31.x addresses: either reason will do.
        let log = server.log();
        assert!(
            log.contains(&format!(
                "refused peernet {net}: without a lans= entry only private"
            )) || log.contains(&format!("refused peernet {net}: it covers")),
            "{net} not refused as public:\n{log}"
        );
    }
    let v4 = topo.server.routes();
    let v6 = topo.server.routes6();
    for bad in ["198.51.100.7", "192.0.0.0/2", "128.0.0.0/1"] {
        assert!(!v4.contains(bad), "{bad} routed:\n{v4}");
    }
    assert!(!v6.contains("2000::/3"), "2000::/3 routed:\n{v6}");
    common::wait_for(UP, "server route to 10.201.0.0/24", || {
        topo.server.routes().contains("10.201.0.0/24 via")
    });
    assert!(
        topo.server.ping_ok("10.201.0.1", 3),
        "private LAN not reachable"
    );
}

/// A reload that changes an id's `lans=` applies to the LANs routed now: a LAN taken out of the
/// list loses its route at once, one put back is routed again, and the reload's summary says which.
#[test]
fn a_reload_rechecks_the_routed_lans() {
    common::need_root!();
    let topo = Topo::star("azrl", 1);
    let creds = topo.dir.file(
        "clients",
        b"bob key=bob-key-0123456789 lans=10.200.0.0/24,10.201.0.0/24\n",
    );
    let mut server = start_server(&topo.server, 443, &["-clients", common::path_str(&creds)]);
    let mut bob = client(
        &topo.clients[0],
        &Topo::server_ip(0),
        "bob",
        "bob-key-0123456789",
        &["-peernet", "10.200.0.0/24"],
    );
    bob.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    let routed = || topo.server.routes().contains("10.200.0.0/24");
    common::wait_for(UP, "bob's LAN routed", routed);
    let reloaded = |server: &mut Proc, n: usize| -> String {
        server.signal("HUP");
        common::wait_for(UP, "the reload", || {
            common::lines_with(&server.log(), &[dtun::ops::reload::LOG_RELOADED]) >= n
        });
        let log = server.log();
        let line = log
            .lines()
            .filter(|l| l.contains(dtun::ops::reload::LOG_RELOADED))
            .nth(n - 1)
            .unwrap();
        line.to_string()
    };
    std::fs::write(&creds, "bob key=bob-key-0123456789 lans=10.201.0.0/24\n").unwrap();
    let line = reloaded(&mut server, 1);
    assert!(!routed(), "a LAN no longer listed is still routed");
    assert!(
        line.contains("LAN routes changed: bob (-10.200.0.0/24)"),
        "{line}"
    );
    std::fs::write(&creds, "bob key=bob-key-0123456789 lans=10.200.0.0/16\n").unwrap();
    let line = reloaded(&mut server, 2);
    assert!(routed(), "a LAN listed again is not routed");
    assert!(
        line.contains("LAN routes changed: bob (+10.200.0.0/24)"),
        "{line}"
    );
    server.stop(Duration::from_secs(5));
}
