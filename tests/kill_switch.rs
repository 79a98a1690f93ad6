//! `-kill-switch` end to end, in the rig of `tests/common/routing.rs`: a `-route all` client
//! killed with `-9` leaks nothing to the simulated internet (203.0.113.0/24) out of its
//! underlay, a restart with `-host` given by name reconnects (through /etc/hosts, and through
//! the kill switch's note of the server's last address when the name cannot be looked up), and
//! `dtun down` lifts the kill switch once no dtun holds the routes. Leaks are counted by an
//! nftables counter in the client namespace on its underlay links (eth0, eth1): the tunnel's
//! own datagrams go to 10.77.0.1, so anything it counts went past the tunnel.

mod common;

use std::time::Duration;

use common::routing::*;
use common::*;

const NAME: &str = "vpn.ks.test";

/// Counts what the client sends to 203.0.113.0/24 (IPv4) and 2001:db8:113::/64 out of its
/// underlay links.
fn count_leaks(net: &Net) {
    let out = net.client.sh(
        "nft add table inet ksleak && \
         nft add chain inet ksleak out '{ type filter hook postrouting priority 0; }' && \
         nft add rule inet ksleak out oifname '{ \"eth0\", \"eth1\" }' ip daddr 203.0.113.0/24 counter && \
         nft add rule inet ksleak out oifname '{ \"eth0\", \"eth1\" }' ip6 daddr 2001:db8:113::/64 counter",
    );
    assert!(out.status.success(), "{out:?}");
}

