//! Lifecycle tests: server restarts, a lossy underlay, many connect/disconnect
//! cycles, SIGTERM on either side, the four pairings of original (`-compat`) and new peers, and
//! two clients fighting over one id. Same harness and rules as `e2e.rs`: every test builds its
//! own namespaces (topologies drawn in `common/mod.rs`) and nothing runs in the root namespace.
//! Needs root, /dev/net/tun, iproute2, iputils-ping and nftables.
//!
//! Run one test: `cargo test --test lifecycle lossy_underlay -- --nocapture`.

mod common;

use common::{
    DTUN, Netns, Proc, TestDir, Topo, UP, assert_running, lines_with, only_tun, parse_env,
    path_str, start_client, start_server, wait_for, wait_p2p, wait_peernet_up,
};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

// Substrings of dtun's log lines that the tests look for (see src/client.rs, src/server.rs).
/// The client logs this (with device and addresses) once forwarding starts.
const CLIENT_TUNNEL_UP: &str = dtun::client::LOG_TUNNEL_UP;
/// The server's line for a new session: `client ID connected from ADDR on DEV (...)`.
const SERVER_CLIENT_CONNECTED: &str = dtun::server::LOG_CONNECTED;
/// With `-v`, the client says whether the server's hint carried the control-message marker.
const NEGOTIATED_YES: &str = "control messages: true";
const NEGOTIATED_NO: &str = "control messages: false";
/// Where a control message reaching a `-compat` peer ends up: with `-v` a `drop reason=R`
/// line, and `R=N` in the session's counters. It is no IP packet (`not_ip`); the server checks
/// inner source addresses first, so it may count it as `forged_source` there; one that looks
/// like a control message but does not parse is `unexpected_type`. The traffic of
/// `original_and_new_pairings` (pings between the tunnel addresses) causes none of these.
const CONTROL_DROPS: [&str; 3] = ["not_ip", "forged_source", "unexpected_type"];
/// The client's warning when another client took its id over.
const ID_IN_USE: &str = "in use from";

/// The server's address as the client of `Topo::pair` sees it.
const SERVER_IP: &str = "172.31.250.1";
const DEFAULT_PORT: u16 = 443;

/// How many times `needle` occurs in `text`.
fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// The server's `connected` lines for `id`.
fn connects(server: &Proc, id: &str) -> usize {
    count(
        &server.log(),
        &format!("client {id} {SERVER_CLIENT_CONNECTED} from"),
    )
}

/// Asserts the server's namespace holds no dtun device and no route to the tunnels or LANs.
fn assert_server_ns_clean(server_ns: &Netns) {
    let links = server_ns.links();
    assert!(
        links.is_empty(),
        "TUNs left in the server namespace: {links:?}"
    );
    let routes = server_ns.routes();
    assert!(
        !routes.contains("dtun") && !routes.contains("10.20"),
        "routes left in the server namespace:\n{routes}"
    );
}

/// After the server exits: its LAN table's rule is gone too.
fn assert_no_lan_rule(server_ns: &Netns) {
    let rules = server_ns.ip(&["rule"]) + &server_ns.ip(&["-6", "rule"]);
    assert!(
        !rules.contains(&format!("lookup {}", dtun_linux::routes::LAN_TABLE)),
        "the LAN table's rule left in the server namespace:\n{rules}"
    );
}

/// Stops `p` with SIGTERM and asserts that it exits 0 within 10 s.
fn sigterm_exits_zero(p: &mut Proc, what: &str) -> ExitStatus {
    p.signal("TERM");
    p.expect_success(&format!("{what} after SIGTERM"), Duration::from_secs(10))
}

/// A hook script that, on every run, appends `TUN PEER_IP LOCAL_IP` to `NAME.log` and dumps
/// the environment it was started with (not the shell's) to `NAME-$TUN.env`. Returns the
/// script's path.
fn hook_script(dir: &TestDir, name: &str) -> PathBuf {
    let base = dir.path().join(name);
    let base = base.display();
    dir.script(
        &format!("{name}.sh"),
        &format!(
            "#!/bin/sh\n\
             tr '\\0' '\\n' < /proc/$$/environ > '{base}-'\"$TUN\"'.env.tmp' \
             && mv '{base}-'\"$TUN\"'.env.tmp' '{base}-'\"$TUN\"'.env'\n\
             echo \"$TUN $PEER_IP $LOCAL_IP\" >> '{base}.log'\n"
        ),
    )
}

