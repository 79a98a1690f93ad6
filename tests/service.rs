//! Running dtun as a systemd service, as far as it can be checked without systemd as PID 1:
//! the units in dist/systemd pass `systemd-analyze verify` and score low in `systemd-analyze
//! security --offline=true`, readiness reaches a test-owned `NOTIFY_SOCKET` only once the
//! server listens / the client's tunnel is up, and `dtun completions` / `dtun man` print what
//! the package ships. Needs root, /dev/net/tun, iproute2, systemd (systemd-analyze), man-db and
//! groff-base.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const KEY: &str = "service-test-key-0123456789";
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/systemd");
/// Exposure scores (0 safe … 10 exposed) the units reach; a change that weakens them fails.
const SERVER_SCORE_MAX: f64 = 2.1;
const CLIENT_SCORE_MAX: f64 = 1.8;

fn unit(name: &str) -> String {
    fs::read_to_string(Path::new(UNITS).join(name)).unwrap()
}

/// The unit's `Key=` lines, values only.
fn values(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

/// Copies of the units whose ExecStart runs the built binary, `dtun@svtest.service` for the
/// template, and the man page their `Documentation=` names, under `dir`. Returns the unit
/// paths (server, client) and the MANPATH to use.
fn installed_copies(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let man = dir.join("man");
    fs::create_dir_all(man.join("man1")).unwrap();
    let out = Command::new(DTUN).arg("man").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    fs::write(man.join("man1/dtun.1"), &out.stdout).unwrap();
    let copy = |from: &str, to: &str| {
        let text = unit(from).replace("/usr/bin/dtun ", &format!("{DTUN} "));
        assert!(text.contains(DTUN), "{from}: ExecStart not rewritten");
        let path = dir.join(to);
        fs::write(&path, text).unwrap();
        path
    };
    copy("dtun-server@.service", "dtun-server@svtest.service");
    fs::write(dir.join("dtun.target"), unit("dtun.target")).unwrap();
    (
        copy("dtun-server.service", "dtun-server.service"),
        copy("dtun@.service", "dtun@svtest.service"),
        man,
    )
}

#[test]
fn units_ask_for_the_documented_setup() {
    let server = unit("dtun-server.service");
    let client = unit("dtun@.service");
    assert_eq!(
        values(&server, "ExecStart"),
        ["/usr/bin/dtun -config /etc/dtun/server.toml"]
    );
    assert_eq!(
        values(&client, "ExecStart"),
        ["/usr/bin/dtun -config /etc/dtun/%i.toml"]
    );
    // A bad configuration never starts, and a refused reload fails `systemctl reload`; a client
    // has nothing to reload. A client's -host may be a name.
    assert_eq!(
        values(&server, "ExecStartPre"),
        ["/usr/bin/dtun -config /etc/dtun/server.toml -check"]
    );
    assert_eq!(
        values(&server, "ExecReload"),
        ["/usr/bin/dtun reload server"]
    );
    assert_eq!(
        values(&client, "ExecStartPre"),
        ["/usr/bin/dtun -config /etc/dtun/%i.toml -check"]
    );
    assert!(values(&client, "ExecReload").is_empty());
    assert_eq!(
        values(&client, "After"),
        ["network-online.target nss-lookup.target"]
    );
    // The server template is the server's unit with NAME for `server`, nothing else.
    let template = unit("dtun-server@.service");
    let strip = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("Description="))
            .map(|l| l.replace("%i", "server"))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&template), strip(&server));
    let target = unit("dtun.target");
    assert_eq!(values(&target, "WantedBy"), ["multi-user.target"]);
    for (text, caps) in [
        (&server, "CAP_NET_ADMIN CAP_NET_BIND_SERVICE"),
        (&client, "CAP_NET_ADMIN"),
    ] {
        for (key, want) in [
            ("Type", "notify"),
            ("User", "dtun"),
            ("Group", "dtun"),
            ("AmbientCapabilities", caps),
            ("CapabilityBoundingSet", caps),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            (
                "RestrictAddressFamilies",
                "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
            ),
            ("Restart", "on-failure"),
            ("PartOf", "dtun.target"),
            ("WantedBy", "multi-user.target"),
            ("DeviceAllow", "/dev/net/tun rw"),
        ] {
            assert_eq!(values(text, key), [want], "{key}= in\n{text}");
        }
        assert!(values(text, "SystemCallFilter").contains(&"@system-service".to_string()));
    }
    // /run/dtun is the package's (tmpfiles.d, root:dtun 1770), never the unit's: a
    // RuntimeDirectory= would hand it to user dtun, whose files a root dtun would then trust.
    assert!(values(&client, "RuntimeDirectory").is_empty());
    assert!(values(&server, "RuntimeDirectory").is_empty());
    let tmpfiles = fs::read_to_string(Path::new(UNITS).join("../tmpfiles.d/dtun.conf")).unwrap();
    assert!(
        tmpfiles
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["d", "/run/dtun", "1770", "root", "dtun", "-"]),
        "{tmpfiles}"
    );
    // Only the client rewrites /etc/resolv.conf; only the server writes ip_forward (-nat).
    assert_eq!(
        values(&client, "ReadWritePaths"),
        ["/run/dtun", "-/etc/resolv.conf"]
    );
    assert_eq!(values(&server, "ReadWritePaths"), ["/run/dtun"]);
    assert!(values(&server, "ProtectKernelTunables").is_empty());
    assert_eq!(values(&client, "ProtectKernelTunables"), ["yes"]);
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = TestDir::new("svverify");
    let (server, client, man) = installed_copies(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args([&server, &client])
        .arg(dir.path().join("dtun-server@svtest.service"))
        .arg(dir.path().join("dtun.target"))
        .env("MANPATH", &man)
        .output()
        .expect("systemd-analyze (package systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values, which it only prints: no output at all.
    assert!(out.status.success() && err.trim().is_empty(), "{out:?}");
    // The check itself catches a broken unit.
    let bad = dir.file(
        "dtun-bad.service",
        fs::read_to_string(&server)
            .unwrap()
            .replace("Type=notify", "Type=notifyy")
            .as_bytes(),
    );
    let out = Command::new("systemd-analyze")
        .args(["verify".as_ref(), bad.as_os_str()])
        .env("MANPATH", &man)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("notifyy"),
        "{out:?}"
    );
}

