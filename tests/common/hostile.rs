//! Helpers of the hostile-input tests (`attack.rs`, `admission.rs`): the attack tool, a real
//! ClientHello to replay, the server's RSS and its shutdown totals.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{DTUN, Netns, Proc, Topo, assert_running, path_str, vm_rss_kib};

/// `tests/tools/attack.py`: floods, spoofing and handshake junk (see its header).
pub const ATTACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/attack.py");
/// The server's last log line, with the demultiplexer's and admission's counters.
pub const TOTALS: &str = "server totals: ";

/// Runs attack.py in `ns` with `args`.
pub fn attack_tool(ns: &Netns, args: &[&str]) -> Proc {
    let mut all = vec![ATTACK];
    all.extend_from_slice(args);
    ns.spawn("python3", &all, &[])
}

/// Catches the first datagram of a real dtun client (a ClientHello) on loopback in `ns` and
/// returns the path of its hex dump.
pub fn catch_client_hello(topo: &Topo, ns: &Netns) -> PathBuf {
    let out = topo.dir.path().join("client-hello.hex");
    let mut catcher = attack_tool(
        ns,
        &["catch-hello", "--port", "4444", "--out", path_str(&out)],
    );
    catcher.wait_log("listening on", Duration::from_secs(10));
    let client = ns.spawn(
        DTUN,
        &[
            "-host",
            "127.0.0.1",
            "-port",
            "4444",
            "-key",
            "catch-me",
            "-id",
            "hello-catch",
            "-once",
        ],
        &[],
    );
    catcher.expect_success("attack.py catch-hello", Duration::from_secs(15));
    drop(client);
    out
}

/// The server's RSS now, folded into `peak`; panics if the server has exited.
pub fn sample_rss(server: &mut Proc, peak: &mut u64) -> u64 {
    assert_running(server, "dtun server");
    let rss = vm_rss_kib(server.pid()).expect("server VmRSS");
    *peak = (*peak).max(rss);
    rss
}

/// Stops the server with SIGTERM, checks it exits 0 without a panic, and returns its log.
pub fn terminate(server: &mut Proc) -> String {
    server.signal("TERM");
    server.expect_success("server after SIGTERM", Duration::from_secs(10));
    let log = server.log();
    assert!(!log.contains("panicked"), "server panicked:\n{log}");
    log
}

/// The counters every server totals line carries.
const REQUIRED_TOTALS: [&str; 6] = [
    "unknown_peer",
    "cookies",
    "handshakes",
    "handshake_failed",
    "handshake_evicted",
    "handshake_limit",
];

/// The counters of the server's `server totals:` line at shutdown (each of
/// [`REQUIRED_TOTALS`] must be there).
pub fn server_totals(log: &str) -> BTreeMap<String, u64> {
    let line = log
        .lines()
        .find_map(|l| Some(&l[l.find(TOTALS)? + TOTALS.len()..]))
        .unwrap_or_else(|| panic!("no {TOTALS:?} line in the server log:\n{log}"));
    let totals: BTreeMap<String, u64> = line
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    for key in REQUIRED_TOTALS {
        assert!(totals.contains_key(key), "no {key} in {line:?}");
    }
    totals
}
