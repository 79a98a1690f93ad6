//! Key material and credentials at startup and admission, end to end: the real binary in
//! network namespaces of the test's own (`common/mod.rs`).
//!
//! Run one test: `cargo test --test credentials empty_master -- --nocapture`.

mod common;

use common::{DTUN, Netns, Proc, TestDir, Topo, UP, lines_with, path_str, start_server};
use std::time::Duration;

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

fn client(ns: &Netns, server_ip: &str, id: &str, key: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "-host",
        server_ip,
        "-id",
        id,
        "-key",
        key,
        "-keepalive",
        "1s",
    ];
    args.extend_from_slice(extra);
    ns.spawn(DTUN, &args, &[])
}

/// An id with a newline would forge lines in the server's log: the client refuses it at
/// startup (the server's lookup refuses it too: `keys::tests::invalid_identities_get_no_key`).
#[test]
fn id_with_control_characters_refused() {
    let topo = Topo::pair("hB1i");
    let server = start_server(&topo.server, 443, &["-key", "shared-key-0123456789", "-v"]);
    let mut evil = client(
        topo.client(),
        &Topo::server_ip(0),
        "evil\nINFO forged line",
        "shared-key-0123456789",
        &["-once"],
    );
    let status = evil.wait_exit(Duration::from_secs(10));
    let slog = server.log();
    assert_eq!(
        lines_with(&slog, &["connected"]),
        0,
        "the server took the id:\n{slog}"
    );
    assert!(
        !slog.lines().any(|l| l.starts_with("INFO forged")),
        "forged log line:\n{slog}"
    );
    let status = status.expect("client with a bad id still running");
    assert!(!status.success());
    assert!(evil.log().contains("-id"), "{}", evil.log());
}
