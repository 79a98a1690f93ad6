//! End-to-end tests: the real `dtun` binary, real TUN devices, real `ping` and OpenSSL, between
//! network namespaces that each test makes for itself (topologies drawn in `common/mod.rs`).
//! Needs root, /dev/net/tun, iproute2, iputils-ping, openssl and python3.
//!
//! Run one test: `cargo test --test e2e reconnect_same_id -- --nocapture`.

mod common;

use common::{
    DTUN, Netns, Proc, Topo, UP, assert_running, only_tun, parse_env, parse_ping_stats, path_str,
    start_client_env, start_server, wait_for, wait_p2p, wait_peernet_up,
};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

// Substrings of dtun's log lines that the tests look for: one place to follow src/'s wording.
/// The client logs this (with device and addresses) once forwarding starts.
const CLIENT_TUNNEL_UP: &str = dtun::client::LOG_TUNNEL_UP;
/// The server logs this when a client's tunnel is set up.
const SERVER_CLIENT_CONNECTED: &str = dtun::server::LOG_CONNECTED;
/// A client with the wrong key says all of these (the handshake failed, check `-key`).
const WRONG_KEY_WORDS: [&str; 3] = ["handshake", "failed", "-key"];
/// With `-v`, every dropped record is logged with this followed by its reason.
const DROP_REASON: &str = "drop reason=";

const INJECT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/inject.py");

/// The server's address as the client of `Topo::pair` sees it.
const SERVER_IP: &str = "172.31.250.1";
const DEFAULT_PORT: u16 = 443;
/// The server's default address pool.
const POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 86, 0, 0), 16);

fn in_pool(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - POOL.1);
    u32::from(ip) & mask == u32::from(POOL.0)
}

/// Waits until the server's log has a drop line for every reason, then asserts.
fn wait_drop_reasons(server: &Proc, reasons: &[&str]) {
    let missing = |log: &str| -> Vec<String> {
        reasons
            .iter()
            .filter(|r| !log.contains(&format!("{DROP_REASON}{r}")))
            .map(|r| r.to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !missing(&server.log()).is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = server.log();
    let missing = missing(&log);
    assert!(
        missing.is_empty(),
        "server log has no `{DROP_REASON}` line for {missing:?}"
    );
}

/// Tunnel comes up, ping works both ways, both sides have matching point-to-point addresses,
/// and the up script sees exactly TUN, PEER_IP, LOCAL_IP, LOCAL_IP6, PEER_IP6 and PATH (the key given through
/// DTUN_KEY does not leak into it, nor into the logs).
#[test]
fn ping_both_ways_and_up_script_env() {
    common::need_root!();
    let topo = Topo::pair("p");
    let key = "e2e-Xq9-not-in-env";
    let mut server = start_server(&topo.server, DEFAULT_PORT, &["-key", key, "-v"]);
    let (script, env_file) = common::env_dump(&topo.dir, "up");
    let client = start_client_env(
        topo.client(),
        &["-host", SERVER_IP, "-up", path_str(&script)],
        &[("DTUN_KEY", key)],
    );

    let cdev = only_tun(topo.client());
    let (c_local, c_peer) = wait_p2p(topo.client(), &cdev);
    assert!(
        in_pool(c_local) && in_pool(c_peer) && c_local != c_peer,
        "client addresses {c_local} peer {c_peer}"
    );
    let sdev = only_tun(&topo.server);
    assert_eq!(
        wait_p2p(&topo.server, &sdev),
        (c_peer, c_local),
        "server TUN must be local=server peer=client"
    );
    server.wait_log(SERVER_CLIENT_CONNECTED, UP);

    assert!(
        topo.client().ping_ok(&c_peer.to_string(), 3),
        "client -> server tunnel IP"
    );
    assert!(
        topo.server.ping_ok(&c_local.to_string(), 3),
        "server -> client tunnel IP"
    );

    wait_for(Duration::from_secs(5), "up script environment dump", || {
        env_file.exists()
    });
    let text = std::fs::read_to_string(&env_file).unwrap();
    let env = parse_env(&text);
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        // Two dtun peers: IPv6 inside too (tests/ipv6.rs checks its values).
        [
            "LOCAL_IP",
            "LOCAL_IP6",
            "PATH",
            "PEER_IP",
            "PEER_IP6",
            "TUN"
        ],
        "up script environment:\n{text}"
    );
    assert_eq!(env["TUN"], cdev);
    assert_eq!(env["LOCAL_IP"], c_local.to_string());
    assert_eq!(env["PEER_IP"], c_peer.to_string());
    assert!(!text.contains(key), "key leaked into the up script: {text}");
    assert!(!client.log().contains(key), "client logged the key");
    assert!(!server.log().contains(key), "server logged the key");
}

/// `-peernet` becomes a route on the server via the client's tunnel IP; after the client stops,
/// the server removes the TUN and the route once `-linger` has passed (not before).
#[test]
fn peernet_route_then_linger_cleanup() {
    common::need_root!();
    let topo = Topo::pair("l");
    let _server = start_server(
        &topo.server,
        DEFAULT_PORT,
        &["-key", "foo", "-linger", "2s", "-v"],
    );
    // A key file's trailing newline is not part of the key.
    let key_file = topo.dir.file("key", b"foo\n");
    let mut client = start_client_env(
        topo.client(),
        &[
            "-host",
            SERVER_IP,
            "-key-file",
            path_str(&key_file),
            "-peernet",
            "10.200.0.0/24",
        ],
        &[],
    );
    wait_peernet_up(topo.client(), &topo.server, "10.200.0.0/24");

    let status = client.stop(Duration::from_secs(10));
    let stopped = Instant::now();
    assert!(
        topo.client().links().is_empty(),
        "client TUN left behind after exit ({status})"
    );
    wait_for(
        Duration::from_secs(60),
        "server to remove the client's TUN and route after the linger time",
        || topo.server.links().is_empty() && !topo.server.routes().contains("10.200.0.0/24"),
    );
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "TUN removed {took:?} after the client stopped, before -linger 2s"
    );
}

