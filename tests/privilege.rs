//! dtun without root: a uid with no /etc/passwd entry holding only CAP_NET_ADMIN as an
//! ambient capability (what dist/systemd's units grant, reproduced with `setpriv`), server and
//! client, scripts included; and the messages of a dtun that lacks a capability. Needs root,
//! /dev/net/tun, iproute2, iputils-ping, nftables (nft, to inspect only) and util-linux
//! (setpriv).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;

const KEY: &str = "privilege-test-key-0123456789";
const UID: u32 = 4242;
/// CAP_NET_ADMIN alone, as `CapEff:` shows it.
const NET_ADMIN_ONLY: &str = "0000000000001000";
const ROUTE: &str = "198.51.100.0/24";

/// A TUN clone device node (char 10:200) of mode `mode` in the test's directory. udev makes
/// /dev/net/tun 0666 on a Debian host; some containers leave it 0600, so the tests mount a
/// node of their own over it, inside the mount namespace `ip netns exec` gives each command
/// (slave of the host's: nothing shows outside).
fn tun_node(dir: &TestDir, mode: u32) -> String {
    let path = dir.path().join(format!("tun-{mode:o}"));
    if !path.exists() {
        let out = std::process::Command::new("mknod")
            .arg(&path)
            .args(["c", "10", "200"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    path_str(&path).to_string()
}

/// `sh -c 'mount --bind NODE /dev/net/tun; mount --bind RUNDIR /run/dtun; exec setpriv ARGS…
/// dtun DTUN_ARGS…'`.
fn as_unit_args<'a>(
    node: &'a str,
    rundir: &'a str,
    setpriv: &[&'a str],
    dtun_args: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["sh", "-c", MOUNT_UNIT, node, rundir, "setpriv"];
    args.extend_from_slice(setpriv);
    args.push(DTUN);
    args.extend_from_slice(dtun_args);
    args
}

/// dtun under `setpriv ARGS…` in the background, with /dev/net/tun as a Debian host has it.
fn spawn_as(ns: &Netns, setpriv: &[&str], dtun_args: &[&str]) -> Proc {
    let node = tun_node(ns.dir(), 0o666);
    let rundir = unit_rundir(ns.dir());
    let args = as_unit_args(&node, &rundir, setpriv, dtun_args);
    ns.spawn(args[0], &args[1..], &[])
}

/// dtun under `setpriv ARGS…` with /dev/net/tun of mode `mode`, expected to fail; bounded by
/// `timeout` so a dtun that wrongly starts fails the test instead of hanging it.
fn run_as_with(ns: &Netns, mode: u32, setpriv: &[&str], dtun_args: &[&str]) -> (Output, String) {
    let node = tun_node(ns.dir(), mode);
    let rundir = unit_rundir(ns.dir());
    let mut args = vec!["10"];
    args.extend(as_unit_args(&node, &rundir, setpriv, dtun_args));
    let out = ns.run("timeout", &args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "dtun started: {out:?}");
    (out, err)
}

fn run_as(ns: &Netns, setpriv: &[&str], dtun_args: &[&str]) -> (Output, String) {
    run_as_with(ns, 0o666, setpriv, dtun_args)
}

/// (real uid, effective capabilities) of a running process.
fn uid_and_caps(pid: u32) -> (String, String) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_default()
            .to_string()
    };
    (field("Uid:"), field("CapEff:"))
}

/// A file only root and group 4242 can read, like /etc/dtun/key for the packaged units.
fn group_readable(dir: &TestDir, name: &str, text: &str) -> String {
    let path = dir.file(name, text.as_bytes());
    std::os::unix::fs::chown(&path, Some(0), Some(UID)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    path_str(&path).to_string()
}

/// /etc/netns/NS/resolv.conf, which `ip netns exec` mounts over the client's /etc/resolv.conf;
/// removed on drop. The host's own file is never the one at stake.
struct NetnsResolv(std::path::PathBuf);

impl NetnsResolv {
    fn new(ns: &Netns) -> NetnsResolv {
        let dir = Path::new("/etc/netns").join(ns.name());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("resolv.conf"), "nameserver 192.0.2.1\n").unwrap();
        NetnsResolv(dir)
    }
}

impl Drop for NetnsResolv {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn unprivileged_server_and_client_with_only_cap_net_admin() {
    common::need_root!();
    let topo = Topo::pair("svp");
    let (s, c) = (&topo.server, topo.client());
    let forward = || {
        let out = s.run("cat", &["/proc/sys/net/ipv4/ip_forward"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(
        s.sh("echo 0 > /proc/sys/net/ipv4/ip_forward")
            .status
            .success()
    );
    let key = group_readable(&topo.dir, "key", KEY);
    // Where the scripts (uid 4242) leave their traces.
    let out_dir = topo.dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(UID), Some(UID)).unwrap();
    let out = path_str(&out_dir);
    let up = topo.dir.script(
        "up.sh",
        &format!(
            "#!/bin/sh\nset -e\nip route add {ROUTE} dev \"$TUN\"\nid -u > {out}/up.uid\n\
             grep CapAmb /proc/self/status > {out}/up.caps\n"
        ),
    );
    let down = topo.dir.script(
        "down.sh",
        &format!("#!/bin/sh\nip route del {ROUTE} dev \"$TUN\" && touch {out}/down.ok\n"),
    );
    let _resolv = NetnsResolv::new(c);
    // Every table and rule, both families, less the IPv6 link-local and multicast routes the
    // kernel adds to eth0 on its own once duplicate address detection ends.
    let snapshot = || {
        let mut all = c.ip(&["-4", "rule"]) + &c.ip(&["-6", "rule"]);
        all += &c.ip(&["-4", "route", "show", "table", "all"]);
        all += &c.ip(&["-6", "route", "show", "table", "all"]);
        all.lines()
            .filter(|l| {
                !l.starts_with("fe80::/64 dev eth0") && !l.starts_with("multicast ff00::/8")
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let before = snapshot();

    let mut server = spawn_as(s, AS_UNIT, &["-key-file", &key, "-port", "4740", "-nat"]);
    server.wait_log("in place", UP);
    assert!(s.udp_listening(4740));
    assert_eq!(
        uid_and_caps(server.pid()),
        (UID.to_string(), NET_ADMIN_ONLY.into())
    );
    assert_eq!(forward(), "1", "-nat turned forwarding on");

    let server_ip = Topo::server_ip(0);
    let mut client = spawn_as(
        c,
        AS_UNIT,
        &[
            "-host",
            &server_ip,
            "-port",
            "4740",
            "-key-file",
            &key,
            "-id",
            "unprivileged",
            "-route",
            "all",
            "-dns",
            "192.0.2.53",
            "-up",
            path_str(&up),
            "-down",
            path_str(&down),
        ],
    );
    client.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    assert_eq!(
        uid_and_caps(client.pid()),
        (UID.to_string(), NET_ADMIN_ONLY.into())
    );
    let dev = only_tun(c);
    let (_, peer) = wait_p2p(c, &dev);
    assert!(
        c.ping_ok(&peer.to_string(), 3),
        "no ping through the tunnel"
    );
    // The up script ran as uid 4242 with CAP_NET_ADMIN ambient, and its route is in place.
    assert!(
        c.routes().contains(&format!("{ROUTE} dev {dev}")),
        "{}",
        c.routes()
    );
    let read = |f: &str| fs::read_to_string(out_dir.join(f)).unwrap_or_default();
    assert_eq!(read("up.uid").trim(), UID.to_string());
    assert!(
        read("up.caps").contains(NET_ADMIN_ONLY),
        "{}",
        read("up.caps")
    );
    // -route all: everything but the server goes into the tunnel.
    let via = c.ip(&["route", "get", "203.0.113.7"]);
    assert!(via.contains(&format!("dev {dev}")), "{via}");
    let via = c.ip(&["route", "get", &server_ip]);
    assert!(via.contains("dev eth0"), "{via}");
    // DNS needs a writable /etc/resolv.conf: not this user's; the message says what to do.
    wait_for(UP, "the DNS warning", || {
        client
            .log()
            .contains(dtun_linux::privilege::GRANT_RESOLV_CONF)
    });
    let resolv = fs::read_to_string(_resolv.0.join("resolv.conf")).unwrap();
    assert_eq!(resolv, "nameserver 192.0.2.1\n");

    client.signal("TERM");
    client.expect_success("unprivileged client", Duration::from_secs(15));
    assert!(out_dir.join("down.ok").exists(), "{}", client.log());
    assert!(c.links().is_empty());
    assert_eq!(snapshot(), before, "routes or rules left behind");

    server.signal("TERM");
    server.expect_success("unprivileged server", Duration::from_secs(15));
    assert!(s.links().is_empty());
    assert_eq!(forward(), "0", "forwarding restored");
    let tables = s.run("nft", &["list", "tables"]);
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("dtun"));
}

#[test]
fn missing_capabilities_are_named_with_how_to_grant_them() {
    common::need_root!();
    let topo = Topo::pair("svm");
    let (s, c) = (&topo.server, topo.client());
    let none = [
        "--reuid",
        "4242",
        "--regid",
        "4242",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
    ];
    let grant = dtun_linux::privilege::GRANT_NET_ADMIN;
    // Server and client without CAP_NET_ADMIN: refused at once, nothing bound or made.
    let (_, err) = run_as(s, &none, &["-key", KEY, "-port", "4750"]);
    assert!(
        err.contains("needs CAP_NET_ADMIN") && err.contains(grant),
        "{err}"
    );
    assert!(
        err.contains("setcap cap_net_admin+ep")
            && err.contains("AmbientCapabilities=CAP_NET_ADMIN")
    );
    let (_, err) = run_as(
        c,
        &none,
        &["-host", &Topo::server_ip(0), "-port", "4750", "-key", KEY],
    );
    assert!(
        err.contains("needs CAP_NET_ADMIN") && err.contains(grant),
        "{err}"
    );
    assert!(c.links().is_empty() && s.links().is_empty());

    // CAP_NET_ADMIN alone does not bind port 443.
    let (_, err) = run_as(s, AS_UNIT, &["-key", KEY, "-port", "443"]);
    assert!(
        err.contains("needs CAP_NET_BIND_SERVICE")
            && err.contains(dtun_linux::privilege::GRANT_NET_BIND_SERVICE),
        "{err}"
    );
    // With it too, as dtun-server.service grants, it does.
    let both = AS_UNIT
        .iter()
        .map(|a| a.replace("+net_admin", "+net_admin,+net_bind_service"))
        .collect::<Vec<_>>();
    let both: Vec<&str> = both.iter().map(String::as_str).collect();
    let mut server = spawn_as(s, &both, &["-key", KEY, "-port", "443"]);
    wait_for(UP, "the server on port 443", || {
        assert_running(&mut server, "dtun on port 443");
        s.udp_listening(443)
    });
    server.signal("TERM");
    server.expect_success("server on 443", Duration::from_secs(10));

    // CAP_NET_ADMIN does not open a /dev/net/tun of mode 0600.
    let (_, err) = run_as_with(s, 0o600, AS_UNIT, &["-key", KEY, "-port", "4750"]);
    assert!(
        err.contains("cannot open /dev/net/tun") && err.contains("chmod 0666 /dev/net/tun"),
        "{err}"
    );

    // A key file the user cannot read: the message says who must be able to.
    let key = topo.dir.file("secret", KEY.as_bytes());
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let (_, err) = run_as(s, AS_UNIT, &["-key-file", path_str(&key), "-port", "4750"]);
    assert!(
        err.contains("cannot read key file") && err.contains("chown root:dtun"),
        "{err}"
    );
}

/// A root without capabilities against dtun as the units run it (uid 4242, CAP_NET_ADMIN only): its
/// admin socket is 4242's, mode 0600, so a uid-0 process without capabilities (a rootful
/// container's root sharing the namespaces) can neither reload it nor read its status, while dtun's
/// own user (its scripts) can, and root can when that uid is the system user `dtun` (root believes
/// an answer only from uid 0, the user dtun of /etc/passwd, or itself).
#[test]
fn only_root_and_dtuns_user_reload_a_unit_dtun() {
    common::need_root!();
    let topo = Topo::pair("svr");
    let s = &topo.server;
    let mut server = spawn_as(s, AS_UNIT, &["-key", KEY, "-port", "4741"]);
    wait_for(UP, "the server listening", || {
        assert_running(&mut server, "unprivileged server");
        s.udp_listening(4741)
    });
    let rundir = unit_rundir(s.dir());
    let ask = |setpriv: &[&str], what: &str| {
        let mut args = vec![
            "-c",
            "mount --bind \"$0\" /run/dtun && exec \"$@\"",
            &rundir,
            "setpriv",
        ];
        args.extend_from_slice(setpriv);
        args.extend([DTUN, what]);
        s.run("sh", &args)
    };
    let no_caps = [
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
    ];
    for what in ["reload", "status"] {
        let o = ask(&no_caps, what);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "uid 0 without capabilities: {what}: {o:?}"
        );
        assert!(err.contains("refused to answer"), "{err}");
    }
    assert!(!server.log().contains("dtun reload"), "{}", server.log());
    let o = ask(
        &["--reuid", "4242", "--regid", "4242", "--clear-groups"],
        "reload",
    );
    assert!(o.status.success(), "dtun's own user: {o:?}");
    server.wait_log("dtun reload", Duration::from_secs(5));
    // Root: uid 4242 is not the system user dtun here, so its answer is not believed...
    let o = ask(&[], "status");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "root believed a uid that is not dtun's: {o:?}"
    );
    assert!(err.contains("is answered by uid 4242"), "{err}");
    // ...and is once /etc/passwd (bind-mounted over, in this command's mount namespace) says
    // 4242 is dtun.
    let passwd = s.dir().path().join("passwd");
    let mut text = std::fs::read_to_string("/etc/passwd").unwrap();
    text.push_str("dtun:x:4242:4242:dtun:/nonexistent:/usr/sbin/nologin\n");
    std::fs::write(&passwd, text).unwrap();
    let passwd = passwd.to_str().unwrap();
    let o = s.run(
        "sh",
        &[
            "-c",
            "mount --bind \"$0\" /run/dtun && mount --bind \"$1\" /etc/passwd && exec \"$2\" status",
            &rundir,
            passwd,
            DTUN,
        ],
    );
    assert!(o.status.success(), "root, 4242 being dtun: {o:?}");
    server.signal("TERM");
    server.expect_success("unprivileged server", Duration::from_secs(15));
}
