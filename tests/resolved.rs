//! DNS through systemd-resolved (src/dns/resolved.rs), against a stand-in: a private
//! `dbus-daemon` (a config file of the test's own, which lets the stand-in own
//! `org.freedesktop.resolve1`) and, in this test process, a zbus connection that owns that name,
//! records every call to `org.freedesktop.resolve1.Manager` and answers it (or, on request,
//! fails one). The client runs in its namespace with `DBUS_SYSTEM_BUS_ADDRESS` pointing at the
//! private bus; its /etc/resolv.conf (the namespace's /etc/netns/NS/resolv.conf) must stay as
//! it was on that path. With the bus up but nobody owning the name, the client rewrites
//! resolv.conf as before.
//!
//! Needs root, /dev/net/tun, iproute2 and dbus-daemon (Debian `dbus-daemon`).

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use dtun_linux::dns::{BUS_NAME, LOG_DNS_RESTORED, LOG_DNS_SET, MARKER, ROUTE_ALL_DOMAIN};
use futures::StreamExt;

const KEY: &str = "resolved-test-key-0123456789";
const SERVERS: &str = "192.0.2.53,2001:db8::53";
const ORIGINAL: &[u8] = b"# the namespace's own resolver\nnameserver 192.0.2.1\n";
const MANAGER: &str = "org.freedesktop.resolve1.Manager";

/// /etc/netns/NS/resolv.conf, removed on drop.
struct NetnsEtc(PathBuf);

impl NetnsEtc {
    fn new(ns: &Netns) -> NetnsEtc {
        let dir = PathBuf::from("/etc/netns").join(ns.name());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("resolv.conf"), ORIGINAL).unwrap();
        NetnsEtc(dir)
    }

    fn content(&self) -> Vec<u8> {
        fs::read(self.0.join("resolv.conf")).unwrap()
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_dir("/etc/netns");
    }
}

/// A private bus; with a stand-in for resolved that records calls as text lines.
struct Bus {
    address: String,
    calls: Arc<Mutex<Vec<String>>>,
    _daemon: Proc,
    // Dropped first: the stand-in's connection goes before the daemon.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Bus {
    /// Starts `dbus-daemon` with a config of our own (run in `ns` only to share the harness's
    /// process handling: a unix socket path is reachable from every namespace).
    fn new(ns: &Netns) -> Bus {
        let socket = ns.dir().path().join("bus");
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow send_destination="*"/>
    <allow receive_type="*"/>
    <allow own="{BUS_NAME}"/>
  </policy>
</busconfig>
"#,
            socket.display()
        );
        let conf = ns.dir().file("bus.conf", config.as_bytes());
        let mut daemon = ns.spawn(
            "dbus-daemon",
            &[
                &format!("--config-file={}", conf.display()),
                "--nofork",
                "--nopidfile",
            ],
            &[],
        );
        wait_for(Duration::from_secs(10), "dbus-daemon's socket", || {
            assert_running(&mut daemon, "dbus-daemon");
            socket.exists()
        });
        Bus {
            address: format!("unix:path={}", socket.display()),
            calls: Arc::default(),
            _daemon: daemon,
            rt: None,
        }
    }

    /// Owns `org.freedesktop.resolve1` and records the manager's calls; `fail` names a method
    /// answered with an error.
    fn with_standin(mut self, fail: Option<&'static str>) -> Bus {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let conn = rt
            .block_on(async {
                let c = zbus::connection::Builder::address(self.address.as_str())
                    .build()
                    .await?;
                c.request_name(BUS_NAME).await?;
                Ok::<_, zbus::Error>(c)
            })
            .expect("the stand-in cannot join the private bus");
        let calls = Arc::clone(&self.calls);
        rt.spawn(async move {
            let mut stream = zbus::MessageStream::from(&conn);
            while let Some(Ok(msg)) = stream.next().await {
                let hdr = msg.header();
                if hdr.message_type() != zbus::message::Type::MethodCall
                    || hdr.interface().map(|i| i.as_str()) != Some(MANAGER)
                {
                    continue;
                }
                let member = hdr.member().map(|m| m.to_string()).unwrap_or_default();
                calls.lock().unwrap().push(record(&member, &msg));
                let _ = if fail == Some(member.as_str()) {
                    conn.reply_error(
                        &hdr,
                        "org.freedesktop.DBus.Error.Failed",
                        &("the stand-in refuses",),
                    )
                    .await
                } else {
                    conn.reply(&hdr, &()).await
                };
            }
        });
        self.rt = Some(rt);
        self
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn wait_call(&self, line: &str) {
        wait_for(
            Duration::from_secs(10),
            &format!("the call {line:?}"),
            || self.calls().iter().any(|c| c == line),
        );
    }
}

