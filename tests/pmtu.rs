//! Path MTU test: the client clamps the TCP MSS to the path MTU under the tunnel, not only to
//! the TUN MTU. Same harness and rules as `e2e.rs` (see `common/mod.rs`); needs root,
//! /dev/net/tun, iproute2, iputils-ping and python3.
//!
//! ```text
//!  ┌── ns client ──┐        ┌────── ns router ──────┐         ┌── ns server ──┐
//!  │ eth0 .250.2   ├─ veth ─┤ eth0 .250.1  eth1 .251.1 ├─ veth ─┤ eth0 .251.2   │
//!  │ dtun client   │  1500  │ forwards, ICMP frag-needed │  1280  │ dtun server   │
//!  └───────────────┘        └───────────────────────┘         └───────────────┘
//! ```
//!
//! The client's TUN MTU comes from a 1500-byte path; a DF ping that fills it makes the router
//! answer "fragmentation needed, MTU 1280", the client's kernel learns the path MTU, and the
//! client must lower its clamp: the SYN of a TCP connection through the tunnel then reaches the
//! server with an MSS that fits 1280 bytes outside, and the SYN-ACK reaches the client likewise.
//!
//! Run: `cargo test --test pmtu -- --nocapture`.

mod common;

use common::{Netns, TestDir, only_tun, start_client, start_server, wait_for, wait_p2p};
use std::time::Duration;

const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/mss_probe.py");
const PATH_MTU: u32 = 1280;
const CLIENT_IP: &str = "172.31.250.2/24";
const ROUTER_CLIENT_SIDE: &str = "172.31.250.1";
const ROUTER_SERVER_SIDE: &str = "172.31.251.1";
const SERVER_IP: &str = "172.31.251.2";
const PORT: u16 = 443;
const TCP_PORT: u16 = 5001;
/// Outer IPv4 + UDP headers, and the smallest record overhead of any suite (CCM8: 13-byte
/// header, 8-byte explicit nonce, 8-byte tag): the largest MSS that fits the path for any suite.
const OUTER_V4: u32 = 28;
const MIN_RECORD_OVERHEAD: u32 = 13 + 8 + 8;
const MAX_FITTING_MSS: u32 = PATH_MTU - OUTER_V4 - MIN_RECORD_OVERHEAD - 40;

