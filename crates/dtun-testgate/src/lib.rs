//! Test-only: the one gate of every dtun test that needs root, unit or end-to-end:
//! [`need_root!`] as its first line.
//!
//! Without what the end-to-end tests need (euid 0 with CAP_SYS_ADMIN and CAP_NET_ADMIN,
//! /dev/net/tun, `ip` from iproute2), a test run by hand skips: it prints one line
//! `SKIPPED <test>: ...` to the real stderr (libtest's capture would hide it) and returns. With
//! `CI=true` a missing piece is a failure, never a skip, so CI cannot go green on a machine
//! that ran nothing.
//!
//! `scripts/test.sh` sets `DTUN_TEST_ROOT_LOG` to a file; each gated test appends `ran NAME`
//! or `skipped NAME` to it, which gives the "root tests run: N, skipped: M" line.
//!
//! A test that needs root but forgot the gate: as root, [`assert_gated`] in the fixtures
//! (tests/common's `Netns::new`, the `unshare` helpers) fails it at once; as any other user it fails on the
//! first thing root would have done; `scripts/test.sh` runs the test binaries as uid 65534 to
//! see that every test there either passes or skips.

use std::cell::Cell;
use std::io::Write;
use std::path::Path;

/// Returns from the calling test (after printing `SKIPPED <test>: ...`) when this process
/// cannot run tests that need root; panics instead when `CI=true`.
#[macro_export]
macro_rules! need_root {
    () => {
        if !$crate::gate() {
            return;
        }
    };
}

/// The skip line's text after the test's name.
pub const SKIP_REASON: &str = "needs root and /dev/net/tun (run as root, or scripts/test.sh)";

/// The capabilities of the effective set the end-to-end tests use: CAP_NET_ADMIN (12) for
/// links, addresses, routes and nftables, CAP_SYS_ADMIN (21) for `ip netns add` and `unshare`.
const CAPS: [(u32, &str); 2] = [(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN")];

thread_local! {
    /// This test's thread went through [`gate`] and may build namespaces.
    static GATED: Cell<bool> = const { Cell::new(false) };
}

/// What is missing for tests that need root, or `None` when nothing is.
pub fn missing() -> Option<String> {
    let mut missing = Vec::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    // Uid: real, effective, saved, filesystem.
    let euid = field("Uid:").split_whitespace().nth(1).map(str::to_string);
    if euid.as_deref() != Some("0") {
        missing.push(format!(
            "root (euid is {})",
            euid.as_deref().unwrap_or("unknown")
        ));
    } else {
        let caps = u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(0);
        for (bit, name) in CAPS {
            if caps & (1 << bit) == 0 {
                missing.push(format!("{name} (root without it: a container?)"));
            }
        }
    }
    if !is_char_device(Path::new("/dev/net/tun")) {
        missing.push("/dev/net/tun".to_string());
    }
    if !on_path("ip") {
        missing.push("`ip` (iproute2)".to_string());
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn is_char_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The gate behind [`need_root!`]: `true` when the test may go on. Skipping prints the one
/// `SKIPPED` line; with `CI=true` it panics with what is missing and what to do.
pub fn gate() -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("an unnamed test")
        .to_string();
    let Some(missing) = missing() else {
        GATED.with(|g| g.set(true));
        record("ran", &test);
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        panic!(
            "{test} needs root and /dev/net/tun, and CI=true does not allow skipping it; \
             missing: {missing}. Run the suite as root on a machine with TUN support \
             (scripts/test.sh), or unset CI to let root tests skip."
        );
    }
    // One write to the real stderr: not captured by libtest, not torn by other threads.
    let line = format!("SKIPPED {test}: {SKIP_REASON}; missing: {missing}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    record("skipped", &test);
    false
}

/// Appends `WHAT TEST` to the file named by `DTUN_TEST_ROOT_LOG`, if set (one `O_APPEND`
/// write, so test binaries running at once do not tear each other's lines).
fn record(what: &str, test: &str) {
    let Some(path) = std::env::var_os("DTUN_TEST_ROOT_LOG") else {
        return;
    };
    let line = format!("{what} {test}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("cannot append to DTUN_TEST_ROOT_LOG {path:?}: {e}");
    }
}

/// Panics when a test's own thread reaches a fixture that needs root without having gone
/// through [`need_root!`]. Threads a test spawns have no name and are not checked (their test
/// was, when it built its namespaces first).
pub fn assert_gated() {
    let thread = std::thread::current();
    let Some(name) = thread.name() else {
        return;
    };
    if name == "main" || GATED.with(Cell::get) {
        return;
    }
    panic!(
        "{name} needs root but did not call `common::need_root!()` as its first line: add it, \
         so the test skips without root and fails under CI=true"
    );
}