/// The runs a `hook_script` recorded so far: one `TUN PEER_IP LOCAL_IP` line each.
fn hook_runs(dir: &TestDir, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.path().join(format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Asserts that the last run of `hook_script` `name` for device `tun` saw exactly TUN, PEER_IP,
/// LOCAL_IP and PATH, with these values.
fn assert_hook_env(dir: &TestDir, name: &str, tun: &str, peer: Ipv4Addr, local: Ipv4Addr) {
    let path = dir.path().join(format!("{name}-{tun}.env"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{name} script never ran for {tun} ({}): {e}",
            path.display()
        )
    });
    let env = parse_env(&text);
    // Between dtun peers IPv6 inside adds LOCAL_IP6 and PEER_IP6 (both; tests/ipv6.rs checks
    // their values).
    let keys: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|k| !k.ends_with("_IP6"))
        .collect();
    assert_eq!(
        keys,
        ["LOCAL_IP", "PATH", "PEER_IP", "TUN"],
        "{name} script environment:\n{text}"
    );
    assert_eq!(
        env.contains_key("LOCAL_IP6"),
        env.contains_key("PEER_IP6"),
        "{name} script environment:\n{text}"
    );
    assert_eq!(env["TUN"], tun, "{name} script TUN");
    assert_eq!(env["PEER_IP"], peer.to_string(), "{name} script PEER_IP");
    assert_eq!(env["LOCAL_IP"], local.to_string(), "{name} script LOCAL_IP");
}

/// Number of open file descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd: {e}"))
        .count()
}

/// Resident set size of `pid` in KiB (VmRSS).
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// After SIGKILL of a server, the client notices within 3 keepalive periods (or one after an
/// ICMP port unreachable), reconnects to the new server with backoff, and keeps its TUN
/// (same ifindex, same addresses): ping works again, the server has the peernet route again,
/// and the up script did not run a second time.
#[test]
fn server_restart_client_comes_back() {
    common::need_root!();
    let topo = Topo::pair("k");
    let server_args = ["-key", "foo", "-keepalive", "1s", "-v"];
    let mut server = start_server(&topo.server, DEFAULT_PORT, &server_args);
    let up = hook_script(&topo.dir, "c-up");
    let mut client = start_client(
        topo.client(),
        &[
            "-host",
            SERVER_IP,
            "-key",
            "foo",
            "-keepalive",
            "1s",
            "-peernet",
            "10.200.0.0/24",
            "-up",
            path_str(&up),
            "-v",
        ],
    );
    let (cdev, c_local, c_peer) = wait_peernet_up(topo.client(), &topo.server, "10.200.0.0/24");
    let cindex = topo.client().ifindex(&cdev).expect("client TUN ifindex");
    assert_eq!(hook_runs(&topo.dir, "c-up").len(), 1, "up script runs");

    server.signal("KILL");
    let killed = Instant::now();
    server
        .wait_exit(Duration::from_secs(5))
        .expect("server killed");
    let mut server = start_server(&topo.server, DEFAULT_PORT, &server_args);

    // 3 keepalive periods + the first backoff (1 s ± 20 %) + handshake: ~5 s; 15 s is ample.
    let limit = Duration::from_secs(15);
    wait_for(limit, "client back: a second `tunnel up`", || {
        assert_running(&mut client, "dtun client");
        count(&client.log(), CLIENT_TUNNEL_UP) >= 2
    });
    let sdev = only_tun(&topo.server);
    let want = format!("10.200.0.0/24 via {c_local} dev {sdev}");
    wait_for(
        limit.saturating_sub(killed.elapsed()),
        &format!("server route `{want}` again"),
        || topo.server.routes().contains(&want),
    );
    wait_for(
        limit.saturating_sub(killed.elapsed()),
        "ping through the tunnel again",
        || topo.client().ping_ok(&c_peer.to_string(), 1),
    );
    let took = killed.elapsed();
    assert!(took <= limit, "client back only {took:?} after the kill");
    server.wait_log(SERVER_CLIENT_CONNECTED, UP);

    assert_eq!(
        topo.client().links(),
        std::slice::from_ref(&cdev),
        "client TUNs"
    );
    assert_eq!(
        topo.client().ifindex(&cdev),
        Some(cindex),
        "client TUN was replaced"
    );
    assert_eq!(
        wait_p2p(topo.client(), &cdev),
        (c_local, c_peer),
        "client addresses changed (the pool is deterministic per id)"
    );
    let runs = hook_runs(&topo.dir, "c-up");
    assert_eq!(
        runs.len(),
        1,
        "the up script ran again although the addresses did not change: {runs:?}"
    );
    assert!(
        topo.server.ping_ok(&c_local.to_string(), 2),
        "server -> client after the restart"
    );
    eprintln!("client back {took:?} after the server was killed");
}

