//! DNS push and the client's resolv.conf, end to end with the real binary:
//!
//! ```text
//!  client ns ── veth ── server ns ── veth ── inet ns
//!  (dtun -accept-dns)   (dtun -dns 203.0.113.10,  (dnsmasq on 203.0.113.10 answers
//!                        forwarding + masquerade)  dtun-test.example = 198.51.100.77)
//! ```
//!
//! Each client namespace gets /etc/netns/NS/resolv.conf before the client starts, so `ip netns
//! exec` bind-mounts it over /etc/resolv.conf for the client and for `getent`; a guard removes
//! it. The host's own /etc/resolv.conf must not change.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use dtun_linux::dns::{LOG_DNS_IGNORED, LOG_DNS_PUSHED, LOG_DNS_RESTORED, LOG_DNS_SET, MARKER};

const KEY: &str = "dns-test-key";
const INET_IP: &str = "203.0.113.10";
const NAME: &str = "dtun-test.example";
const ANSWER: &str = "198.51.100.77";
const ORIGINAL: &[u8] =
    b"# the client namespace's own resolver\nnameserver 192.0.2.53\noptions timeout:1 attempts:1\n";

/// /etc/netns/NS/ with a resolv.conf, removed on drop (also when the test fails).
struct NetnsEtc {
    dir: PathBuf,
}

impl NetnsEtc {
    fn new(ns: &Netns) -> NetnsEtc {
        let dir = PathBuf::from("/etc/netns").join(ns.name());
        fs::create_dir_all(&dir).unwrap();
        let etc = NetnsEtc { dir };
        fs::write(etc.resolv(), ORIGINAL).unwrap();
        etc
    }

    fn resolv(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    fn content(&self) -> Vec<u8> {
        fs::read(self.resolv()).unwrap()
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        // Only if no other test still has a directory there.
        let _ = fs::remove_dir("/etc/netns");
    }
}

/// The host's /etc/resolv.conf, compared when the test ends.
struct HostResolv(Option<Vec<u8>>);

impl HostResolv {
    fn snapshot() -> HostResolv {
        HostResolv(fs::read("/etc/resolv.conf").ok())
    }