/// Joins `a` and `b` with a veth pair of `mtu` made inside `a`.
fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str, mtu: u32) {
    let mtu = mtu.to_string();
    a.ip(&[
        "link",
        "add",
        a_if,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "mtu",
        &mtu,
        "netns",
        b.name(),
    ]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// The number after `key=` in `text`.
fn field(text: &str, key: &str) -> Option<u32> {
    let at = text.find(&format!("{key}="))? + key.len() + 1;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn tcp_mss_follows_a_smaller_path_mtu() {
    common::need_root!();
    let dir = TestDir::new("pmtu");
    let client = Netns::new("pmc", &dir);
    let router = Netns::new("pmr", &dir);
    let server = Netns::new("pms", &dir);
    veth(
        &client,
        "eth0",
        CLIENT_IP,
        &router,
        "eth0",
        "172.31.250.1/24",
        1500,
    );
    let server_cidr = format!("{SERVER_IP}/24");
    veth(
        &router,
        "eth1",
        "172.31.251.1/24",
        &server,
        "eth0",
        &server_cidr,
        PATH_MTU,
    );
    client.ip(&["route", "add", "default", "via", ROUTER_CLIENT_SIDE]);
    server.ip(&["route", "add", "default", "via", ROUTER_SERVER_SIDE]);
    let fwd = router.sh("sysctl -qw net.ipv4.ip_forward=1");
    assert!(fwd.status.success(), "ip_forward in the router: {fwd:?}");

    let _server = start_server(&server, PORT, &["-key", "foo"]);
    let dtun = start_client(&client, &["-host", SERVER_IP, "-key", "foo"]);
    let tun = only_tun(&client);
    let (_, peer) = wait_p2p(&client, &tun);
    let peer = peer.to_string();
    let mtu: u32 = client
        .run("cat", &[&format!("/sys/class/net/{tun}/mtu")])
        .stdout
        .iter()
        .map(|&b| b as char)
        .collect::<String>()
        .trim()
        .parse()
        .expect("TUN MTU");
    assert!(
        mtu > PATH_MTU,
        "the TUN MTU ({mtu}) must exceed the path MTU for this test"
    );
    assert!(
        dtun.log()
            .lines()
            .all(|l| !l.contains(dtun::client::LOG_MSS_CLAMPED)),
        "the client clamped before the path MTU dropped:\n{}",
        dtun.log()
    );

    // A DF ping filling the TUN makes an outer datagram above 1280: the router answers ICMP
    // "fragmentation needed"; the client's kernel learns the path MTU and, once dtun re-reads
    // it (every second), the clamp drops.
    let size = (mtu - 28).to_string();
    let wanted = format!("path MTU {PATH_MTU}: {}", dtun::client::LOG_MSS_CLAMPED);
    wait_for(
        Duration::from_secs(20),
        &format!("client log {wanted:?}"),
        || {
            client.run(
                "ping",
                &[
                    "-n", "-q", "-M", "do", "-s", &size, "-c", "1", "-W", "1", &peer,
                ],
            );
            dtun.log().contains(&wanted)
        },
    );
    let log = dtun.log();
    let line = log.lines().find(|l| l.contains(&wanted)).unwrap();
    let clamped = line
        .split(dtun::client::LOG_MSS_CLAMPED)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no MSS in {line:?}"));
    assert!(
        clamped <= MAX_FITTING_MSS,
        "clamp {clamped} above {MAX_FITTING_MSS}: {line}"
    );

    // Full-size pings now get through (fragmented by the client's kernel outside the tunnel).
    assert!(
        client
            .run(
                "ping",
                &[
                    "-n", "-q", "-M", "do", "-s", &size, "-c", "2", "-W", "2", &peer
                ]
            )
            .status
            .success(),
        "full-size DF pings through the tunnel fail once the path MTU is known"
    );

    // A TCP transfer through the tunnel: the SYN arrives at the server, and the SYN-ACK at
    // the client, with an MSS that fits the path.
    let port = TCP_PORT.to_string();
    let mut listener = server
        .command("python3")
        .args(&[PROBE, "serve", &peer, &port, "--timeout", "30"])
        .stdout_apart()
        .spawn();
    wait_for(Duration::from_secs(20), "the TCP server ready", || {
        String::from_utf8_lossy(&listener.stdout_bytes()).contains("ready")
    });
    let nbytes: u32 = 1 << 20;
    let sent = client.run(
        "timeout",
        &[
            "40",
            "python3",
            PROBE,
            "send",
            &peer,
            &port,
            &nbytes.to_string(),
        ],
    );
    let sent_text = String::from_utf8_lossy(&sent.stdout).into_owned();
    assert!(sent.status.success(), "TCP sender failed: {sent:?}");
    wait_for(Duration::from_secs(20), "the TCP server's report", || {
        String::from_utf8_lossy(&listener.stdout_bytes()).contains("syn_mss=")
    });
    let served = String::from_utf8_lossy(&listener.stdout_bytes()).into_owned();
    listener.wait_exit(Duration::from_secs(5));
    assert_eq!(field(&served, "bytes"), Some(nbytes), "server: {served}");
    assert_eq!(
        field(&sent_text, "bytes"),
        Some(nbytes),
        "client: {sent_text}"
    );
    let syn_mss = field(&served, "syn_mss").expect("syn_mss");
    let synack_mss = field(&sent_text, "synack_mss").expect("synack_mss");
    eprintln!(
        "path clamp {clamped}, SYN MSS at the server {syn_mss}, SYN-ACK MSS at the client {synack_mss}"
    );
    assert!(
        syn_mss > 0 && syn_mss <= clamped,
        "the SYN reached the server with MSS {syn_mss}, above the path clamp {clamped}"
    );
    assert!(
        synack_mss > 0 && synack_mss <= clamped,
        "the SYN-ACK reached the client with MSS {synack_mss}, above the path clamp {clamped}"
    );
}
