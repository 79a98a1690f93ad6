//! The servers' LAN table (table 25717 behind rule 25718, src/server/lan_table.rs) when two
//! dtun servers share a network namespace: the rule belongs to every live server that routes
//! LANs, and only the last of them to go takes it away.
//!
//! ```text
//!  ┌──── ns "server" ─────────────────┐              ┌──── ns "client" ───────────────┐
//!  │ eth0 172.31.250.1/24             ├── veth ──────┤ eth0 172.31.250.2/24           │
//!  │ dtun -instance a (port 4801)     │              │ dtun -instance ca → a, LAN .61 │
//!  │ dtun -instance b (port 4802)     │              │ dtun -instance cb → b, LAN .62 │
//!  └──────────────────────────────────┘              └────────────────────────────────┘
//! ```

mod common;

use std::time::Duration;

use common::*;

const KEY: &str = "lan-table-test-key-0123456789";
const RULE: &str = "not from all fwmark 0x6474 lookup 25717";

fn server(topo: &Topo, instance: &str, port: u16, pool: &str) -> Proc {
    let port_s = port.to_string();
    start_server(
        &topo.server,
        port,
        &[
            "-key",
            KEY,
            "-port",
            &port_s,
            "-instance",
            instance,
            "-pool",
            pool,
            "-pool6",
            "off",
            "-linger",
            "1s",
        ],
    )
}

fn client(topo: &Topo, instance: &str, port: &str, lan: &str) -> Proc {
    let server_ip = Topo::server_ip(0);
    start_client(
        topo.client(),
        &[
            "-host",
            &server_ip,
            "-port",
            port,
            "-key",
            KEY,
            "-id",
            instance,
            "-instance",
            instance,
            "-peernet",
            lan,
            "-keepalive",
            "1s",
        ],
    )
}

/// The route of `lan` in the LAN table, as `ip route show table 25717` prints it (empty when
/// there is none).
fn lan_route(topo: &Topo, lan: &str) -> String {
    topo.server
        .ip(&["route", "show", "table", "25717", lan])
        .trim()
        .to_string()
}

fn wait_lan(topo: &Topo, lan: &str, present: bool) {
    wait_for(
        Duration::from_secs(20),
        &format!("{lan} in table 25717: {present}"),
        || lan_route(topo, lan).is_empty() != present,
    );
}

/// Server b, whose LANs have all gone, exits while server a (LANs gone too, for now) lives:
/// the rule stays, so a's next LAN is routed and reached through a's TUN. Once a exits too,
/// the rule goes. Fails on the code before: b took an empty table to mean that no dtun needed
/// the rule and removed it, and a's next LAN then sat in a table no rule consulted (`ip route
/// get` took the main table's path instead of a's TUN).
#[test]
fn the_lan_rule_stays_while_another_server_lives() {
    common::need_root!();
    let topo = Topo::pair("lt");
    let mut a = server(&topo, "a", 4801, "10.86.0.0/16");
    let mut b = server(&topo, "b", 4802, "10.87.0.0/16");
    let (lan_a, lan_b) = ("192.168.61.0/24", "192.168.62.0/24");
    let mut ca = client(&topo, "ca", "4801", lan_a);
    wait_lan(&topo, lan_a, true);
    ca.stop(Duration::from_secs(10));
    wait_lan(&topo, lan_a, false);
    let mut cb = client(&topo, "cb", "4802", lan_b);
    wait_lan(&topo, lan_b, true);
    cb.stop(Duration::from_secs(10));
    wait_lan(&topo, lan_b, false);
    b.stop(Duration::from_secs(10));
    let rules = topo.server.ip(&["rule"]);
    assert_eq!(lines_with(&rules, &[RULE]), 1, "server a lives:\n{rules}");
    // a's next LAN is reached through a's TUN.
    let mut ca = client(&topo, "ca", "4801", lan_a);
    wait_lan(&topo, lan_a, true);
    let route = lan_route(&topo, lan_a);
    let words: Vec<&str> = route.split_whitespace().collect();
    let dev = words[words.iter().position(|w| *w == "dev").expect("a dev") + 1];
    let got = topo.server.ip(&["route", "get", "192.168.61.7"]);
    assert!(got.contains(&format!("dev {dev}")), "{got}");
    ca.stop(Duration::from_secs(10));
    assert_running(&mut a, "server a");
    a.stop(Duration::from_secs(10));
    let rules = topo.server.ip(&["rule"]);
    assert_eq!(
        lines_with(&rules, &[RULE]),
        0,
        "the last server left:\n{rules}"
    );
}
