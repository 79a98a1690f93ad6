//! An outside review of roaming (RFC 9146 connection IDs, docs/PROTOCOL.md "Roaming"): what an
//! on-path attacker, another client holding a key of its own, and the host around a client
//! can do to a roaming session. The tests marked FOUND failed on the reviewed code (fef6c6d):
//! an on-path copier took the session, challenges were spaced per address only, the default
//! MTU left no room for CID records; they pass since the fixes (the client's own copy of a
//! record from the address a session left sends it back and bars the copier; challenges per
//! session; a roaming client's MTU 9 bytes smaller). The others held and stay as regression
//! checks.
//!
//! Most use a relay of the review's own (tests/tools/roam_review_relay.py) in a middle
//! namespace: a NAT for one or two clients, with an attacker's powers besides (it copies a
//! client's records and sends the copy first from other ports of its own, holds records back,
//! passes what the server sends to those ports on to the client, or not). It never decrypts
//! anything.
//!
//! ```text
//!   ns client "v" 172.31.240.2 ── mid 172.31.240.1 ┐
//!   ns client "m" 172.31.242.2 ── mid 172.31.242.1 ┤ mid 172.31.241.1 ── ns server 172.31.241.2
//!   dtun client -host 172.31.24x.1                    roam_review_relay.py :443 -> server :443
//! ```
//!
//! The others join a client and the server directly (172.31.243.0/24, 172.31.242.0/24 and
//! 172.31.240.0/24 in namespaces of their own), and four checks need no root at all.
//!
//! Needs root, /dev/net/tun, iproute2, iputils-ping, procps (sysctl) and python3.
//! Run one test: `cargo test --release --test roam_review NAME -- --nocapture`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::roam::{Relay, endpoint, entry, first_reply, roaming, wait_entry, wait_roaming};
use common::{Netns, Proc, TestDir, Topo, UP, assert_running, lines_with, only_tun, veth};
use common::{start_client, start_server, wait_p2p};
use dtun_proto::proto::Control;
use dtun_proto::session::server::{CHALLENGE_EVERY, Path, Seen};
use serde_json::Value;

const KEY: &str = "roam-review-key-0123456789";
const RELAY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/tools/roam_review_relay.py"
);
/// Where the server sees the relay's sockets from, and the server.
const MID_UP: &str = "172.31.241.1";
const SERVER_IP: &str = "172.31.241.2";
/// The longest a move (or a move back) may keep pings from coming back.
const MOVE_LIMIT: Duration = Duration::from_secs(15);
/// What the server logs at a move, and a client at a re-bind.
const MOVED: &str = "moved from ";
const REBOUND: &str = "rebound";
/// What the server logs when the client's own copy of a record shows a copier took the
/// session.
const CAUGHT: &str = "raced them there";
/// The plaintext of a path challenge is 10 bytes (00 0a ‖ token): 47 bytes as a GCM record.
const CHALLENGE_LEN: usize = 13 + 8 + 10 + 16;

// ---------------------------------------------------------------------------------------------
// Status and logs

/// A counter of the `Ip:` rows of /proc/net/snmp in `ns` (`FragCreates`, `ReasmReqds`, ...).
fn ip_counter(ns: &Netns, name: &str) -> u64 {
    let out = ns.run("cat", &["/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = text.lines().filter(|l| l.starts_with("Ip: "));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        panic!("no Ip lines in /proc/net/snmp of {}:\n{text}", ns.name());
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no Ip counter {name} in {}", ns.name()))
}

/// The UDP datagrams `ns` sent so far.
fn udp_out(ns: &Netns) -> u64 {
    ns.udp_counters()["OutDatagrams"]
}

// ---------------------------------------------------------------------------------------------
// The relay

impl Relay {
    /// Sends a command and waits for its answer.
    fn run(&mut self, cmd: &str, word: &str) -> String {
        let k = self.send(cmd);
        self.expect(k, word, UP)
    }

    /// The relay's lines that start with `prefix`.
    fn lines(&self, prefix: &str) -> Vec<String> {
        self.p
            .log()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }
}

/// `value` of `key=value` in a relay line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in the relay's line {line:?}"))
}

/// One client of a relayed rig: its link's name in the relay, its id and key, its flags.
#[derive(Clone, Copy)]
struct Who {
    link: &'static str,
    id: &'static str,
    key: &'static str,
    extra: &'static [&'static str],
}

const VICTIM: Who = Who {
    link: "v",
    id: "victim",
    key: KEY,
    extra: &[],
};

/// Clients ── mid (roam_review_relay.py) ── server. Fields drop in order: the processes before
/// the namespaces.
struct Relayed {
    clients: Vec<Proc>,
    server: Proc,
    relay: Relay,
    who: Vec<Who>,
    /// The server's end of each client's tunnel.
    peers: Vec<String>,
    /// `clients[i]`: client i's namespace; the last one: the middle one.
    topo: Topo,
}

