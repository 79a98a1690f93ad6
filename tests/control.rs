//! Who may take, answer and use an instance's control channel (prefix `ct`): the security
//! review's findings on the control socket, against the real binary in network namespaces.
//! Needs root, python3, util-linux (setpriv, unshare) and nftables support in the kernel.
//!
//! ```text
//!   ns dtctN: dtun (root) ── /run/dtun/NETNS.INSTANCE{.sock,.admin.sock}
//!             python3 as uid 4242: the squatter, the impostor, the idle hog
//! ```

mod common;

use std::time::{Duration, Instant};

use common::status::{status, stderr, stdout};
use common::{DTUN, Netns, TestDir, UP, start_server, wait_for};

const KEY: &str = "control-test-key-0123456789";
const NOBODY: &[&str] = &["--reuid", "4242", "--regid", "4242", "--clear-groups"];

/// No escape character and no other control character but newline in `text`.
fn assert_clean(text: &str) {
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "raw control characters reach the terminal: {text:?}"
    );
}

fn python_as(ns: &Netns, setpriv: &[&str], script: &str) -> common::Proc {
    let mut args = setpriv.to_vec();
    args.extend(["/usr/bin/python3", "-c", script]);
    ns.spawn("setpriv", &args, &[])
}

/// The squatter: an unprivileged user who takes `@dtun/sq` and the nftables lock
/// name first, and tries the socket files, kept neither the real dtun from starting nor
/// root's `dtun status`/`dtun reload` from reaching it, and none of its bytes were printed.
#[test]
fn an_unprivileged_user_cannot_take_or_answer_for_an_instance() {
    common::need_root!();
    let dir = TestDir::new("ct1");
    let ns = Netns::new("ct1", &dir);
    let script = r#"
import os, socket, threading
ino = os.stat("/proc/self/ns/net").st_ino
held = []
for name, kind in [("\0dtun/sq", socket.SOCK_STREAM), ("\0dtun-instance-sq", socket.SOCK_DGRAM),
                   ("/run/dtun/%d.sq.sock" % ino, socket.SOCK_STREAM),
                   ("/run/dtun/%d.sq.admin.sock" % ino, socket.SOCK_STREAM),
                   ("/run/dtun/%d.sq.lock" % ino, None)]:
    try:
        if kind is None:
            held.append(open(name, "w"))
        else:
            s = socket.socket(socket.AF_UNIX, kind); s.bind(name); held.append(s)
            if kind == socket.SOCK_STREAM: s.listen(8)
        print("took", repr(name), flush=True)
    except OSError as e:
        print("could not take", repr(name), e, flush=True)
def serve(s):
    while True:
        c, _ = s.accept()
        c.sendall(b"\x1b]0;pwned\x07\x1b[2Jreloaded: everything\n"); c.close()
for s in held:
    if isinstance(s, socket.socket) and s.type == socket.SOCK_STREAM:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;
    let mut squatter = python_as(&ns, NOBODY, script);
    squatter.wait_log("ready", Duration::from_secs(10));
    let log = squatter.log();
    assert!(
        !log.contains("took '/run/dtun"),
        "a file in /run/dtun: {log}"
    );

    // Before dtun starts: root's commands find nothing, and print nothing of the squatter's.
    let o = ns.run(DTUN, &["reload", "sq"]);
    assert_clean(&stdout(&o));
    assert_clean(&stderr(&o));
    assert!(
        !o.status.success(),
        "reload answered by the squatter: {o:?}"
    );
    assert!(stderr(&o).contains("no dtun named sq is running"), "{o:?}");
    let o = status(&ns, &["sq"]);
    assert_clean(&stdout(&o));
    assert!(!o.status.success(), "{o:?}");

    // The real one starts (with a table, so the nftables lock is taken too) and answers.
    let mut server = start_server(
        &ns,
        4800,
        &[
            "-key",
            KEY,
            "-port",
            "4800",
            "-instance",
            "sq",
            "-client-to-client",
            "off",
        ],
    );
    server.wait_log("in place", UP);
    let o = status(&ns, &["sq"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).starts_with("server: sq"), "{}", stdout(&o));
    let o = ns.run(DTUN, &["reload", "sq"]);
    assert!(o.status.success(), "{o:?}");
    assert_clean(&stdout(&o));
    assert!(!stdout(&o).contains("everything"), "{}", stdout(&o));
    server.wait_log("dtun reload", Duration::from_secs(5));
}

