//! Whether a PSK identity exists must not show on the wire (RFC 4279 §2): a client claiming an
//! id the server does not know is answered exactly like a known id with a wrong key.
//!
//! `Topo::pair`: a server with a credentials file listing only `known`; a client with `-id
//! known` and a wrong key, then one with `-id stranger`, each `-once`. Both must fail, fast,
//! with the same error once the id is taken out of the message, and the alerts the server sent
//! (read off the client's veth by `tests/tools/alerts.py`) must be the same.
//!
//! ```text
//!  ns server 172.31.250.1 ── veth ── ns client 172.31.250.2
//! ```

mod common;

use std::time::{Duration, Instant};

use common::{DTUN, Topo, start_server};

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/alerts.py");

/// The client's error line for a failed handshake, with what differs by design removed, the
/// alerts the server sent it, and how long it took.
fn failure(topo: &Topo, id: &str) -> (String, Vec<String>, Duration) {
    let mut sniff = topo
        .client()
        .spawn("python3", &[ALERTS, "eth0", "443", "60"], &[]);
    sniff.wait_log("ready", Duration::from_secs(10));
    let started = Instant::now();
    let mut c = topo.client().spawn(
        DTUN,
        &[
            "-host",
            &Topo::server_ip(0),
            "-key",
            "the-wrong-key-for-anyone-0123",
            "-id",
            id,
            "-once",
        ],
        &[],
    );
    let status = c
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("client {id} still running; log:\n{}", c.log()));
    let took = started.elapsed();
    assert!(
        !status.success(),
        "client {id} must fail; log:\n{}",
        c.log()
    );
    let log = c.log();
    let line = log
        .lines()
        .find(|l| l.contains("handshake with") && l.contains("failed"))
        .unwrap_or_else(|| panic!("no handshake failure in the log of {id}:\n{log}"));
    let line = line.split_once("failed").map(|(_, r)| r).unwrap_or(line);
    // The alert came before the client gave up; give the sniffer a moment to print it.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !sniff.log().contains("alert") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    sniff.stop(Duration::from_secs(2));
    let alerts = sniff
        .log()
        .lines()
        .filter(|l| l.starts_with("alert"))
        .map(str::to_string)
        .collect();
    (line.replace(&format!("{id:?}"), "ID"), alerts, took)
}

#[test]
fn unknown_ids_fail_like_known_ids_with_a_wrong_key() {
    common::need_root!();
    let topo = Topo::pair("ids");
    let creds = topo
        .dir
        .file("clients", b"known key=the-right-key-for-known-0123\n");
    let mut server = start_server(
        &topo.server,
        443,
        &["-clients", creds.to_str().unwrap(), "-v"],
    );
    let (known, a_known, t_known) = failure(&topo, "known");
    let (stranger, a_stranger, t_stranger) = failure(&topo, "stranger");
    eprintln!(
        "known id, wrong key ({t_known:?}): {known} {a_known:?}\nunknown id ({t_stranger:?}): {stranger} {a_stranger:?}"
    );
    assert_eq!(
        known, stranger,
        "a client can tell a known id from an unknown one"
    );
    assert!(!a_known.is_empty(), "no alert seen for a wrong key");
    assert_eq!(
        a_known, a_stranger,
        "the server's alerts tell the ids apart"
    );
    for t in [t_known, t_stranger] {
        assert!(
            t < Duration::from_secs(10),
            "a refused handshake took {t:?}"
        );
    }
    server.stop(Duration::from_secs(5));
}

/// Failed handshakes are logged at most a few a second: a burst of wrong-key
/// clients must not flood the server's log.
#[test]
fn failed_handshake_warnings_are_rate_limited() {
    common::need_root!();
    const CLIENTS: usize = 30;
    const PER_SECOND: usize = 5;
    let topo = Topo::pair("idrl");
    let mut server = start_server(&topo.server, 443, &["-key", "the-right-key-0123456789"]);
    let started = Instant::now();
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            topo.client().spawn(
                DTUN,
                &[
                    "-host",
                    &Topo::server_ip(0),
                    "-key",
                    "the-wrong-key-0123456789",
                    "-id",
                    &format!("c{i}"),
                    "-once",
                    // 30 dtuns in one namespace: each needs its own status socket name.
                    "-instance",
                    &format!("c{i}"),
                ],
                &[],
            )
        })
        .collect();
    for c in &mut clients {
        let status = c
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("a wrong-key client still running; log:\n{}", c.log()));
        assert!(!status.success());
    }
    let took = started.elapsed();
    let log = server.log();
    // Seconds of the day of each warning (log lines start with an RFC 3339 time).
    let times: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("handshake with") && l.contains("failed"))
        .filter_map(|l| {
            let t = l.get(11..26)?;
            let (h, m, s) = (t.get(0..2)?, t.get(3..5)?, t.get(6..)?);
            Some(
                h.parse::<f64>().ok()? * 3600.0
                    + m.parse::<f64>().ok()? * 60.0
                    + s.parse::<f64>().ok()?,
            )
        })
        .collect();
    // The most warnings within any one second.
    let burst = times
        .iter()
        .map(|t0| {
            times
                .iter()
                .filter(|t| **t >= *t0 && **t < t0 + 1.0)
                .count()
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "{CLIENTS} failed handshakes in {took:?}: {} warnings logged, at most {burst} within a second",
        times.len()
    );
    assert!(!times.is_empty(), "no failed handshake logged at all");
    assert!(
        burst <= 2 * PER_SECOND,
        "{burst} failure warnings within one second (at most {PER_SECOND} a second, two windows)"
    );
    server.stop(Duration::from_secs(5));
}