/// A relayed rig for up to two clients (links `v` on 172.31.240.0/24, the second on
/// 172.31.242.0/24); `server_extra`: the server's flags besides `-v`.
fn relayed(tag: &str, who: &[Who], server_extra: &[&str]) -> Relayed {
    assert!((1..=2).contains(&who.len()));
    let dir = TestDir::new(tag);
    let server = Netns::new(&format!("{tag}s"), &dir);
    let mid = Netns::new(&format!("{tag}m"), &dir);
    let mut clients = Vec::new();
    let mut args = vec![
        RELAY.to_string(),
        "--server".to_string(),
        format!("{SERVER_IP}:443"),
    ];
    for (i, w) in who.iter().enumerate() {
        let net = [240, 242][i];
        let c = Netns::new(&format!("{tag}c"), &dir);
        let (c_ip, m_ip) = (format!("172.31.{net}.2/24"), format!("172.31.{net}.1/24"));
        veth(&c, "eth0", &c_ip, &mid, &format!("eth{}", 2 * i), &m_ip);
        args.push("--link".to_string());
        args.push(format!("{}=172.31.{net}.1:443", w.link));
        clients.push(c);
    }
    veth(
        &mid,
        "eth1",
        &format!("{MID_UP}/24"),
        &server,
        "eth0",
        &format!("{SERVER_IP}/24"),
    );
    clients.push(mid);
    let topo = Topo {
        server,
        clients,
        dir,
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = topo.clients[who.len()]
        .command("python3")
        .args(&args)
        .stdin_piped()
        .spawn();
    for w in who {
        p.wait_log(&format!("relaying link={} ", w.link), UP);
    }
    let mut sargs = vec!["-v"];
    sargs.extend_from_slice(server_extra);
    let server = start_server(&topo.server, 443, &sargs);
    let mut procs = Vec::new();
    let mut peers = Vec::new();
    for (i, w) in who.iter().enumerate() {
        let host = format!("172.31.{}.1", [240, 242][i]);
        let mut cargs = vec!["-host", &host, "-key", w.key, "-id", w.id, "-v"];
        cargs.extend_from_slice(w.extra);
        procs.push(start_client(&topo.clients[i], &cargs));
        let dev = only_tun(&topo.clients[i]);
        peers.push(wait_p2p(&topo.clients[i], &dev).1.to_string());
    }
    Relayed {
        clients: procs,
        server,
        relay: Relay::new(p, "roam_review_relay.py"),
        who: who.to_vec(),
        peers,
        topo,
    }
}

impl Relayed {
    fn ns(&self, i: usize) -> &Netns {
        &self.topo.clients[i]
    }

    fn entry(&self, i: usize) -> Value {
        entry(&self.topo.server, self.who[i].id)
    }

    /// Roaming on for client `i` and its records carry the connection ID (the relay saw
    /// one); returns the server's status entry.
    fn roaming_with_cid(&mut self, i: usize) -> Value {
        let e = wait_roaming(&self.topo.server, self.who[i].id);
        let want = format!("captured link={} cid=", self.who[i].link);
        let deadline = Instant::now() + UP;
        while !self.relay.p.log().contains(&want) {
            assert!(
                Instant::now() < deadline,
                "no record with a connection ID of client {} went through the relay",
                self.who[i].id
            );
            self.ns(i).ping_ok(&self.peers[i], 1);
        }
        assert!(
            endpoint(&e).starts_with(&format!("{MID_UP}:")),
            "endpoint {}",
            endpoint(&e)
        );
        e
    }

    fn assert_pings(&self, i: usize, after: &str) {
        let ok = self.ns(i).ping_ok(&self.peers[i], 3);
        assert!(ok, "no ping through the tunnel of client {i} after {after}");
    }

    /// Pings through client `i`'s tunnel until `cond` holds for its status entry, or
    /// `limit` passed; returns the last entry.
    fn ping_until(&self, i: usize, limit: Duration, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            self.ns(i).ping_ok(&self.peers[i], 1);
            let e = self.entry(i);
            if cond(&e) || Instant::now() >= deadline {
                return e;
            }
        }
    }

    fn caught(&self) -> bool {
        self.server.log().contains(CAUGHT)
    }

    fn moves_logged(&self) -> usize {
        lines_with(&self.server.log(), &[MOVED])
    }

    fn stats(&mut self, link: &str) -> String {
        self.relay.run(&format!("stats {link}"), "stats")
    }
}

// ---------------------------------------------------------------------------------------------
// FINDING: an on-path copier takes the session (one race won) and keeps it (every race won).

/// An attacker on the client's path that can copy and inject but drops nothing: it sends a
/// copy of each of the client's records first from a port of its own, and passes what the
/// server sends to that port on to the client. The server challenges the copier's port, the
/// client answers the challenge it was handed (from where it is), the copier's copy of the
/// answer comes first from the challenged port: the session moves to the attacker's port and
/// all of the server's traffic goes there. docs/PROTOCOL.md says such an attacker "gets a
/// challenge it cannot read, not the session's traffic".
///
/// FOUND (failed on fef6c6d, fixed since): the session moves to the copier's port. What held: once the copier
/// stops, the client's next record moves the session back within a ping or two.
#[test]
fn a_copier_that_hands_on_the_challenge_loses_the_session_at_once() {
    common::need_root!();
    let mut r = relayed("rvH", &[VICTIM], &["-key", KEY]);
    let home = endpoint(&r.roaming_with_cid(0));
    let line = r.relay.run("mirror v on 65535", "mirror");
    let copier = format!("{MID_UP}:{}", field(&line, "port"));
    let e = r.ping_until(0, Duration::from_secs(10), |e| endpoint(e) == copier);
    let taken = endpoint(&e) == copier;
    // While it sits there, the session's traffic flows through the copier's port.
    let pings_while_taken = r.ns(0).ping_stats(&r.peers[0], 10);
    let at_copier = r.stats("v");
    // The copier stops: no more copies, nothing passed back from its port.
    r.relay.run("mirror v off", "mirror");
    r.relay.run("pass v 0", "pass");
    let t0 = Instant::now();
    let back = first_reply(r.ns(0), &r.peers[0], t0, MOVE_LIMIT);
    let after = r.entry(0);
    eprintln!(
        "copier {copier}: taken={taken} (moves {}), pings while taken {pings_while_taken:?}, \
         relay {at_copier}; after it stopped: pings back after {back:?}, endpoint {}",
        roaming(&e).1,
        endpoint(&after)
    );
    assert!(
        back.is_some(),
        "once the copier stopped, no ping came back within {MOVE_LIMIT:?}"
    );
    assert!(
        r.caught(),
        "the server never caught the copier (no `{CAUGHT}` line): did the attack run?"
    );
    assert!(
        !taken,
        "FINDING: a copier that never dropped a datagram moved the session from {home} to its \
         own port {copier} ({} moves logged); while there the server sent it the session's \
         traffic ({at_copier}: mirror_got counts what reached the attacker's port)",
        r.moves_logged()
    );
}