/// A client killed without a goodbye reconnects with the same id: the server still has exactly
/// one TUN for it, the same device (ifindex) with the same addresses, and ping works again.
#[test]
fn reconnect_same_id_reuses_tun() {
    common::need_root!();
    let topo = Topo::pair("r");
    let _server = start_server(&topo.server, 4443, &["--key", "foo", "--port", "4443"]);
    let args = [
        "--host", SERVER_IP, "--port", "4443", "--key", "foo", "--id", "carol",
    ];
    let mut first = start_client_env(topo.client(), &args, &[]);
    let sdev = only_tun(&topo.server);
    let sindex = topo.server.ifindex(&sdev).expect("server TUN ifindex");
    let saddrs = wait_p2p(&topo.server, &sdev);
    let caddrs = wait_p2p(topo.client(), &only_tun(topo.client()));
    assert!(topo.client().ping_ok(&caddrs.1.to_string(), 2));

    first.signal("KILL");
    first
        .wait_exit(Duration::from_secs(5))
        .expect("client killed");
    wait_for(
        Duration::from_secs(5),
        "client TUN gone after SIGKILL",
        || topo.client().links().is_empty(),
    );

    let _second = start_client_env(topo.client(), &args, &[]);
    let cdev = only_tun(topo.client());
    assert_eq!(
        wait_p2p(topo.client(), &cdev),
        caddrs,
        "client addresses changed"
    );
    assert_eq!(
        topo.server.links(),
        std::slice::from_ref(&sdev),
        "server TUNs"
    );
    assert_eq!(
        topo.server.ifindex(&sdev),
        Some(sindex),
        "server TUN replaced"
    );
    assert_eq!(
        wait_p2p(&topo.server, &sdev),
        saddrs,
        "server addresses changed"
    );
    assert!(
        topo.client().ping_ok(&caddrs.1.to_string(), 3),
        "client -> server"
    );
    assert!(
        topo.server.ping_ok(&caddrs.0.to_string(), 3),
        "server -> client"
    );
}