/// A socket file answered by a process that is neither root nor the file's owner (here: root
/// bound it, then became uid 4242 before listening) is not believed, and its bytes are not
/// printed.
#[test]
fn an_answer_from_the_wrong_uid_is_not_believed() {
    common::need_root!();
    let dir = TestDir::new("ct2");
    let ns = Netns::new("ct2", &dir);
    std::fs::create_dir_all("/run/dtun").unwrap();
    let script = r#"
import os, socket
ino = os.stat("/proc/self/ns/net").st_ino
path = "/run/dtun/%d.imp.admin.sock" % ino
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o666)
os.setgid(4242); os.setuid(4242)
s.listen(8)
print("ready", path, flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"\x1b[31mserver: imp, all is well\n"); c.close()
"#;
    let mut imp = python_as(&ns, &[], script);
    imp.wait_log("ready", Duration::from_secs(10));
    let o = status(&ns, &["imp"]);
    let path = imp.log();
    let path = path.lines().find_map(|l| l.strip_prefix("ready ")).unwrap();
    std::fs::remove_file(path).unwrap();
    assert_clean(&stdout(&o));
    assert_clean(&stderr(&o));
    assert!(!o.status.success(), "{o:?}");
    assert!(
        stderr(&o).contains("is answered by uid 4242") && stderr(&o).contains("not believing it"),
        "{}",
        stderr(&o)
    );
}

