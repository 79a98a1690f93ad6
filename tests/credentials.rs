//! Key material and credentials at startup and admission, end to end: the real binary in
//! network namespaces of the test's own (`common/mod.rs`).
//!
//! Run one test: `cargo test --test credentials empty_master -- --nocapture`.

mod common;

use common::{DTUN, Netns, TestDir, UP, path_str};

/// A server given an empty (or blank) master key file refuses to start and says what to do:
/// with it, every unlisted id's key would be hex(HMAC-SHA256("", id)), which anyone can compute.
#[test]
fn empty_master_key_file_refused_at_startup() {
    let dir = TestDir::new("hB1m");
    let ns = Netns::new("hB1m", &dir);
    for (name, text) in [("empty", &b""[..]), ("blank", &b" \t\n"[..])] {
        let master = dir.file(name, text);
        let mut server = ns.spawn(DTUN, &["-master-key-file", path_str(&master)], &[]);
        let status = server
            .wait_exit(UP)
            .unwrap_or_else(|| panic!("server with a {name} master key file still running"));
        assert!(!status.success(), "{name}: exit {status}");
        let log = server.log();
        assert!(
            log.contains("master key") && log.contains("dtun genkey"),
            "{name}: {log}"
        );
    }
}