    fn assert_unchanged(&self) {
        assert_eq!(
            fs::read("/etc/resolv.conf").ok(),
            self.0,
            "the host's /etc/resolv.conf changed"
        );
    }
}

/// The three namespaces, the server ns forwarding and masquerading towards inet, dnsmasq.
struct World {
    topo: Topo,
    _inet: Netns,
    _dnsmasq: Proc,
    etc: NetnsEtc,
}

impl World {
    fn new() -> World {
        let topo = Topo::pair("fD");
        let inet = Netns::new("fDi", &topo.dir);
        veth(
            &topo.server,
            "eth9",
            "203.0.113.1/24",
            &inet,
            "eth0",
            &format!("{INET_IP}/24"),
        );
        let out = topo.server.sh(
            "echo 1 > /proc/sys/net/ipv4/ip_forward && nft 'add table ip fdtest; \
             add chain ip fdtest post { type nat hook postrouting priority 100; }; \
             add rule ip fdtest post oifname \"eth9\" masquerade'",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = topo.dir.path().join("dnsmasq.pid");
        let dnsmasq = inet.spawn(
            "/usr/sbin/dnsmasq",
            &[
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                &format!("--listen-address={INET_IP}"),
                "--bind-interfaces",
                &format!("--address=/{NAME}/{ANSWER}"),
                &format!("--pid-file={}", pid.display()),
                "--port=53",
            ],
            &[],
        );
        wait_for(Duration::from_secs(10), "dnsmasq listening", || {
            inet.udp_listening(53)
        });
        let etc = NetnsEtc::new(topo.client());
        World {
            topo,
            _inet: inet,
            _dnsmasq: dnsmasq,
            etc,
        }
    }

    fn server(&self, extra: &[&str]) -> Proc {
        let mut args = vec!["-key", KEY, "-v"];
        args.extend_from_slice(extra);
        start_server(&self.topo.server, 443, &args)
    }

    fn client(&self, extra: &[&str]) -> Proc {
        self.client_as("dnsclient", extra)
    }

    fn client_as(&self, id: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["-host", "172.31.250.1", "-key", KEY, "-id", id, "-v"];
        args.extend_from_slice(extra);
        // Never the host's system bus: a systemd-resolved there would take the DNS
        // (tests/resolved.rs covers that path against a stand-in).
        let no_bus = format!(
            "unix:path={}",
            self.topo.dir.path().join("no-bus").display()
        );
        start_client_env(
            self.topo.client(),
            &args,
            &[("DBUS_SYSTEM_BUS_ADDRESS", &no_bus)],
        )
    }

    /// Sends the inet prefix through the tunnel (what -route would do).
    fn route_inet_through_tunnel(&self) {
        let ns = self.topo.client();
        let dev = only_tun(ns);
        let (_, peer) = wait_p2p(ns, &dev);
        ns.ip(&[
            "route",
            "replace",
            "203.0.113.0/24",
            "via",
            &peer.to_string(),
            "dev",
            &dev,
        ]);
    }

    /// `getent hosts NAME` in the client namespace (its bind-mounted resolv.conf).
    fn resolves(&self) -> bool {
        let out = self.topo.client().run("getent", &["hosts", NAME]);
        String::from_utf8_lossy(&out.stdout).contains(ANSWER)
    }

    fn is_ours(&self) -> bool {
        self.etc.content().starts_with(MARKER.as_bytes())
    }
}

/// Server `-dns`, client `-accept-dns`: the client namespace resolves the test name through
/// the tunnel while it is up; after the client exits its resolv.conf is back byte for byte.
#[test]
fn pushed_dns_resolves_and_is_restored() {
    common::need_root!();
    let host = HostResolv::snapshot();
    let w = World::new();
    assert!(
        !w.resolves(),
        "resolves before the tunnel: the test proves nothing"
    );
    let server = w.server(&["-dns", INET_IP]);
    let mut client = w.client(&["-accept-dns"]);
    w.route_inet_through_tunnel();
    wait_for(Duration::from_secs(15), "getent through the tunnel", || {
        w.resolves()
    });
    assert!(w.is_ours());
    let text = String::from_utf8(w.etc.content()).unwrap();
    assert!(text.contains(&format!("nameserver {INET_IP}\n")), "{text}");
    assert_eq!(lines_with(&client.log(), &[LOG_DNS_SET, "in place"]), 1);
    assert_eq!(lines_with(&server.log(), &[LOG_DNS_PUSHED, INET_IP]), 1);
    // dtun status says which servers are in place, and how.
    let v = common::status::json(w.topo.client(), None);
    assert_eq!(
        (&v["dns"], &v["dns_via"]),
        (
            &serde_json::json!([INET_IP]),
            &serde_json::json!("resolv.conf")
        ),
        "{v}"
    );
    host.assert_unchanged();
    client.stop(Duration::from_secs(5));
    assert_eq!(w.etc.content(), ORIGINAL, "restored byte for byte");
    assert_eq!(lines_with(&client.log(), &[LOG_DNS_RESTORED]), 1);
    assert!(!w.resolves());
    host.assert_unchanged();
}

/// The client started after one that was killed: it restores what the dead one left (once),
/// sets DNS again, and at its clean exit restores the original byte for byte.
fn second_client_restores(w: &World, mut second: Proc, host: &HostResolv) {
    assert_eq!(
        lines_with(&second.log(), &["did not exit cleanly", "restoring"]),
        1,
        "{}",
        second.log()
    );
    wait_for(Duration::from_secs(15), "getent after restart", || {
        w.resolves()
    });
    second.stop(Duration::from_secs(5));
    assert_eq!(w.etc.content(), ORIGINAL, "restored byte for byte");
    host.assert_unchanged();
}

/// `kill -9` leaves dtun's resolv.conf in place; the next start restores it first, sets it
/// again once the tunnel is up, and restores it at its clean exit.
#[test]
fn dns_left_by_kill_9_is_restored_on_next_start() {
    common::need_root!();
    let host = HostResolv::snapshot();
    let w = World::new();
    let _server = w.server(&["-dns", INET_IP]);
    let mut first = w.client(&["-accept-dns"]);
    wait_for(Duration::from_secs(10), "DNS set", || w.is_ours());
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5)).expect("killed");
    assert!(w.is_ours(), "kill -9 cannot restore");
    let second = w.client(&["-accept-dns"]);
    w.route_inet_through_tunnel();
    second_client_restores(&w, second, &host);
}