/// Packets dropped so far by the counters of `LOSSY_NFT` in `ns`.
fn nft_dropped(ns: &Netns) -> u64 {
    let out = ns.run("nft", &["list", "table", "inet", "t"]);
    assert!(out.status.success(), "nft list: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "packets")
        .filter_map(|w| w[1].parse::<u64>().ok())
        .sum()
}

/// 10 % of UDP lost each way on the client's side: the handshake still completes, and the
/// tunnel survives ~15 s of pings (5/s) without a reconnect and with about 19 % ping loss.
///
/// Not "exactly one `connected` in all": each setup record (address message, peernet) is sent
/// once, so with 10 % loss about one run in five loses one, and by design (PROTOCOL.md) the
/// other side times out and the client reconnects. So: no reconnect once the setup is over,
/// at most 3 sessions for the setup, and no handshake or session given up over a lost datagram.
#[test]
fn lossy_underlay() {
    common::need_root!();
    let topo = Topo::pair("y");
    let nft_ok = topo.client().run("nft", &["--version"]).status.success();
    assert!(
        nft_ok,
        "`nft` (nftables) is needed to simulate loss: apt-get install nftables \
         (scripts/test.sh installs it)"
    );
    let rules = topo.dir.file("lossy.nft", common::LOSSY_NFT.as_bytes());
    let out = topo.client().run("nft", &["-f", path_str(&rules)]);
    assert!(out.status.success(), "nft -f: {out:?}");

    let server = start_server(
        &topo.server,
        DEFAULT_PORT,
        &["-key", "foo", "-keepalive", "1s", "-v"],
    );
    let mut client = topo.client().spawn(
        DTUN,
        &[
            "-host",
            SERVER_IP,
            "-key",
            "foo",
            "-id",
            "lossy",
            "-keepalive",
            "1s",
            "-peernet",
            "10.200.0.0/24",
            "-v",
        ],
        &[],
    );
    // Lost flights are retransmitted after 1 s; a lost setup record costs a 10 s timeout and a
    // reconnect (PROTOCOL.md: setup messages are datagrams and can be lost).
    client.wait_log(CLIENT_TUNNEL_UP, Duration::from_secs(60));
    let cdev = only_tun(topo.client());
    let (_, c_peer) = wait_p2p(topo.client(), &cdev);
    // The route shows that a peernet message reached the server: the setup is over.
    wait_for(
        Duration::from_secs(60),
        "server route to the peernet",
        || topo.server.routes().contains("10.200.0.0/24 via"),
    );
    wait_for(Duration::from_secs(30), "a first ping reply", || {
        topo.client().ping_ok(&c_peer.to_string(), 1)
    });
    let setup_connects = connects(&server, "lossy");

    let (tx, rx) = topo.client().ping_stats(&c_peer.to_string(), 75);
    let loss = f64::from(tx - rx) / f64::from(tx.max(1));
    let dropped = nft_dropped(topo.client());
    let after = connects(&server, "lossy");
    eprintln!(
        "lossy underlay: {setup_connects} connect(s) during setup, ping {rx}/{tx} \
         ({:.0} % loss), nft dropped {dropped}",
        loss * 100.0
    );
    if setup_connects > 1 {
        // Why the setup took several sessions (shown with --nocapture).
        let why = |log: &str| -> String {
            log.lines()
                .filter(|l| l.contains("disconnected") || l.contains("WARN"))
                .map(|l| format!("  {l}\n"))
                .collect()
        };
        eprintln!(
            "server:\n{}client:\n{}",
            why(&server.log()),
            why(&client.log())
        );
    }
    assert!(
        dropped > 0,
        "the nft rules dropped nothing: no loss simulated"
    );
    assert_running(&mut client, "dtun client");
    assert_eq!(
        after,
        setup_connects,
        "the client reconnected while the tunnel carried traffic; server log:\n{}",
        server.log()
    );
    // Lost datagrams are what DTLS retransmission is for: no handshake may fail because of
    // them, nor may a session end because a send failed (a datagram dropped by a local
    // firewall makes send() return EPERM: that is one lost datagram, not a dead session).
    let clog = client.log();
    let failed: Vec<&str> = clog
        .lines()
        .filter(|l| {
            (l.contains("handshake with") || l.contains("sending to")) && l.contains("failed")
        })
        .collect();
    assert!(
        failed.is_empty(),
        "under 10 % loss the client gave up a handshake or session on a lost datagram:\n{}",
        failed.join("\n")
    );
    // A lost address or peernet record may cost a reconnect during the setup (PROTOCOL.md:
    // the other side times out and the client reconnects); a storm would be many.
    assert!(
        setup_connects <= 3,
        "{setup_connects} connects during the setup; server log:\n{}",
        server.log()
    );
    assert!(tx >= 70, "ping sent only {tx}");
    assert!(
        loss < 0.35,
        "ping lost {:.0} % through a 10 %-each-way lossy path (expected ~19 %)",
        loss * 100.0
    );
}

/// Drops, at the client, the first datagram from the server that starts with a
/// ChangeCipherSpec record: the server's last handshake flight (ChangeCipherSpec + Finished),
/// which it sends as one datagram. Later ones pass. The set remembers who lost one already.
const LOST_FINAL_FLIGHT_NFT: &str = "\
table inet t {
    set lost { type ipv4_addr; flags dynamic; }
    chain in {
        type filter hook input priority 0; policy accept;
        udp sport 443 @th,64,8 20 ip saddr @lost accept
        udp sport 443 @th,64,8 20 add @lost { ip saddr } counter drop
    }
}
";