fn exposure(unit: &Path, man: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .env("MANPATH", man)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score: {out:?}"));
    let score = line
        .rsplit(':')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unparsable: {line}"));
    eprintln!("{line}");
    score
}

#[test]
fn units_score_low_in_systemd_analyze_security() {
    let dir = TestDir::new("svsec");
    let (server, client, man) = installed_copies(dir.path());
    let s = exposure(&server, &man);
    let c = exposure(&client, &man);
    assert!(s <= SERVER_SCORE_MAX, "server exposure {s}");
    assert!(c <= CLIENT_SCORE_MAX, "client exposure {c}");
    // An unhardened copy scores far worse, so the bound measures the hardening.
    let bare: String = fs::read_to_string(&server)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("Protect") && !l.starts_with("Restrict"))
        .map(|l| format!("{l}\n"))
        .collect();
    let bare = dir.file("dtun-bare.service", bare.as_bytes());
    assert!(exposure(&bare, &man) > s + 1.0);
}

/// A `NOTIFY_SOCKET` the test owns: the datagrams a dtun sends to it.
struct Notify {
    path: PathBuf,
    sock: UnixDatagram,
    got: Vec<String>,
}

impl Notify {
    fn new(dir: &TestDir, name: &str) -> Notify {
        let path = dir.path().join(name);
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Notify {
            path,
            sock,
            got: Vec::new(),
        }
    }

    fn env(&self) -> (&'static str, &str) {
        ("NOTIFY_SOCKET", path_str(&self.path))
    }

    /// Reads what has arrived (waiting at most 50 ms).
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.got
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Waits until a message has a line `line`; returns that message.
    fn wait(&mut self, line: &str, p: &mut Proc) -> String {
        let deadline = Instant::now() + UP;
        loop {
            self.drain();
            if let Some(m) = self.got.iter().find(|m| m.lines().any(|l| l == line)) {
                return m.clone();
            }
            assert_running(p, "dtun");
            assert!(
                Instant::now() < deadline,
                "no {line} in {:?}; log:\n{}",
                self.got,
                p.log()
            );
        }
    }

    fn has(&self, line: &str) -> bool {
        self.got.iter().any(|m| m.lines().any(|l| l == line))
    }
}

#[test]
fn readiness_follows_listening_and_tunnel_up() {
    common::need_root!();
    let topo = Topo::pair("svn");
    let (s, c) = (&topo.server, topo.client());
    let port = "4730";
    // The client first, while no server answers: it retries, says so, and is not ready.
    let mut cn = Notify::new(&topo.dir, "client.sock");
    let started = Instant::now();
    let mut client = c.spawn(
        DTUN,
        &[
            "-host",
            &Topo::server_ip(0),
            "-port",
            port,
            "-key",
            KEY,
            "-id",
            "ready",
        ],
        &[cn.env()],
    );
    let status = cn.wait_prefix("STATUS=reconnecting", &mut client);
    // Refused (ICMP port unreachable) three times: it says so in seconds, not after the 20 s
    // handshake timeout.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "reconnecting only after {took:?}"
    );
    assert!(
        client.log().contains("refused the connection"),
        "{}",
        client.log()
    );
    assert!(!cn.has("READY=1"), "{:?}", cn.got);
    assert!(c.links().is_empty());
    eprintln!("client, no server: {status:?}");

    let mut sn = Notify::new(&topo.dir, "server.sock");
    let mut server = s.spawn(DTUN, &["-key", KEY, "-port", port], &[sn.env()]);
    let ready = sn.wait("READY=1", &mut server);
    assert!(s.udp_listening(4730), "READY=1 before the port is bound");
    assert!(ready.contains("STATUS=listening on"), "{ready:?}");

    let ready = cn.wait("READY=1", &mut client);
    // Ready means the tunnel is up: the device has its addresses and traffic crosses.
    let dev = only_tun(c);
    let (_, peer) = c
        .p2p(&dev)
        .expect("READY=1 before the TUN has its addresses");
    assert!(ready.contains("STATUS=tunnel up: dev"), "{ready:?}");
    assert!(client.log().contains(dtun::client::LOG_TUNNEL_UP));
    assert!(c.ping_ok(&peer.to_string(), 2));

    // A reload (ExecReload's SIGHUP): RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    sn.got.clear();
    server.signal("HUP");
    let reloading = sn.wait("RELOADING=1", &mut server);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let ready = sn.wait("READY=1", &mut server);
    assert!(ready.contains("STATUS=reloaded"), "{ready:?}");

    for (n, p) in [(&mut cn, &mut client), (&mut sn, &mut server)] {
        p.signal("TERM");
        n.wait("STOPPING=1", p);
        p.expect_success("dtun", Duration::from_secs(10));
    }
}