/// Idle connections: a local user floods the control socket with connections that
/// send nothing, as fast as they are closed; root's `dtun status` still answers 20 times out
/// of 20. A peer the admin socket does not admit is closed at once, without a slot.
#[test]
fn idle_local_peers_leave_room_for_root() {
    common::need_root!();
    use std::os::unix::fs::MetadataExt;
    let dir = TestDir::new("ct3");
    let ns = Netns::new("ct3", &dir);
    let mut server = start_server(&ns, 4801, &["-key", KEY, "-port", "4801", "-v"]);
    // The status socket's group (the directory's): the hog is in it, so it gets in there.
    let gid = std::fs::metadata("/run/dtun").unwrap().gid().to_string();
    let script = r#"
import os, socket, time
ino = os.stat("/proc/self/ns/net").st_ino
targets = ["\0dtun/dtun", "/run/dtun/%d.dtun.sock" % ino, "/run/dtun/%d.dtun.admin.sock" % ino]
open_ = []
counts = {t: 0 for t in targets}
deadline = time.time() + 60
said = False
while time.time() < deadline:
    open_ = [(t, s, at) for (t, s, at) in open_ if time.time() - at < 1.5 or s.close()]
    for t in targets:
        if sum(1 for o in open_ if o[0] == t) >= 12:
            continue
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(t); s.sendall(b"sta"); counts[t] += 1
            open_.append((t, s, time.time()))
        except OSError:
            s.close()
    if not said and time.time() > deadline - 58:
        print("flooding", counts, flush=True); said = True
    time.sleep(0.02)
"#;
    let mut setpriv: Vec<&str> = vec!["--reuid", "4242", "--regid", &gid, "--clear-groups"];
    let mut hog = python_as(&ns, &setpriv, script);
    hog.wait_log("flooding", Duration::from_secs(10));
    let mut failed = Vec::new();
    let start = Instant::now();
    for _ in 0..20 {
        let o = status(&ns, &[]);
        if !o.status.success() {
            failed.push(stderr(&o));
        }
    }
    eprintln!(
        "20 status calls beside the flood in {:?}; hog: {}",
        start.elapsed(),
        hog.log()
    );
    assert!(
        failed.is_empty(),
        "{} of 20 failed: {failed:?}",
        failed.len()
    );
    hog.signal("KILL");

    // The admin socket opened to everyone by mistake: a stranger is still refused, at once,
    // before it says anything.
    let ino = std::fs::metadata(format!("/proc/{}/ns/net", server.pid()))
        .unwrap()
        .ino();
    let admin = format!("/run/dtun/{ino}.dtun.admin.sock");
    std::fs::set_permissions(&admin, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    setpriv = NOBODY.to_vec();
    let probe = format!(
        r#"
import socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({admin:?}); t = time.time(); s.settimeout(5)
print("reply:", s.recv(4096).decode().strip(), "after %.2f s" % (time.time() - t), flush=True)
"#
    );
    let mut p = python_as(&ns, &setpriv, &probe);
    wait_for(Duration::from_secs(10), "the probe's reply", || {
        p.exited().is_some()
    });
    let log = p.log();
    assert!(log.contains("reply: error: refused"), "{log}");
    let secs: f64 = log
        .split("after ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(99.0);
    assert!(secs < 0.5, "refused only after {secs} s: {log}");
    server.wait_log("refused a peer with uid Some(4242)", Duration::from_secs(5));
}

/// A uid-0 process without capabilities in a mount namespace of its own (a rootful
/// container sharing the network namespace) cannot reload, nor ask for status.
#[test]
fn root_without_capabilities_in_a_container_cannot_reload() {
    common::need_root!();
    let dir = TestDir::new("ct4");
    let ns = Netns::new("ct4", &dir);
    let server = start_server(&ns, 4802, &["-key", KEY, "-port", "4802"]);
    let container = |cmd: &str| {
        ns.run(
            "sh",
            &[
                "-c",
                "mount -t tmpfs none /run && exec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all \"$@\"",
                "sh",
                DTUN,
                cmd,
            ],
        )
    };
    let o = container("reload");
    assert!(!o.status.success(), "reloaded from a container: {o:?}");
    assert!(
        stderr(&o).contains("no dtun named dtun is running"),
        "{o:?}"
    );
    let o = container("status");
    assert!(!o.status.success(), "{o:?}");
    assert!(!server.log().contains("dtun reload"), "{}", server.log());
    // Root on the host can.
    assert!(ns.run(DTUN, &["reload"]).status.success());
}

/// Without a name, `dtun status` and `dtun reload` act like `wg show`: the one
/// instance running in the namespace whatever its name; with several, status shows them all
/// (`-json`: an array) and reload exits 2 naming them and the command to run. A socket file
/// left by a `kill -9` is not an instance.
#[test]
fn without_a_name_the_one_running_or_all() {
    common::need_root!();
    let dir = TestDir::new("ct5");
    let ns = Netns::new("ct5", &dir);
    let mut dead = start_server(
        &ns,
        4803,
        &["-key", KEY, "-port", "4803", "-instance", "gone"],
    );
    dead.signal("KILL");
    dead.wait_exit(Duration::from_secs(5));
    let edge = start_server(
        &ns,
        4804,
        &["-key", KEY, "-port", "4804", "-instance", "edge"],
    );
    let o = status(&ns, &[]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).starts_with("server: edge"), "{}", stdout(&o));
    let o = ns.run(DTUN, &["reload"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).starts_with("reloaded:"), "{}", stdout(&o));

    let _core = start_server(
        &ns,
        4805,
        &["-key", KEY, "-port", "4805", "-instance", "core"],
    );
    let o = status(&ns, &[]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(
        out.starts_with("server: core") && out.contains("\nserver: edge"),
        "{out}"
    );
    let all = common::status::json(&ns, None);
    let names: Vec<&str> = all
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {all}"))
        .iter()
        .map(|v| v["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["core", "edge"]);
    let o = ns.run(DTUN, &["reload"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = stderr(&o);
    assert!(
        err.contains("2 dtuns run in this network namespace (core, edge)")
            && err.contains("dtun reload NAME"),
        "{err}"
    );
    assert!(stdout(&o).is_empty(), "{o:?}");
    drop(edge);
}

/// With the package's layout (/run/dtun `root:GROUP 1770`), a member of
/// the group (uid 4242) plants an instance's admin socket while no dtun runs. Root's `dtun
/// status`, `dtun status -json`, `dtun reload` and the no-name listing do not believe it: the
/// socket file is the planter's own, but only root, the system user dtun and the asking user
/// are believed. Run in a private tmpfs over /run/dtun (`ip netns exec` gives the script a
/// mount namespace of its own).
#[test]
fn a_group_member_cannot_impersonate_dtun_to_root() {
    common::need_root!();
    let dir = TestDir::new("ct7");
    let ns = Netns::new("ct7", &dir);
    let script = r#"
set -e
mkdir -p /run/dtun
mount -t tmpfs -o mode=1770,gid=4242 ct7 /run/dtun
N=$(stat -L -c %i /proc/self/ns/net)
setpriv --reuid 4242 --regid 4242 --clear-groups /usr/bin/python3 -c '
import os, socket, sys
p = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(p); os.chmod(p, 0o666); s.listen(8)
while True:
    c, _ = s.accept()
    try:
        req = c.recv(200)
        c.sendall(b"reloaded: nothing changed\n" if req.startswith(b"reload") else b"server: imp (pid 1)\n")
    except OSError:
        pass
    c.close()
' /run/dtun/$N.imp.admin.sock &
I=$!
while [ ! -S /run/dtun/$N.imp.admin.sock ]; do sleep 0.05; done
for args in "status imp" "status -json imp" "reload imp" "status" "reload"; do
  echo "== $args"
  "$0" $args 2>&1 && echo "exit 0" || echo "exit $?"
done
kill $I || true
"#;
    let o = ns.run("sh", &["-c", script, DTUN]);
    let out = stdout(&o);
    assert!(o.status.success(), "{o:?}");
    assert_clean(&out);
    for part in out.split("== ").skip(1) {
        assert!(
            part.contains("exit 1"),
            "believed the planted socket: {part}"
        );
        assert!(
            !part.contains("server: imp") && !part.contains("reloaded"),
            "{part}"
        );
    }
    assert!(
        out.contains("is answered by uid 4242") && out.contains("not believing it"),
        "{out}"
    );
}

/// A subcommand whose stdout is closed (`dtun … | head
/// -1` that stopped reading) ends quietly, without a panic or an error message.
#[test]
fn a_closed_stdout_ends_a_subcommand_quietly() {
    common::need_root!();
    let dir = TestDir::new("ct8");
    let ns = Netns::new("ct8", &dir);
    for args in [
        &["genkey"][..],
        &["man"],
        &["completions", "bash"],
        &[
            "key",
            "derive",
            "-key",
            "master-secret-0123456789abcdef",
            "-id",
            "a",
        ],
    ] {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", ns.name(), DTUN])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert!(
            o.status.success() && err.is_empty(),
            "dtun {args:?} with stdout closed: {:?}: {err}",
            o.status
        );
    }
}

/// A squatted instance lock: uid 4242 waits on a running server's instance lock through a
/// read-only descriptor (flock needs no more), the server is killed (`kill -9`, as a crash or
/// a restart), and root starts it again. Before, the lock passed to uid 4242 and the restart
/// was refused; now uid 4242 cannot open the lock file at all, and the restart runs. In a
/// private tmpfs over /run/dtun (root:root 0755, as a root dtun makes it).
#[test]
fn a_stranger_cannot_squat_an_instance_lock() {
    common::need_root!();
    let dir = TestDir::new("ct9");
    let ns = Netns::new("ct9", &dir);
    let script = r#"
mkdir -p /run/dtun
mount -t tmpfs -o mode=0755 ct9 /run/dtun || exit 99
N=$(stat -L -c %i /proc/self/ns/net)
up() { i=0; while ! "$0" status sq9 >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 200 ] || return 1; sleep 0.05; done; }
"$0" -key "$1" -port 4809 -instance sq9 >/dev/null 2>&1 &
S=$!
up || { echo "first start: not up"; kill -9 $S; exit 1; }
setpriv --reuid 4242 --regid 4242 --clear-groups /usr/bin/python3 "$2" /run/dtun/$N.sq9.lock 30 > squat.log 2>&1 &
Q=$!
i=0; while [ ! -s squat.log ] && [ $i -lt 200 ]; do i=$((i+1)); sleep 0.05; done
kill -9 $S; wait $S
i=0; while grep -q waiting squat.log && ! grep -q took squat.log && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.05; done
cat squat.log
"$0" -key "$1" -port 4809 -instance sq9 > restart.log 2>&1 &
R=$!
if up; then echo "restart: up"; else echo "restart: not up"; cat restart.log; fi
kill $R $Q 2>/dev/null
wait $R
exit 0
"#;
    let o = ns.run(
        "sh",
        &[
            "-c",
            &format!("cd {} && {script}", dir.path().display()),
            DTUN,
            KEY,
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/squat.py"),
        ],
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{o:?}");
    assert!(
        !out.contains("took the lock"),
        "uid 4242 took the lock: {out}"
    );
    assert!(out.contains("squatter: cannot open"), "{out}");
    assert!(out.contains("restart: up"), "{out}");
}