/// The server's last handshake flight is lost once. The client cannot finish without it and
/// repeats its own last flight every second; RFC 6347 4.2.4 says the server must answer that
/// with its last flight again (the dtls crate does not, so dtun does). Then the first session
/// comes up about a second late. Without the answer the client only gets through on a second
/// session, after its 20 s handshake timeout, while the server gives up the first one for want
/// of a peernet message: what made `lossy_underlay` fail about once in five runs.
#[test]
fn lost_final_flight_is_answered() {
    common::need_root!();
    let topo = Topo::pair("f");
    let rules = topo.dir.file("final.nft", LOST_FINAL_FLIGHT_NFT.as_bytes());
    let out = topo.client().run("nft", &["-f", path_str(&rules)]);
    assert!(
        out.status.success(),
        "nft -f (nftables is needed: apt-get install nftables): {out:?}"
    );
    let server = start_server(&topo.server, DEFAULT_PORT, &["-key", "foo", "-v"]);
    let mut client = topo.client().spawn(
        DTUN,
        &["-host", SERVER_IP, "-key", "foo", "-id", "fin", "-v"],
        &[],
    );
    // A few retransmission intervals (1 s), well below the 10 s setup and 20 s handshake
    // timeouts that end the session when nobody answers.
    client.wait_log(CLIENT_TUNNEL_UP, Duration::from_secs(8));
    assert_eq!(
        nft_dropped(topo.client()),
        1,
        "the server's last flight was not dropped exactly once"
    );
    let clog = client.log();
    assert_eq!(
        lines_with(&clog, &["handshake with", "failed"]),
        0,
        "the client gave up a handshake; log:\n{clog}"
    );
    assert_eq!(
        connects(&server, "fin"),
        1,
        "more than one session for one lost datagram; server log:\n{}",
        server.log()
    );
    assert_running(&mut client, "dtun client");
}

/// Same-id cycles. One takes ~35 ms here (debug build, 2 cores: spawn, handshake, TUN, up,
/// SIGTERM, close_notify, exit), so the 1000 wanted take ~35 s, alone or beside the e2e suite:
/// well inside the ~120 s budget, so no need to cut the number.
/// `DTUN_TEST_CYCLES=N` overrides it (for a quick run).
const SAME_ID_CYCLES: usize = 1000;
/// Then one cycle for each of this many fresh ids: each makes and (after `-linger`) removes a
/// device on the server, which same-id cycles never do (the device outlives its sessions), so a
/// per-device leak (file descriptor, pool pair, route) shows too.
const FRESH_ID_CYCLES: usize = 100;

