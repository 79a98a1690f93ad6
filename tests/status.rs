//! `dtun status` over the control sockets `/run/dtun/NETNS.INSTANCE.sock`, and `-metrics`, against the real
//! binary in network namespaces (prefix `st`): a server with two clients (one lingering), a
//! client up and then backing off, the JSON's shape pinned, a missing instance, a refused
//! user, two instances in one namespace, a hostile local client, a metrics scrape whose
//! counters move with traffic, and `-metrics` off loopback (bearer token, per-source cap).

mod common;

use std::time::Duration;

use common::status::{
    assert_session_shape, assert_traffic_shape, json, keys, metric, scrape, scrape_as, set, squash,
    status, stderr, stdout, u,
};
use common::{DTUN, Netns, TestDir, Topo, UP, start_client, start_server, wait_for, wait_p2p};
use serde_json::Value;

const KEY: &str = "status-test-key-0123456789";

/// A server with two clients, one of which exits: the human view and the JSON show the
/// connected one with its session and the other lingering with its expiry; the JSON's keys
/// are exactly the documented ones (docs/STATUS.md).
#[test]
fn server_status_shows_clients_and_a_lingering_device() {
    common::need_root!();
    let topo = Topo::star("st1", 2);
    let server = start_server(
        &topo.server,
        443,
        &["-key", KEY, "-linger", "60s", "-keepalive", "1s", "-v"],
    );
    let client = |i: usize, id: &str, extra: &[&str]| {
        let ip = Topo::server_ip(i);
        let mut args = vec!["-host", &ip, "-key", KEY, "-id", id, "-keepalive", "1s"];
        args.extend_from_slice(extra);
        start_client(&topo.clients[i], &args)
    };
    let _alpha = client(0, "alpha", &["-peernet", "10.201.0.0/24"]);
    let mut beta = client(1, "beta", &[]);
    for ns in &topo.clients {
        let (_, peer) = wait_p2p(ns, &common::only_tun(ns));
        assert!(
            ns.ping_ok(&peer.to_string(), 3),
            "no ping through the tunnel"
        );
    }
    wait_for(UP, "alpha's LAN routed", || {
        topo.server.routes().contains("10.201.0.0/24")
    });
    beta.stop(Duration::from_secs(10));
    let mut v = Value::Null;
    wait_for(UP, "beta lingering in the status", || {
        v = json(&topo.server, None);
        v["lingering"].as_array().is_some_and(|l| l.len() == 1)
    });

    assert_eq!(
        keys(&v),
        set(&[
            "admission",
            "client_to_client",
            "clients",
            "dns",
            "instance",
            "lingering",
            "listen",
            "nat",
            "now",
            "pid",
            "pool",
            "pool6",
            "role",
            "traffic",
            "version"
        ])
    );
    assert_eq!(v["role"], "server");
    assert_eq!(v["instance"], "dtun");
    assert_eq!(
        (&v["nat"], &v["client_to_client"], &v["dns"]),
        (
            &serde_json::json!(false),
            &serde_json::Value::Null,
            &serde_json::json!([])
        ),
        "the server's settings"
    );
    assert_eq!(u(&v["pid"]), server.pid() as u64);
    assert_eq!(
        keys(&v["admission"]),
        set(&[
            "cookies",
            "events_dropped",
            "handshake_evicted",
            "handshake_failed",
            "handshake_limit",
            "handshakes",
            "refused_max_clients",
            "unknown_peer"
        ])
    );
    assert!(u(&v["admission"]["handshakes"]) >= 2, "{v}");
    assert_traffic_shape(&v["traffic"]);

    let clients = v["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{v}");
    let a = &clients[0];
    assert_eq!(
        keys(a),
        set(&[
            "connected_since",
            "connected_since_age",
            "device",
            "endpoint",
            "id",
            "local_ip",
            "local_ip6",
            "peer_ip",
            "peer_ip6",
            "routes",
            "session",
            "traffic"
        ])
    );
    assert_eq!(a["id"], "alpha");
    assert_eq!(v["pool6"], dtun_proto::pool6::DEFAULT_POOL6);
    let peer6 = a["peer_ip6"].as_str().expect("an IPv6 pair");
    assert!(peer6.starts_with("fd64:7475:6e00:"), "{a}");
    assert!(a["local_ip6"].is_string(), "{a}");
    assert!(
        a["endpoint"]
            .as_str()
            .unwrap()
            .contains(&Topo::client_ip(0)),
        "{a}"
    );
    assert!(
        topo.server
            .links()
            .contains(&a["device"].as_str().unwrap().to_string())
    );
    assert_eq!(a["routes"], serde_json::json!(["10.201.0.0/24"]));
    assert_session_shape(&a["session"]);
    assert_eq!(a["session"]["cipher"], "aes-128-gcm");
    assert_eq!(a["session"]["keepalive"]["negotiated"], true);
    assert_eq!(a["session"]["keepalive"]["dead_after_seconds"], 3.0);
    // Keepalive pings arrive every second: the last authenticated record is recent.
    assert!(u(&a["session"]["last_authenticated_age"]) <= 3, "{a}");
    assert_traffic_shape(&a["traffic"]);
    assert!(u(&a["traffic"]["rx_packets"]) >= 3, "{a}");
    assert!(u(&a["traffic"]["tx_packets"]) >= 3, "{a}");
    let now = u(&v["now"]);
    assert!(u(&a["connected_since"]) <= now && now - u(&a["connected_since"]) < 60);

    let l = &v["lingering"][0];
    assert_eq!(
        keys(l),
        set(&[
            "device",
            "expires",
            "expires_in",
            "id",
            "idle_since",
            "idle_since_age",
            "local_ip",
            "local_ip6",
            "peer_ip",
            "peer_ip6",
            "traffic"
        ])
    );
    assert_eq!(l["id"], "beta");
    let expires_in = u(&l["expires_in"]);
    assert!((50..=60).contains(&expires_in), "{l}");
    assert!(
        u(&l["expires"]).abs_diff(u(&l["idle_since"]) + 60) <= 1,
        "{l}"
    );
    assert!(u(&l["traffic"]["rx_packets"]) >= 3, "{l}");

    let o = status(&topo.server, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let human = stdout(&o);
    for want in [
        "server: dtun",
        "client: alpha endpoint: 172.31.250.2:",
        "latest handshake:",
        "keepalive: every 1 s (dead after 3 s of silence)",
        // A roaming session rekeys at once after setup.
        "rekey: on, epoch 2 (X25519 + ML-KEM-768: post-quantum, forward secret)",
        "roaming: on",
        "lingering: beta",
        "removed in:",
        "1 connected, 1 lingering",
        "routes: 10.201.0.0/24",
        "nat: off client-to-client: left to the host",
        "session: up for ",
        "device made: ",
    ] {
        let human = squash(&human);
        assert!(human.contains(want), "{want:?} missing:\n{human}");
    }
    eprintln!("{human}");
}

/// A client's status while up, then (its server gone) while backing off with the last error.
#[test]
fn client_status_up_then_backing_off() {
    common::need_root!();
    let topo = Topo::pair("st2");
    let mut server = start_server(&topo.server, 443, &["-key", KEY, "-keepalive", "1s"]);
    let mut client = start_client(
        topo.client(),
        &[
            "-host",
            &Topo::server_ip(0),
            "-key",
            KEY,
            "-id",
            "carol",
            "-keepalive",
            "1s",
            "-route",
            "10.99.0.0/16",
            "-exclude",
            "10.99.1.0/24",
        ],
    );
    let tun = common::only_tun(topo.client());
    let (_, peer) = wait_p2p(topo.client(), &tun);
    assert!(topo.client().ping_ok(&peer.to_string(), 3));
    let v = json(topo.client(), None);
    assert_eq!(
        keys(&v),
        set(&[
            "backoff_until",
            "backoff_until_in",
            "dns",
            "dns_via",
            "excluded",
            "id",
            "instance",
            "last_error",
            "now",
            "pid",
            "role",
            "routes",
            "server_address",
            "server_host",
            "sessions_started",
            "state",
            "state_since",
            "state_since_age",
            "traffic",
            "tunnel",
            "version"
        ])
    );
    assert_eq!(v["routes"], serde_json::json!(["10.99.0.0/16"]), "{v}");
    assert_eq!(v["excluded"], serde_json::json!(["10.99.1.0/24"]), "{v}");
    assert_eq!(
        (&v["dns"], &v["dns_via"]),
        (&serde_json::json!([]), &serde_json::Value::Null)
    );
    let human = squash(&stdout(&status(topo.client(), &[])));
    assert!(
        human.contains("routes: 10.99.0.0/16 (less 10.99.1.0/24)"),
        "{human}"
    );
    assert_eq!(v["role"], "client");
    assert_eq!(v["state"], "up", "{v}");
    assert_eq!(v["id"], "carol");
    assert_eq!(v["server_address"], "172.31.250.1:443");
    assert_eq!(v["sessions_started"], 1);
    assert!(
        v["backoff_until"].is_null() && v["last_error"].is_null(),
        "{v}"
    );
    let t = &v["tunnel"];
    assert_eq!(
        keys(t),
        set(&[
            "device",
            "local_ip",
            "local_ip6",
            "peer_ip",
            "peer_ip6",
            "session",
            "traffic"
        ])
    );
    assert_eq!(t["device"], tun.as_str());
    assert_eq!(t["peer_ip"], peer.to_string());
    // IPv6 inside (the server's default -pool6): the pair the client's TUN holds.
    let local6 = t["local_ip6"].as_str().expect("an IPv6 pair").to_string();
    assert!(local6.starts_with("fd64:7475:6e00:"), "{t}");
    let held = topo.client().addrs(&tun);
    assert!(held.contains(&local6), "{held}");
    assert_session_shape(&t["session"]);
    assert_eq!(t["session"]["keepalive"]["period_seconds"], 1.0);
    assert_traffic_shape(&t["traffic"]);
    assert!(u(&t["traffic"]["tx_packets"]) >= 3, "{t}");
    assert_traffic_shape(&v["traffic"]);
    let human = stdout(&status(topo.client(), &[]));
    for want in ["client: dtun (id carol", "state: up for", "transfer:"] {
        assert!(squash(&human).contains(want), "{want:?} missing:\n{human}");
    }

    server.stop(Duration::from_secs(10));
    let mut v = Value::Null;
    wait_for(Duration::from_secs(20), "the client backing off", || {
        v = json(topo.client(), None);
        v["state"] == "backing_off"
    });
    assert!(v["tunnel"].is_null(), "{v}");
    assert!(
        v["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{v}"
    );
    assert!(u(&v["backoff_until"]) >= u(&v["now"]), "{v}");
    assert!(u(&v["backoff_until_in"]) <= 31, "{v}");
    // Earlier sessions' traffic stays in the totals.
    assert!(u(&v["traffic"]["tx_packets"]) >= 3, "{v}");
    let human = stdout(&status(topo.client(), &[]));
    assert!(
        squash(&human).contains("state: backing off until ")
            && human.contains("UTC (next try in ")
            && human.contains("last error:"),
        "{human}"
    );
    eprintln!("{human}");
    client.stop(Duration::from_secs(10));
}

/// No dtun: a message naming the instance. A user other than root and dtun's own: refused,
/// and told what is needed. A second dtun of the same instance in one namespace: refused with
/// the -instance message; under another -instance it runs and answers by that name.
#[test]
fn missing_refused_and_duplicate_instances() {
    common::need_root!();
    let dir = TestDir::new("st3");
    let ns = Netns::new("st3", &dir);
    let o = status(&ns, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no dtun named dtun is running in this network namespace"),
        "{}",
        stderr(&o)
    );
    let o = status(&ns, &["-json", "edge"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no dtun named edge is running"),
        "{}",
        stderr(&o)
    );

    let mut server = start_server(&ns, 443, &["-key", KEY, "-v"]);
    // A copy uid 4242 can run wherever the build is (a checkout under /root, say).
    let copy = dir.path().join("dtun");
    std::fs::copy(DTUN, &copy).unwrap();
    let o = ns.run(
        "setpriv",
        &[
            "--reuid",
            "4242",
            "--regid",
            "4242",
            "--clear-groups",
            common::path_str(&copy),
            "status",
        ],
    );
    assert!(!o.status.success(), "{o:?}");
    assert!(
        stderr(&o).contains("needs root or the user dtun runs as"),
        "{}",
        stderr(&o)
    );

    let o = ns.run("timeout", &["10", DTUN, "-key", KEY, "-port", "444"]);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        stderr(&o).contains("another dtun named dtun runs in this network namespace (dtun pid ")
            && stderr(&o).contains("give this one another -instance NAME"),
        "{}",
        stderr(&o)
    );
    let _two = start_server(&ns, 444, &["-key", KEY, "-port", "444", "-instance", "two"]);
    assert_eq!(json(&ns, Some("two"))["instance"], "two");
    assert!(stdout(&status(&ns, &["two"])).starts_with("server: two"));
    assert_eq!(json(&ns, Some("dtun"))["instance"], "dtun");
    assert!(
        server.exited().is_none(),
        "the first server is still running"
    );
}

/// Local clients that connect and send nothing, too many at once, a line without an end and
/// an unknown request neither block nor stop dtun: once they time out, status answers again.
#[test]
fn hostile_local_clients_cannot_block_the_socket() {
    common::need_root!();
    let topo = Topo::pair("st4");
    let mut server = start_server(&topo.server, 443, &["-key", KEY]);
    let script = r#"
import os, socket, sys, time
def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("/run/dtun/%d.dtun.sock" % os.stat("/proc/self/ns/net").st_ino)
    return s
s = conn(); s.sendall(b"frobnicate\n"); print(s.recv(4096).decode().strip(), flush=True)
s = conn(); s.sendall(b"x" * 4096)
try:
    print("long:", s.recv(4096), flush=True)
except OSError as e:
    print("long:", e, flush=True)
idle = [conn() for _ in range(20)]
for c in idle:
    try:
        c.sendall(b"sta")
    except OSError:
        pass  # beyond the cap: closed at once
print("holding", flush=True)
time.sleep(8)
"#;
    let mut hog = topo.server.spawn("python3", &["-c", script], &[]);
    hog.wait_log("holding", Duration::from_secs(10));
    let log = hog.log();
    assert!(log.contains("error: unknown request"), "{log}");
    assert!(log.contains("long:"), "{log}");
    // The idle connections time out after 2 s each; then status answers while they are held.
    wait_for(
        Duration::from_secs(6),
        "status to answer beside idle connections",
        || status(&topo.server, &[]).status.success(),
    );
    assert!(
        hog.exited().is_none(),
        "the idle connections are still held"
    );
    common::assert_running(&mut server, "server");
    let _client = start_client(topo.client(), &["-host", &Topo::server_ip(0), "-key", KEY]);
    assert_eq!(json(&topo.server, None)["clients"][0]["id"], "dtun");
}

/// `-metrics` on both sides: the per-client and server-wide counters, the admission
/// counters, and the client's own, move with traffic; other paths get 404.
#[test]
fn metrics_scrape_moves_with_traffic() {
    common::need_root!();
    let topo = Topo::pair("st5");
    let _server = start_server(
        &topo.server,
        443,
        &["-key", KEY, "-metrics", "127.0.0.1:9586"],
    );
    let _client = start_client(
        topo.client(),
        &[
            "-host",
            &Topo::server_ip(0),
            "-key",
            KEY,
            "-id",
            "dana",
            "-keepalive",
            "0",
            "-metrics",
            "127.0.0.1:9587",
        ],
    );
    let (_, peer) = wait_p2p(topo.client(), &common::only_tun(topo.client()));
    assert!(topo.client().ping_ok(&peer.to_string(), 1));
    let (s0, meta) = scrape(&topo.server, 9586, "/metrics");
    assert!(
        meta.starts_with("200 application/openmetrics-text"),
        "{meta}"
    );
    assert!(s0.trim_end().ends_with("# EOF"), "{s0}");
    let (c0, _) = scrape(topo.client(), 9587, "/metrics");
    assert_eq!(metric(&s0, "dtun_sessions"), 1);
    assert_eq!(metric(&s0, "dtun_devices"), 1);
    assert!(metric(&s0, "dtun_handshakes_total") >= 1);
    assert!(metric(&s0, "dtun_handshake_cookies_total") >= 1);
    assert_eq!(metric(&s0, "dtun_client_connected{id=\"dana\"}"), 1);
    assert_eq!(metric(&c0, "dtun_up"), 1);
    assert_eq!(metric(&c0, "dtun_sessions_started_total"), 1);
    assert_eq!(
        metric(
            &s0,
            "dtun_client_drops_total{id=\"dana\",reason=\"replay\"}"
        ),
        0
    );

    assert!(topo.client().ping_ok(&peer.to_string(), 5));
    let (s1, _) = scrape(&topo.server, 9586, "/metrics");
    let (c1, _) = scrape(topo.client(), 9587, "/metrics");
    for (text0, text1, name) in [
        (&s0, &s1, "dtun_client_rx_packets_total{id=\"dana\"}"),
        (&s0, &s1, "dtun_client_tx_packets_total{id=\"dana\"}"),
        (&s0, &s1, "dtun_rx_packets_total"),
        (&c0, &c1, "dtun_tx_packets_total"),
        (&c0, &c1, "dtun_rx_packets_total"),
    ] {
        let (a, b) = (metric(text0, name), metric(text1, name));
        assert!(b >= a + 5, "{name}: {a} -> {b}");
    }
    let (a, b) = (
        metric(&s0, "dtun_client_rx_bytes_total{id=\"dana\"}"),
        metric(&s1, "dtun_client_rx_bytes_total{id=\"dana\"}"),
    );
    assert!(b >= a + 5 * 84, "rx bytes {a} -> {b}");
    let (_, meta) = scrape(&topo.server, 9586, "/other");
    assert!(meta.starts_with("404"), "{meta}");
}

/// `-metrics` on a non-loopback address: refused by `-check` and at start without
/// `-metrics-token`; with it, a scrape without the token or with a wrong one gets 401 and the
/// right one 200; one source holding MAX_PER_SOURCE idle connections cannot take more, while
/// another source still scrapes. Before the fix any address was served to anyone.
#[test]
fn metrics_off_loopback_needs_a_token_and_caps_each_source() {
    common::need_root!();
    let topo = Topo::pair("st6");
    let ns = &topo.server;
    let open = ["-key", KEY, "-metrics", "0.0.0.0:9586"];
    let o = ns.run(DTUN, &[&open[..], &["-check"]].concat());
    assert!(!o.status.success(), "-check passed: {o:?}");
    assert!(
        stderr(&o).contains("give -metrics-token FILE"),
        "{}",
        stderr(&o)
    );
    let o = ns.run("timeout", &[&["10", DTUN][..], &open[..]].concat());
    assert!(!o.status.success(), "started: {o:?}");
    assert!(
        stderr(&o).contains("not a loopback address"),
        "{}",
        stderr(&o)
    );

    let token = "metrics-token-5f1c2e";
    let file = topo.dir.file("token", format!("{token}\n").as_bytes());
    let file = file.to_str().unwrap();
    let o = ns.run(
        DTUN,
        &[&open[..], &["-metrics-token", file, "-check"]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let _server = start_server(ns, 443, &[&open[..], &["-metrics-token", file]].concat());
    wait_for(UP, "-metrics listening", || {
        ns.run("curl", &["-s", "http://127.0.0.1:9586/metrics"])
            .status
            .success()
    });
    let url = format!("http://{}:9586/metrics", Topo::server_ip(0));
    let (_, meta) = scrape_as(topo.client(), &url, None);
    assert!(meta.starts_with("401"), "no token: {meta}");
    let (_, meta) = scrape_as(topo.client(), &url, Some("metrics-token-5f1c2f"));
    assert!(meta.starts_with("401"), "wrong token: {meta}");
    let (body, meta) = scrape_as(topo.client(), &url, Some(token));
    assert!(meta.starts_with("200"), "{meta}");
    assert_eq!(metric(&body, "dtun_sessions"), 0);

    // Three idle connections from 127.0.0.1: the third is closed at once.
    let script = r#"
import socket
conns = [socket.create_connection(("127.0.0.1", 9586)) for _ in range(3)]
for i, c in enumerate(conns):
    c.settimeout(1)
    try:
        print(i, "closed" if c.recv(1) == b"" else "data", flush=True)
    except socket.timeout:
        print(i, "open", flush=True)
    except OSError as e:
        print(i, "closed", e, flush=True)
print("holding", flush=True)
import time; time.sleep(4)
"#;
    let mut hog = ns.spawn("python3", &["-c", script], &[]);
    hog.wait_log("holding", Duration::from_secs(10));
    let log = hog.log();
    assert!(log.contains("0 open") && log.contains("1 open"), "{log}");
    assert!(
        log.contains("2 closed"),
        "a third connection from one source: {log}"
    );
    let (_, meta) = scrape_as(topo.client(), &url, Some(token));
    assert!(
        meta.starts_with("200"),
        "another source while one holds its cap: {meta}"
    );
}
