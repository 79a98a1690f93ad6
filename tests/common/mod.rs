//! Test harness for end-to-end tests: network namespaces joined by veth pairs, processes run
//! inside them with their output in per-test log files, and polling helpers with deadlines.
//!
//! Every test builds its own namespaces, named uniquely per process and per call, so tests run
//! in parallel threads and several test binaries may run at once. Everything made here is torn
//! down by `Drop`, also when the test panics; then the logs of its processes and the addresses
//! and routes of its namespaces are printed, so a failure shows what happened.
//!
//! `Topo::pair`:
//!
//! ```text
//!  ┌──── ns "server" ─────┐              ┌──── ns "client" ─────┐
//!  │ lo                   │              │ lo                   │
//!  │ eth0 172.31.250.1/24 ├── veth ──────┤ eth0 172.31.250.2/24 │
//!  │ (dtun server, TUNs)  │              │ (dtun client, TUN)   │
//!  └──────────────────────┘              └──────────────────────┘
//! ```
//!
//! `Topo::star(n)`: one veth pair per client; client `i` reaches the server on its own subnet.
//!
//! ```text
//!                 ┌──── ns "server" ──────┐
//!   client 0 ─────┤ eth0 172.31.250.1/24  │   client i: eth0 172.31.(250+i).2/24
//!   client 1 ─────┤ eth1 172.31.251.1/24  │
//!   client i ─────┤ ethi 172.31.(250+i).1 │
//!                 └───────────────────────┘
//! ```
//!
//! Every test that builds namespaces starts with `common::need_root!()` (`root.rs`): without
//! root and /dev/net/tun it skips, or fails under `CI=true`.
//!
//! Nothing here runs in, or sends to, the root namespace: the `ip` commands issued from the root
//! namespace only create, configure (`ip -n`) and delete the test's own namespaces.
#![allow(dead_code)]

pub mod hostile;
pub mod ipv6;
pub mod roam;
pub mod root;
pub mod routing;
pub mod status;