/// The same copier, but it goes on copying every record and passes on only what is small
/// enough to be a path challenge or a Pong (so the client's keepalive never notices): the
/// client's own records now always come second (replays), so the session never moves back,
/// and the tunnel carries nothing while the attack lasts.
///
/// FOUND (failed on fef6c6d, fixed since): pings through the tunnel stop while the copier runs, past the
/// client's dead-peer detection: it never reconnects (the Pongs reach it).
#[test]
fn a_copier_that_keeps_racing_cannot_starve_the_tunnel() {
    common::need_root!();
    let mut r = relayed("rvP", &[VICTIM], &["-key", KEY]);
    let home = endpoint(&r.roaming_with_cid(0));
    let line = r.relay.run("mirror v on 64", "mirror");
    let copier = format!("{MID_UP}:{}", field(&line, "port"));
    let e = r.ping_until(0, Duration::from_secs(10), |e| endpoint(e) == copier);
    // 30 pings over 6 s with the attack on.
    let (sent, got) = r.ns(0).ping_stats(&r.peers[0], 30);
    let at = endpoint(&r.entry(0));
    // Past the client's dead-peer detection (3 keepalive periods of 10 s): the Pongs reach
    // it, so it never notices. Pings on the way, 1 s apart.
    let (mut later_sent, mut later_got) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(35);
    while Instant::now() < deadline {
        let (s, g) = r.ns(0).ping_stats(&r.peers[0], 1);
        (later_sent, later_got) = (later_sent + s, later_got + g);
        assert_running(&mut r.clients[0], "dtun client");
    }
    let stats = r.stats("v");
    let reconnects = lines_with(&r.clients[0].log(), &["reconnecting"]);
    let at_end = endpoint(&r.entry(0));
    eprintln!(
        "copier {copier}: endpoint {} after the first pings, {at} after 6 s, {at_end} after 41 \
         s; {got}/{sent} pings back, then {later_got}/{later_sent}; client reconnects \
         {reconnects}; relay {stats}",
        endpoint(&e)
    );
    assert!(
        r.caught(),
        "the server never caught the copier (no `{CAUGHT}` line): did the attack run?"
    );
    assert!(
        got * 2 >= sent && at == home,
        "FINDING: a copier that drops nothing starved the tunnel: {got}/{sent} pings came back \
         while the session sat at the copier's port {at} (home {home}), then {later_got}/\
         {later_sent} over 35 s more, the session still at {at_end}; the client's own records \
         lost every race and counted as replays; client reconnects: {reconnects}"
    );
}

// ---------------------------------------------------------------------------------------------
// FINDING: challenges (and so moves) are spaced per address only.

/// docs/PROTOCOL.md: "at most one [challenge] each 250 ms per session". The code spaces them
/// per address: a challenge to another address goes at once and replaces the one in flight.
///
/// FOUND (failed on fef6c6d, fixed since): a second address is challenged at once.
#[test]
fn path_challenges_are_spaced_per_session() {
    let rng = ring::rand::SystemRandom::new();
    let t0 = Instant::now();
    let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    let mut p = Path::new(a);
    let mut challenged = 0;
    for i in 0..20u16 {
        let from = SocketAddr::from(([198, 51, 100, 7], 2000 + i));
        let now = t0 + Duration::from_millis(u64::from(i));
        if matches!(p.records_from(now, from, true, &rng), Seen::Challenge(_)) {
            challenged += 1;
        }
    }
    assert!(
        challenged <= 1,
        "FINDING: {challenged} challenges within 20 ms to 20 addresses (one per newer record); \
         the protocol says at most one per {CHALLENGE_EVERY:?} per session, and each one \
         replaced the challenge in flight"
    );
}

/// On the wire: a copier sends each of the client's records first from one of two ports of
/// its own, alternating, and hands on everything the server sends there (a full relay, so
/// the client notices nothing). Each alternation is a fresh challenge to the other port
/// (not spaced: another address) and the answer a move: the session flips between the two as
/// fast as the client sends, and the server logs each move at info, unthrottled.
///
/// FOUND (failed on fef6c6d, fixed since): far more moves than one per 250 ms.
#[test]
fn a_copier_cannot_flip_the_session_between_two_ports() {
    common::need_root!();
    let mut r = relayed("rvF", &[VICTIM], &["-key", KEY]);
    r.roaming_with_cid(0);
    r.relay.run("flip v on", "flip");
    let t0 = Instant::now();
    // 200 pings 10 ms apart: 2 s of traffic.
    let out = r.ns(0).run(
        "ping",
        &[
            "-n",
            "-q",
            "-c",
            "200",
            "-i",
            "0.01",
            "-W",
            "1",
            &r.peers[0],
        ],
    );
    let took = t0.elapsed();
    let stats = r.stats("v");
    r.relay.run("flip v off", "flip");
    let moves = roaming(&r.entry(0)).1;
    let logged = r.moves_logged();
    let allowed = (took.as_millis() / CHALLENGE_EVERY.as_millis()) as u64 + 1;
    eprintln!(
        "{took:?} of pings ({}): {moves} moves, {logged} logged; relay {stats}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or("")
    );
    r.assert_pings(0, "the flipping");
    assert!(
        moves <= allowed,
        "FINDING: the copier moved the session {moves} times in {took:?} (at most {allowed} \
         with one challenge per {CHALLENGE_EVERY:?} and session); the server logged {logged} \
         `client victim moved from A to B` lines at info level"
    );
}

