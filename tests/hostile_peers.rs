//! What an authenticated but hostile peer (or an off-path spoofer) can do to the other end,
//! end to end: bad inner headers, panics, spoofed ICMP, sequence exhaustion and hostile
//! address pairs, each through a real tunnel. Needs root,
//! /dev/net/tun, iproute2, iputils-ping, openssl and python3.
//!
//! The hostile peer is OpenSSL (`s_client` / `s_server` with the tunnel's key): it completes a
//! real handshake and then sends, as application data, exactly the bytes the test writes to
//! its stdin (one write, one record): an inner packet no dtun peer would ever send.

mod common;

use common::{
    DTUN, Proc, Topo, UP, assert_running, only_tun, start_client, start_server, wait_for, wait_p2p,
};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const PORT: u16 = 4433;

/// One's-complement checksum.
fn csum(data: &[u8]) -> u16 {
    let mut acc: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An IPv4 ICMP echo request from `src` to `dst` with valid checksums.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + 16];
    p[0] = 0x45;
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = csum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20] = 8;
    p[24..26].copy_from_slice(&0x4841u16.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    p[28..].fill(0x5a);
    let sum = csum(&p[20..]);
    p[22..24].copy_from_slice(&sum.to_be_bytes());
    p
}

/// How many ICMP echo replies from `src` to `dst` with sequence number `seq` are in `out`.
fn echo_replies(out: &[u8], src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> usize {
    out.windows(28)
        .filter(|w| {
            w[0] == 0x45
                && w[9] == 1
                && w[12..16] == src.octets()
                && w[16..20] == dst.octets()
                && w[20] == 0
                && w[26..28] == seq.to_be_bytes()
        })
        .count()
}

/// The review's packet: first byte 0x4f (IHL 15, a 60-byte header) in a 40-byte IPv4
/// packet, protocol TCP, from the sender's own tunnel address. Before the fix, `mss::clamp`
/// indexed past its end.
fn bad_ihl_packet(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x4f;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p
}

/// Writes an echo request through `ossl` (a hostile peer), once a second, until the dtun
/// side's kernel answers it through the tunnel.
fn echo_through(ossl: &mut Proc, other: &mut Proc, src: Ipv4Addr, dst: Ipv4Addr, seq: u16) {
    let mut sent: Option<Instant> = None;
    wait_for(UP, &format!("echo reply {seq} at openssl"), || {
        assert_running(ossl, "openssl");
        assert_running(other, "dtun");
        if sent.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            ossl.write_stdin(&echo_request(src, dst, seq));
            sent = Some(Instant::now());
        }
        echo_replies(&ossl.stdout_bytes(), dst, src, seq) > 0
    });
}

fn openssl_psk(role: &str) -> Vec<&str> {
    vec![
        role,
        "-dtls1_2",
        "-psk",
        "666f6f", // "foo"
        "-cipher",
        "PSK-AES128-GCM-SHA256",
    ]
}

/// A client that completed its handshake sends the review's packet (IHL 15 in 40 bytes, TCP,
/// its own tunnel address as source). The server drops nothing it should keep: a bystander's
/// pings all come back, the attacker's own session still answers, and a newcomer connects.
/// Before the fix the server's demultiplexer panicked on it: every session and every new
/// handshake stopped while the process stayed up.
#[test]
fn an_authenticated_client_cannot_stop_the_server_with_a_bad_header() {
    common::need_root!();
    let topo = Topo::star("hAm", 3);
    let port = PORT.to_string();
    let mut server = start_server(&topo.server, PORT, &["-key", "foo", "-port", &port, "-v"]);
    let bystander_args = |i: usize, id: &'static str| {
        vec![
            "-host".to_string(),
            Topo::server_ip(i),
            "-port".into(),
            port.clone(),
            "-key".into(),
            "foo".into(),
            "-id".into(),
            id.into(),
        ]
    };
    let args: Vec<String> = bystander_args(1, "bystander");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _bystander = start_client(&topo.clients[1], &args);
    let (_, b_peer) = wait_p2p(&topo.clients[1], &only_tun(&topo.clients[1]));
    assert!(topo.clients[1].ping_ok(&b_peer.to_string(), 2));

    let mut args = openssl_psk("s_client");
    let connect = format!("{}:{PORT}", Topo::server_ip(0));
    args.extend(["-psk_identity", "hostile", "-connect", &connect, "-quiet"]);
    let mut ossl = topo.clients[0]
        .command("openssl")
        .args(&args)
        .stdin_piped()
        .stdout_apart()
        .spawn();
    let mut msg = None;
    wait_for(UP, "address message at s_client", || {
        assert_running(&mut ossl, "openssl s_client");
        msg = ossl
            .stdout_bytes()
            .windows(8)
            .find(|w| w[0] == 10 && w[1] == 86 && w[4] == 10 && w[5] == 86)
            .map(|w| w.to_vec());
        msg.is_some()
    });
    let msg = msg.unwrap();
    let me = Ipv4Addr::new(msg[0], msg[1], msg[2], msg[3]);
    let them = Ipv4Addr::new(msg[4], msg[5], msg[6], msg[7]);
    ossl.write_stdin(b"empty");
    // A real packet first: the session carries data, so the peernet record has been taken.
    echo_through(&mut ossl, &mut server, me, them, 1);

    ossl.write_stdin(&bad_ihl_packet(me, them));
    echo_through(&mut ossl, &mut server, me, them, 2);
    let (tx, rx) = topo.clients[1].ping_stats(&b_peer.to_string(), 5);
    assert_eq!(rx, tx, "the bystander's pings after the bad packet");
    let args: Vec<String> = bystander_args(2, "newcomer");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _newcomer = start_client(&topo.clients[2], &args);
    let (_, n_peer) = wait_p2p(&topo.clients[2], &only_tun(&topo.clients[2]));
    assert!(
        topo.clients[2].ping_ok(&n_peer.to_string(), 3),
        "the newcomer's pings"
    );
    assert_running(&mut server, "dtun server");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// An OpenSSL `s_server` with the key in the server namespace of `topo` (a server that says