/// Two clients with different ids share the server; a third with the wrong key fails its
/// handshake, gets no TUN, never runs its up script, and the good tunnels keep pinging.
#[test]
fn two_clients_and_a_wrong_key() {
    common::need_root!();
    let topo = Topo::star("w", 3);
    let server = start_server(&topo.server, DEFAULT_PORT, &["-key", "good", "-v"]);
    let _alpha = start_client_env(
        &topo.clients[0],
        &["-host", &Topo::server_ip(0), "-key", "good", "-id", "alpha"],
        &[],
    );
    let _beta = start_client_env(
        &topo.clients[1],
        &["-host", &Topo::server_ip(1), "-key", "good", "-id", "beta"],
        &[],
    );
    let a = wait_p2p(&topo.clients[0], &only_tun(&topo.clients[0]));
    let b = wait_p2p(&topo.clients[1], &only_tun(&topo.clients[1]));
    assert_ne!(a.0, b.0, "two ids got the same address");
    wait_for(UP, "two TUNs on the server", || {
        topo.server.links().len() == 2
    });
    assert!(topo.clients[0].ping_ok(&a.1.to_string(), 2));
    assert!(topo.clients[1].ping_ok(&b.1.to_string(), 2));
    assert!(topo.server.ping_ok(&a.0.to_string(), 2));
    assert!(topo.server.ping_ok(&b.0.to_string(), 2));

    let pinger = |i: usize, peer: Ipv4Addr| {
        topo.clients[i]
            .command("ping")
            .args(&["-n", "-i", "0.2", "-W", "1", &peer.to_string()])
            .spawn()
    };
    let mut ping_a = pinger(0, a.1);
    let mut ping_b = pinger(1, b.1);
    let pings_started = Instant::now();

    let marker = topo.dir.path().join("mallory-up-ran");
    let script = topo.dir.script(
        "mallory-up.sh",
        &format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    );
    let mut mallory = topo.clients[2].spawn(
        DTUN,
        &[
            "-host",
            &Topo::server_ip(2),
            "-key",
            "bad",
            "-id",
            "mallory",
            // Without -once a client retries for ever; here it must give up.
            "-once",
            "-up",
            path_str(&script),
        ],
        &[],
    );
    let status = mallory
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("wrong-key client still running; log:\n{}", mallory.log()));
    assert!(!status.success(), "wrong-key client exited with {status}");
    let log = mallory.log();
    assert!(
        WRONG_KEY_WORDS.iter().all(|w| log.contains(w)),
        "wrong-key client should say all of {WRONG_KEY_WORDS:?}; log:\n{log}"
    );
    wait_for(
        Duration::from_secs(10),
        "server warning naming the wrong-key client's address",
        || server.log().contains(&Topo::client_ip(2)),
    );
    assert_eq!(
        topo.server.links().len(),
        2,
        "TUN made for a failed handshake"
    );
    assert!(!marker.exists(), "up script ran after a failed handshake");
    assert!(
        topo.clients[2].links().is_empty(),
        "wrong-key client made a TUN"
    );

    // The bad handshake may fail within a second; let the pingers cover a few seconds anyway
    // (ping's output is buffered until it stops, so there is nothing to poll).
    let min_run = Duration::from_secs(3);
    std::thread::sleep(min_run.saturating_sub(pings_started.elapsed()));
    for (name, p) in [("alpha", &mut ping_a), ("beta", &mut ping_b)] {
        assert_running(p, "ping");
        p.signal("INT");
        p.wait_exit(Duration::from_secs(5))
            .expect("ping stops on SIGINT");
        let (tx, rx) = parse_ping_stats(&p.log()).expect("ping statistics");
        // The echo in flight when ping was stopped may be counted as lost.
        assert!(
            tx >= 10 && rx + 1 >= tx,
            "{name} lost packets during the bad handshake: {tx} sent, {rx} received"
        );
    }
    assert!(topo.clients[0].ping_ok(&a.1.to_string(), 2));
    assert!(topo.clients[1].ping_ok(&b.1.to_string(), 2));
}

/// `openssl s_client` as the client: it completes the DTLS 1.2 PSK handshake with our server
/// and receives the 8-byte address message; after it answers `empty`, the server's TUN carries
/// exactly those addresses.
#[test]
fn openssl_client_against_server_ccm8() {
    common::need_root!();
    openssl_client_against_server("o", "PSK-AES128-CCM8", "aes-128-ccm8");
}

#[test]
fn openssl_client_against_server_gcm() {
    common::need_root!();
    openssl_client_against_server("og", "PSK-AES128-GCM-SHA256", "aes-128-gcm");
}