/// A squatted resolv.conf lock: after a `kill -9`, an unprivileged user (uid 4242) waits on the
/// resolv.conf owner lock the dead client left, through a read-only descriptor (flock needs no
/// more). Before, it got the lock, and the next client could neither restore nor set DNS (it
/// went on with the LAN's resolver); now it cannot open the lock file, and the next client
/// restores and sets DNS as after any `kill -9`.
#[test]
fn a_stranger_cannot_squat_the_resolv_conf_lock() {
    common::need_root!();
    use std::os::unix::fs::MetadataExt;
    let host = HostResolv::snapshot();
    let w = World::new();
    let _server = w.server(&["-dns", INET_IP]);
    let mut first = w.client(&["-accept-dns"]);
    wait_for(Duration::from_secs(10), "DNS set", || w.is_ours());
    let m = fs::metadata(w.etc.resolv()).unwrap();
    let lock = format!("/run/dtun/resolv.conf.{}-{}.lock", m.dev(), m.ino());
    let mut squatter = w.topo.client().spawn(
        "setpriv",
        &[
            "--reuid",
            "4242",
            "--regid",
            "4242",
            "--clear-groups",
            "/usr/bin/python3",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/squat.py"),
            &lock,
            "60",
        ],
        &[],
    );
    squatter.wait_log("squatter: ", Duration::from_secs(10));
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5)).expect("killed");
    if squatter.log().contains("waiting") {
        wait_for(Duration::from_secs(5), "the squatter's turn", || {
            squatter.log().contains("took")
        });
    }
    let second = w.client(&["-accept-dns"]);
    w.route_inet_through_tunnel();
    assert!(
        !squatter.log().contains("took the lock"),
        "uid 4242 holds dtun's lock: {}",
        squatter.log()
    );
    second_client_restores(&w, second, &host);
}

/// Without -accept-dns (and no -route all) a client never takes the server's DNS.
#[test]
fn pushed_dns_is_not_applied_without_accept_dns() {
    common::need_root!();
    let host = HostResolv::snapshot();
    let w = World::new();
    let _server = w.server(&["-dns", INET_IP]);
    let mut client = w.client(&[]);
    w.route_inet_through_tunnel();
    client.wait_log(LOG_DNS_IGNORED, Duration::from_secs(10));
    assert!(!w.resolves());
    assert_eq!(w.etc.content(), ORIGINAL);
    assert_eq!(lines_with(&client.log(), &[LOG_DNS_SET]), 0);
    client.stop(Duration::from_secs(5));
    assert_eq!(w.etc.content(), ORIGINAL);
    host.assert_unchanged();
}

/// A -compat client (the original's wire behaviour) gets no Dns record and works; a dtun
/// client of the same server then does get it.
#[test]
fn compat_client_gets_no_dns_record() {
    common::need_root!();
    let host = HostResolv::snapshot();
    let w = World::new();
    let server = w.server(&["-dns", INET_IP]);
    let mut compat = w.client(&["-compat", "-accept-dns"]);
    let dev = only_tun(w.topo.client());
    let (_, peer) = wait_p2p(w.topo.client(), &dev);
    assert!(w.topo.client().ping_ok(&peer.to_string(), 2));
    assert_eq!(lines_with(&server.log(), &[LOG_DNS_PUSHED]), 0);
    assert_eq!(w.etc.content(), ORIGINAL);
    compat.stop(Duration::from_secs(5));
    let log = compat.log();
    assert_eq!(lines_with(&log, &["DNS"]), 0, "{log}");
    assert!(!log.contains("unexpected_type"), "{log}");
    // The same server pushes to a dtun client: the line above would have shown up.
    let mut client = w.client(&["-accept-dns"]);
    wait_for(Duration::from_secs(10), "DNS set", || w.is_ours());
    assert_eq!(lines_with(&server.log(), &[LOG_DNS_PUSHED]), 1);
    client.stop(Duration::from_secs(5));
    assert_eq!(w.etc.content(), ORIGINAL);
    host.assert_unchanged();
}

