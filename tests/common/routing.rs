//! The full-tunnel rig of `tests/full_tunnel.rs` and `tests/kill_switch.rs`: a client, a
//! server that forwards and NATs its pool, a simulated internet and a LAN, all in the test's
//! own namespaces:
//!
//! ```text
//!  lan 192.168.77.10 ── lan0 ┐
//!                            client ── eth0 10.77.1.2 ── c0 10.77.1.1 ┐
//!                                   ── eth1 10.77.2.2 ── c1 10.77.2.1 ┤ server (dtun on 10.77.0.1,
//!                                                                     │  forwards, NATs the pool)
//!                                                          wan 203.0.113.1 / 198.51.100.1
//!                                                                     │
//!                                   inet 203.0.113.10, 198.51.100.10, 2001:db8:113::10
//! ```
//!
//! The client's default route goes via 10.77.1.1 (IPv6: 2001:db8:1::1); the server's address
//! 10.77.0.1 is reached only through it, so a change of gateway matters to the tunnel.

use super::*;

pub const PORT: &str = "4443";
pub const KEY: &str = "full-tunnel-test-key";
pub const SERVER: &str = "10.77.0.1";
pub const INET: &str = "203.0.113.10";
pub const EXCLUDED: &str = "198.51.100.10";
pub const LAN: &str = "192.168.77.10";
pub const INET6: &str = "2001:db8:113::10";
pub const TABLE: &str = "25716";

pub struct Net {
    pub client: Netns,
    pub server: Netns,
    pub inet: Netns,
    pub _lan: Netns,
    pub dir: std::sync::Arc<TestDir>,
}

impl Net {
    pub fn new(tag: &str) -> Net {
        let dir = TestDir::new(tag);
        let client = Netns::new(&format!("{tag}c"), &dir);
        let server = Netns::new(&format!("{tag}s"), &dir);
        let inet = Netns::new(&format!("{tag}i"), &dir);
        let lan = Netns::new(&format!("{tag}l"), &dir);
        veth(
            &server,
            "c0",
            "10.77.1.1/24",
            &client,
            "eth0",
            "10.77.1.2/24",
        );
        veth(
            &server,
            "c1",
            "10.77.2.1/24",
            &client,
            "eth1",
            "10.77.2.2/24",
        );
        veth(
            &server,
            "wan",
            "203.0.113.1/24",
            &inet,
            "eth0",
            "203.0.113.10/24",
        );
        veth(
            &client,
            "lan0",
            "192.168.77.1/24",
            &lan,
            "eth0",
            "192.168.77.10/24",
        );
        server.ip(&["addr", "add", "10.77.0.1/32", "dev", "lo"]);
        server.ip(&["addr", "add", "198.51.100.1/24", "dev", "wan"]);
        inet.ip(&["addr", "add", "198.51.100.10/24", "dev", "eth0"]);
        for (ns, dev, addr) in [
            (&client, "eth0", "2001:db8:1::2/64"),
            (&server, "c0", "2001:db8:1::1/64"),
            (&server, "wan", "2001:db8:113::1/64"),
            (&inet, "eth0", "2001:db8:113::10/64"),
        ] {
            ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
        }
        client.ip(&["route", "add", "default", "via", "10.77.1.1"]);
        client.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
        inet.ip(&["route", "add", "default", "via", "203.0.113.1"]);
        inet.ip(&["-6", "route", "add", "default", "via", "2001:db8:113::1"]);
        // The server forwards and masquerades what comes out of the tunnel pool (the other
        // half of the issue builds this as `-nat`; here the test does it by hand).
        let out = server.sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
             net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.c1.rp_filter=0 && \
             nft add table ip fRnat && \
             nft add chain ip fRnat post '{ type nat hook postrouting priority 100; }' && \
             nft add rule ip fRnat post ip saddr 10.86.0.0/16 oifname wan masquerade",
        );
        assert!(out.status.success(), "server ns setup: {out:?}");
        Net {
            client,
            server,
            inet,
            _lan: lan,
            dir,
        }
    }

    pub fn start_server(&self) -> Proc {
        start_server(
            &self.server,
            4443,
            &["-key", KEY, "-port", PORT, "-listen", SERVER],
        )
    }

    pub fn client_args<'a>(&self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "-host",
            SERVER,
            "-port",
            PORT,
            "-key",
            KEY,
            "-keepalive",
            "1s",
        ];
        args.extend_from_slice(extra);
        args
    }

    /// The device `ip route get DST` in the client picks.
    pub fn route_dev(&self, dst: &str) -> String {
        let out = self.client.ip(&["route", "get", dst]);
        let words: Vec<&str> = out.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "dev").expect("a dev");
        words[at + 1].to_string()
    }

    /// Packets the kernel sent into the TUN.
    pub fn tun_tx(&self, tun: &str) -> u64 {
        let path = format!("/sys/class/net/{tun}/statistics/tx_packets");
        let out = self.client.run("cat", &[&path]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("tx_packets of {tun}: {out:?}"))
    }

    /// What dtun may leave behind: its rules (the tunnel's and the kill switch's), its tables,
    /// routes with its protocol.
    pub fn leftovers(&self) -> String {
        let mut all = String::new();
        for family in ["-4", "-6"] {
            all += &self
                .client
                .ip(&[family, "rule"])
                .lines()
                .filter(|l| {
                    ["25716:", "25717:", "25719:", "25720:"]
                        .iter()
                        .any(|p| l.starts_with(p))
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>();
            all += &self
                .client
                .ip(&[family, "route", "show", "table", "all", "proto", "116"]);
        }
        all
    }
}

/// `/etc/netns/NS/hosts` for the client (`ip netns exec` bind-mounts it over /etc/hosts),
/// removed on drop.
pub struct Hosts(std::path::PathBuf);

impl Hosts {
    pub fn new(ns: &Netns, text: &str) -> Hosts {
        let dir = std::path::PathBuf::from(format!("/etc/netns/{}", ns.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = Hosts(dir);
        hosts.set(text);
        hosts
    }

    /// Writes `/etc/netns/NS/NAME` (`resolv.conf`, say), bind-mounted over `/etc/NAME` too.
    pub fn other(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }

    /// Rewrites the file in place (a bind-mounted file cannot be renamed over).
    pub fn set(&self, text: &str) {
        std::fs::write(
            self.0.join("hosts"),
            format!("127.0.0.1 localhost\n{text}\n"),
        )
        .unwrap();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn wait_tun(net: &Net) -> String {
    let tun = only_tun(&net.client);
    wait_p2p(&net.client, &tun);
    tun
}

/// Pings `dst` and checks that (at least) that many packets went into the TUN, or none did.
pub fn ping_through(net: &Net, tun: &str, dst: &str, through: bool) {
    let before = net.tun_tx(tun);
    let (sent, received) = net.client.ping_stats(dst, 5);
    let went = net.tun_tx(tun) - before;
    assert!(received >= 4, "ping {dst}: {received}/{sent}");
    if through {
        assert!(
            went >= 5,
            "ping {dst} should cross {tun}: {went} packets went in"
        );
    } else {
        assert!(
            went < 5,
            "ping {dst} should not cross {tun}: {went} packets went in"
        );
    }
}

/// The milliseconds in a `routes: installed N in X ms` line.
pub fn millis(log: &str, needle: &str) -> (u64, u64) {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} line in\n{log}"));
    let rest = &line[line.find(needle).unwrap() + needle.len()..];
    let words: Vec<&str> = rest.split_whitespace().collect();
    (words[0].parse().unwrap(), words[2].parse().unwrap())
}
