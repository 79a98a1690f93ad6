//! What the roaming tests (tests/roam.rs, tests/roam_review.rs) read of a server (a client's
//! status entry, its endpoint, roaming and epoch, waiting for one of them, pings until one
//! comes back) and how they talk to their relays (one command a line on stdin, each answered
//! `#K WORD ...`).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Netns, Proc, UP, assert_running};

/// The server's status entry for client `id`.
pub fn entry(server: &Netns, id: &str) -> Value {
    let j = super::status::json(server, None);
    j["clients"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("no client {id} in the server's status:\n{j:#}"))
}

pub fn endpoint(e: &Value) -> String {
    e["endpoint"]
        .as_str()
        .unwrap_or_else(|| panic!("no endpoint string in the server's status entry:\n{e:#}"))
        .to_string()
}

/// `session.roaming` as (on, moves).
pub fn roaming(e: &Value) -> (bool, u64) {
    let r = &e["session"]["roaming"];
    match (r["on"].as_bool(), r["moves"].as_u64()) {
        (Some(on), Some(moves)) => (on, moves),
        _ => panic!("no session.roaming {{on, moves}} in the server's status entry:\n{e:#}"),
    }
}

pub fn epoch(e: &Value) -> u64 {
    super::status::u(&e["session"]["rekey"]["epoch"])
}

/// Polls the server's status entry for `id` until `cond` holds; panics with the last one.
pub fn wait_entry(
    server: &Netns,
    id: &str,
    what: &str,
    limit: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let e = entry(server, id);
        if cond(&e) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; the server's status entry:\n{e:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Roaming is on and the first rekey done: the client's records carry the connection ID
/// (from the epoch after the one it came in; until then a move is a reconnect).
pub fn wait_roaming(server: &Netns, id: &str) -> Value {
    wait_entry(server, id, "roaming on, epoch 2 or later", UP, |e| {
        roaming(e).0 && epoch(e) >= 2
    })
}

/// Pings `addr` once at a time (200 ms for each reply) until one comes back; the time since
/// `from` then, or None once `limit` has passed.
pub fn first_reply(ns: &Netns, addr: &str, from: Instant, limit: Duration) -> Option<Duration> {
    while from.elapsed() < limit {
        let once = ["-n", "-q", "-c", "1", "-W", "0.2", addr];
        if ns.run("ping", &once).status.success() {
            return Some(from.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The log with IPv4-mapped socket addresses (`[::ffff:a.b.c.d]:p`) written `a.b.c.d:p`.
pub fn plain(log: &str) -> String {
    log.replace("[::ffff:", "").replace("]:", ":")
}

/// A relay of the test's own (tests/tools/roam_relay.py, roam_review_relay.py): its process,
/// its name for messages, and the number of commands it was given.
pub struct Relay {
    pub p: Proc,
    pub name: &'static str,
    pub sent: usize,
}

impl Relay {
    pub fn new(p: Proc, name: &'static str) -> Relay {
        Relay { p, name, sent: 0 }
    }

    /// Sends a command; returns its number, which starts the relay's answer (`#K ...`).
    pub fn send(&mut self, cmd: &str) -> usize {
        self.p.write_stdin(format!("{cmd}\n").as_bytes());
        self.sent += 1;
        self.sent
    }

    pub fn line(&self, k: usize, word: &str) -> Option<String> {
        let want = format!("#{k} {word}");
        self.p
            .log()
            .lines()
            .find(|l| l.starts_with(&want))
            .map(str::to_string)
    }

    /// Waits for the relay's line `#K WORD ...`; panics when it refused or did not say so.
    pub fn expect(&mut self, k: usize, word: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.line(k, word) {
                return l;
            }
            for other in ["refused", "unknown command"] {
                if let Some(l) = self.line(k, other) {
                    panic!("{} did not do command #{k}: {l}", self.name);
                }
            }
            assert_running(&mut self.p, self.name);
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {} to say \"#{k} {word}\"",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
