//! Rekeying between dtun peers, end to end (dtun_proto::rekey, docs/PROTOCOL.md "Rekeying"):
//! a hundred hybrid X25519 + ML-KEM-768 rekeys at `-rekey 1s` lose no ping on a clean link,
//! a session keeps going through a hundred under 10 % loss each way (nftables), and a peer
//! that does not rekey (`-rekey 0`: a dtun that speaks Hello version 2 without the REKEY
//! flag, as the release before this one did) works with one that does, both ways, without a
//! single rekey (and without roaming, which rides on rekeying's epochs).
//!
//!   ns server 172.31.250.1 ── veth ── ns client 172.31.250.2
//!
//! Needs root, /dev/net/tun, iproute2, iputils-ping and nftables.
//! Run one test: `cargo test --test rekey -- --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::{Netns, Proc, Topo, only_tun, path_str, start_client, start_server, wait_p2p};

const KEY: &str = "rekey-test-key-0123456789";
/// What the client logs at each rekey (at -v), and the server.
const CLIENT_REKEYED: &str = "rekeyed: epoch ";
const SERVER_REKEYED: &str = ": rekeyed, epoch ";

/// The newest epoch a log names after `needle`.
fn last_epoch(log: &str, needle: &str) -> u16 {
    log.lines()
        .filter_map(|l| l.split(needle).nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(1)
}

/// A server and a client with these extra flags; the client's tunnel is up. Returns the
/// server's tunnel address as the client sees it.
fn up(topo: &Topo, server: &[&str], client: &[&str]) -> (Proc, Proc, String) {
    let mut sargs = vec!["-key", KEY, "-v"];
    sargs.extend_from_slice(server);
    let s = start_server(&topo.server, 443, &sargs);
    let mut cargs = vec!["-host", "172.31.250.1", "-key", KEY, "-id", "rekeyer", "-v"];
    cargs.extend_from_slice(client);
    let c = start_client(topo.client(), &cargs);
    let dev = only_tun(topo.client());
    let (_, peer) = wait_p2p(topo.client(), &dev);
    (s, c, peer.to_string())
}

/// Pings `addr` from `ns` 5 times a second until `until` holds (checked between bursts of
/// 25) or `limit` passes; returns (sent, received).
fn ping_until(
    ns: &Netns,
    addr: &str,
    limit: Duration,
    mut until: impl FnMut() -> bool,
) -> (u32, u32) {
    let deadline = Instant::now() + limit;
    let (mut tx, mut rx) = (0, 0);
    while !until() {
        assert!(
            Instant::now() < deadline,
            "not done within {limit:?} ({rx}/{tx} pings)"
        );
        let (t, r) = ns.ping_stats(addr, 25);
        tx += t;
        rx += r;
    }
    (tx, rx)
}

#[test]
fn a_hundred_rekeys_lose_no_ping() {
    common::need_root!();
    let topo = Topo::pair("rk");
    let (server, client, peer) = up(&topo, &["-rekey", "1s"], &["-rekey", "1s"]);
    let started = Instant::now();
    let (tx, rx) = ping_until(topo.client(), &peer, Duration::from_secs(240), || {
        last_epoch(&client.log(), CLIENT_REKEYED) >= 101
    });
    let took = started.elapsed();
    let epoch = last_epoch(&client.log(), CLIENT_REKEYED);
    eprintln!("{} rekeys in {took:?}, {rx}/{tx} pings", epoch - 1);
    assert_eq!(tx, rx, "pings lost across the rekeys");
    // The server followed each one (its own log names the epochs it took).
    let server_epoch = last_epoch(&server.log(), SERVER_REKEYED);
    assert!(
        server_epoch >= epoch,
        "server at {server_epoch}, client at {epoch}"
    );
    // Both sides' status says so.
    let c = &common::status::json(topo.client(), None)["tunnel"]["session"]["rekey"];
    let s = &common::status::json(&topo.server, None)["clients"][0]["session"]["rekey"];
    for (side, r) in [("client", c), ("server", s)] {
        assert_eq!(r["on"], true, "{side}: {r}");
        assert_eq!(r["post_quantum"], true, "{side}: {r}");
        assert!(r["epoch"].as_u64().unwrap() >= 101, "{side}: {r}");
    }
}

#[test]
fn a_hundred_rekeys_under_loss_keep_the_session() {
    common::need_root!();
    let topo = Topo::pair("rl");
    let (server, client, peer) = up(
        &topo,
        &["-rekey", "1s", "-keepalive", "2s"],
        &["-rekey", "1s", "-keepalive", "2s"],
    );
    // The loss starts once the session is up (a lost setup message costs a reconnect by
    // design, tests/lifecycle.rs lossy_underlay).
    let rules = topo.dir.file("lossy.nft", common::LOSSY_NFT.as_bytes());
    let out = topo.client().run("nft", &["-f", path_str(&rules)]);
    assert!(out.status.success(), "nft -f: {out:?}");
    let (tx, rx) = ping_until(topo.client(), &peer, Duration::from_secs(400), || {
        last_epoch(&client.log(), CLIENT_REKEYED) >= 101
    });
    eprintln!("{rx}/{tx} pings under 10 % loss each way");
    let log = client.log();
    assert_eq!(
        common::lines_with(&log, &[dtun::client::LOG_TUNNEL_UP]),
        1,
        "the session was lost and set up again:\n{log}"
    );
    assert!(
        rx * 100 >= tx * 60,
        "{rx}/{tx}: far more lost than the link loses"
    );
    assert!(last_epoch(&server.log(), SERVER_REKEYED) >= 101);
}

/// A peer without rekeying (`-rekey 0`: Hello without the REKEY flag, as the previous release)
/// and one with it: the session works both ways round, and nobody rekeys.
#[test]
fn a_peer_that_does_not_rekey_works_with_one_that_does() {
    common::need_root!();
    for (tag, server, client) in [("rn", "0", "1s"), ("ro", "1s", "0")] {
        let topo = Topo::pair(tag);
        let (server, client, peer) = up(&topo, &["-rekey", server], &["-rekey", client]);
        // 8 s of pings: several rekey periods of traffic for the side that would.
        let (tx, rx) = topo.client().ping_stats(&peer, 40);
        assert_eq!(tx, rx, "pings lost ({tag})");
        assert_eq!(
            last_epoch(&client.log(), CLIENT_REKEYED),
            1,
            "{}",
            client.log()
        );
        assert_eq!(
            last_epoch(&server.log(), SERVER_REKEYED),
            1,
            "{}",
            server.log()
        );
        let c = &common::status::json(topo.client(), None)["tunnel"]["session"];
        assert_eq!(c["rekey"]["on"], false, "{c}");
        assert_eq!(c["rekey"]["post_quantum"], false, "{c}");
        // Roaming rides on rekeying's epochs: neither side roams, nobody sends CID records.
        assert_eq!(c["roaming"]["on"], false, "{c}");
        let s = &common::status::json(&topo.server, None)["clients"][0]["session"];
        assert_eq!(s["roaming"]["on"], false, "{s}");
    }
}

/// A client whose sequence numbers are nearly used up (started near the end by a test-only
/// variable) rekeys at once instead of closing: the next epoch starts at sequence 0, the
/// pings go on, the session is never set up again (tests/hostile_peers.rs has the close and
/// reconnect without rekeying).
#[test]
fn a_client_near_the_end_of_its_sequence_numbers_rekeys_instead_of_reconnecting() {
    common::need_root!();
    let topo = Topo::pair("rx");
    let s = start_server(&topo.server, 443, &["-key", KEY, "-v"]);
    // 2^48 - 2^16 - 2000: fewer than a rekey's reserve left, a few seconds of pings from
    // the hard limit.
    let near = ((1u64 << 48) - (1 << 16) - 2000).to_string();
    let client = common::start_client_env(
        topo.client(),
        &["-host", "172.31.250.1", "-key", KEY, "-id", "rekeyer", "-v"],
        &[("DTUN_TEST_FIRST_SEQUENCE", near.as_str())],
    );
    let dev = only_tun(topo.client());
    let (_, peer) = wait_p2p(topo.client(), &dev);
    let (tx, rx) = ping_until(
        topo.client(),
        &peer.to_string(),
        Duration::from_secs(60),
        || last_epoch(&client.log(), CLIENT_REKEYED) >= 2,
    );
    // Past where epoch 1's numbers would have run out: 2000 records at 5 pings a second.
    let (tx2, rx2) = topo.client().ping_stats(&peer.to_string(), 30);
    let log = client.log();
    assert_eq!(
        common::lines_with(&log, &[dtun::client::LOG_TUNNEL_UP]),
        1,
        "set up again:\n{log}"
    );
    assert!(!log.contains("keys are nearly used up"), "{log}");
    assert_eq!((tx, tx2), (rx, rx2), "pings lost");
    assert!(last_epoch(&s.log(), SERVER_REKEYED) >= 2);
}
