//! The server's `-nat` and `-client-to-client` (src/nft.rs) against real kernel NAT.
//!
//! ```text
//!  client ns(s) ── veth ── server ns ── veth (inet0 203.0.113.1/24) ── inet ns (eth0 203.0.113.10/24)
//! ```
//!
//! The inet host runs a UDP echo that answers with the address it saw the datagram come from.
//! Client namespaces have no route to 203.0.113.0/24 but the one the test adds through the TUN.
//! Nothing leaves the test's namespaces. Needs root, /dev/net/tun, iproute2, nftables (nft, to
//! inspect only), python3, iputils-ping and util-linux (setpriv).

mod common;

use std::time::Duration;

use common::*;

const KEY: &str = "nat-test-key-0123456789";
const INET: &str = "203.0.113.10";
const ECHO_PORT: &str = "7777";

/// A UDP echo that replies with the sender's address.
const ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(peer[0].encode(), peer)
"#;

/// Asks the echo once (1 s timeout); prints the address it saw.
const ASK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.sendto(b"who am i", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recvfrom(2048)[0].decode())
except socket.timeout:
    sys.exit(1)
"#;

struct Net {
    topo: Topo,
    inet: Netns,
    _echo: Proc,
}

impl Net {
    fn new(tag: &str, clients: usize) -> Net {
        let topo = Topo::star(tag, clients);
        let inet = Netns::new(&format!("{tag}i"), &topo.dir);
        veth(
            &topo.server,
            "inet0",
            "203.0.113.1/24",
            &inet,
            "eth0",
            &format!("{INET}/24"),
        );
        let script = topo.dir.file("echo.py", ECHO.as_bytes());
        let echo = inet.spawn("python3", &[path_str(&script), ECHO_PORT], &[]);
        topo.dir.file("ask.py", ASK.as_bytes());
        Net {
            topo,
            inet,
            _echo: echo,
        }
    }

    fn server(&self) -> &Netns {
        &self.topo.server
    }

    fn set_forward(&self, v: u8) {
        let out = self
            .server()
            .sh(&format!("echo {v} > /proc/sys/net/ipv4/ip_forward"));
        assert!(out.status.success(), "{out:?}");
    }