/// One call as a line: `SetLinkDNS 5 192.0.2.53,2001:db8::53`, `SetLinkDomains 5 ~.:true`...
fn record(member: &str, msg: &zbus::Message) -> String {
    let body = msg.body();
    let sig = body.signature().to_string();
    let args = match member {
        "SetLinkDNS" => body
            .deserialize::<(i32, Vec<(i32, Vec<u8>)>)>()
            .map(|(i, addrs)| {
                let list: Vec<String> = addrs
                    .iter()
                    .map(|(family, b)| match (*family, b.len()) {
                        (libc::AF_INET, 4) => {
                            std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
                        }
                        (libc::AF_INET6, 16) => {
                            let a: [u8; 16] = b[..].try_into().unwrap();
                            std::net::Ipv6Addr::from(a).to_string()
                        }
                        _ => format!("bad({family},{b:?})"),
                    })
                    .collect();
                format!("{i} {}", list.join(","))
            }),
        "SetLinkDomains" => body
            .deserialize::<(i32, Vec<(String, bool)>)>()
            .map(|(i, d)| {
                let list: Vec<String> = d.iter().map(|(n, r)| format!("{n}:{r}")).collect();
                format!("{i} {}", list.join(","))
            }),
        "SetLinkDefaultRoute" => body
            .deserialize::<(i32, bool)>()
            .map(|(i, b)| format!("{i} {b}")),
        "RevertLink" => body.deserialize::<(i32,)>().map(|(i,)| i.to_string()),
        _ => Ok(String::new()),
    };
    match args {
        Ok(a) => format!("{member} {a}"),
        Err(e) => format!("{member} bad body ({sig}): {e}"),
    }
}

/// A server pushing SERVERS, and one client namespace with its own resolv.conf and the bus.
struct World {
    topo: Topo,
    etc: NetnsEtc,
    port: u16,
    _server: Proc,
}

impl World {
    fn new(tag: &str, port: u16) -> World {
        let topo = Topo::pair(tag);
        let etc = NetnsEtc::new(topo.client());
        let p = port.to_string();
        let server = start_server(
            &topo.server,
            port,
            &["-key", KEY, "-port", &p, "-dns", SERVERS],
        );
        World {
            topo,
            etc,
            port,
            _server: server,
        }
    }

