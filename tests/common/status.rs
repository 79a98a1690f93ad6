//! Helpers of the status tests (`tests/status.rs`): `dtun status` run in a namespace, its
//! output and JSON, the documented JSON shapes (docs/STATUS.md), and `-metrics` scrapes.

use std::collections::BTreeSet;
use std::process::Output;

use serde_json::Value;

use super::{DTUN, Netns};

/// `dtun status ARGS` inside `ns`.
pub fn status(ns: &Netns, args: &[&str]) -> Output {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    ns.run(DTUN, &all)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The text with every run of whitespace made one space (the human view pads its labels).
pub fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `dtun status -json [INSTANCE]`, parsed; panics if it fails.
pub fn json(ns: &Netns, instance: Option<&str>) -> Value {
    let mut args = vec!["-json"];
    args.extend(instance);
    let o = status(ns, &args);
    assert!(o.status.success(), "dtun status failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(&o)))
}

pub fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

pub fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

pub const TRAFFIC: &[&str] = &["drops", "rx_bytes", "rx_packets", "tx_bytes", "tx_packets"];
pub const DROPS: &[&str] = &[
    "bad_cid",
    "bad_epoch",
    "bad_inner",
    "bad_tag",
    "control_flood",
    "forged_source",
    "not_ip",
    "oversized",
    "replay",
    "too_big",
    "truncated",
    "unexpected_type",
];
pub const SESSION: &[&str] = &[
    "cipher",
    "keepalive",
    "last_authenticated",
    "last_authenticated_age",
    "last_handshake",
    "last_handshake_age",
    "rekey",
    "roaming",
    "started",
    "started_age",
];
pub const KEEPALIVE: &[&str] = &["dead_after_seconds", "negotiated", "period_seconds"];
pub const REKEY: &[&str] = &["epoch", "on", "post_quantum"];
pub const ROAMING: &[&str] = &["moves", "on"];

pub fn assert_traffic_shape(t: &Value) {
    assert_eq!(keys(t), set(TRAFFIC), "{t}");
    assert_eq!(keys(&t["drops"]), set(DROPS), "{t}");
}

pub fn assert_session_shape(s: &Value) {
    assert_eq!(keys(s), set(SESSION), "{s}");
    assert_eq!(keys(&s["keepalive"]), set(KEEPALIVE), "{s}");
    assert_eq!(keys(&s["rekey"]), set(REKEY), "{s}");
    assert_eq!(keys(&s["roaming"]), set(ROAMING), "{s}");
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Reads `name` (a full series, labels included) from OpenMetrics text.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn scrape(ns: &Netns, port: u16, path: &str) -> (String, String) {
    scrape_as(ns, &format!("http://127.0.0.1:{port}{path}"), None)
}

/// Scrapes `url`, with `Authorization: Bearer TOKEN` if `token` is given.
pub fn scrape_as(ns: &Netns, url: &str, token: Option<&str>) -> (String, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![
        "-sS",
        "--max-time",
        "5",
        "-w",
        "\n%{http_code} %{content_type}",
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    args.push(url);
    let o = ns.run("curl", &args);
    assert!(o.status.success(), "curl {url}: {}", stderr(&o));
    let out = stdout(&o);
    let (body, meta) = out.rsplit_once('\n').unwrap();
    (body.to_string(), meta.to_string())
}