/// whatever the test writes to its stdin) and a dtun client whose handshake with it is done.
fn openssl_server_and_client(topo: &Topo) -> (Proc, Proc) {
    let mut args = openssl_psk("s_server");
    let port = PORT.to_string();
    args.extend(["-nocert", "-psk_hint", "dtun", "-accept", &port]);
    let mut ossl = topo
        .server
        .command("openssl")
        .args(&args)
        .stdin_piped()
        .stdout_apart()
        .spawn();
    wait_for(UP, "s_server listening", || {
        assert_running(&mut ossl, "openssl s_server");
        topo.server.udp_listening(PORT)
    });
    let mut client = topo.client().spawn(
        DTUN,
        &["-host", "172.31.250.1", "-port", &port, "-key", "foo", "-v"],
        &[],
    );
    wait_for(UP, "handshake at s_server", || {
        assert_running(&mut ossl, "openssl s_server");
        assert_running(&mut client, "dtun client");
        String::from_utf8_lossy(&ossl.stdout_bytes()).contains("CIPHER is")
    });
    (ossl, client)
}

/// The other direction: a server (OpenSSL with the key) sends the review's packet to a dtun
/// client. The client keeps its session: an echo request sent after it is answered. Before
/// the fix the client's loop panicked and the client exited.
#[test]
fn an_authenticated_server_cannot_stop_the_client_with_a_bad_header() {
    common::need_root!();
    let topo = Topo::pair("hAr");
    let (mut ossl, mut client) = openssl_server_and_client(&topo);
    let (me, them) = (Ipv4Addr::new(10, 86, 0, 1), Ipv4Addr::new(10, 86, 0, 2));
    ossl.write_stdin(&[them.octets(), me.octets()].concat());
    client.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    // The peernet record arrives before anything else the client sends.
    wait_for(UP, "peernet record at s_server", || {
        String::from_utf8_lossy(&ossl.stdout_bytes()).contains("empty")
    });
    echo_through(&mut ossl, &mut client, me, them, 1);
    ossl.write_stdin(&bad_ihl_packet(me, them));
    echo_through(&mut ossl, &mut client, me, them, 2);
    assert_running(&mut client, "dtun client");
    assert!(!client.log().contains("panicked"), "{}", client.log());
}

/// Sends one IPv4 packet of protocol 253 carrying `payload` from `ns` to `dst` (a raw socket:
/// the kernel routes it into the tunnel).
fn send_proto253(ns: &common::Netns, dst: Ipv4Addr, payload: &[u8]) {
    let script = "import socket, sys\n\
                  s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)\n\
                  s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 0))\n";
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    let out = ns.run("python3", &["-c", script, &dst.to_string(), &hex]);
    assert!(out.status.success(), "raw send failed: {out:?}");
}