// ---------------------------------------------------------------------------------------------
// FINDING: the default MTU leaves no room for a CID record.

/// The TUN's default MTU is 1500 less the outer headers and a plain record's overhead (37
/// for GCM): `-mtu`'s help says "so nothing fragments". A roaming client seals CID records,
/// 9 bytes more (docs/PROTOCOL.md: 46 a record), so a packet of the TUN's MTU leaves the
/// client as a 1509-byte datagram, which the kernel fragments (IP_PMTUDISC_WANT), and a path
/// that drops fragments (common on mobile networks, which roaming is for) drops it. The
/// server's records stay plain: its packets of that size fit.
///
/// FOUND (failed on fef6c6d, fixed since): the client's full-size packets are fragmented once the session roams.
#[test]
fn a_full_size_packet_leaves_a_roaming_client_in_one_piece() {
    common::need_root!();
    let dir = TestDir::new("rvM");
    let server = Netns::new("rvMs", &dir);
    let client = Netns::new("rvMc", &dir);
    veth(
        &server,
        "eth0",
        "172.31.243.1/24",
        &client,
        "eth0",
        "172.31.243.2/24",
    );
    let topo = Topo {
        server,
        clients: vec![client],
        dir,
    };
    let ns = topo.client();
    let _server = start_server(&topo.server, 443, &["-key", KEY, "-v"]);
    let _client = start_client(
        ns,
        &["-host", "172.31.243.1", "-key", KEY, "-id", "mtu", "-v"],
    );
    let dev = only_tun(ns);
    let peer = wait_p2p(ns, &dev).1.to_string();
    wait_roaming(&topo.server, "mtu");
    let link = ns.ip(&["-o", "link", "show", "dev", &dev]);
    let mtu: usize = link
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu in {link:?}"));
    let size = (mtu - 28).to_string();
    let (c0, s0) = (
        ip_counter(ns, "FragCreates"),
        ip_counter(&topo.server, "FragCreates"),
    );
    let out = ns.run(
        "ping",
        &[
            "-n", "-q", "-M", "do", "-s", &size, "-c", "3", "-W", "1", &peer,
        ],
    );
    let (c1, s1) = (
        ip_counter(ns, "FragCreates"),
        ip_counter(&topo.server, "FragCreates"),
    );
    eprintln!(
        "TUN MTU {mtu}: pings of {mtu} bytes: {}; fragments made: client {}, server {}",
        out.status,
        c1 - c0,
        s1 - s0
    );
    assert!(
        out.status.success(),
        "pings of the TUN's MTU did not cross: {out:?}"
    );
    assert_eq!(
        s1, s0,
        "the server's (plain) records of that size fragmented"
    );
    assert_eq!(
        c1,
        c0,
        "FINDING: {} fragments for 3 packets of the TUN's MTU ({mtu}): a CID record adds 46 \
         bytes, the default MTU leaves room for 37, so each datagram is {} bytes on a \
         1500-byte path",
        c1 - c0,
        mtu + 46 + 28
    );
}

// ---------------------------------------------------------------------------------------------
// Held: late, older and previous-epoch records from elsewhere; the old address after a move.