    /// Starts the client with `extra` flags on `bus`; returns it with its TUN's ifindex.
    fn client(&self, bus: &Bus, extra: &[&str]) -> (Proc, u32) {
        let ns = self.topo.client();
        let (host, p) = (Topo::server_ip(0), self.port.to_string());
        let mut args = vec!["-host", &host, "-port", &p, "-key", KEY, "-id", "desk"];
        args.extend_from_slice(extra);
        let c = start_client_env(ns, &args, &[("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)]);
        let tun = only_tun(ns);
        let index = ns.ifindex(&tun).expect("the TUN's ifindex");
        (c, index)
    }
}

#[test]
fn resolved_gets_per_link_dns_and_reverts_it_resolv_conf_untouched() {
    common::need_root!();
    let w = World::new("grR", 4711);
    let bus = Bus::new(w.topo.client()).with_standin(None);

    // -accept-dns: only the link's servers.
    let (mut c, index) = w.client(&bus, &["-accept-dns"]);
    bus.wait_call(&format!("SetLinkDNS {index} {SERVERS}"));
    c.wait_log("through systemd-resolved", UP);
    assert!(c.log().contains(LOG_DNS_SET), "{}", c.log());
    c.stop(Duration::from_secs(5));
    bus.wait_call(&format!("RevertLink {index}"));
    assert!(c.log().contains(LOG_DNS_RESTORED), "{}", c.log());
    assert_eq!(
        bus.calls(),
        [
            format!("SetLinkDNS {index} {SERVERS}"),
            format!("RevertLink {index}")
        ],
        "no routing domain without -route all"
    );
    assert_eq!(w.etc.content(), ORIGINAL, "resolv.conf touched");

    // -route all: the routing domain ~. and the default route too, in that order.
    bus.calls.lock().unwrap().clear();
    let (mut c, index) = w.client(&bus, &["-route", "all"]);
    bus.wait_call(&format!("SetLinkDefaultRoute {index} true"));
    assert_eq!(w.etc.content(), ORIGINAL, "resolv.conf touched");
    c.stop(Duration::from_secs(5));
    bus.wait_call(&format!("RevertLink {index}"));
    assert_eq!(
        bus.calls(),
        [
            format!("SetLinkDNS {index} {SERVERS}"),
            format!("SetLinkDomains {index} {ROUTE_ALL_DOMAIN}:true"),
            format!("SetLinkDefaultRoute {index} true"),
            format!("RevertLink {index}"),
        ]
    );
    assert_eq!(w.etc.content(), ORIGINAL, "resolv.conf touched");
}

/// A call that fails part way: the link is reverted, the error logged, the tunnel stays up,
/// and resolv.conf is not touched either.
#[test]
fn a_failed_call_is_reverted_and_logged() {
    common::need_root!();
    let w = World::new("grF", 4712);
    let bus = Bus::new(w.topo.client()).with_standin(Some("SetLinkDomains"));
    let (mut c, index) = w.client(&bus, &["-route", "all"]);
    bus.wait_call(&format!("RevertLink {index}"));
    c.wait_log("cannot set DNS", UP);
    assert!(
        c.log().contains("SetLinkDomains") && c.log().contains("reverted"),
        "{}",
        c.log()
    );
    assert_eq!(
        bus.calls(),
        [
            format!("SetLinkDNS {index} {SERVERS}"),
            format!("SetLinkDomains {index} {ROUTE_ALL_DOMAIN}:true"),
            format!("RevertLink {index}"),
        ]
    );
    assert_running(&mut c, "the client after a failed bus call");
    assert_eq!(w.etc.content(), ORIGINAL, "resolv.conf touched");
    c.stop(Duration::from_secs(5));
}

/// The bus is there but nobody owns org.freedesktop.resolve1: resolv.conf in place, as before.
#[test]
fn without_resolved_on_the_bus_resolv_conf_is_rewritten() {
    common::need_root!();
    let w = World::new("grN", 4713);
    let bus = Bus::new(w.topo.client());
    let (mut c, _) = w.client(&bus, &["-accept-dns"]);
    c.wait_log(LOG_DNS_SET, UP);
    assert!(
        c.log().contains("in place") && c.log().contains("is not on the system bus"),
        "{}",
        c.log()
    );
    let now = String::from_utf8_lossy(&w.etc.content()).into_owned();
    assert!(
        now.starts_with(MARKER) && now.contains("nameserver 192.0.2.53"),
        "{now}"
    );
    c.stop(Duration::from_secs(5));
    assert_eq!(w.etc.content(), ORIGINAL, "resolv.conf not restored");
}