/// A fault injected (test-only feature `fault-injection`) into `site` of a live tunnel: the
/// process that runs that task exits with status 70 and an error line, within 10 s.
fn fault_ends_the_process(tag: &str, site: dtun::supervise::Site) {
    use dtun::supervise::{EXIT_INTERNAL, FAULT_MAGIC, LOG_PANIC, Site};
    let topo = Topo::pair(tag);
    let port = PORT.to_string();
    let mut server = start_server(&topo.server, PORT, &["-key", "foo", "-port", &port]);
    let mut client = start_client(
        topo.client(),
        &["-host", "172.31.250.1", "-port", &port, "-key", "foo"],
    );
    let (local, peer) = wait_p2p(topo.client(), &only_tun(topo.client()));
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    let payload = [FAULT_MAGIC, site.name().as_bytes()].concat();
    // The demultiplexer sees the client's packets; the server's outbound task and the client's
    // loop see the server's.
    let (victim, other) = match site {
        Site::Demux => {
            send_proto253(topo.client(), peer, &payload);
            (&mut server, &mut client)
        }
        Site::Outbound | Site::Client => {
            send_proto253(&topo.server, local, &payload);
            if site == Site::Outbound {
                (&mut server, &mut client)
            } else {
                (&mut client, &mut server)
            }
        }
    };
    let status = victim
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "still running 10 s after a fault in the {}; log:\n{}",
                site.name(),
                victim.log()
            )
        });
    assert_eq!(
        status.code(),
        Some(EXIT_INTERNAL),
        "exit status after a fault in the {}; log:\n{}",
        site.name(),
        victim.log()
    );
    let log = victim.log();
    assert!(
        common::lines_with(&log, &["ERROR", LOG_PANIC, site.name()]) > 0,
        "no error line naming the panic:\n{log}"
    );
    assert_running(other, "the other end");
}

#[test]
fn a_panic_in_the_demultiplexer_ends_the_server() {
    common::need_root!();
    fault_ends_the_process("hAfd", dtun::supervise::Site::Demux);
}

#[test]
fn a_panic_in_an_outbound_task_ends_the_server() {
    common::need_root!();
    fault_ends_the_process("hAfo", dtun::supervise::Site::Outbound);
}

#[test]
fn a_panic_in_the_client_loop_ends_the_client() {
    common::need_root!();
    fault_ends_the_process("hAfc", dtun::supervise::Site::Client);
}

const ICMP_SPOOF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/icmp_spoof.py");

