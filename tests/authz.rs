//! Per-client keys and route/source authorisation, end to end: the real binary between network
//! namespaces (`Topo::star` in `common/mod.rs`: one server namespace, one namespace per client).
//!
//! Run one test: `cargo test --test authz another_ids_key -- --nocapture`.

mod common;

use common::{DTUN, Netns, Proc, Topo, UP, start_server};
use std::time::Duration;

fn client(ns: &Netns, server_ip: &str, id: &str, key: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "-host",
        server_ip,
        "-id",
        id,
        "-key",
        key,
        "-keepalive",
        "0",
    ];
    args.extend_from_slice(extra);
    ns.spawn(DTUN, &args, &[])
}

/// With a credentials file, an id is bound to its own key: holding bob's key does not let a
/// client be alice; an id missing from the file is refused; bob may only announce his listed
/// LAN. A master-derived key (`dtun key derive`) works for an id not in the file.
#[test]
fn another_ids_key_cannot_take_the_id() {
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
    let out = topo.clients[0].run(
        "ping",
        &[
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "10.99.0.1",
            &peer.to_string(),
        ],
    );
    assert!(!out.status.success(), "forged-source ping got through");
    server.wait_log("drop reason=forged_source", UP);
    assert!(
        topo.clients[0].ping_ok(&peer.to_string(), 2),
        "tunnel still works"
    );
}