/// With rekeys every 3 s: a record held back and released from a fresh port once the client
/// seals in the next epoch (authentic, never seen, still readable in the overlap) gets no
/// challenge; after a NAT rebinding moved the session, a record held from before and one
/// released late from the old port move nothing back, and a fresh record copied first from
/// the old port earns that port a challenge which nobody there answers: no move back.
#[test]
fn late_records_previous_epochs_and_the_old_port_move_nothing() {
    common::need_root!();
    let who = Who {
        extra: &["-rekey", "3s"],
        ..VICTIM
    };
    let mut r = relayed("rvL", &[who], &["-key", KEY]);
    let home = endpoint(&r.roaming_with_cid(0));

    // (a) The previous epoch, from elsewhere, during the overlap.
    let k = r.relay.send("hold v epoch side");
    let deadline = Instant::now() + UP;
    while r.relay.line(k, "released").is_none() {
        assert!(
            Instant::now() < deadline,
            "no rekey released the held record"
        );
        r.ns(0).ping_stats(&r.peers[0], 3);
    }
    let rel = r.relay.expect(k, "released", UP);
    let held_epoch: u64 = field(&rel, "epoch").parse().unwrap();
    let newest_epoch: u64 = field(&rel, "newest")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(held_epoch < newest_epoch, "not an older epoch: {rel}");
    r.assert_pings(0, "the previous epoch's record");
    let port = field(&rel, "port");
    let answered = r.relay.lines(&format!("side link=v port={port} "));
    assert!(
        answered.is_empty(),
        "the server answered {port}: {answered:?}"
    );
    let e = r.entry(0);
    assert_eq!((endpoint(&e), roaming(&e).1), (home.clone(), 0), "it moved");

    // (b) A NAT rebinding, the old mapping kept open by the attacker: the session follows.
    let sw = r.relay.run("switch v keep", "switched");
    let new = format!("{MID_UP}:{}", field(&sw, "port"));
    let old = field(&sw, "old").to_string();
    let e = r.ping_until(0, MOVE_LIMIT, |e| endpoint(e) == new);
    assert_eq!(
        (endpoint(&e), roaming(&e).1),
        (new.clone(), 1),
        "no move to {new}"
    );
    // What the server sent to the old port until the move.
    assert!(r.ns(0).ping_ok(&r.peers[0], 2));
    let to_old_before = r.relay.lines("old link=v ").len();

    // (c) A record held across three newer ones, then sent from the old port.
    let k = r.relay.send("hold v 3 old");
    let deadline = Instant::now() + UP;
    while r.relay.line(k, "released").is_none() {
        assert!(
            Instant::now() < deadline,
            "the held record was never released"
        );
        r.ns(0).ping_stats(&r.peers[0], 2);
    }
    let rel = r.relay.expect(k, "released", UP);
    assert_eq!(field(&rel, "port"), old, "{rel}");
    r.assert_pings(0, "the late record from the old port");
    assert_eq!(
        r.relay.lines("old link=v ").len(),
        to_old_before,
        "the old port was challenged for an older record"
    );

    // (d) A fresh record copied first from the old port: the newest, so the old port is
    // challenged; nobody there answers.
    let k = r.relay.send("oldcopy v");
    let deadline = Instant::now() + UP;
    while r.relay.line(k, "oldcopied").is_none() {
        assert!(Instant::now() < deadline, "no record was copied");
        r.ns(0).ping_ok(&r.peers[0], 1);
    }
    r.assert_pings(0, "the copy from the old port");
    let e = r.entry(0);
    assert_eq!(
        (endpoint(&e), roaming(&e).1),
        (new.clone(), 1),
        "the session moved back"
    );
    let to_old = r.relay.lines("old link=v ")[to_old_before..].to_vec();
    assert!(
        to_old.len() <= 1
            && to_old
                .iter()
                .all(|l| l.ends_with(&format!("len={CHALLENGE_LEN}"))),
        "the old port got more than one challenge: {to_old:?}"
    );
    assert_eq!(r.moves_logged(), 1);
    eprintln!("relay:\n{}", r.relay.p.log());
}

// ---------------------------------------------------------------------------------------------
// Held: another key holder's records from the victim's address.

/// Two clients with keys of their own (`-clients`): each one's records copied to the server
/// from the other's address go to their own session by their connection ID (the address's
/// session does not hold it), where they are replays, or, when the copy came first, earn the
/// other's address a challenge under keys it does not have (so it never answers): nobody
/// moves, no session is displaced, both tunnels go on.
#[test]
fn another_clients_records_from_the_victims_address_move_nothing() {
    common::need_root!();
    let dir = TestDir::new("rvXk");
    let keys = dir.file(
        "clients",
        b"victim key=victim-key-0123456789abc\nmallory key=mallory-key-0123456789ab\n",
    );
    let victim = Who {
        key: "victim-key-0123456789abc",
        ..VICTIM
    };
    let mallory = Who {
        link: "m",
        id: "mallory",
        key: "mallory-key-0123456789ab",
        extra: &[],
    };
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let keys = common::path_str(&keys).to_string();
    let mut r = relayed("rvX", &[victim, mallory], &["-clients", &keys]);
    let homes = [
        endpoint(&r.roaming_with_cid(0)),
        endpoint(&r.roaming_with_cid(1)),
    ];
    for (from, to, i_from) in [("m", "v", 1), ("v", "m", 0)] {
        let k = r.relay.send(&format!("cross {from} {to}"));
        let deadline = Instant::now() + UP;
        while r.relay.line(k, "crossed").is_none() {
            assert!(Instant::now() < deadline, "no record of {from} was crossed");
            r.ns(i_from).ping_ok(&r.peers[i_from], 1);
        }
    }
    for (i, home) in homes.iter().enumerate() {
        r.assert_pings(i, "the crossed records");
        let e = r.entry(i);
        assert_eq!((endpoint(&e), roaming(&e)), (home.clone(), (true, 0)));
    }
    assert_eq!(r.moves_logged(), 0);
    assert_eq!(lines_with(&r.server.log(), &["disconnected"]), 0);
}

// ---------------------------------------------------------------------------------------------
// Held: the client's side (address events, the tunnel's own address, -route all).

