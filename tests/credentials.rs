//! Key material and credentials at startup and admission, end to end: the real binary in
//! network namespaces of the test's own (`common/mod.rs`).
//!
//! Run one test: `cargo test --test credentials empty_master -- --nocapture`.

mod common;

use common::{
    DTUN, Netns, Proc, TestDir, Topo, UP, assert_running, lines_with, only_tun, path_str,
    start_server, wait_p2p,
};
use std::time::Duration;

/// A server given an empty (or blank) master key file refuses to start and says what to do:
/// with it, every unlisted id's key would be hex(HMAC-SHA256("", id)), which anyone can compute.
#[test]
fn empty_master_key_file_refused_at_startup() {
    common::need_root!();
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
    common::spawn_client(ns, server_ip, id, key, "1s", extra)
}

/// An id with a newline would forge lines in the server's log: the client refuses it at
/// startup (the server's lookup refuses it too: `keys::tests::invalid_identities_get_no_key`).
#[test]
fn id_with_control_characters_refused() {
    common::need_root!();
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

/// `-max-clients 1`: a second unlisted id is refused (Close reason 5 to a dtun client, logged
/// on the server); an id listed in the credentials file still gets in; the first keeps working.
#[test]
fn max_clients_refuses_unlisted_newcomers() {
    common::need_root!();
    let topo = Topo::star("hB1c", 3);
    let creds = topo
        .dir
        .file("clients", b"listed key=listed-key-0123456789\n");
    let shared = "shared-key-0123456789";
    let mut server = start_server(
        &topo.server,
        443,
        &[
            "-clients",
            path_str(&creds),
            "-allow-unlisted",
            "-key",
            shared,
            "-max-clients",
            "1",
            "-v",
        ],
    );
    let mut first = client(&topo.clients[0], &Topo::server_ip(0), "first", shared, &[]);
    first.wait_log(dtun::client::LOG_TUNNEL_UP, UP);

    let mut second = client(
        &topo.clients[1],
        &Topo::server_ip(1),
        "second",
        shared,
        &["-once"],
    );
    let status = second
        .wait_exit(UP)
        .expect("the refused client is still running");
    assert!(!status.success(), "{status}");
    assert!(
        second.log().contains("refused"),
        "the client was not told:\n{}",
        second.log()
    );
    server.wait_log("-max-clients", UP);
    // A client that speaks only CCM_8 (`-compat` stands in for the original) may not be a dtun
    // peer: it gets a plain close_notify, no control record.
    let mut original = client(
        &topo.clients[1],
        &Topo::server_ip(1),
        "original",
        shared,
        &["-once", "-compat"],
    );
    let status = original
        .wait_exit(UP)
        .expect("the refused original still running");
    assert!(!status.success(), "{status}");
    assert!(
        original.log().contains(
            "close_notify (it shut down or dropped this session) before the address message"
        ),
        "expected a plain close_notify:\n{}",
        original.log()
    );
    assert_eq!(
        lines_with(&server.log(), &["connected"]),
        1,
        "only the first got in:\n{}",
        server.log()
    );

    let mut listed = client(
        &topo.clients[2],
        &Topo::server_ip(2),
        "listed",
        "listed-key-0123456789",
        &[],
    );
    listed.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    assert_eq!(topo.server.links().len(), 2, "{:?}", topo.server.links());

    let dev = only_tun(&topo.clients[0]);
    let (_, peer) = wait_p2p(&topo.clients[0], &dev);
    assert!(
        topo.clients[0].ping_ok(&peer.to_string(), 3),
        "the first client's tunnel stopped working"
    );
    assert_running(&mut first, "first client");
    assert_running(&mut server, "server");
}

/// A world-readable config file holding a key gets its warning in the server's log at start
/// (before, it was issued before logging was set up and lost), and a key
/// file others can write stops the start with what to do.
#[test]
fn secret_file_modes_reach_the_log_at_start() {
    common::need_root!();
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("hB1p");
    let ns = Netns::new("hB1p", &dir);
    let conf = dir.file(
        "srv.toml",
        b"key = \"shared-key-0123456789abcdef\"\nport = 4461\n",
    );
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let conf = path_str(&conf).to_string();
    let mut server = ns.spawn(DTUN, &["-config", &conf], &[]);
    server.wait_log(
        &format!("{conf} is readable by every user: chmod 600 {conf}"),
        UP,
    );
    assert_running(&mut server, "dtun server");
    drop(server);

    let key = dir.file("key", b"shared-key-0123456789abcdef\n");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
    let key = path_str(&key).to_string();
    let mut server = ns.spawn(DTUN, &["-key-file", &key, "-port", "4462"], &[]);
    let status = server
        .wait_exit(UP)
        .expect("a server with a writable key ran on");
    assert!(!status.success());
    assert!(
        server.log().contains("writable by every user"),
        "{}",
        server.log()
    );
    assert!(
        server.log().contains(&format!("chmod 600 {key}")),
        "{}",
        server.log()
    );
}
