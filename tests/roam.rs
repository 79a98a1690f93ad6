//! Roaming (RFC 9146 connection IDs, AES-GCM sessions between dtun peers), end to end: the
//! server finds a session by its connection ID, and a record from a new address that
//! authenticates, is no replay and is the newest yet starts a path challenge; the client's
//! answer from there moves the session (`moved from A to B` in the server's log, the status'
//! `endpoint` and `session.roaming.moves`). No move takes a new handshake.
//!
//! `roams_when_the_client_readdresses`: five times the client's address goes (a new one
//! first): the client re-binds (`rebound`) and pings come back within 15 s each, 5 s median.
//!
//! ```text
//!   ns server 172.31.230.1 ── veth ── ns client 172.31.230.2, then .11, .12, ... .15
//! ```
//!
//! The other three use a relay of the test's own (tests/tools/roam_relay.py) in a middle
//! namespace: a NAT that rebinds (`switch`: a new source port towards the server), and an
//! on-path attacker sending, from other ports, records with the session's connection ID and
//! a forged tag, a replayed record, and an authentic record older than the newest. The NAT's
//! new ports move the session (15 s each, 5 s median); nothing of the attacker's does (same
//! endpoint, 0 moves, nothing sent back to its ports, pings go on), and the forgeries count
//! as `bad_tag` drops, the replay as a `replay` drop:
//!
//! ```text
//!   ns client 172.31.232.2 ── ns mid 172.31.232.1 | 172.31.233.1 ── ns server 172.31.233.2
//!   dtun client -host 172.31.232.1    roam_relay.py :443 -> 172.31.233.2:443
//! ```
//!
//! `compat_and_ccm8_sessions_do_not_roam`: `-cipher ccm8` and `-compat` sessions show
//! roaming off (172.31.234.x and 172.31.235.x).

//!
//! Needs root, /dev/net/tun, iproute2, iputils-ping, procps (sysctl) and python3.
//! Run one test: `cargo test --test roam -- --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::roam::{Relay, endpoint, entry, first_reply, plain, roaming, wait_entry, wait_roaming};
use common::{Netns, Proc, TestDir, Topo, UP, lines_with, only_tun, veth};
use common::{start_client, start_server, wait_p2p};
use serde_json::Value;

const KEY: &str = "roam-test-key-0123456789";
const ID: &str = "roamer";
const RELAY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/roam_relay.py");
/// The longest one move may keep pings from coming back, and the median over a test's moves.
const MOVE_LIMIT: Duration = Duration::from_secs(15);
const MEDIAN_LIMIT: Duration = Duration::from_secs(5);
/// What the server logs at a move (`moved from A to B`) and the client when it re-binds.
const MOVED: &str = "moved from ";
const REBOUND: &str = "rebound";

fn client_args<'a>(host: &'a str, id: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["-host", host, "-key", KEY, "-id", id, "-v"];
    args.extend_from_slice(extra);
    args
}

/// The server's end of the client's tunnel, once the client's TUN has its addresses.
fn tunnel_peer(ns: &Netns) -> String {
    let dev = only_tun(ns);
    wait_p2p(ns, &dev).1.to_string()
}

fn drops(e: &Value, reason: &str) -> u64 {
    common::status::u(&e["traffic"]["drops"][reason])
}

/// Move `k`, begun at `t0`, from endpoint `from` to `to` (`ip:port`, or `ip:` for any port):
/// a ping comes back, the status shows the endpoint and `k` moves or more, the server logged
/// the move. Returns how long the pings took to come back, and the new endpoint.
fn follow_move(
    (server_ns, server): (&Netns, &Proc),
    client: &Netns,
    peer: &str,
    k: u64,
    (from, to): (&str, &str),
    t0: Instant,
) -> (Duration, String) {
    let what = format!("move {k} ({from} -> {to})");
    let took = first_reply(client, peer, t0, MOVE_LIMIT)
        .unwrap_or_else(|| panic!("{what}: no ping came back within {MOVE_LIMIT:?}"));
    let want = format!("{what}: the endpoint and roaming.moves >= {k}");
    let e = wait_entry(server_ns, ID, &want, MOVE_LIMIT, |e| {
        let at = endpoint(e);
        (at == to || (to.ends_with(':') && at.starts_with(to))) && roaming(e).1 >= k
    });
    let to = endpoint(&e);
    let line = format!("{MOVED}{from} to {to}");
    common::wait_for(MOVE_LIMIT, &format!("the server to log {line:?}"), || {
        plain(&server.log()).contains(&line)
    });
    (took, to)
}