pub(crate) use root::need_root;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Distinguishes the namespaces, directories and logs made by one test process.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// How many lines of `log` contain every one of `needles`.
pub fn lines_with(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// Polls `cond` every 50 ms until it holds; panics with `what` once `timeout` has passed.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command in the root namespace (only `ip netns add/del` and `ip -n NS ...`), panicking
/// with its stderr when it fails.
fn check(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A per-test temporary directory, removed when the last holder drops it.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> Arc<TestDir> {
        let path = std::env::temp_dir().join(format!(
            "dtun-e2e-{tag}-{}-{}",
            std::process::id(),
            next_id()
        ));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Arc::new(TestDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes an executable file (a script) into the directory and returns its path.
    pub fn script(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Writes a plain file into the directory and returns its path.
    pub fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.path.join(name);
        fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// An owned network namespace, deleted on drop.
pub struct Netns {
    name: String,
    dir: Arc<TestDir>,
}

impl Netns {
    /// Creates a namespace named `dt{tag}{pid%100000}n{counter}` with loopback up.
    pub fn new(tag: &str, dir: &Arc<TestDir>) -> Netns {
        root::assert_gated();
        let name = format!("dt{tag}{}n{}", std::process::id() % 100_000, next_id());
        check("ip", &["netns", "add", &name]);
        let ns = Netns {
            name,
            dir: dir.clone(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Arc<TestDir> {
        &self.dir
    }

    /// `ip -n NS args...`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&check("ip", &all).stdout).into_owned()
    }

    /// Runs `program args` inside the namespace and waits for it.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// Runs a `sh -c` script inside the namespace and waits for it.
    pub fn sh(&self, script: &str) -> Output {
        self.run("sh", &["-c", script])
    }

    /// Starts building a background process inside the namespace.
    pub fn command(&self, program: &str) -> Spawn<'_> {
        Spawn {
            ns: self,
            program: program.to_string(),
            args: Vec::new(),
            envs: Vec::new(),
            stdin_piped: false,
            stdout_apart: false,
        }
    }

    /// Starts `program args` in the background with extra environment `envs`; stdout and
    /// stderr go to one log file.
    pub fn spawn(&self, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        self.command(program).args(args).envs(envs).spawn()
    }

    /// `ping -c count -W 1 -i 0.2 addr` succeeds (every reply may not be needed: ping exits 0
    /// when at least one reply came back).
    pub fn ping_ok(&self, addr: &str, count: u32) -> bool {
        let count = count.to_string();
        self.run(
            "ping",
            &["-n", "-q", "-c", &count, "-W", "1", "-i", "0.2", addr],
        )
        .status
        .success()
    }

    /// Like [`Netns::ping_ok`] (3 pings) from the source address `src`, one of this
    /// namespace's own (the forged-source tests give the TUN a second address).
    pub fn ping_from_ok(&self, src: &str, addr: &str) -> bool {
        self.run(
            "ping",
            &["-c", "3", "-i", "0.2", "-W", "1", "-I", src, addr],
        )
        .status
        .success()
    }

    /// Pings `addr` `count` times (0.2 s apart, 1 s reply timeout) and returns
    /// (transmitted, received).
    pub fn ping_stats(&self, addr: &str, count: u32) -> (u32, u32) {
        let count = count.to_string();
        let out = self.run(
            "ping",
            &["-n", "-q", "-c", &count, "-W", "1", "-i", "0.2", addr],
        );
        parse_ping_stats(&String::from_utf8_lossy(&out.stdout))
            .unwrap_or_else(|| panic!("no ping statistics: {out:?}"))
    }

    /// Names of the TUN devices in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show", "type", "tun"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// Interface index of `name`, if it exists.
    pub fn ifindex(&self, name: &str) -> Option<u32> {
        let out = self.run("ip", &["-o", "link", "show", "dev", name]);
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout)
            .split(':')
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// `ip route` (IPv4): the main table, then the routes of a dtun server's LAN table.
    pub fn routes(&self) -> String {
        self.ip(&["route"]) + &self.lan_routes("-4")
    }

    /// [`Netns::routes`] for IPv6.
    pub fn routes6(&self) -> String {
        self.ip(&["-6", "route"]) + &self.lan_routes("-6")
    }

    /// The routes of a server's table of its clients' LANs (`dtun_linux::routes::LAN_TABLE`), one
    /// family; the table exists only while it holds a route.
    fn lan_routes(&self, family: &str) -> String {
        let table = format!(" table {} ", dtun_linux::routes::LAN_TABLE);
        self.ip(&[family, "route", "show", "table", "all"])
            .lines()
            .filter(|l| l.contains(&table))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// `ip -o addr show dev DEV`, empty when the device does not exist.
    pub fn addrs(&self, dev: &str) -> String {
        let out = self.run("ip", &["-o", "addr", "show", "dev", dev]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The point-to-point IPv4 address of `dev` as (local, peer), if it has one.
    pub fn p2p(&self, dev: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let out = self.run("ip", &["-o", "-4", "addr", "show", "dev", dev]);
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "inet")?;
        let local = words.get(at + 1)?.parse().ok()?;
        if words.get(at + 2) != Some(&"peer") {
            return None;
        }
        let peer = words.get(at + 3)?.split('/').next()?.parse().ok()?;
        Some((local, peer))
    }

    /// Some UDP socket in the namespace is bound to `port`.
    pub fn udp_listening(&self, port: u16) -> bool {
        let out = self.run("ss", &["-H", "-u", "-l", "-n"]);
        let suffix = format!(":{port}");
        String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            l.split_whitespace()
                .nth(3)
                .is_some_and(|local| local.ends_with(&suffix))
        })
    }

    /// Addresses and routes, for failure reports.
    fn describe(&self) -> String {
        let a = self.run("ip", &["-br", "addr"]);
        let r = self.run("ip", &["route", "show", "table", "all"]);
        format!(
            "--- namespace {} ---\n{}{}",
            self.name,
            String::from_utf8_lossy(&a.stdout),
            String::from_utf8_lossy(&r.stdout)
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Joins `a` (interface `a_if`, address `a_addr`) and `b` (`b_if`, `b_addr`) with a veth pair
/// made inside `a`, so the names only need to be unique within each namespace.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A server namespace and its client namespaces, with the test's temp directory.
pub struct Topo {
    pub server: Netns,
    pub clients: Vec<Netns>,
    pub dir: Arc<TestDir>,
}

impl Topo {
    /// Two namespaces joined by one veth pair: server 172.31.250.1/24, client 172.31.250.2/24.
    pub fn pair(tag: &str) -> Topo {
        Topo::star(tag, 1)
    }

    /// One server namespace and `n` client namespaces, one veth pair each: client `i` is
    /// 172.31.(250+i).2/24 and sees the server as 172.31.(250+i).1.
    pub fn star(tag: &str, n: usize) -> Topo {
        assert!((1..=5).contains(&n), "star supports 1 to 5 clients");
        let nets: Vec<u8> = (0..n).map(|i| 250 + i as u8).collect();
        Topo::on_nets(tag, &nets)
    }

    /// One server namespace and a client namespace per entry of `nets`: client `i` is
    /// 172.31.N.2/24 on its eth0, the server 172.31.N.1/24 on its eth`i` (a test's own
    /// subnets, so tests that share none can run side by side in one kernel's view).
    pub fn on_nets(tag: &str, nets: &[u8]) -> Topo {
        let dir = TestDir::new(tag);
        let server = Netns::new(&format!("{tag}s"), &dir);
        let mut topo = Topo {
            server,
            clients: Vec::new(),
            dir,
        };
        for (i, net) in nets.iter().enumerate() {
            let client = Netns::new(&format!("{tag}c"), &topo.dir);
            veth(
                &topo.server,
                &format!("eth{i}"),
                &format!("172.31.{net}.1/24"),
                &client,
                "eth0",
                &format!("172.31.{net}.2/24"),
            );
            topo.clients.push(client);
        }
        topo
    }

    /// The first (or only) client namespace.
    pub fn client(&self) -> &Netns {
        &self.clients[0]
    }

    /// The server's address as seen from client `i`.
    pub fn server_ip(i: usize) -> String {
        format!("172.31.{}.1", 250 + i)
    }

    /// Client `i`'s own address.
    pub fn client_ip(i: usize) -> String {
        format!("172.31.{}.2", 250 + i)
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut report = self.server.describe();
            for c in &self.clients {
                report.push_str(&c.describe());
            }
            eprintln!("{report}");
        }
    }
}

/// Builder for a background process in a namespace.
pub struct Spawn<'a> {
    ns: &'a Netns,
    program: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    stdin_piped: bool,
    stdout_apart: bool,
}

impl Spawn<'_> {
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    pub fn envs(mut self, envs: &[(&str, &str)]) -> Self {
        for (k, v) in envs {
            self.envs.push((k.to_string(), v.to_string()));
        }
        self
    }

    /// Keep a pipe to the process's stdin (otherwise stdin is /dev/null).
    pub fn stdin_piped(mut self) -> Self {
        self.stdin_piped = true;
        self
    }

    /// Write stdout to its own file (see `Proc::stdout_bytes`); stderr stays in the log.
    pub fn stdout_apart(mut self) -> Self {
        self.stdout_apart = true;
        self
    }

    pub fn spawn(self) -> Proc {
        let base = Path::new(&self.program)
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = format!("{}-{}-{}", self.ns.name, base, next_id());
        let dir = self.ns.dir.path();
        let log_path = dir.join(format!("{label}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let out_path = self
            .stdout_apart
            .then(|| dir.join(format!("{label}.stdout")));
        let stdout = match &out_path {
            Some(p) => File::create(p).unwrap(),
            None => log.try_clone().unwrap(),
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name, &self.program])
            .args(&self.args)
            // A key in the test runner's environment must never leak into a test.
            .env_remove("DTUN_KEY")
            // Log levels come from the test's flags (-v), not from the runner's RUST_LOG.
            .env_remove("RUST_LOG")
            .stdin(if self.stdin_piped {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(stdout)
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} in {}: {e}", self.program, self.ns.name));
        let stdin = child.stdin.take();
        Proc {
            label,
            command: format!("{} {}", self.program, self.args.join(" ")),
            child,
            log_path,
            out_path,
            stdin,
            _dir: self.ns.dir.clone(),
        }
    }
}

/// A process running inside a namespace. `ip netns exec` execs the program, so the pid is the
/// program's own. Dropping it stops the process (SIGTERM, then SIGKILL after 5 s); when the
/// test is failing its log is printed.
pub struct Proc {
    label: String,
    command: String,
    child: Child,
    log_path: PathBuf,
    out_path: Option<PathBuf>,
    stdin: Option<ChildStdin>,
    /// Keeps the log directory alive as long as the process.
    _dir: Arc<TestDir>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stdout and stderr (only stderr with `stdout_apart`) so far, as text.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// stdout so far, as bytes, for a process started with `stdout_apart`.
    pub fn stdout_bytes(&self) -> Vec<u8> {
        let path = self
            .out_path
            .as_ref()
            .expect("process not started with stdout_apart");
        fs::read(path).unwrap_or_default()
    }

    /// Writes `bytes` to the process's stdin in one write (started with `stdin_piped`).
    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let stdin = self
            .stdin
            .as_mut()
            .expect("process not started with stdin_piped");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Sends a signal by name (`TERM`, `KILL`, `INT`, ...) to this process only.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the process to exit and asserts that it exited 0; panics with
    /// its log otherwise.
    pub fn expect_success(&mut self, what: &str, timeout: Duration) -> ExitStatus {
        let status = self.wait_exit(timeout).unwrap_or_else(|| {
            panic!(
                "{what} still running after {timeout:?}; log:\n{}",
                self.log()
            )
        });
        assert!(
            status.success(),
            "{what} exited with {status}; log:\n{}",
            self.log()
        );
        status
    }

    /// Waits until the log contains `needle`; panics on timeout or if the process exits first.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Some(status) = self.exited() {
                // It may have written the line just before exiting.
                if self.log().contains(needle) {
                    return;
                }
                panic!(
                    "{} exited ({status}) before logging {needle:?}; log:\n{}",
                    self.label,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {} to log {needle:?}; log:\n{}",
                    self.label,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        self.signal("TERM");
        if let Some(status) = self.wait_exit(grace) {
            return status;
        }
        let _ = self.child.kill();
        self.child.wait().expect("wait after SIGKILL")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Closing stdin first lets tools that stop on EOF (openssl) end by themselves.
        drop(self.stdin.take());
        let status = self.stop(Duration::from_secs(5));
        if std::thread::panicking() {
            let mut text = format!(
                "===== {} ({}) exit {status} =====\n",
                self.label, self.command
            );
            let log = self.log();
            let tail = log.len().saturating_sub(64 * 1024);
            text.push_str(log.get(tail..).unwrap_or(&log));
            if self.out_path.is_some() {
                text.push_str("----- stdout -----\n");
                text.push_str(&String::from_utf8_lossy(&self.stdout_bytes()));
            }
            eprintln!("{text}");
        }
    }
}

/// A script that dumps the environment it was started with (not the shell's, which adds PWD
/// and friends) to `NAME.env` (a server's: the last device's wins); returns (script, dump
/// file).
pub fn env_dump(dir: &TestDir, name: &str) -> (PathBuf, PathBuf) {
    let out = dir.path().join(format!("{name}.env"));
    let script = dir.script(
        &format!("{name}.sh"),
        &format!(
            "#!/bin/sh\ntr '\\0' '\\n' < /proc/$$/environ > '{0}.tmp' && mv '{0}.tmp' '{0}'\n",
            out.display()
        ),
    );
    (script, out)
}

/// Parses `KEY=VALUE` lines into a map (for up-script environment dumps).
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// Reads (transmitted, received) from ping's summary line.
pub fn parse_ping_stats(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok());
    Some((nums.next()?, nums.next()?))
}

// ---- Driving the dtun binary (shared by every end-to-end test file) ----

/// The binary under test.
pub const DTUN: &str = env!("CARGO_BIN_EXE_dtun");
/// Deadline for a tunnel to come up (handshake, address exchange, devices, up script).
pub const UP: Duration = Duration::from_secs(20);

/// What dist/systemd's units grant, as `setpriv` arguments: uid/gid 4242 (no passwd entry
/// needed), no groups, CAP_NET_ADMIN only (ambient, so it survives the exec into dtun and
/// dtun's into its scripts).
pub const AS_UNIT: &[&str] = &[
    "--reuid",
    "4242",
    "--regid",
    "4242",
    "--clear-groups",
    "--inh-caps=-all,+net_admin",
    "--ambient-caps=-all,+net_admin",
    "--bounding-set=-all,+net_admin",
];

/// A runtime directory for dtun under [`AS_UNIT`], laid out as the package's tmpfiles.d entry
/// lays out /run/dtun (`root:dtun 1770`, with 4242 for dtun): `DIR/run-dtun`, made once. The
/// tests mount it over /run/dtun in the mount namespace `ip netns exec` gives each command
/// (nothing shows outside); the host's /run/dtun is made (root's, 0755, as a root dtun makes
/// it) only when missing, as a mount point.
pub fn unit_rundir(dir: &TestDir) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join("run-dtun");
    if !path.exists() {
        fs::create_dir(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(0), Some(4242)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o1770)).unwrap();
    }
    if !Path::new("/run/dtun").exists() {
        let _ = fs::create_dir("/run/dtun");
    }
    path_str(&path).to_string()
}

/// The `sh -c` script that mounts the TUN node `$0` over /dev/net/tun and the directory `$1`
/// over /run/dtun, then runs the rest of its arguments.
pub const MOUNT_UNIT: &str =
    "mount --bind \"$0\" /dev/net/tun && mount --bind \"$1\" /run/dtun && shift && exec \"$@\"";

/// Panics with the process's log if it has exited.
pub fn assert_running(p: &mut Proc, what: &str) {
    if let Some(status) = p.exited() {
        panic!("{what} exited early ({status}); log:\n{}", p.log());
    }
}

/// Starts a dtun server in `ns` and waits until its UDP port is bound.
pub fn start_server(ns: &Netns, port: u16, args: &[&str]) -> Proc {
    let mut p = ns.spawn(DTUN, args, &[]);
    wait_for(UP, &format!("server listening on UDP port {port}"), || {
        assert_running(&mut p, "dtun server");
        ns.udp_listening(port)
    });
    p
}

/// Starts a dtun client in `ns` and waits until it logs that the tunnel is up.
pub fn start_client(ns: &Netns, args: &[&str]) -> Proc {
    start_client_env(ns, args, &[])
}

/// Like [`start_client`], with extra environment variables.
pub fn start_client_env(ns: &Netns, args: &[&str], envs: &[(&str, &str)]) -> Proc {
    let mut p = ns.spawn(DTUN, args, envs);
    p.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    p
}

/// Spawns a dtun client in `ns` for server `server_ip` with `id`, `key` and `-keepalive
/// keepalive`, plus `extra` flags; does not wait for its tunnel.
pub fn spawn_client(
    ns: &Netns,
    server_ip: &str,
    id: &str,
    key: &str,
    keepalive: &str,
    extra: &[&str],
) -> Proc {
    let mut args = vec![
        "-host",
        server_ip,
        "-id",
        id,
        "-key",
        key,
        "-keepalive",
        keepalive,
    ];
    args.extend_from_slice(extra);
    ns.spawn(DTUN, &args, &[])
}

/// Waits until `ns` has exactly one TUN device and returns its name.
pub fn only_tun(ns: &Netns) -> String {
    let mut links = Vec::new();
    wait_for(UP, &format!("exactly one TUN in {}", ns.name()), || {
        links = ns.links();
        links.len() == 1
    });
    links.remove(0)
}

/// Waits until `dev` in `ns` has a point-to-point address and returns (local, peer).
pub fn wait_p2p(ns: &Netns, dev: &str) -> (Ipv4Addr, Ipv4Addr) {
    let mut got = None;
    wait_for(UP, &format!("point-to-point address on {dev}"), || {
        got = ns.p2p(dev);
        got.is_some()
    });
    got.expect("point-to-point address")
}

/// Waits until a client's tunnel is up, the server routes `peernet` through it and a ping
/// crosses it; returns the client's TUN name and its (local, peer) addresses.
pub fn wait_peernet_up(
    client: &Netns,
    server: &Netns,
    peernet: &str,
) -> (String, Ipv4Addr, Ipv4Addr) {
    let cdev = only_tun(client);
    let (local, peer) = wait_p2p(client, &cdev);
    let sdev = only_tun(server);
    let want = format!("{peernet} via {local} dev {sdev}");
    wait_for(UP, &format!("server route `{want}`"), || {
        server.routes().contains(&want)
    });
    assert!(
        client.ping_ok(&peer.to_string(), 2),
        "no ping through the tunnel to {peer}"
    );
    (cdev, local, peer)
}

/// A path as the &str a command line takes.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---- Process and kernel figures (appended for the hostile-input test) ----

impl Netns {
    /// The namespace's UDP counters from /proc/net/snmp (`InDatagrams`, `RcvbufErrors`, ...).
    pub fn udp_counters(&self) -> BTreeMap<String, u64> {
        let out = self.run("cat", &["/proc/net/snmp"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut rows = text.lines().filter(|l| l.starts_with("Udp: "));
        let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
            panic!("no Udp lines in /proc/net/snmp of {}:\n{text}", self.name);
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` in /proc/PID/status), if it is running.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Rules for `nft -f` dropping one UDP datagram in ten, each way, with counters (table `inet t`).
pub const LOSSY_NFT: &str = "\
table inet t {
    chain in {
        type filter hook input priority 0; policy accept;
        meta l4proto udp numgen random mod 10 0 counter drop
    }
    chain out {
        type filter hook output priority 0; policy accept;
        meta l4proto udp numgen random mod 10 0 counter drop
    }
}
";