/// Packets the counters of [`count_leaks`] saw, IPv4 and IPv6 together.
fn leaked(net: &Net) -> u64 {
    let out = net
        .client
        .run("nft", &["list", "chain", "inet", "ksleak", "out"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "packets")
        .map(|w| w[1].parse::<u64>().expect("a count"))
        .sum()
}

fn kill_9(net: &Net, client: &mut Proc) {
    client.signal("KILL");
    client.wait_exit(Duration::from_secs(5)).expect("killed");
    wait_for(Duration::from_secs(5), "the TUN to go", || {
        net.client.links().is_empty()
    });
}

fn ping6_ok(net: &Net) -> bool {
    net.client
        .run("ping", &["-6", "-n", "-c", "1", "-W", "1", INET6])
        .status
        .success()
}

fn dtun_down(net: &Net) -> (bool, String) {
    let out = net.client.run(DTUN, &["down"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// What the kill switch is for: without it, a `-route all` client killed with `-9` leaks IPv4
/// (its TUN and the routes on it go with it; the rules and throw routes left only fall back to
/// the main table). This shows the counter sees such a leak.
#[test]
fn without_the_kill_switch_a_kill_9_leaks_ipv4() {
    common::need_root!();
    let net = Net::new("ksL");
    let _server = net.start_server();
    count_leaks(&net);
    let mut client = start_client(&net.client, &net.client_args(&["-route", "all"]));
    let tun = wait_tun(&net);
    ping_through(&net, &tun, INET, true);
    assert_eq!(leaked(&net), 0);
    kill_9(&net, &mut client);
    assert!(net.client.ping_ok(INET, 3), "the inet host out of reach");
    assert!(leaked(&net) >= 1, "no leak counted");
    // The next start cleans up (no kill switch: nothing is kept).
    let mut client = start_client(&net.client, &net.client_args(&["-route", "all"]));
    client.stop(Duration::from_secs(10));
    assert_eq!(net.leftovers(), "");
}

/// `-kill-switch`: after a `kill -9` nothing reaches the inet host (IPv4 or IPv6) and nothing
/// leaves for it out of the underlay, while the LAN stays reachable; a start that fails leaves
/// it on; `dtun down` is refused while a client holds the routes; a restart with `-host` by name reconnects, also when the
/// name cannot be looked up any more (the kill switch kept the server's last address); a clean
/// stop lifts everything, and after another `kill -9`, `dtun down` does. Fails on the code
/// before: there was no `-kill-switch` (and without it the kill leaks, see above).
#[test]
fn the_kill_switch_survives_kill_9_until_a_restart_or_dtun_down() {
    common::need_root!();
    let net = Net::new("ksK");
    let _server = net.start_server();
    let hosts = Hosts::new(&net.client, &format!("{SERVER} {NAME}"));
    // Name lookups that miss /etc/hosts go to a nameserver of the test's own (none answers).
    hosts.other("resolv.conf", "nameserver 203.0.113.53\n");
    count_leaks(&net);
    let args = [
        "-host",
        NAME,
        "-port",
        PORT,
        "-key",
        KEY,
        "-keepalive",
        "1s",
        "-route",
        "all",
        "-kill-switch",
    ];
    let mut client = start_client(&net.client, &args);
    let tun = wait_tun(&net);
    ping_through(&net, &tun, INET, true);

    kill_9(&net, &mut client);
    // Unreachable: ping fails at once with "No route to host".
    let out = net
        .client
        .run("ping", &["-n", "-c", "3", "-W", "1", "-i", "0.2", INET]);
    let text = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        !out.status.success(),
        "the inet host answered past the tunnel"
    );
    assert!(text.contains("no route to host"), "{text}");
    assert!(!ping6_ok(&net), "IPv6 leaked");
    assert_eq!(
        leaked(&net),
        0,
        "packets left for the inet host out of the underlay"
    );
    assert!(net.client.ping_ok(LAN, 2), "the LAN is blocked");

    // A start that fails (-once, a port nobody listens on) leaves it on, and says so.
    let mut failing: Vec<&str> = args.to_vec();
    failing[3] = "4999";
    failing.push("-once");
    let mut p = net.client.spawn(DTUN, &failing, &[]);
    let status = p.wait_exit(Duration::from_secs(30)).expect("exits");
    let log = p.log();
    assert!(!status.success(), "{log}");
    assert_eq!(lines_with(&log, &["the kill switch stays on"]), 1, "{log}");
    assert!(net.leftovers().contains("25720:"), "{}", net.leftovers());
    assert!(
        !net.client.ping_ok(INET, 2),
        "a failed start lifted the kill switch"
    );

    // A restart by name: /etc/hosts answers; the kill switch stays on meanwhile.
    let mut client = start_client(&net.client, &args);
    let pid = client.pid().to_string();
    let tun = wait_tun(&net);
    assert_eq!(
        lines_with(&client.log(), &[dtun_linux::routes::LOG_KILL_SWITCH_KEPT]),
        1,
        "{}",
        client.log()
    );
    ping_through(&net, &tun, INET, true);
    let (ok, text) = dtun_down(&net);
    assert!(!ok, "dtun down beside a live client: {text}");
    assert!(text.contains(&format!("pid {pid}")), "{text}");
    assert_eq!(net.route_dev(INET), tun, "dtun down touched the routes");

    // The name no longer resolves (DNS is blocked by the kill switch, /etc/hosts has it not):
    // the restart uses the server's last address.
    kill_9(&net, &mut client);
    hosts.set("");
    let mut client = start_client(&net.client, &args);
    let tun = wait_tun(&net);
    let log = client.log();
    assert_eq!(
        lines_with(&log, &[dtun_linux::routes::LOG_LAST_ADDRESS, SERVER]),
        1,
        "{log}"
    );
    ping_through(&net, &tun, INET, true);
    assert_eq!(leaked(&net), 0);

    // A clean stop lifts it all.
    client.stop(Duration::from_secs(10));
    assert_eq!(net.leftovers(), "");
    assert!(
        net.client.ping_ok(INET, 2),
        "the underlay after a clean stop"
    );

    // After another kill -9, `dtun down` lifts it and says so.
    hosts.set(&format!("{SERVER} {NAME}"));
    let mut client = start_client(&net.client, &args);
    wait_tun(&net);
    kill_9(&net, &mut client);
    assert!(!net.client.ping_ok(INET, 2));
    let (ok, text) = dtun_down(&net);
    assert!(ok, "{text}");
    assert!(text.contains("kill switch"), "{text}");
    assert_eq!(net.leftovers(), "");
    assert!(net.client.ping_ok(INET, 2), "the underlay after dtun down");
    let (ok, text) = dtun_down(&net);
    assert!(ok && text.contains("nothing"), "{text}");
}