/// After `times.len()` moves: their median within [`MEDIAN_LIMIT`], as many counted.
fn assert_moves(what: &str, server: &Netns, times: &[Duration]) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let m = sorted[sorted.len() / 2];
    eprintln!("{what}: pings back after {times:?}, median {m:?}");
    assert!(
        m <= MEDIAN_LIMIT,
        "{what}: median {m:?} over {MEDIAN_LIMIT:?}"
    );
    let moves = times.len() as u64;
    let e = entry(server, ID);
    assert_eq!(roaming(&e), (true, moves), "{what}: other moves counted");
}

/// One session all along: the server started one for [`ID`], the client came up once and
/// never reconnected (the logs of both are printed above a failure).
fn assert_one_session(server: &Proc, client: &Proc) {
    let started = format!("client {ID} {}", dtun::server::LOG_CONNECTED);
    let n = lines_with(&server.log(), &[&started]);
    assert_eq!(
        n, 1,
        "the server logged {n} session starts ({started:?}), not one"
    );
    let log = client.log();
    let ups = lines_with(&log, &[dtun::client::LOG_TUNNEL_UP]);
    assert_eq!(ups, 1, "the client's tunnel came up {ups} times, not once");
    let again = lines_with(&log, &["reconnecting"]);
    assert_eq!(again, 0, "the client reconnected {again} times");
}

impl Relay {
    /// Nothing came back from the server to the ports the relay sent copies and forgeries
    /// from (a path challenge there would mean the server took them for a move).
    fn assert_no_side_replies(&self) {
        let log = self.p.log();
        let side: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("side port="))
            .collect();
        assert!(
            side.is_empty(),
            "the server answered the relay's side ports: {side:?}"
        );
    }
}

/// `value` of `key=value` in a relay line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in the relay's line {line:?}"))
}

fn assert_cid_record(relay_line: &str) {
    let t = field(relay_line, "type");
    assert_eq!(t, "25", "not a record with a CID: {relay_line}");
}

/// Where the server sees the relay's upstream sockets from.
const MID_UP: &str = "172.31.233.1";

/// Client ── mid (roam_relay.py) ── server, the client's tunnel up through the relay. Fields
/// drop in order: the processes before the namespaces.
struct Relayed {
    client: Proc,
    server: Proc,
    relay: Relay,
    /// The server's end of the tunnel.
    peer: String,
    /// The relay's first upstream port.
    port: String,
    /// `clients[0]`: the client's namespace, `clients[1]`: the middle one.
    topo: Topo,
}

fn relayed(tag: &str) -> Relayed {
    let dir = TestDir::new(tag);
    let server = Netns::new(&format!("{tag}s"), &dir);
    let client = Netns::new(&format!("{tag}c"), &dir);
    let mid = Netns::new(&format!("{tag}m"), &dir);
    let (c_ip, m_ip) = ("172.31.232.2/24", "172.31.232.1/24");
    veth(&client, "eth0", c_ip, &mid, "eth0", m_ip);
    let (m_ip, s_ip) = ("172.31.233.1/24", "172.31.233.2/24");
    veth(&mid, "eth1", m_ip, &server, "eth0", s_ip);
    let topo = Topo {
        server,
        clients: vec![client, mid],
        dir,
    };
    let args = [
        RELAY,
        "--listen",
        "172.31.232.1:443",
        "--server",
        "172.31.233.2:443",
    ];
    let mut p = topo.clients[1]
        .command("python3")
        .args(&args)
        .stdin_piped()
        .spawn();
    p.wait_log("relaying", UP);
    // Its first line: "relaying ... port=P".
    let port = field(&p.log(), "port").to_string();
    let server = start_server(&topo.server, 443, &["-key", KEY, "-v"]);
    let client = start_client(topo.client(), &client_args("172.31.232.1", ID, &[]));
    let peer = tunnel_peer(topo.client());
    Relayed {
        client,
        server,
        relay: Relay::new(p, "roam_relay.py"),
        peer,
        port,
        topo,
    }
}