/// The local UDP port of the client's socket towards `server:port` (from `ss` in `ns`).
fn client_port(ns: &common::Netns, server: &str, port: u16) -> u16 {
    let peer = format!("{server}:{port}");
    let out = ns.run("ss", &["-H", "-u", "-n", "-a"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.get(4) == Some(&peer.as_str()))
                .then(|| w.get(3)?.rsplit(':').next()?.parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no UDP socket towards {peer} in:\n{text}"))
}

/// One spoofed ICMP port unreachable (an off-path attacker who guessed the client's port)
/// does not end a live session: the client pings the server at once, the answer comes, and
/// the tunnel carries on without a reconnect. Before the fix the session ended at once.
#[test]
fn a_spoofed_port_unreachable_does_not_end_the_session() {
    common::need_root!();
    let topo = Topo::pair("hAi");
    let port = PORT.to_string();
    let _server = start_server(&topo.server, PORT, &["-key", "foo", "-port", &port]);
    let mut client = start_client(
        topo.client(),
        &["-host", "172.31.250.1", "-port", &port, "-key", "foo", "-v"],
    );
    let (_, peer) = wait_p2p(topo.client(), &only_tun(topo.client()));
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    let cport = client_port(topo.client(), "172.31.250.1", PORT);
    let out = topo.server.run(
        "python3",
        &[
            ICMP_SPOOF,
            "--to",
            "172.31.250.2",
            "--src",
            "172.31.250.2",
            "--sport",
            &cport.to_string(),
            "--dst",
            "172.31.250.1",
            "--dport",
            &port,
            "--count",
            "3",
        ],
    );
    assert!(out.status.success(), "icmp_spoof.py: {out:?}");
    // The error waits on the socket until the client next receives (or sends): a ping from
    // the server's side makes it receive. The client saw it once it logs the word (the old
    // and the new code both do).
    let (s_local, _) = wait_p2p(&topo.server, &only_tun(&topo.server));
    assert_eq!(s_local, peer);
    let (c_local, _) = wait_p2p(topo.client(), &only_tun(topo.client()));
    let _ = topo.server.ping_ok(&c_local.to_string(), 1);
    client.wait_log("unreachable", Duration::from_secs(10));
    let (tx, rx) = topo.client().ping_stats(&peer.to_string(), 10);
    assert_eq!(rx, tx, "pings after the spoofed ICMP error");
    assert_running(&mut client, "dtun client");
    let log = client.log();
    assert_eq!(
        common::lines_with(&log, &[dtun::client::LOG_TUNNEL_UP]),
        1,
        "the session must not have been restarted:\n{log}"
    );
    assert!(!log.contains("reconnecting"), "{log}");
}

/// A server that really died still ends the session promptly: the ICMP port unreachable its
/// host sends is a hint, the ping that follows goes unanswered, and the client gives up after
/// one keepalive period (2 s here), before the three missed keepalives (6 s) would.
#[test]
fn a_dead_server_still_ends_the_session_within_a_keepalive_period() {
    common::need_root!();
    let topo = Topo::pair("hAk");
    let port = PORT.to_string();
    let mut server = start_server(
        &topo.server,
        PORT,
        &["-key", "foo", "-port", &port, "-keepalive", "2s"],
    );
    let client = start_client(
        topo.client(),
        &[
            "-host",
            "172.31.250.1",
            "-port",
            &port,
            "-key",
            "foo",
            "-keepalive",
            "2s",
        ],
    );
    let (_, peer) = wait_p2p(topo.client(), &only_tun(topo.client()));
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    server.signal("KILL");
    server
        .wait_exit(Duration::from_secs(5))
        .expect("server killed");
    let killed = Instant::now();
    // Traffic into the tunnel makes the client send, and the server's host answer.
    let pinger = topo.client().spawn(
        "ping",
        &[
            "-n",
            "-q",
            "-i",
            "0.2",
            "-W",
            "1",
            "-w",
            "8",
            &peer.to_string(),
        ],
        &[],
    );
    wait_for(
        Duration::from_secs(8),
        "the client to give up the session",
        || client.log().contains("reconnecting"),
    );
    let took = killed.elapsed();
    drop(pinger);
    eprintln!(
        "session ended {:.2} s after the server died",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_millis(4000),
        "took {took:?}; log:\n{}",
        client.log()
    );
    assert!(client.log().contains("unreachable"), "{}", client.log());
}

/// Sequence numbers left when a test session starts (test-only `DTUN_TEST_FIRST_SEQUENCE`):
/// this many records above the point where a peer must close (2^16 before the end).
const RECORDS_BEFORE_EXHAUSTION: u64 = 40;

fn near_exhaustion() -> String {
    ((1u64 << 48) - (1 << 16) - RECORDS_BEFORE_EXHAUSTION).to_string()
}

/// A session whose sequence numbers run out (started near the end by a test-only variable)
/// is closed with reason 4 (exhausted) by the side that runs out, and the client reconnects.
/// `server_side`: the server runs out (else the client). `compat`: the server behaves as the
/// original (no control messages): no Close, only close_notify and the log line. Before the
/// fix the outbound task ended silently at the last sequence number and the session stayed
/// half dead (until missed keepalives, if any, ended it).
fn exhaustion_closes_and_reconnects(tag: &str, server_side: bool, compat: bool) {
    let topo = Topo::pair(tag);
    let port = PORT.to_string();
    let near = near_exhaustion();
    let s_env: &[(&str, &str)] = if server_side {
        &[("DTUN_TEST_FIRST_SEQUENCE", near.as_str())]
    } else {
        &[]
    };
    let mut s_args = vec!["-key", "foo", "-port", &port, "-keepalive", "1s", "-v"];
    if compat {
        s_args.push("-compat");
    }
    let mut server = topo.server.spawn(DTUN, &s_args, s_env);
    wait_for(UP, "server listening", || {
        assert_running(&mut server, "dtun server");
        topo.server.udp_listening(PORT)
    });
    let c_env: &[(&str, &str)] = if server_side {
        &[]
    } else {
        &[("DTUN_TEST_FIRST_SEQUENCE", near.as_str())]
    };
    let mut client = common::start_client_env(
        topo.client(),
        &[
            "-host",
            "172.31.250.1",
            "-port",
            &port,
            "-key",
            "foo",
            "-keepalive",
            "1s",
            // Without rekeying, which would give fresh keys instead (tests/rekey.rs).
            "-rekey",
            "0",
            "-v",
        ],
        c_env,
    );
    let (_, peer) = wait_p2p(topo.client(), &only_tun(topo.client()));
    let started = Instant::now();
    // Pings use up the sequence numbers (one record each way per ping).
    let _pinger = topo.client().spawn(
        "ping",
        &[
            "-n",
            "-q",
            "-i",
            "0.05",
            "-W",
            "1",
            "-w",
            "25",
            &peer.to_string(),
        ],
        &[],
    );
    wait_for(Duration::from_secs(25), "a second `tunnel up`", || {
        assert_running(&mut client, "dtun client");
        assert_running(&mut server, "dtun server");
        common::lines_with(&client.log(), &[dtun::client::LOG_TUNNEL_UP]) >= 2
    });
    eprintln!(
        "reconnected {:.2} s after the first session started",
        started.elapsed().as_secs_f64()
    );
    let (closer, other) = if server_side {
        (&server, &client)
    } else {
        (&client, &server)
    };
    let (c_log, o_log) = (closer.log(), other.log());
    assert!(
        c_log.contains("keys are nearly used up"),
        "the side that ran out says why:\n{c_log}"
    );
    // The server logs the reason's name, a client its words.
    let told =
        |log: &str| log.contains("Exhausted") || log.contains("the session's keys are used up");
    if compat {
        assert!(!told(&o_log), "no control message to an original peer");
    } else {
        assert!(told(&o_log), "the peer got Close reason 4:\n{o_log}");
    }
}

#[test]
fn a_server_out_of_sequence_numbers_closes_and_the_client_reconnects() {
    common::need_root!();
    exhaustion_closes_and_reconnects("hAxs", true, false);
}

#[test]
fn a_compat_server_out_of_sequence_numbers_ends_the_session_with_a_log_line() {
    common::need_root!();
    exhaustion_closes_and_reconnects("hAxo", true, true);
}

#[test]
fn a_client_out_of_sequence_numbers_closes_and_reconnects() {
    common::need_root!();
    exhaustion_closes_and_reconnects("hAxc", false, false);
}

/// A server (OpenSSL with the key, as an original would answer)
/// gives the client an address pair whose peer is a host of the client's own LAN
/// (172.31.250.53, on the client's 172.31.250.0/24: say its resolver). Taking it would move
/// that host's route into the TUN, to the server. The client refuses the pair, names the
/// conflict and what to do, and exits (nothing a retry could mend). Before the fix the tunnel
/// came up and `ip route get 172.31.250.53` went through the TUN.
#[test]
fn a_hostile_server_cannot_take_a_host_of_the_clients_lan() {
    common::need_root!();
    let topo = Topo::pair("hLan");
    let (mut ossl, mut client) = openssl_server_and_client(&topo);
    let (me, lan_host) = (Ipv4Addr::new(10, 86, 0, 2), Ipv4Addr::new(172, 31, 250, 53));
    ossl.write_stdin(&[me.octets(), lan_host.octets()].concat());
    wait_for(UP, "the client's verdict", || {
        client.exited().is_some() || client.log().contains(dtun::client::LOG_TUNNEL_UP)
    });
    let route = topo.client().ip(&["route", "get", "172.31.250.53"]);
    let log = client.log();
    assert!(
        !log.contains(dtun::client::LOG_TUNNEL_UP),
        "the tunnel came up with the LAN host as its peer: route {route}\n{log}"
    );
    let status = client.wait_exit(UP).expect("the client exits");
    assert!(!status.success(), "{log}");
    assert!(route.contains("dev eth0"), "{route}");
    for needle in ["172.31.250.53", "172.31.250.0/24", "-pool", "-accept-pool"] {
        assert!(log.contains(needle), "no {needle:?} in the refusal:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");
}

/// The other side of the same finding: a legitimate pair inside a broader prefix the client
/// routes elsewhere (an office network 10.0.0.0/8 via its LAN gateway; the server's default
/// pool 10.86.0.0/16 lies inside it) is taken, with a warning naming the prefix; with an
/// `-accept-pool` that covers it, the user has said so and there is no warning.
#[test]
fn a_pool_inside_a_broader_route_is_taken_with_a_warning() {
    common::need_root!();
    let topo = Topo::pair("hWide");
    topo.client()
        .ip(&["route", "add", "10.0.0.0/8", "via", "172.31.250.1"]);
    let port = PORT.to_string();
    let _server = start_server(&topo.server, PORT, &["-key", "foo", "-port", &port]);
    let args = ["-host", "172.31.250.1", "-port", &port, "-key", "foo"];
    let mut client = start_client(topo.client(), &args);
    let (_, peer) = wait_p2p(topo.client(), &only_tun(topo.client()));
    assert!(topo.client().ping_ok(&peer.to_string(), 2));
    let log = client.log();
    assert!(
        log.contains("lies inside 10.0.0.0/8, which this host routes elsewhere"),
        "{log}"
    );
    client.stop(UP);
    let mut args = args.to_vec();
    args.extend(["-accept-pool", "10.86.0.0/16"]);
    let client = start_client(topo.client(), &args);
    assert!(
        !client.log().contains("routes elsewhere"),
        "{}",
        client.log()
    );
}