/// The client's own `-dns` applies with a server that pushes nothing, and is restored.
#[test]
fn own_dns_applies_without_a_push() {
    common::need_root!();
    let host = HostResolv::snapshot();
    let w = World::new();
    let server = w.server(&[]);
    let mut client = w.client(&["-dns", INET_IP]);
    w.route_inet_through_tunnel();
    wait_for(Duration::from_secs(15), "getent through the tunnel", || {
        w.resolves()
    });
    assert_eq!(lines_with(&client.log(), &[LOG_DNS_SET, "from -dns"]), 1);
    assert_eq!(lines_with(&server.log(), &[LOG_DNS_PUSHED]), 0);
    client.stop(Duration::from_secs(5));
    assert_eq!(w.etc.content(), ORIGINAL, "restored byte for byte");
    host.assert_unchanged();
}

/// A split-routing client that accepts the pushed servers
/// sends its queries through the tunnel, not past it: a pushed server its routes do not send
/// into the tunnel gets a host route on the TUN (here 203.0.113.10, which nothing else routes
/// there), gone with the tunnel. Before, the queries went out of the client's own link
/// (here: nowhere) and nothing resolved.
#[test]
fn a_pushed_server_is_routed_through_the_tunnel() {
    common::need_root!();
    let w = World::new();
    let _server = w.server(&["-dns", INET_IP]);
    let mut client = w.client(&["-accept-dns"]);
    let dev = only_tun(w.topo.client());
    wait_for(Duration::from_secs(15), "getent through the tunnel", || {
        w.resolves()
    });
    let route = w.topo.client().ip(&["route", "get", INET_IP]);
    assert!(route.contains(&format!("dev {dev}")), "{route}");
    assert!(
        lines_with(&client.log(), &["routed through the tunnel", INET_IP]) == 1,
        "{}",
        client.log()
    );
    client.stop(Duration::from_secs(5));
    assert!(!w.topo.client().routes().contains(INET_IP));
    assert_eq!(w.etc.content(), ORIGINAL);
}

/// The routing of pushed servers must not become a way to take a host of the client's LAN:
/// a server that pushes an address of the client's own link (172.31.250.53, say its LAN
/// resolver) gets no host route for it, only a warning.
#[test]
fn a_pushed_server_on_the_clients_lan_is_not_routed() {
    common::need_root!();
    let w = World::new();
    let _server = w.server(&["-dns", "172.31.250.53"]);
    let client = w.client(&["-accept-dns"]);
    wait_for(Duration::from_secs(15), "the warning", || {
        client.log().contains("is on this host's own network")
    });
    let route = w.topo.client().ip(&["route", "get", "172.31.250.53"]);
    assert!(route.contains("dev eth0"), "{route}");
    assert!(!client.log().contains(dtun_linux::dns::LOG_DNS_ROUTED));
}

/// A second client in the same namespace (same resolv.conf)
/// that also takes pushed DNS neither "recovers" the first one's backup at its start nor
/// writes over its DNS: it keeps its tunnel, leaves the file alone and names the owner. Before
/// the fix its start restored the original under the live first client.
#[test]
fn a_second_client_leaves_a_live_ones_dns_alone() {
    common::need_root!();
    let w = World::new();
    let _server = w.server(&["-dns", INET_IP]);
    let mut first = w.client(&["-accept-dns", "-name", "dtuna"]);
    wait_for(Duration::from_secs(15), "the first client's DNS", || {
        w.is_ours()
    });
    let mine = w.etc.content();
    let mut second = w.client_as(
        "second",
        &["-accept-dns", "-name", "dtunb", "-instance", "second"],
    );
    let owner = format!(
        "in use by another live dtun (dtun pid {} on tunnel dtuna)",
        first.pid()
    );
    wait_for(
        Duration::from_secs(15),
        "the second client's warning",
        || second.log().contains(&owner),
    );
    assert_eq!(
        w.etc.content(),
        mine,
        "the second client changed the first's DNS"
    );
    second.stop(Duration::from_secs(5));
    assert_eq!(w.etc.content(), mine, "the second client's exit changed it");
    first.stop(Duration::from_secs(5));
    assert_eq!(w.etc.content(), ORIGINAL);
}