impl Relayed {
    /// Roaming on, the client's records carry the connection ID (the relay captured it);
    /// returns the server's status entry.
    fn roaming_with_cid(&mut self) -> Value {
        let e = wait_roaming(&self.topo.server, ID);
        let deadline = Instant::now() + UP;
        while !self.relay.p.log().contains("captured cid=") {
            assert!(
                Instant::now() < deadline,
                "no client record with a connection ID (first byte 25) went through the relay"
            );
            self.topo.client().ping_ok(&self.peer, 1);
        }
        assert_eq!(endpoint(&e), format!("{MID_UP}:{}", self.port));
        e
    }

    fn assert_pings(&self, after: &str) {
        let ok = self.topo.client().ping_ok(&self.peer, 3);
        assert!(ok, "no ping through the tunnel after {after}");
    }

    fn assert_not_moved(&self, endpoint_before: &str) {
        let e = entry(&self.topo.server, ID);
        assert_eq!(endpoint(&e), endpoint_before, "the session moved");
        assert_eq!(roaming(&e), (true, 0), "roaming.moves counted a move");
        let moved = lines_with(&self.server.log(), &[MOVED]);
        assert_eq!(moved, 0, "the server logged {moved} moves");
        self.relay.assert_no_side_replies();
        assert_one_session(&self.server, &self.client);
    }
}

#[test]
fn roams_when_the_client_readdresses() {
    common::need_root!();
    let topo = Topo::on_nets("rmA", &[230]);
    let ns = topo.client();
    // The new address takes over when the old one goes (without this the kernel deletes the
    // secondary addresses of a subnet with its primary one).
    let out = ns.run(
        "sysctl",
        &["-qw", "net.ipv4.conf.eth0.promote_secondaries=1"],
    );
    assert!(out.status.success(), "sysctl: {out:?}");
    let server = start_server(&topo.server, 443, &["-key", KEY, "-v"]);
    let client = start_client(ns, &client_args("172.31.230.1", ID, &[]));
    let peer = tunnel_peer(ns);
    let mut from = endpoint(&wait_roaming(&topo.server, ID));
    let mut old = "172.31.230.2".to_string();
    assert!(from.starts_with(&format!("{old}:")), "endpoint {from}");
    let mut times = Vec::new();
    for k in 1..=5u64 {
        let new = format!("172.31.230.{}", 10 + k);
        ns.ip(&["addr", "add", &format!("{new}/24"), "dev", "eth0"]);
        ns.ip(&["addr", "del", &format!("{old}/24"), "dev", "eth0"]);
        let t0 = Instant::now();
        let to = format!("{new}:");
        let (took, to) = follow_move((&topo.server, &server), ns, &peer, k, (&from, &to), t0);
        times.push(took);
        (from, old) = (to, new);
    }
    assert_moves("5 readdressings", &topo.server, &times);
    let rebound = lines_with(&client.log(), &[REBOUND]);
    assert!(
        rebound >= 5,
        "the client logged {rebound} re-binds for 5 readdressings"
    );
    assert_one_session(&server, &client);
}