fn openssl_client_against_server(tag: &str, ossl_cipher: &str, ours: &str) {
    let topo = Topo::pair(tag);
    let server = start_server(&topo.server, 4433, &["-key", "foo", "-port", "4433", "-v"]);
    let mut ossl = topo
        .client()
        .command("openssl")
        .args(&[
            "s_client",
            "-dtls1_2",
            "-psk",
            "666f6f", // "foo"
            "-psk_identity",
            "osslc",
            "-cipher",
            ossl_cipher,
            "-connect",
            &format!("{SERVER_IP}:4433"),
            "-quiet",
        ])
        .stdin_piped()
        .stdout_apart()
        .spawn();

    let mut msg = None;
    wait_for(UP, "8-byte address message at s_client", || {
        assert_running(&mut ossl, "openssl s_client");
        let out = ossl.stdout_bytes();
        msg = out
            .windows(8)
            .find(|w| w[0] == 10 && w[1] == 86 && w[4] == 10 && w[5] == 86)
            .map(|w| w.to_vec());
        msg.is_some()
    });
    let msg = msg.unwrap();
    let client_ip = Ipv4Addr::new(msg[0], msg[1], msg[2], msg[3]);
    let server_ip = Ipv4Addr::new(msg[4], msg[5], msg[6], msg[7]);
    assert_ne!(client_ip, server_ip);

    ossl.write_stdin(b"empty");
    let sdev = only_tun(&topo.server);
    assert_eq!(wait_p2p(&topo.server, &sdev), (server_ip, client_ip));
    let log = server.log();
    assert!(
        common::lines_with(&log, &[SERVER_CLIENT_CONNECTED, ours]) > 0,
        "server should log the negotiated suite {ours}:\n{log}"
    );
}

/// `openssl s_server` as the server: our client completes the handshake with it, takes the
/// address message typed into s_server, answers with its peernet and brings its TUN up.
#[test]
fn openssl_server_against_client_ccm8() {
    common::need_root!();
    openssl_server_against_client("s", "PSK-AES128-CCM8", "aes-128-ccm8");
}

#[test]
fn openssl_server_against_client_gcm() {
    common::need_root!();
    openssl_server_against_client("sg", "PSK-AES128-GCM-SHA256", "aes-128-gcm");
}

fn openssl_server_against_client(tag: &str, ossl_cipher: &str, ours: &str) {
    let topo = Topo::pair(tag);
    let mut ossl = topo
        .server
        .command("openssl")
        .args(&[
            "s_server",
            "-dtls1_2",
            "-nocert",
            "-psk",
            "666f6f", // "foo"
            "-psk_hint",
            "dtun",
            "-cipher",
            ossl_cipher,
            "-accept",
            "4433",
        ])
        .stdin_piped()
        .stdout_apart()
        .spawn();
    wait_for(UP, "s_server listening", || {
        assert_running(&mut ossl, "openssl s_server");
        topo.server.udp_listening(4433)
    });
    let mut client = topo.client().spawn(
        DTUN,
        &[
            "-host",
            SERVER_IP,
            "-port",
            "4433",
            "-key",
            "foo",
            "-peernet",
            "10.200.0.0/24",
            "-v",
        ],
        &[],
    );
    let seen = |p: &Proc, needle: &str| {
        p.log().contains(needle) || String::from_utf8_lossy(&p.stdout_bytes()).contains(needle)
    };
    wait_for(UP, "handshake completed at s_server", || {
        assert_running(&mut ossl, "openssl s_server");
        assert_running(&mut client, "dtun client");
        seen(&ossl, &format!("CIPHER is {ossl_cipher}"))
    });
    assert!(
        seen(&ossl, "got 'dtun'"),
        "client's PSK identity should default to `dtun`"
    );

    // Client 10.86.0.2, server 10.86.0.1: one write, so one record. 0x0a is a newline byte,
    // which s_server passes through as data.
    ossl.write_stdin(&[10, 86, 0, 2, 10, 86, 0, 1]);
    wait_for(UP, "peernet record at s_server", || {
        assert_running(&mut client, "dtun client");
        String::from_utf8_lossy(&ossl.stdout_bytes()).contains("10.200.0.0/24")
    });
    client.wait_log(CLIENT_TUNNEL_UP, UP);
    let log = client.log();
    assert!(
        common::lines_with(&log, &[CLIENT_TUNNEL_UP, ours]) > 0,
        "client should log the negotiated suite {ours}:\n{log}"
    );
    let cdev = only_tun(topo.client());
    assert_eq!(
        wait_p2p(topo.client(), &cdev),
        (Ipv4Addr::new(10, 86, 0, 2), Ipv4Addr::new(10, 86, 0, 1))
    );
}