    fn forward(&self) -> String {
        let out = self.server().run("cat", &["/proc/sys/net/ipv4/ip_forward"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `nft list tables` in the server namespace.
    fn tables(&self) -> String {
        let out = self.server().run("nft", &["list", "tables"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The source address the inet host saw for a datagram from client `i`, if one came back.
    fn ask(&self, i: usize) -> Option<String> {
        let script = self.topo.dir.path().join("ask.py");
        let out = self.topo.clients[i].run("python3", &[path_str(&script), INET, ECHO_PORT]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn start_server(&self, port: u16, extra: &[&str]) -> Proc {
        let p = port.to_string();
        let mut args = vec!["-key", KEY, "-port", &p, "-linger", "2s"];
        args.extend_from_slice(extra);
        let mut p = start_server(self.server(), port, &args);
        // The port is bound before the table is made: wait for the table too.
        if extra.contains(&"-nat") || extra.contains(&"-client-to-client") {
            p.wait_log("in place", UP);
        }
        p
    }

    /// Starts client `i` (with `extra` flags) and routes 203.0.113.0/24 and the pool into its
    /// TUN; returns it with its tunnel address.
    fn start_client(&self, i: usize, port: u16, extra: &[&str]) -> (Proc, String) {
        let ns = &self.topo.clients[i];
        let p = port.to_string();
        let id = format!("c{i}");
        let host = Topo::server_ip(i);
        let mut args = vec!["-host", &host, "-port", &p, "-key", KEY, "-id", &id];
        args.extend_from_slice(extra);
        let proc = start_client(ns, &args);
        let dev = only_tun(ns);
        let (local, _peer) = wait_p2p(ns, &dev);
        ns.ip(&["route", "add", "203.0.113.0/24", "dev", &dev]);
        ns.ip(&["route", "add", "10.86.0.0/16", "dev", &dev]);
        (proc, local.to_string())
    }
}

/// Waits until client `i` reaches the inet host and returns the source address it saw.
fn reaches_inet(net: &Net, i: usize) -> String {
    let mut seen = None;
    wait_for(
        Duration::from_secs(10),
        "a UDP echo from the inet host through the tunnel",
        || {
            seen = net.ask(i);
            seen.is_some()
        },
    );
    seen.unwrap()
}

#[test]
fn nat_masquerades_restores_forwarding_and_survives_kill_9() {
    common::need_root!();
    let net = Net::new("fNa", 1);
    // Forwarding off before dtun.
    net.set_forward(0);
    let mut server = net.start_server(4601, &["-nat", "-instance", "edge"]);
    assert!(
        net.tables().contains("table inet dtun-edge"),
        "{}",
        net.tables()
    );
    assert_eq!(net.forward(), "1");
    let (mut client, addr) = net.start_client(0, 4601, &[]);
    assert_eq!(
        reaches_inet(&net, 0),
        "203.0.113.1",
        "the inet host must see the server"
    );
    assert!(net.topo.client().ping_ok(INET, 2), "no ping to {INET}");
    // Forwarding opens nothing else: the inet host, given a route to the pool, still cannot
    // reach the client (dtun turned forwarding on, so its forward chain drops the rest).
    net.inet
        .ip(&["route", "add", "10.86.0.0/16", "via", "203.0.113.1"]);
    assert!(
        !net.inet.ping_ok(&addr, 2),
        "the inet host reached client {addr}: forwarding opened more than -nat"
    );
    server.stop(Duration::from_secs(10));
    assert!(!net.tables().contains("dtun-edge"), "{}", net.tables());
    assert_eq!(net.forward(), "0", "ip_forward back as it was");
    client.stop(Duration::from_secs(5));

    // kill -9: the kernel deletes the table with the process (it owns it), so nothing of it
    // (masquerade, forward rules, the `tuns` set) is left for a TUN that comes later. Forwarding
    // stays on (a dead process restores nothing); the next dtun start puts it back from
    // /run/dtun, here one that does not need forwarding at all.
    let mut server = net.start_server(4601, &["-nat", "-instance", "edge"]);
    let (mut client, _) = net.start_client(0, 4601, &[]);
    assert_eq!(reaches_inet(&net, 0), "203.0.113.1");
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(5));
    wait_for(
        Duration::from_secs(10),
        "the killed dtun's table to go",
        || !net.tables().contains("dtun-edge"),
    );
    assert_eq!(
        net.forward(),
        "1",
        "a dead process cannot restore forwarding"
    );
    client.stop(Duration::from_secs(5));
    let mut other = net.start_server(4602, &["-client-to-client", "off", "-instance", "other"]);
    other.wait_log("IPv4 forwarding back to 0", UP);
    assert_eq!(net.forward(), "0");
    other.stop(Duration::from_secs(10));
    // Killed again, then restarted as it was: forwarding on for it, off again after it.
    let mut server = net.start_server(4601, &["-nat", "-instance", "edge"]);
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(5));
    wait_for(
        Duration::from_secs(10),
        "the killed dtun's table to go",
        || !net.tables().contains("dtun-edge"),
    );
    let mut server = net.start_server(4601, &["-nat", "-instance", "edge"]);
    assert_eq!(
        net.tables().matches("table inet dtun-edge").count(),
        1,
        "{}",
        net.tables()
    );
    let ruleset = net
        .server()
        .run("nft", &["list", "table", "inet", "dtun-edge"]);
    let ruleset = String::from_utf8_lossy(&ruleset.stdout).into_owned();
    assert_eq!(ruleset.matches("masquerade").count(), 1, "{ruleset}");
    let (mut client, _) = net.start_client(0, 4601, &[]);
    assert_eq!(reaches_inet(&net, 0), "203.0.113.1");
    server.stop(Duration::from_secs(10));
    client.stop(Duration::from_secs(5));
    assert!(!net.tables().contains("dtun-edge"));
    assert_eq!(
        net.forward(),
        "0",
        "restored to the value before the killed dtun"
    );

    // Forwarding already on: it stays on.
    net.set_forward(1);
    let mut server = net.start_server(4601, &["-nat", "-instance", "edge"]);
    server.stop(Duration::from_secs(10));
    assert_eq!(net.forward(), "1");
    assert!(!net.tables().contains("dtun-edge"));
}

#[test]
fn without_nat_the_inet_host_is_out_of_reach() {
    common::need_root!();
    let net = Net::new("fNb", 1);
    net.set_forward(0);
    let mut server = net.start_server(4602, &[]);
    let (mut client, _) = net.start_client(0, 4602, &[]);
    assert!(net.ask(0).is_none(), "reached the inet host without -nat");
    assert!(
        !net.tables().contains("dtun"),
        "a table without -nat: {}",
        net.tables()
    );
    assert_eq!(net.forward(), "0");
    client.stop(Duration::from_secs(5));
    server.stop(Duration::from_secs(10));
}

#[test]
fn client_to_client_on_and_off() {
    common::need_root!();
    let net = Net::new("fNc", 2);
    net.set_forward(0);
    let mut server = net.start_server(4603, &["-client-to-client", "on"]);
    let (mut c0, a0) = net.start_client(0, 4603, &[]);
    let (mut c1, a1) = net.start_client(1, 4603, &[]);
    assert!(
        net.topo.clients[0].ping_ok(&a1, 3),
        "c0 cannot ping c1 ({a1})"
    );
    assert!(
        net.topo.clients[1].ping_ok(&a0, 3),
        "c1 cannot ping c0 ({a0})"
    );
    // on is not -nat: the inet host stays out of reach.
    assert!(
        net.ask(0).is_none(),
        "-client-to-client on opened the way out"
    );
    for c in [&mut c0, &mut c1] {
        c.stop(Duration::from_secs(5));
    }
    server.stop(Duration::from_secs(10));
    assert_eq!(net.forward(), "0");

    // off, on a host that forwards for other reasons, with -nat: no client-to-client, NAT on.
    net.set_forward(1);
    let mut server = net.start_server(4603, &["-client-to-client", "off", "-nat"]);
    let (mut c0, _) = net.start_client(0, 4603, &[]);
    let (mut c1, a1) = net.start_client(1, 4603, &[]);
    assert_eq!(reaches_inet(&net, 0), "203.0.113.1");
    assert!(
        !net.topo.clients[0].ping_ok(&a1, 3),
        "c0 reached c1 with off"
    );
    for c in [&mut c0, &mut c1] {
        c.stop(Duration::from_secs(5));
    }
    server.stop(Duration::from_secs(10));
    assert_eq!(net.forward(), "1");
}

#[test]
fn a_compat_client_gets_nat() {
    common::need_root!();
    let net = Net::new("fNd", 1);
    net.set_forward(0);
    let mut server = net.start_server(4604, &["-nat"]);
    let (mut client, _) = net.start_client(0, 4604, &["-compat"]);
    assert_eq!(reaches_inet(&net, 0), "203.0.113.1");
    client.stop(Duration::from_secs(5));
    server.stop(Duration::from_secs(10));
    assert!(!net.tables().contains("dtun-dtun"));
}

#[test]
fn bad_instances_and_missing_capability_are_refused_cleanly() {
    common::need_root!();
    let net = Net::new("fNe", 1);
    net.set_forward(0);
    let s = net.server();
    // A bad name.
    let out = s.run(
        "timeout",
        &[
            "10",
            DTUN,
            "-key",
            KEY,
            "-port",
            "4605",
            "-nat",
            "-instance",
            "a b",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("-instance"), "{err}");
    // (Runs expected to fail are bounded by `timeout`, so a server that wrongly starts fails
    // the test instead of hanging it.)
    // Without CAP_NET_ADMIN: a message that says what to do, nothing left behind.
    let out = s.run(
        "timeout",
        &[
            "10",
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-net_admin",
            DTUN,
            "-key",
            KEY,
            "-port",
            "4605",
            "-nat",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("CAP_NET_ADMIN"),
        "{out:?}"
    );
    assert!(!net.tables().contains("dtun"), "{}", net.tables());
    assert_eq!(net.forward(), "0");
    // The same instance twice: the second is refused and the first's table is untouched.
    let mut first = net.start_server(4605, &["-nat", "-instance", "one"]);
    let out = s.run(
        "timeout",
        &[
            "10",
            DTUN,
            "-key",
            KEY,
            "-port",
            "4606",
            "-nat",
            "-instance",
            "one",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("another dtun named one runs in this network namespace")
            && err.contains("-instance"),
        "{err}"
    );
    let (mut client, _) = net.start_client(0, 4605, &[]);
    assert_eq!(reaches_inet(&net, 0), "203.0.113.1");
    // Another instance is fine beside it, and the forwarding is restored only after both.
    let mut second = net.start_server(4606, &["-nat", "-instance", "two"]);
    assert!(net.tables().contains("dtun-two") && net.tables().contains("dtun-one"));
    // A second dtun that dies does not take the first's forwarding with it, nor its record.
    let third = net.start_server(4607, &["-nat", "-instance", "three"]);
    third.signal("KILL");
    wait_for(
        Duration::from_secs(10),
        "the killed dtun's table to go",
        || !net.tables().contains("dtun-three"),
    );
    first.stop(Duration::from_secs(10));
    assert_eq!(net.forward(), "1", "another dtun table is left");
    assert!(net.tables().contains("dtun-two") && !net.tables().contains("dtun-one"));
    second.stop(Duration::from_secs(10));
    assert_eq!(net.forward(), "0");
    client.stop(Duration::from_secs(5));
}

/// A full tunnel with NAT end to end, both halves together: a client with `-route all` and a
/// server with `-nat`. The inet host sees the server's address; the client still reaches the
/// server's underlay address; each side leaves nothing behind when it exits.
#[test]
fn route_all_and_nat_make_a_full_tunnel() {
    common::need_root!();
    let net = Net::new("fNf", 1);
    net.set_forward(0);
    let ns = &net.topo.clients[0];
    let routes_before = ns.ip(&["route", "show", "table", "main"]);
    let mut server = net.start_server(4606, &["-nat"]);
    let host = Topo::server_ip(0);
    let mut client = start_client(
        ns,
        &[
            "-host", &host, "-port", "4606", "-key", KEY, "-id", "full", "-route", "all",
        ],
    );
    assert_eq!(
        reaches_inet(&net, 0),
        "203.0.113.1",
        "the inet host must see the server"
    );
    assert!(
        ns.ping_ok(&host, 2),
        "the server's underlay address through the old path"
    );
    client.stop(Duration::from_secs(5));
    let rules = ns.ip(&["rule", "show"]);
    assert!(
        !rules.contains("25716") && !rules.contains("25717"),
        "rules left: {rules}"
    );
    assert_eq!(
        ns.ip(&["route", "show", "table", "main"]),
        routes_before,
        "the client's main table changed"
    );
    assert!(
        net.ask(0).is_none(),
        "the inet host is still reachable after the client left"
    );
    server.stop(Duration::from_secs(10));
    assert!(
        !net.tables().contains("dtun-dtun"),
        "dtun's table left behind"
    );
    assert_eq!(net.forward(), "0", "ip_forward not restored");
}

/// A symbolic link planted where the IPv6 forwarding state file goes (under the name
/// of today and the one before) is never written through: the file it points at stays as it
/// was while dtun runs `-nat` and after it exits.
#[test]
fn a_planted_link_in_run_dtun_is_never_written_through() {
    common::need_root!();
    use std::os::unix::fs::MetadataExt;
    let dir = TestDir::new("fNs");
    let ns = Netns::new("fNs", &dir);
    let ino = std::fs::metadata(format!("/run/netns/{}", ns.name()))
        .unwrap()
        .ino();
    let victim = dir.file("victim", b"precious\n");
    std::fs::create_dir_all("/run/dtun").unwrap();
    let links = [
        format!("/run/dtun/ipv6-forwarding.{ino}.sym"),
        format!("/run/dtun/{ino}.sym.ipv6-forwarding"),
    ];
    for l in &links {
        let _ = std::fs::remove_file(l);
        std::os::unix::fs::symlink(&victim, l).unwrap();
    }
    let mut server = start_server(
        &ns,
        4607,
        &["-key", KEY, "-port", "4607", "-nat", "-instance", "sym"],
    );
    server.wait_log("IPv6 forwarding on", UP);
    let kept = std::fs::read_to_string(&victim).unwrap();
    server.stop(Duration::from_secs(10));
    let after = std::fs::read_to_string(&victim).unwrap();
    for l in &links {
        let _ = std::fs::remove_file(l);
    }
    assert_eq!(kept, "precious\n", "written through a link while running");
    assert_eq!(after, "precious\n", "written through a link on exit");
}

/// A device that takes a TUN's name: the sets hold interface indexes, which the kernel never hands
/// out again, not names, which are free the moment a device goes. A device made later under the
/// name of one of the server's TUNs (here after someone deleted it) is not in the sets, so it gets
/// no NAT and passes none of the table's rules.
#[test]
fn a_device_that_takes_a_tuns_name_is_not_ours() {
    common::need_root!();
    let net = Net::new("fNd", 1);
    let _server = net.start_server(4608, &["-nat", "-instance", "idx"]);
    let (_client, _) = net.start_client(0, 4608, &[]);
    let s = net.server();
    let tun = only_tun(s);
    let set = || {
        let out = s.run("nft", &["list", "set", "inet", "dtun-idx", "tuns"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(set().contains(&tun), "{}", set());
    s.ip(&["link", "del", &tun]);
    s.ip(&["tuntap", "add", "dev", &tun, "mode", "tun"]);
    let listed = set();
    let elements = listed
        .lines()
        .find(|l| l.contains("elements"))
        .unwrap_or_default();
    assert!(
        !elements.contains(tun.as_str()),
        "the newcomer {tun} is in the set: {listed}"
    );
}