#[test]
fn roams_when_a_nat_changes_the_port() {
    common::need_root!();
    let mut r = relayed("rmN");
    let mut from = endpoint(&r.roaming_with_cid());
    let mut times = Vec::new();
    for k in 1..=3u64 {
        let n = r.relay.send("switch");
        let line = r.relay.expect(n, "switched", UP);
        let t0 = Instant::now();
        let to = format!("{MID_UP}:{}", field(&line, "port"));
        let server = (&r.topo.server, &r.server);
        let (took, to) = follow_move(server, r.topo.client(), &r.peer, k, (&from, &to), t0);
        times.push(took);
        from = to;
    }
    assert_moves("3 NAT rebindings", &r.topo.server, &times);
    assert_one_session(&r.server, &r.client);
}

#[test]
fn a_spoofed_cid_from_another_address_moves_nothing() {
    common::need_root!();
    let mut r = relayed("rmS");
    let before = r.roaming_with_cid();
    let bad_tag = drops(&before, "bad_tag");
    let n = r.relay.send("forge 20");
    let line = r.relay.expect(n, "forged", UP);
    // The session's connection ID led them to the session, whose keys refuse them.
    wait_entry(
        &r.topo.server,
        ID,
        &format!("20 more bad_tag drops after {line:?}"),
        UP,
        |e| drops(e, "bad_tag") >= bad_tag + 20,
    );
    r.assert_pings("the forgeries");
    r.assert_not_moved(&endpoint(&before));
}

#[test]
fn replayed_and_older_records_from_a_new_address_move_nothing() {
    common::need_root!();
    let mut r = relayed("rmR");
    let before = r.roaming_with_cid();
    let replays = drops(&before, "replay");

    // (a) The client's latest record again, from another port: a replay.
    let n = r.relay.send("replay");
    let line = r.relay.expect(n, "replayed", UP);
    assert_cid_record(&line);
    wait_entry(
        &r.topo.server,
        ID,
        &format!("a replay drop after {line:?}"),
        UP,
        |e| drops(e, "replay") > replays,
    );
    r.assert_pings("the replay");

    // (b) One record held back while 5 newer ones pass, then sent from another port:
    // authentic and never seen, but not the newest.
    let n = r.relay.send("hold 5");
    let deadline = Instant::now() + UP;
    while r.relay.line(n, "released").is_none() {
        assert!(
            Instant::now() < deadline,
            "the relay never released the held record"
        );
        r.topo.client().ping_stats(&r.peer, 2);
    }
    let line = r.relay.expect(n, "released", UP);
    assert_cid_record(&line);
    let num = |s: &str| s.parse::<u64>().unwrap();
    let held = (num(field(&line, "epoch")), num(field(&line, "seq")));
    let (e2, s2) = field(&line, "newest").split_once('/').unwrap();
    assert!(
        held < (num(e2), num(s2)),
        "the held record is not older: {line}"
    );
    // The server reads its one socket in order: a ping answered after the release means
    // the held record has been dealt with.
    r.assert_pings("the older record");
    r.assert_not_moved(&endpoint(&before));
}

#[test]
fn compat_and_ccm8_sessions_do_not_roam() {
    common::need_root!();
    let topo = Topo::on_nets("rmC", &[234, 235]);
    let _server = start_server(&topo.server, 443, &["-key", KEY, "-v"]);
    let mut clients = Vec::new();
    let flavours: [(&str, &[&str]); 2] = [("ccm8", &["-cipher", "ccm8"]), ("compat", &["-compat"])];
    for (i, (id, flags)) in flavours.into_iter().enumerate() {
        let host = format!("172.31.{}.1", 234 + i);
        let ns = &topo.clients[i];
        clients.push(start_client(ns, &client_args(&host, id, flags)));
        let peer = tunnel_peer(ns);
        assert!(ns.ping_ok(&peer, 3), "{id}: no ping through the tunnel");
        let e = entry(&topo.server, id);
        assert_eq!(e["session"]["cipher"], "aes-128-ccm8", "{id}: {e:#}");
        assert_eq!(roaming(&e), (false, 0), "{id}: {e:#}");
    }
}