/// A `-route all` client: a storm of unrelated address events (30 bursts of 20, addresses of
/// a veth link of its own added and removed, over some 3 s) costs at most a keepalive every
/// 2 s and no re-bind; a route to the server through the tunnel (the kernel would now pick
/// the tunnel's address) makes no re-bind onto it; a new address on the real link does, and
/// the session follows.
#[test]
fn a_route_all_client_follows_its_address_never_onto_the_tunnel() {
    common::need_root!();
    let dir = TestDir::new("rvR");
    let server = Netns::new("rvRs", &dir);
    let client = Netns::new("rvRc", &dir);
    veth(
        &server,
        "eth0",
        "172.31.242.1/24",
        &client,
        "eth0",
        "172.31.242.2/24",
    );
    let topo = Topo {
        server,
        clients: vec![client],
        dir,
    };
    let ns = topo.client();
    let out = ns.run(
        "sysctl",
        &["-qw", "net.ipv4.conf.eth0.promote_secondaries=1"],
    );
    assert!(out.status.success(), "sysctl: {out:?}");
    let server = start_server(&topo.server, 443, &["-key", KEY, "-v"]);
    let args = [
        "-host",
        "172.31.242.1",
        "-key",
        KEY,
        "-id",
        "all",
        "-route",
        "all",
        "-v",
    ];
    let client = start_client(ns, &args);
    let dev = only_tun(ns);
    let (tunnel_ip, peer) = wait_p2p(ns, &dev);
    let peer = peer.to_string();
    let home = endpoint(&wait_roaming(&topo.server, "all"));
    assert!(ns.ping_ok(&peer, 2));

    // (a) An event storm.
    ns.ip(&[
        "link", "add", "rvd0", "type", "veth", "peer", "name", "rvd1",
    ]);
    ns.ip(&["link", "set", "rvd0", "up"]);
    ns.ip(&["link", "set", "rvd1", "up"]);
    let mut batch = String::new();
    for i in 0..10 {
        let a = format!("10.250.0.{}/32", 1 + i);
        batch.push_str(&format!("addr add {a} dev rvd0\naddr del {a} dev rvd0\n"));
    }
    let file = topo.dir.file("storm", batch.as_bytes());
    let before = udp_out(ns);
    let t0 = Instant::now();
    // 30 bursts of 20 events, 0.1 s apart: each a wake-up of its own (they settle in 50 ms).
    let storm = format!(
        "for i in $(seq 30); do ip -batch '{}' || exit 1; sleep 0.1; done",
        common::path_str(&file)
    );
    let out = ns.sh(&storm);
    assert!(out.status.success(), "{out:?}");
    // Watch the client's datagrams for 3 s after the storm: the keepalive of the burst, at
    // most one each 2 s, and the periodic one.
    let storm = t0.elapsed();
    let bound = 2 + (storm + Duration::from_secs(3)).as_secs() / 2 + 1;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let sent = udp_out(ns) - before;
        assert!(
            sent <= bound,
            "{sent} datagrams from the client during a {storm:?} address storm (bound {bound})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        lines_with(&client.log(), &[REBOUND]),
        0,
        "re-bound on the storm"
    );
    eprintln!(
        "600 address events in {storm:?}: {} datagrams from the client within 3 s after",
        udp_out(ns) - before
    );

    // (b) The server routed through the tunnel (a misconfiguration): no re-bind onto it.
    ns.ip(&["route", "add", "172.31.242.1/32", "dev", &dev]);
    let mark = format!("{:#x}", dtun_linux::routes::FWMARK);
    let src = ns.ip(&["route", "get", "172.31.242.1", "mark", &mark]);
    assert!(src.contains(&tunnel_ip.to_string()), "{src}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert_eq!(
            lines_with(&client.log(), &[REBOUND]),
            0,
            "re-bound onto the tunnel's own address"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ns.ip(&["route", "del", "172.31.242.1/32", "dev", &dev]);
    assert!(
        first_reply(ns, &peer, Instant::now(), MOVE_LIMIT).is_some(),
        "no ping after the route through the tunnel went"
    );
    let e = entry(&topo.server, "all");
    assert_eq!((endpoint(&e), roaming(&e).1), (home, 0));

    // (c) A new address on the real link: re-bound there, the session follows.
    ns.ip(&["addr", "add", "172.31.242.20/24", "dev", "eth0"]);
    ns.ip(&["addr", "del", "172.31.242.2/24", "dev", "eth0"]);
    let t0 = Instant::now();
    assert!(
        first_reply(ns, &peer, t0, MOVE_LIMIT).is_some(),
        "no ping after the new address"
    );
    let e = wait_entry(&topo.server, "all", "the move", MOVE_LIMIT, |e| {
        endpoint(e).starts_with("172.31.242.20:")
    });
    assert_eq!(roaming(&e).1, 1);
    let log = client.log();
    let rebinds: Vec<&str> = log.lines().filter(|l| l.contains(REBOUND)).collect();
    assert!(
        rebinds.len() == 1 && rebinds[0].contains("172.31.242.20:"),
        "{rebinds:?}"
    );
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// Held: the roaming control messages' lengths; plain and CID records of one sequence number.

/// Cid, PathChallenge and PathResponse take exactly 8 bytes of body; any other length is
/// malformed.
#[test]
fn roaming_control_messages_take_exactly_eight_bytes() {
    for ty in [9u8, 10, 11] {
        for len in 0..=17usize {
            let mut m = vec![0u8, ty];
            m.extend(std::iter::repeat_n(0xab, len));
            let parsed = Control::parse(&m);
            assert_eq!(
                parsed.is_ok(),
                len == 8,
                "type {ty}, {len} bytes: {parsed:?}"
            );
            if let Ok(c) = parsed {
                assert_eq!(c.to_bytes(), m);
            }
        }
    }
}

/// The same (epoch, sequence number) in both formats opens once (one replay window), and a
/// plain record cannot be passed off as a CID record or back (the format is in the additional
/// data): each conversion fails its tag.
#[test]
fn one_sequence_number_opens_once_in_either_format() {
    use dtun_proto::record::{DropReason, Suite, session_pair};
    let kb = dtun_proto::kdf::KeyBlock {
        client_key: [1; 16],
        server_key: [2; 16],
        client_iv: [3; 4],
        server_iv: [4; 4],
    };
    let cid = [9u8, 8, 7, 6, 5, 4, 3, 2];
    let seal = |with_cid: bool| {
        let (mut s, _) = session_pair(Suite::Aes128Gcm, &kb, true, 1, 77);
        if with_cid {
            assert!(s.set_cid(Some(cid)));
        }
        let msg = b"\x45 same sequence number";
        let off = s.payload_offset();
        let mut buf = vec![0u8; off + msg.len() + s.trailer_len()];
        buf[off..off + msg.len()].copy_from_slice(msg);
        let n = s.seal(23, &mut buf, msg.len()).unwrap();
        buf.truncate(n);
        buf
    };
    let (plain, with_cid) = (seal(false), seal(true));
    let opener = || {
        let (_, mut o) = session_pair(Suite::Aes128Gcm, &kb, false, 1, 0);
        o.set_cid(Some(cid));
        o
    };
    let mut o = opener();
    assert!(o.open(&mut with_cid.clone()).is_ok());
    assert_eq!(o.open(&mut plain.clone()), Err(DropReason::Replay));
    let mut o = opener();
    assert!(o.open(&mut plain.clone()).is_ok());
    assert_eq!(o.open(&mut with_cid.clone()), Err(DropReason::Replay));
    // A CID record rewritten as a plain one (its CID cut out, the type 23), and a plain one
    // given the CID: both fail their tags.
    let mut as_plain = [&[23u8][..], &with_cid[1..11], &with_cid[19..]].concat();
    assert_eq!(opener().open(&mut as_plain), Err(DropReason::BadTag));
    let mut as_cid = [&[25u8][..], &plain[1..11], &cid, &plain[11..]].concat();
    assert_eq!(opener().open(&mut as_cid), Err(DropReason::BadTag));
}

// ---------------------------------------------------------------------------------------------
// Decided: a move is a connection from the new address.

/// Route authorisation refuses a LAN that covers a live session's outer address when the LAN
/// is announced. A session that moves later into a LAN already accepted is in the place of a
/// client that connects from inside one (`authz::a_later_clients_underlay_inside_an_earlier_
/// lan_still_connects`): dtun's own datagrams skip the LANs' table (a `not fwmark` rule), so
/// the session goes on; other traffic to that address follows the LAN, as it would for a fresh
/// connection; refusing the move would only make the client reconnect from there. The
/// review's probe (it found the route into the LAN) stays as the check of that: after the
/// move the victim's pings go on, and a LAN covering it announced afterwards is refused.
#[test]
fn a_move_into_another_clients_lan_works_like_a_connection_from_there() {
    common::need_root!();
    let dir = TestDir::new("rvG");
    let server = Netns::new("rvGs", &dir);
    let victim = Netns::new("rvGc", &dir);
    let mallory = Netns::new("rvGc", &dir);
    veth(
        &server,
        "eth0",
        "172.31.240.1/24",
        &victim,
        "eth0",
        "172.31.240.2/24",
    );
    veth(
        &server,
        "eth1",
        "172.31.242.1/24",
        &mallory,
        "eth0",
        "172.31.242.2/24",
    );
    let topo = Topo {
        server,
        clients: vec![victim, mallory],
        dir,
    };
    let keys = topo.dir.file(
        "clients",
        b"victim key=victim-key-0123456789abc\nmallory key=mallory-key-0123456789ab\n",
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let keys = common::path_str(&keys);
    let server = start_server(&topo.server, 443, &["-clients", keys, "-v"]);
    let (v, m) = (&topo.clients[0], &topo.clients[1]);
    let mallory_args = [
        "-host",
        "172.31.242.1",
        "-key",
        "mallory-key-0123456789ab",
        "-id",
        "mallory",
        "-peernet",
        "10.240.7.0/24",
        "-v",
    ];
    let mut mallory = start_client(m, &mallory_args);
    let lan = "10.240.7.0/24";
    common::wait_for(UP, "the server to route mallory's LAN", || {
        topo.server.routes().contains(lan)
    });
    let victim_args = [
        "-host",
        "172.31.240.1",
        "-key",
        "victim-key-0123456789abc",
        "-id",
        "victim",
        "-v",
    ];
    let _victim = start_client(v, &victim_args);
    let dev = only_tun(v);
    let peer = wait_p2p(v, &dev).1.to_string();
    wait_roaming(&topo.server, "victim");
    // The victim's new address lies in mallory's LAN; the server reaches it over the
    // victim's link (its own route, added after mallory's LAN was accepted).
    let moved_to = "10.240.7.5";
    topo.server.ip(&[
        "route",
        "add",
        &format!("{moved_to}/32"),
        "via",
        "172.31.240.2",
    ]);
    v.ip(&["addr", "add", &format!("{moved_to}/32"), "dev", "eth0"]);
    v.ip(&[
        "route",
        "add",
        "172.31.240.1/32",
        "dev",
        "eth0",
        "src",
        moved_to,
    ]);
    assert!(
        first_reply(v, &peer, Instant::now(), MOVE_LIMIT).is_some(),
        "no ping after the victim's new address"
    );
    let e = wait_entry(&topo.server, "victim", "the move", MOVE_LIMIT, |e| {
        endpoint(e).starts_with(&format!("{moved_to}:"))
    });
    let route = topo.server.ip(&["route", "get", moved_to]);
    eprintln!(
        "victim at {}; the server's route to it: {route}",
        endpoint(&e)
    );
    // A LAN that covers it announced now (mallory connects again with a wider one) is
    // refused for exactly this.
    mallory.stop(Duration::from_secs(10));
    let mut wider = mallory_args;
    wider[7] = "10.240.0.0/16";
    let _mallory = start_client(m, &wider);
    let refusal = "the outer address of client victim's session";
    common::wait_for(UP, "the server to refuse mallory's LAN again", || {
        server.log().contains(refusal)
    });
    assert!(
        route.contains("dtun"),
        "the LAN's route no longer covers the victim's new address: {route}"
    );
    let marked = topo.server.ip(&[
        "route",
        "get",
        moved_to,
        "mark",
        &format!("{}", dtun_linux::routes::FWMARK),
    ]);
    assert!(
        marked.contains("dev eth0"),
        "dtun's own datagrams to the victim's new address would go into mallory's tunnel: {marked}"
    );
    assert!(
        first_reply(v, &peer, Instant::now(), MOVE_LIMIT).is_some(),
        "the victim's session stopped after the move into mallory's LAN"
    );
}

// ---------------------------------------------------------------------------------------------
// Held: mutated CID datagrams against the record layer.

/// 200 000 datagrams made from valid CID records (epochs 1 and 2, a rekey between) with bytes
/// flipped, lengths rewritten, types changed, records cut, glued and repeated, opened a
/// datagram at a time as the demultiplexer does (`Inbox`), by a fresh opener every 2 000: no
/// panic; nothing but the authentic records opens, each at most once per opener; `newest`
/// never goes down.
#[test]
fn mutated_cid_datagrams_never_panic_the_record_layer() {
    use dtun_proto::inbound::{Counters, Inbound, Inbox};
    use dtun_proto::record::{Suite, peek_cid, rekey_opener, rekey_sealer, session_pair};
    let kb = dtun_proto::kdf::KeyBlock {
        client_key: [1; 16],
        server_key: [2; 16],
        client_iv: [3; 4],
        server_iv: [4; 4],
    };
    let next = dtun_proto::kdf::KeyBlock {
        client_key: [5; 16],
        server_key: [6; 16],
        client_iv: [7; 4],
        server_iv: [8; 4],
    };
    let cid = [0xc1u8, 0xd0, 0, 1, 2, 3, 4, 5];
    let (mut s, _) = session_pair(Suite::Aes128Gcm, &kb, true, 1, 1 << 32);
    let (_, mut o) = session_pair(Suite::Aes128Gcm, &kb, false, 1, 0);
    assert!(s.set_cid(Some(cid)));
    o.set_cid(Some(cid));
    let seal = |s: &mut dtun_proto::record::Sealer, msg: &[u8]| {
        let off = s.payload_offset();
        let mut buf = vec![0u8; off + msg.len() + s.trailer_len()];
        buf[off..off + msg.len()].copy_from_slice(msg);
        let n = s.seal(23, &mut buf, msg.len()).unwrap();
        buf.truncate(n);
        buf
    };
    let mut valid: Vec<Vec<u8>> = (0..40u8)
        .map(|i| seal(&mut s, &vec![0x45; 1 + usize::from(i) * 7]))
        .collect();
    valid.push(seal(&mut s, &Control::PathResponse([7; 8]).to_bytes()));
    rekey_sealer(&mut s, &next, true, 2);
    valid.extend((0..40u8).map(|i| seal(&mut s, &[0x60, i, 0, 0])));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    let counters = Counters::default();
    let mut inbox = Inbox::default();
    let mut opened = 0;
    let mut newest = 0;
    let mut total = 0;
    for round in 0..200_000usize {
        // A fresh opener every 2 000 datagrams (so the authentic records open again, not
        // just as replays), its rekey half way.
        if round % 2000 == 0 {
            assert!(opened <= valid.len(), "{opened} opened of {}", valid.len());
            total += opened;
            opened = 0;
            newest = 0;
            o = session_pair(Suite::Aes128Gcm, &kb, false, 1, 0).1;
            o.set_cid(Some(cid));
        }
        if round % 2000 == 1000 {
            rekey_opener(&mut o, &next, false, 2);
        }
        let mut dg = valid[rnd(valid.len())].clone();
        for _ in 0..rnd(4) {
            match rnd(6) {
                0 if !dg.is_empty() => {
                    let i = rnd(dg.len());
                    dg[i] ^= 1 << rnd(8);
                }
                1 => dg.truncate(rnd(dg.len() + 1)),
                2 => {
                    let other = valid[rnd(valid.len())].clone();
                    dg.extend_from_slice(&other);
                }
                3 if dg.len() >= 21 => {
                    let v = (rnd(70_000) as u16).to_be_bytes();
                    dg[19..21].copy_from_slice(&v);
                }
                4 if !dg.is_empty() => dg[0] = [23, 25, 21, 22, 0][rnd(5)],
                5 if dg.len() >= 11 => dg[3..5].copy_from_slice(&(rnd(4) as u16).to_be_bytes()),
                _ => {}
            }
        }
        let _ = peek_cid(&dg);
        let stride = dg.len().max(1);
        let copy = dg.clone();
        for r in inbox.open(&mut o, &counters, &mut dg, stride, |_| true) {
            if let Inbound::Data(range) = r {
                opened += 1;
                let _ = Control::parse(&dg[range.clone()]);
                assert!(
                    valid
                        .iter()
                        .any(|v| copy.windows(v.len()).any(|w| w == &v[..])),
                    "something not sealed by the client opened"
                );
            }
        }
        assert!(o.newest() >= newest, "newest went down");
        newest = o.newest();
    }
    total += opened;
    eprintln!("{total} authentic records opened in 100 openers' lives; nothing else did");
    assert!(
        total > 100,
        "only {total} records opened: the probe tried too little"
    );
}