impl Notify {
    /// Waits until a message has a line starting with `prefix`; returns that line. A client
    /// with no server says it is reconnecting only when its first handshake has timed out
    /// (HANDSHAKE_TIMEOUT, 20 s, as long as UP): so this waits for both.
    fn wait_prefix(&mut self, prefix: &str, p: &mut Proc) -> String {
        let deadline = Instant::now() + dtun_proto::consts::HANDSHAKE_TIMEOUT + UP;
        loop {
            self.drain();
            if let Some(l) = self
                .got
                .iter()
                .flat_map(|m| m.lines())
                .find(|l| l.starts_with(prefix))
            {
                return l.to_string();
            }
            assert_running(p, "dtun");
            assert!(
                Instant::now() < deadline,
                "no {prefix} in {:?}; log:\n{}",
                self.got,
                p.log()
            );
        }
    }
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(DTUN)
            .args(["completions", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("key-file"),
            "{shell}: {out:?}"
        );
    }
    let out = Command::new(DTUN)
        .args(["completions", "csh"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("possible values: bash, zsh, fish"),
        "{err}"
    );
    let help = Command::new(DTUN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("dtun completions") && help.contains("dtun man"),
        "{help}"
    );

    for command in ["genkey", "key", "status", "reload", "completions", "man"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "--help does not list {command}: {help}"
        );
    }

    let dir = TestDir::new("svman");
    let out = Command::new(DTUN).arg("man").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = dir.file("dtun.1", &out.stdout);
    // man-db renders it with every warning on: no warning, and the flags are there.
    let out = Command::new("man")
        .args(["--warnings=all", "-l"])
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("man (package man-db)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "--key-file",
        "COMMANDS",
        "dtun completions",
        "/etc/dtun/",
        "User Commands",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    let out = Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(&page)
        .output()
        .expect("groff (package groff-base)");
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
}

/// Each command has its own usage: `--help` prints it (never a key, never an error), unknown
/// arguments are refused, and `key derive` needs its `-id`.
#[test]
fn commands_have_their_own_help_and_refuse_what_they_do_not_take() {
    let run = |args: &[&str]| Command::new(DTUN).args(args).output().unwrap();
    for (args, usage) in [
        (&["genkey", "--help"][..], "Usage: dtun genkey"),
        (&["genkey", "-help"][..], "Usage: dtun genkey"),
        (&["key", "--help"][..], "Usage: dtun key <COMMAND>"),
        (&["key", "derive", "--help"][..], "Usage: dtun key derive"),
        (&["status", "--help"][..], "Usage: dtun status"),
        (&["reload", "--help"][..], "Usage: dtun reload"),
        (&["completions", "--help"][..], "Usage: dtun completions"),
    ] {
        let out = run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(usage),
            "{args:?}: {out:?}"
        );
    }
    for (args, says) in [
        (&["genkey", "extra"][..], "unexpected argument 'extra'"),
        (&["status", "-bogus"][..], "unexpected argument '--bogus'"),
        (&["status", "a", "b"][..], "unexpected argument 'b'"),
        (&["reload", "a", "b"][..], "unexpected argument 'b'"),
        (
            &["key", "derive", "-key", "0123456789abcdef0123"][..],
            "--id",
        ),
        (&["key"][..], "Usage: dtun key <COMMAND>"),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
    // Go-style single-dash flags work after a command as they do for the role's flags.
    let out = run(&[
        "key",
        "derive",
        "-key",
        "0123456789abcdef0123",
        "-id",
        "laptop",
    ]);
    let key = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && key.trim().len() == 64, "{out:?}");
}

/// The bash completion completes the single-dash flags people type (`-key-f` → `-key-file`)
/// and the commands.
#[test]
fn bash_completes_single_dash_flags_and_commands() {
    let dir = TestDir::new("svcomp");
    let out = Command::new(DTUN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let script = dir.file("dtun.bash", &out.stdout);
    let complete = |words: &str| {
        let prog = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); \
             _dtun dtun \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash").args(["-c", &prog]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let got = complete("dtun -key-f");
    assert!(got.lines().any(|l| l == "-key-file"), "{got}");
    let got = complete("dtun sta");
    assert!(got.lines().any(|l| l == "status"), "{got}");
}