/// Brings up a pair with a `-v` server on the default port and returns what the injection
/// tests need: (topology, server, client, server tunnel IP, client tunnel IP).
fn verbose_tunnel(tag: &str) -> (Topo, Proc, Proc, Ipv4Addr, Ipv4Addr) {
    let topo = Topo::pair(tag);
    let server = start_server(&topo.server, DEFAULT_PORT, &["-key", "foo", "-v"]);
    let client = start_client_env(topo.client(), &["-host", SERVER_IP, "-key", "foo"], &[]);
    let (c_local, c_peer) = wait_p2p(topo.client(), &only_tun(topo.client()));
    assert!(topo.client().ping_ok(&c_peer.to_string(), 2));
    (topo, server, client, c_peer, c_local)
}

/// Captures a client->server data record on the wire and re-sends altered copies from the
/// client's address (see tests/tools/inject.py for the modes).
fn inject(ns: &Netns, s_tun: Ipv4Addr, modes: &str) {
    let mut inj = ns.spawn(
        "python3",
        &[
            INJECT,
            "--iface",
            "eth0",
            "--dport",
            &DEFAULT_PORT.to_string(),
            "--modes",
            modes,
        ],
        &[],
    );
    inj.wait_log("listening on", Duration::from_secs(10));
    // Traffic through the tunnel for the injector to capture.
    assert!(ns.ping_ok(&s_tun.to_string(), 2));
    inj.expect_success("inject.py", Duration::from_secs(15));
}

/// A replayed record and a corrupted one (fresh sequence number, one ciphertext byte flipped)
/// are dropped with their reasons, and the session goes on: the corrupted record's far-ahead
/// sequence number must not have moved the replay window.
#[test]
fn replayed_and_corrupted_records_are_dropped() {
    common::need_root!();
    let (topo, server, _client, s_tun, c_tun) = verbose_tunnel("j");
    inject(topo.client(), s_tun, "replay,corrupt");
    wait_drop_reasons(&server, &["replay", "bad_tag"]);
    let (tx, rx) = topo.client().ping_stats(&s_tun.to_string(), 5);
    assert_eq!(rx, tx, "client -> server after injection");
    assert!(
        topo.server.ping_ok(&c_tun.to_string(), 3),
        "server -> client"
    );
}

/// Truncated, wrong-epoch and oversized records, and a data record from an address without a
/// session, are each dropped with their reason; the session goes on.
#[test]
fn malformed_records_are_dropped() {
    common::need_root!();
    let (topo, server, _client, s_tun, c_tun) = verbose_tunnel("m");
    inject(
        topo.client(),
        s_tun,
        "truncated,bad_epoch,oversized,unknown_peer",
    );
    wait_drop_reasons(
        &server,
        &["truncated", "bad_epoch", "oversized", "unknown_peer"],
    );
    let (tx, rx) = topo.client().ping_stats(&s_tun.to_string(), 5);
    assert_eq!(rx, tx, "client -> server after injection");
    assert!(
        topo.server.ping_ok(&c_tun.to_string(), 3),
        "server -> client"
    );
}

/// `-host A,B`: the client tries the servers in order. The first has nothing on its port (ICMP
/// port unreachable ends that try within seconds), so the client connects to the second, and
/// `dtun status` names the active one. A `-host` the grammar does not take fails `-check`.
#[test]
fn several_hosts_fail_over_in_order() {
    common::need_root!();
    let topo = Topo::pair("hosts");
    let key = "e2e-hosts-key-0123456789";
    let _server = start_server(&topo.server, DEFAULT_PORT, &["-key", key]);
    let hosts = format!("{SERVER_IP}:4999,{SERVER_IP}:{DEFAULT_PORT}");
    let mut client = common::start_client(topo.client(), &["-host", &hosts, "-key", key, "-v"]);
    client.wait_log(CLIENT_TUNNEL_UP, Duration::from_secs(30));
    let log = client.log();
    assert!(
        log.contains(&format!("server {SERVER_IP}:4999: ")),
        "the first server's failure is not logged with its name:\n{log}"
    );
    let v = common::status::json(topo.client(), None);
    assert_eq!(
        v["server_host"],
        format!("{SERVER_IP}:{DEFAULT_PORT}"),
        "{v}"
    );
    for (host, says) in [
        ("h:443:443", "[IPv6]:port"),
        ("tcp://h:443", "planned but not supported yet"),
    ] {
        let out = std::process::Command::new(DTUN)
            .args(["-host", host, "-key", key, "-check"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{host}: {err}");
    }
}