/// Polls `p`'s log every 5 ms for `needle` (the harness polls every 50 ms, too slow for
/// a thousand cycles).
fn wait_log_fast(p: &mut Proc, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !p.log().contains(needle) {
        if let Some(status) = p.exited() {
            assert!(
                p.log().contains(needle),
                "exited ({status}) before logging {needle:?}; log:\n{}",
                p.log()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {needle:?}; log:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls every 5 ms for `p` to exit.
fn wait_exit_fast(p: &mut Proc, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = p.exited() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "still running {timeout:?} after SIGTERM; log:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One cycle: a `-once` client with `id` and `peernet` comes up, gets SIGTERM and exits 0.
fn one_cycle(ns: &Netns, id: &str, peernet: &str) {
    let mut c = ns.spawn(
        DTUN,
        &[
            "-host", SERVER_IP, "-key", "foo", "-id", id, "-once", "-peernet", peernet,
        ],
        &[],
    );
    wait_log_fast(&mut c, CLIENT_TUNNEL_UP, UP);
    c.signal("TERM");
    let status = wait_exit_fast(&mut c, Duration::from_secs(10));
    assert!(status.success(), "client exit {status}; log:\n{}", c.log());
}

/// Waits until the server has removed every device after `-linger`: no TUN, no route through
/// one, and its last removal line says the pool is empty.
fn wait_linger_cleanup(ns: &Netns, server: &Proc) {
    wait_for(
        Duration::from_secs(30),
        "server to remove every device after -linger",
        || {
            let log = server.log();
            let last = log.lines().rev().find(|l| l.contains("pool pairs in use"));
            last.is_some_and(|l| l.contains("(0 pool pairs in use)"))
                && ns.links().is_empty()
                && !ns.routes().contains("dtun")
        },
    );
}

/// Many connect/disconnect cycles: afterwards, once `-linger` has passed, the server has no
/// TUN and no route left, as many file descriptors as after one cycle, and a small RSS.
#[test]
fn connect_disconnect_cycles() {
    common::need_root!();
    let cycles: usize = std::env::var("DTUN_TEST_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SAME_ID_CYCLES);
    let topo = Topo::pair("c");
    let server = start_server(
        &topo.server,
        DEFAULT_PORT,
        &["-key", "foo", "-linger", "1s"],
    );
    let pid = server.pid();
    // `ip netns exec` execs the program: the pid must be dtun's own, or the fd count would be
    // that of a wrapper.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "dtun", "pid {pid} is not the dtun server");

    // Warm-up: one full cycle including the linger expiry, so lazily made things exist.
    one_cycle(topo.client(), "cycler", "10.200.0.0/24");
    wait_linger_cleanup(&topo.server, &server);
    let fds_before = fd_count(pid);
    let rss_before = vm_rss_kib(pid);

    let started = Instant::now();
    for _ in 0..cycles {
        one_cycle(topo.client(), "cycler", "10.200.0.0/24");
    }
    let same = started.elapsed();
    for i in 0..FRESH_ID_CYCLES {
        one_cycle(
            topo.client(),
            &format!("fresh{i}"),
            &format!("10.201.{i}.0/24"),
        );
    }
    let fresh = started.elapsed() - same;
    eprintln!(
        "{cycles} same-id cycles took {same:?} ({:?} each), {FRESH_ID_CYCLES} fresh-id cycles {fresh:?}",
        same / cycles.max(1) as u32
    );
    assert_eq!(
        count(&server.log(), &format!(" {SERVER_CLIENT_CONNECTED} from ")),
        1 + cycles + FRESH_ID_CYCLES,
        "server `connected` lines"
    );
    wait_linger_cleanup(&topo.server, &server);

    assert_server_ns_clean(&topo.server);
    let fds_after = fd_count(pid);
    let rss_after = vm_rss_kib(pid);
    eprintln!("server fds {fds_before} -> {fds_after}, VmRSS {rss_before} -> {rss_after} KiB");
    assert!(
        fds_after.abs_diff(fds_before) <= 2,
        "server fds: {fds_before} after the warm-up, {fds_after} after the cycles"
    );
    // Growth seen here: under 1 MiB. A leak of 8 KiB or more per session exceeds the bound
    // over these 1100 sessions.
    assert!(
        rss_after.saturating_sub(rss_before) <= 8 * 1024,
        "server VmRSS grew from {rss_before} to {rss_after} KiB over the cycles"
    );
    assert!(
        rss_after <= 64 * 1024,
        "server VmRSS {rss_after} KiB after the cycles (over 64 MiB)"
    );
}

/// SIGTERM to a client: it exits 0, its TUN is gone and its down script saw the tunnel's
/// facts; the server logs the disconnect. Then SIGTERM to the server with another client
/// connected: it exits 0, removes every device and route, and runs its down script per device.
#[test]
fn sigterm_either_side_leaves_nothing() {
    common::need_root!();
    let topo = Topo::star("t", 2);
    let dir = &topo.dir;
    let (s_up, s_down) = (hook_script(dir, "s-up"), hook_script(dir, "s-down"));
    let (c_up, c_down) = (hook_script(dir, "c-up"), hook_script(dir, "c-down"));
    let mut server = start_server(
        &topo.server,
        DEFAULT_PORT,
        &[
            "-key",
            "foo",
            "-up",
            path_str(&s_up),
            "-down",
            path_str(&s_down),
            "-v",
        ],
    );
    let mut alpha = start_client(
        &topo.clients[0],
        &[
            "-host",
            &Topo::server_ip(0),
            "-key",
            "foo",
            "-id",
            "alpha",
            "-peernet",
            "10.201.0.0/24",
            "-up",
            path_str(&c_up),
            "-down",
            path_str(&c_down),
        ],
    );
    let _beta = start_client(
        &topo.clients[1],
        &[
            "-host",
            &Topo::server_ip(1),
            "-key",
            "foo",
            "-id",
            "beta",
            "-peernet",
            "10.202.0.0/24",
        ],
    );
    let a_dev = only_tun(&topo.clients[0]);
    let (a_local, a_peer) = wait_p2p(&topo.clients[0], &a_dev);
    wait_for(UP, "two TUNs and two routes on the server", || {
        let r = topo.server.routes();
        topo.server.links().len() == 2 && r.contains("10.201.0.0/24") && r.contains("10.202.0.0/24")
    });
    // The server's devices and their addresses, as its scripts must see them.
    let s_devs: Vec<(String, Ipv4Addr, Ipv4Addr)> = topo
        .server
        .links()
        .into_iter()
        .map(|d| {
            let (local, peer) = wait_p2p(&topo.server, &d);
            (d, local, peer)
        })
        .collect();
    assert!(topo.clients[0].ping_ok(&a_peer.to_string(), 2));
    assert_eq!(hook_runs(dir, "c-up").len(), 1, "client up script runs");
    assert_hook_env(dir, "c-up", &a_dev, a_peer, a_local);
    wait_for(
        Duration::from_secs(5),
        "server up script per device",
        || hook_runs(dir, "s-up").len() == 2,
    );
    for (dev, local, peer) in &s_devs {
        assert_hook_env(dir, "s-up", dev, *peer, *local);
    }
    assert!(hook_runs(dir, "c-down").is_empty() && hook_runs(dir, "s-down").is_empty());

    // The client side.
    sigterm_exits_zero(&mut alpha, "client alpha");
    assert!(
        topo.clients[0].links().is_empty(),
        "client TUN left after SIGTERM"
    );
    assert_eq!(hook_runs(dir, "c-down").len(), 1, "client down script runs");
    assert_hook_env(dir, "c-down", &a_dev, a_peer, a_local);
    // The server writes IPv4 peers of its dual-stack socket as plain a.b.c.d:port.
    let gone = format!("client alpha from {}:", Topo::client_ip(0));
    wait_for(
        Duration::from_secs(10),
        "server logs alpha's disconnect",
        || {
            server
                .log()
                .lines()
                .any(|l| l.contains(&gone) && l.contains("disconnected: peer sent close_notify"))
        },
    );
    assert!(
        hook_runs(dir, "s-down").is_empty(),
        "server down script ran before -linger (120 s) passed"
    );

    // The server side, with beta still connected and alpha's device lingering.
    sigterm_exits_zero(&mut server, "server");
    assert_server_ns_clean(&topo.server);
    assert_no_lan_rule(&topo.server);
    let log = server.log();
    for (dev, _, _) in &s_devs {
        assert!(
            log.contains(&format!("removed {dev} and its routes")),
            "server did not say it removed {dev}; log:\n{log}"
        );
    }
    assert!(
        log.contains("client beta from") && log.contains("disconnected: server shutting down"),
        "server did not log beta's disconnect; log:\n{log}"
    );
    let runs = hook_runs(dir, "s-down");
    assert_eq!(runs.len(), 2, "server down script runs: {runs:?}");
    for (dev, local, peer) in &s_devs {
        assert_hook_env(dir, "s-down", dev, *peer, *local);
    }
}

/// One pairing of `original_and_new_pairings`: a server and a client, each `-compat` (standing
/// in for the original Go dtun) or not.
fn pairing(server_compat: bool, client_compat: bool) {
    let name = |compat: bool| if compat { "compat" } else { "new" };
    let what = format!(
        "server {} + client {}",
        name(server_compat),
        name(client_compat)
    );
    let topo = Topo::pair("o");
    // The -compat side stands in for the original, which has no -keepalive; the new side pings
    // (client) or checks (server) every second.
    let role = |compat: bool| if compat { "-compat" } else { "-keepalive=1s" };
    let mut server = start_server(
        &topo.server,
        DEFAULT_PORT,
        &["-key", "foo", "-v", role(server_compat)],
    );
    let client_args = [
        "-host",
        SERVER_IP,
        "-key",
        "foo",
        "-id",
        "pair",
        "-v",
        role(client_compat),
    ];
    let mut client = start_client(topo.client(), &client_args);
    let (c_local, c_peer) = wait_p2p(topo.client(), &only_tun(topo.client()));
    server.wait_log(SERVER_CLIENT_CONNECTED, UP);

    let negotiated = !server_compat && !client_compat;
    let clog = client.log();
    let want = if negotiated {
        NEGOTIATED_YES
    } else {
        NEGOTIATED_NO
    };
    assert!(
        clog.contains(want),
        "{what}: the client log should say `{want}`:\n{clog}"
    );
    // Two of ours agree on AES-128-GCM; the original only knows AES-128-CCM_8.
    let suite = if negotiated {
        "aes-128-gcm"
    } else {
        "aes-128-ccm8"
    };
    client.wait_log(CLIENT_TUNNEL_UP, UP);
    assert!(
        common::lines_with(&client.log(), &[CLIENT_TUNNEL_UP, suite]) > 0,
        "{what}: the client should use {suite}:\n{}",
        client.log()
    );

    let ping_both = |when: &str| {
        assert!(
            topo.client().ping_ok(&c_peer.to_string(), 3),
            "{what}: client -> server {when}"
        );
        assert!(
            topo.server.ping_ok(&c_local.to_string(), 3),
            "{what}: server -> client {when}"
        );
    };
    ping_both("after the handshake");
    // An idle tunnel for 4 keepalive periods: a dtun client pings when quiet and the server
    // answers; no control message may reach a -compat peer meanwhile. Nothing to poll for: the
    // point is what does not happen.
    std::thread::sleep(Duration::from_secs(4));
    assert_running(&mut server, "server");
    assert_running(&mut client, "client");
    ping_both("after 4 s idle");
    assert_eq!(
        connects(&server, "pair"),
        1,
        "{what}: the session did not survive 4 s idle; server log:\n{}",
        server.log()
    );

    // End the session from the new side first (its farewell must not reach a -compat peer),
    // then look at the -compat side's log, which now holds its session counters.
    if server_compat {
        sigterm_exits_zero(&mut client, "client");
        server.wait_log("disconnected", Duration::from_secs(10));
    } else {
        sigterm_exits_zero(&mut server, "server");
        client.wait_log("session with", Duration::from_secs(10));
    }
    for (side, compat, p) in [
        ("server", server_compat, &server),
        ("client", client_compat, &client),
    ] {
        if !compat {
            continue;
        }
        let log = p.log();
        for reason in CONTROL_DROPS {
            assert!(
                !log.contains(&format!("drop reason={reason}"))
                    && !log.contains(&format!("{reason}=")),
                "{what}: a control message reached the -compat {side} (drop `{reason}`); log:\n{log}"
            );
        }
    }
}

/// The four pairings of original (`-compat`) and new peers: tunnel up, ping both ways, the
/// client says whether control messages were negotiated, and none reaches a `-compat` peer.
#[test]
fn original_and_new_pairings() {
    common::need_root!();
    std::thread::scope(|scope| {
        for server_compat in [false, true] {
            for client_compat in [false, true] {
                scope.spawn(move || pairing(server_compat, client_compat));
            }
        }
    });
}

/// Two clients with one id: the second replaces the first, which learns that its id is in use
/// and backs off instead of taking it back (no flapping); the second keeps its tunnel.
#[test]
fn replaced_client_backs_off() {
    common::need_root!();
    let topo = Topo::star("b", 2);
    let server = start_server(&topo.server, DEFAULT_PORT, &["-key", "foo", "-v"]);
    let args = |i: usize| {
        vec![
            "-host".to_string(),
            Topo::server_ip(i),
            "-key".into(),
            "foo".into(),
            "-id".into(),
            "twin".into(),
            "-v".into(),
        ]
    };
    let first_args = args(0);
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut first = start_client(&topo.clients[0], &first_args);
    wait_for(UP, "first connect on the server", || {
        connects(&server, "twin") == 1
    });

    let second_args = args(1);
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let mut second = start_client(&topo.clients[1], &second_args);
    first.wait_log(ID_IN_USE, Duration::from_secs(10));
    let (_, peer) = wait_p2p(&topo.clients[1], &only_tun(&topo.clients[1]));

    // 10 s of pings from the second client: meanwhile the first must stay away.
    let (tx, rx) = topo.clients[1].ping_stats(&peer.to_string(), 50);
    assert_running(&mut first, "first client");
    assert_running(&mut second, "second client");
    let n = connects(&server, "twin");
    assert_eq!(
        n,
        2,
        "the replaced client came back within 10 s; server log:\n{}",
        server.log()
    );
    assert_eq!(count(&first.log(), ID_IN_USE), 1, "first client log");
    assert!(
        !second.log().contains(ID_IN_USE),
        "the second client was replaced in turn; log:\n{}",
        second.log()
    );
    // The echo in flight when ping stops may be counted as lost.
    assert!(
        tx >= 45 && rx + 1 >= tx,
        "second client's pings: {tx} sent, {rx} received"
    );
}

/// A server that cannot work fails at start, before it says "listening", with a message that
/// says what to do: its TUN name is taken by another device (it used to start and fail per
/// client), or its port is held by another program (named, with its pid).
#[test]
fn a_server_that_cannot_work_fails_at_start() {
    common::need_root!();
    let dir = TestDir::new("lcearly");
    let ns = Netns::new("early", &dir);
    ns.ip(&[
        "link", "add", "taken0", "type", "veth", "peer", "name", "taken1",
    ]);
    let mut server = ns.spawn(
        DTUN,
        &["-key", "early-key-0123456789", "-name", "taken0"],
        &[],
    );
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("server with a taken -name still running");
    let log = server.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("the name is taken by another device: choose another -name"),
        "{log}"
    );
    assert!(!log.contains("listening"), "{log}");

    // A UDP port held by another program: the error names it.
    let holder = ns.spawn(
        "python3",
        &[
            "-c",
            "import socket,time; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('::', 4443)); print('bound', flush=True); time.sleep(60)",
        ],
        &[],
    );
    let mut holder = holder;
    holder.wait_log("bound", Duration::from_secs(10));
    let mut server = ns.spawn(
        DTUN,
        &["-key", "early-key-0123456789", "-port", "4443"],
        &[],
    );
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("server on a held port still running");
    let log = server.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "already in use on :: by python3 (pid {})",
            holder.pid()
        )),
        "{log}"
    );
}

/// `-log-format json`: every log line is one JSON object with a level and a message, for log
/// shippers.
#[test]
fn json_logs_are_one_object_a_line() {
    common::need_root!();
    let dir = TestDir::new("lcjson");
    let ns = Netns::new("json", &dir);
    let mut server = start_server(
        &ns,
        443,
        &["-key", "json-key-0123456789", "-log-format", "json"],
    );
    server.wait_log("listening", Duration::from_secs(10));
    server.signal("TERM");
    server.expect_success("server", Duration::from_secs(10));
    let log = server.log();
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        messages.push(
            v["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(
        messages.iter().any(|m| m.starts_with("listening on")),
        "{log}"
    );
}

/// A client says why its session ended, in words: a dtun server that stops says so in a Close
/// ("the server shut down"); to a `-compat` client (an original's stand-in) it only sends
/// close_notify, which the client names as such.
#[test]
fn a_client_says_in_words_why_the_server_ended_its_session() {
    common::need_root!();
    let topo = Topo::star("lcwords", 2);
    let key = "words-key-0123456789";
    let mut server = start_server(&topo.server, DEFAULT_PORT, &["-key", key]);
    let mut clients = Vec::new();
    for (i, extra) in [&[][..], &["-compat"][..]].iter().enumerate() {
        let host = Topo::server_ip(i);
        let mut args = vec!["-host", host.as_str(), "-key", key, "-id"];
        let id = format!("words{i}");
        args.push(&id);
        args.extend_from_slice(extra);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        clients.push(start_client(&topo.clients[i], &args));
    }
    server.signal("TERM");
    server.expect_success("server", Duration::from_secs(10));
    clients[0].wait_log(
        "the server ended the session: the server shut down",
        Duration::from_secs(10),
    );
    clients[1].wait_log(
        "the server ended the session: close_notify (it shut down or dropped this session)",
        Duration::from_secs(10),
    );
}

/// An error says its cause once: `-listen` on an address the machine does not have.
#[test]
fn a_bind_error_says_its_cause_once() {
    common::need_root!();
    let dir = TestDir::new("lclisten");
    let ns = Netns::new("listen", &dir);
    let mut server = ns.spawn(
        DTUN,
        &[
            "-key",
            "listen-key-0123456789",
            "-listen",
            "192.0.2.77",
            "-port",
            "4444",
        ],
        &[],
    );
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("server on a foreign address still running");
    let log = server.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("cannot listen on 192.0.2.77:4444: ")
            && log.contains("-listen must be an address of this machine"),
        "{log}"
    );
    assert_eq!(log.matches("os error 99").count(), 1, "{log}");
}

/// A client whose device the server cannot make is told why (Close "setup failed", in words),
/// instead of waiting for an address message that never comes: a server with a `-name`
/// without %d has one device name, which the first client holds.
#[test]
fn a_client_is_told_when_the_server_cannot_make_its_device() {
    common::need_root!();
    let topo = Topo::star("lcsetup", 2);
    let key = "setup-key-0123456789";
    let _server = start_server(&topo.server, DEFAULT_PORT, &["-key", key, "-name", "only0"]);
    let first = Topo::server_ip(0);
    let _a = start_client(
        &topo.clients[0],
        &["-host", &first, "-key", key, "-id", "a"],
    );
    let second = Topo::server_ip(1);
    let mut b = topo.clients[1].spawn(
        DTUN,
        &["-host", &second, "-key", key, "-id", "b", "-once"],
        &[],
    );
    let status = b
        .wait_exit(Duration::from_secs(15))
        .expect("b still running");
    assert!(!status.success());
    let log = b.log();
    // The kind of failure only: the server's log has the rest (which may name other ids).
    assert!(
        log.contains(
            "the server could not set up this client's tunnel (its TUN device could not be made)"
        ),
        "{log}"
    );
    assert!(!log.contains("no address message"), "{log}");
}
