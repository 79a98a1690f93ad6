//! The units' seccomp filter and address-family list against what dtun really does: a server
//! (`-nat`) and a client (`-route all`, an `-up` script running `ip`) run as the unit
//! runs them (uid 4242, CAP_NET_ADMIN only, reproduced with `setpriv`) under `strace -f`; every
//! system call they and their scripts make after the exec into dtun must be allowed by the
//! unit's `SystemCallFilter=` lines (expanded by `systemd-analyze syscall-filter`), and every
//! socket family they open must be in its `RestrictAddressFamilies=`. systemd is not PID 1
//! here, so this stands in for starting the units. Needs root, /dev/net/tun, iproute2,
//! iputils-ping, util-linux (setpriv), strace and systemd (systemd-analyze).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const KEY: &str = "sandbox-test-key-0123456789";
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/systemd");

/// dtun under strace (trace in `trace`) and setpriv, with a /dev/net/tun of mode 0666 and a
/// runtime directory laid out as the package's mounted in the mount namespace `ip netns exec`
/// made for it (see tests/privilege.rs).
fn spawn_traced(ns: &Netns, trace: &Path, dtun_args: &[&str]) -> Proc {
    let node = ns.dir().path().join("tun");
    if !node.exists() {
        let out = Command::new("mknod")
            .arg(&node)
            .args(["c", "10", "200"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        fs::set_permissions(&node, fs::Permissions::from_mode(0o666)).unwrap();
    }
    let rundir = unit_rundir(ns.dir());
    let mut args = vec![
        "-c",
        MOUNT_UNIT,
        path_str(&node),
        &rundir,
        "strace",
        "-f",
        "-qq",
        "-o",
        path_str(trace),
        "setpriv",
    ];
    args.extend_from_slice(AS_UNIT);
    args.push(DTUN);
    args.extend_from_slice(dtun_args);
    ns.spawn("sh", &args, &[])
}

/// The traced dtun: strace's only child.
fn tracee(strace: &Proc) -> u32 {
    let pid = strace.pid();
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("strace has a child")
}

/// Stops the traced dtun with SIGTERM (strace itself would detach) and waits for both.
fn stop_traced(strace: &mut Proc, what: &str) {
    let out = Command::new("kill")
        .args(["-TERM", &tracee(strace).to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    strace.expect_success(what, Duration::from_secs(15));
}

/// (system calls, socket families) in a trace, from the exec into dtun on: setpriv's own
/// calls before it (setresuid, capset…) are not dtun's.
fn used(trace: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let text = fs::read_to_string(trace).unwrap();
    let exec = format!("execve(\"{DTUN}\"");
    let start = text.find(&exec).expect("no exec into dtun in the trace");
    let (mut calls, mut families) = (BTreeSet::new(), BTreeSet::new());
    for line in text[start..].lines() {
        let rest = line.split_once(' ').map_or("", |(_, r)| r.trim_start());
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // "<... resumed>", "+++ exited", "--- SIGTERM"
        }
        calls.insert(name.to_string());
        if name == "socket" {
            families.insert(args.split(',').next().unwrap_or_default().to_string());
        }
    }
    (calls, families)
}

/// The system calls a `SystemCallFilter=` group or name stands for.
fn expand(item: &str) -> BTreeSet<String> {
    if !item.starts_with('@') {
        return BTreeSet::from([item.to_string()]);
    }
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", item])
        .output()
        .expect("systemd-analyze (package systemd)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(expand)
        .collect()
}

/// What a unit's `SystemCallFilter=` lines allow, and its `RestrictAddressFamilies=`.
fn unit_allows(unit: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let text = fs::read_to_string(Path::new(UNITS).join(unit)).unwrap();
    let (mut allow, mut deny) = (BTreeSet::new(), BTreeSet::new());
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("SystemCallFilter=") {
            let (set, v) = match v.strip_prefix('~') {
                Some(v) => (&mut deny, v),
                None => (&mut allow, v),
            };
            set.extend(v.split_whitespace().flat_map(expand));
        } else if let Some(v) = line.strip_prefix("RestrictAddressFamilies=") {
            families.extend(v.split_whitespace().map(str::to_string));
        }
    }
    assert!(!allow.is_empty() && !families.is_empty(), "{unit}");
    (&allow - &deny, families)
}

fn check(unit: &str, trace: &Path) {
    let (calls, families) = used(trace);
    let (allowed, allowed_families) = unit_allows(unit);
    eprintln!(
        "{unit}: {} system calls used, {} allowed; families {families:?}",
        calls.len(),
        allowed.len()
    );
    assert!(calls.len() > 30 && calls.contains("ioctl"), "{calls:?}");
    let denied: Vec<_> = calls.difference(&allowed).collect();
    assert!(denied.is_empty(), "{unit} would deny {denied:?}");
    let denied: Vec<_> = families.difference(&allowed_families).collect();
    assert!(denied.is_empty(), "{unit} would refuse sockets {denied:?}");
}

#[test]
fn the_units_sandbox_allows_what_dtun_and_its_scripts_do() {
    common::need_root!();
    let topo = Topo::pair("svs");
    let (s, c) = (&topo.server, topo.client());
    let dir = topo.dir.path();
    let up = topo.dir.script(
        "up.sh",
        "#!/bin/sh\nip route add 198.51.100.0/24 dev \"$TUN\"\n",
    );
    let (strace_s, strace_c) = (dir.join("server.trace"), dir.join("client.trace"));
    let mut server = spawn_traced(s, &strace_s, &["-key", KEY, "-port", "4760", "-nat"]);
    server.wait_log("in place", UP);
    let mut client = spawn_traced(
        c,
        &strace_c,
        &[
            "-host",
            &Topo::server_ip(0),
            "-port",
            "4760",
            "-key",
            KEY,
            "-route",
            "all",
            "-up",
            path_str(&up),
        ],
    );
    client.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    let dev = only_tun(c);
    let (_, peer) = wait_p2p(c, &dev);
    assert!(
        c.ping_ok(&peer.to_string(), 3),
        "no ping through the tunnel"
    );
    assert!(c.routes().contains("198.51.100.0/24"), "{}", c.routes());
    stop_traced(&mut client, "traced client");
    stop_traced(&mut server, "traced server");
    check("dtun@.service", &strace_c);
    check("dtun-server.service", &strace_s);
}
