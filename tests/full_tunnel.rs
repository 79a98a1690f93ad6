//! Client routing end to end: `-route all`, `-route CIDR`, `-exclude`, the IPv6 block, the
//! cleanup after exit and after `kill -9`, one `-route` client per network namespace, and the
//! examples' split-routing scripts with a `-compat` client. The rig (a simulated internet
//! between the test's own namespaces) is drawn in `tests/common/routing.rs`.

mod common;

use std::time::{Duration, Instant};

use common::routing::*;
use common::*;

/// `-route all`: the inet host through the tunnel (and NATed by the server), the server's own
/// address and the LAN the old way; after exit nothing of dtun's is left and the default
/// route is as it was. Fails without `-route all` (the inet host goes the old way).
#[test]
fn route_all_sends_everything_through_the_tunnel() {
    common::need_root!();
    let net = Net::new("fRa");
    let _server = net.start_server();
    let routes_before = net.client.ip(&["route"]);
    let rules_before = net.client.ip(&["rule"]);
    let mut client = start_client(&net.client, &net.client_args(&["-route", "all"]));
    let tun = wait_tun(&net);
    assert_eq!(net.route_dev(INET), tun);
    ping_through(&net, &tun, INET, true);
    assert_eq!(net.route_dev(SERVER), "eth0");
    ping_through(&net, &tun, SERVER, false);
    assert_eq!(net.route_dev(LAN), "lan0");
    ping_through(&net, &tun, LAN, false);
    assert!(
        net.client
            .routes()
            .contains("default via 10.77.1.1 dev eth0")
    );
    client.stop(Duration::from_secs(10));
    let log = client.log();
    assert_eq!(
        lines_with(&log, &[dtun_linux::routes::LOG_REMOVED]),
        1,
        "{log}"
    );
    assert_eq!(net.leftovers(), "", "left behind");
    assert_eq!(net.client.ip(&["route"]), routes_before);
    assert_eq!(net.client.ip(&["rule"]), rules_before);
    assert!(net.client.links().is_empty());
}

/// The client's default gateway moves to another link mid-session and the old one no longer
/// takes the tunnel's datagrams: the tunnel stays up (no reconnect) and still carries
/// everything. Fails if dtun's datagrams stayed pinned to the old gateway.
#[test]
fn full_tunnel_survives_a_change_of_default_gateway() {
    common::need_root!();
    let net = Net::new("fRg");
    let _server = net.start_server();
    let mut client = start_client(&net.client, &net.client_args(&["-route", "all"]));
    let tun = wait_tun(&net);
    ping_through(&net, &tun, INET, true);
    // A new gateway, and the old one drops whatever the client sends the server.
    net.client.ip(&[
        "route",
        "replace",
        "default",
        "via",
        "10.77.2.1",
        "dev",
        "eth1",
    ]);
    let out = net.server.sh(&format!(
        "nft add table inet fRdrop && \
         nft add chain inet fRdrop pre '{{ type filter hook prerouting priority -300; }}' && \
         nft add rule inet fRdrop pre iifname c0 udp dport {PORT} counter drop"
    ));
    assert!(out.status.success(), "{out:?}");
    // Longer than three keepalive periods (1 s each): a stuck path would have been noticed.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        ping_through(&net, &tun, INET, true);
    }
    assert_eq!(net.route_dev(SERVER), "eth1");
    assert_running(&mut client, "client");
    let log = client.log();
    assert_eq!(
        lines_with(&log, &[dtun::client::LOG_TUNNEL_UP]),
        1,
        "the session should not have been lost:\n{log}"
    );
    client.stop(Duration::from_secs(10));
    assert_eq!(net.leftovers(), "");
}

/// `-exclude @FILE` with 10 000 prefixes, one of them the inet host's second network: that one
/// goes the old way, the rest of the world through the tunnel; install and removal are timed.
/// Fails without `-exclude` (198.51.100.10 would cross the tunnel).
#[test]
fn exclude_keeps_prefixes_on_the_old_path() {
    common::need_root!();
    let net = Net::new("fRx");
    let _server = net.start_server();
    let mut list = String::from("# test list\n198.51.100.0/24  # the excluded network\n\n");
    for i in 0..9_999u32 {
        list += &format!("60.{}.{}.0/24\n", i >> 8, i & 255);
    }
    let file = net.dir.file("exclude.txt", list.as_bytes());
    let at = format!("@{}", path_str(&file));
    let mut client = start_client(
        &net.client,
        &net.client_args(&[
            "-route",
            "all",
            "-exclude",
            &at,
            "-exclude",
            "60.200.0.0/16",
        ]),
    );
    let tun = wait_tun(&net);
    let (installed, install_ms) = millis(&client.log(), dtun_linux::routes::LOG_INSTALLED);
    assert!(installed >= 10_001, "{installed} routes installed");
    let table = net.client.ip(&["route", "show", "table", TABLE]);
    assert!(
        table.lines().count() >= 10_003,
        "{} routes",
        table.lines().count()
    );
    assert_eq!(net.route_dev(EXCLUDED), "eth0");
    ping_through(&net, &tun, EXCLUDED, false);
    assert_eq!(net.route_dev("60.1.2.3"), "eth0");
    assert_eq!(net.route_dev(INET), tun);
    ping_through(&net, &tun, INET, true);
    assert_eq!(net.route_dev(LAN), "lan0");
    client.stop(Duration::from_secs(20));
    let (removed, remove_ms) = millis(&client.log(), dtun_linux::routes::LOG_REMOVED);
    println!(
        "10 000 excluded prefixes: installed {installed} routes in {install_ms} ms, removed {removed} routes and rules in {remove_ms} ms"
    );
    assert!(removed >= installed, "{removed} < {installed}");
    assert!(install_ms < 20_000 && remove_ms < 20_000);
    assert_eq!(net.leftovers(), "");
}

/// `-route all` blocks IPv6 (the tunnel carries none): a ping6 to the inet host fails with
/// "unreachable" while the tunnel is up and works before and after; `-allow-ipv6-leak` lets it
/// through. Fails without the block (the ping6 would leak past the tunnel).
#[test]
fn route_all_blocks_ipv6_unless_told_otherwise() {
    common::need_root!();
    let net = Net::new("fR6");
    // A server that gives no IPv6 (with IPv6 inside, `-route all` sends IPv6 through the
    // tunnel: tests/ipv6.rs).
    let _server = start_server(
        &net.server,
        4443,
        &[
            "-key", KEY, "-port", PORT, "-listen", SERVER, "-pool6", "off",
        ],
    );
    let ping6 = || {
        net.client
            .run("ping", &["-6", "-n", "-c", "1", "-W", "1", INET6])
    };
    wait_for(Duration::from_secs(10), "IPv6 to the inet host", || {
        ping6().status.success()
    });
    let mut client = start_client(&net.client, &net.client_args(&["-route", "all"]));
    wait_tun(&net);
    assert_eq!(
        lines_with(&client.log(), &[dtun_linux::routes::LOG_IPV6_BLOCKED]),
        1
    );
    let out = ping6();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "IPv6 leaked: {text}");
    // An unreachable route answers EHOSTUNREACH at once ("No route to host"), no timeout.
    let text = text.to_lowercase();
    assert!(
        text.contains("no route to host") || text.contains("unreachable"),
        "{text}"
    );
    // Link-local and the LAN's own IPv6 stay usable: only what the default route took is cut.
    client.stop(Duration::from_secs(10));
    assert!(ping6().status.success(), "IPv6 after exit");
    let mut client = start_client(
        &net.client,
        &net.client_args(&["-route", "all", "-allow-ipv6-leak"]),
    );
    wait_tun(&net);
    assert!(ping6().status.success(), "-allow-ipv6-leak");
    assert_eq!(
        lines_with(&client.log(), &[dtun_linux::routes::LOG_IPV6_BLOCKED]),
        0
    );
    client.stop(Duration::from_secs(10));
    assert_eq!(net.leftovers(), "");
}

/// Bad CIDRs in -route and -exclude and a bad line in an exclude file: the client refuses to
/// start with a message naming the culprit (the file and line), and leaves nothing behind;
/// nor does a route the kernel refuses halfway through installing them.
#[test]
fn bad_route_input_is_refused_and_nothing_is_left() {
    common::need_root!();
    let net = Net::new("fRb");
    let file = net
        .dir
        .file("bad.txt", b"# list\n10.0.0.0/8\n10.300.0.0/16\n");
    let at = format!("@{}", path_str(&file));
    let cases: [(&[&str], String); 5] = [
        (&["-route", "10.0.0.0/33"], "bad -route".into()),
        (&["-route", "all,10.0.0.0/8"], "bad -route".into()),
        (
            &["-route", "all", "-exclude", "10.1.2.3/8"],
            "did you mean 10.0.0.0/8".into(),
        ),
        (
            &["-route", "all", "-exclude", &at],
            format!("{}:3:", path_str(&file)),
        ),
        (&["-exclude", "10.0.0.0/8"], "-exclude needs -route".into()),
    ];
    for (extra, want) in cases {
        let mut p = net.client.spawn(DTUN, &net.client_args(extra), &[]);
        let status = p.wait_exit(Duration::from_secs(10)).expect("exits");
        assert!(!status.success(), "{extra:?} was accepted");
        let log = p.log();
        assert!(log.contains(&want), "{extra:?}: want {want:?} in\n{log}");
        assert!(net.client.links().is_empty(), "{extra:?} made a TUN");
        assert_eq!(net.leftovers(), "", "{extra:?}");
    }
    // A route the kernel refuses once the tunnel is up (IPv6 is off on new devices, so on
    // the TUN): the client says so and exits, and takes back the routes and rules it had
    // already added.
    let _server = net.start_server();
    let out = net
        .client
        .sh("sysctl -qw net.ipv6.conf.default.disable_ipv6=1");
    assert!(out.status.success(), "{out:?}");
    let extra = [
        "-route",
        "10.99.0.0/16,2001:db8::/32",
        "-exclude",
        "10.99.1.0/24",
    ];
    let mut p = net.client.spawn(DTUN, &net.client_args(&extra), &[]);
    let status = p.wait_exit(Duration::from_secs(30)).expect("exits");
    let log = p.log();
    assert!(!status.success(), "{log}");
    assert!(log.contains("cannot set up -route/-exclude"), "{log}");
    assert!(log.contains("2001:db8::/32"), "{log}");
    assert!(log.contains("IPv6 is disabled on the TUN"), "{log}");
    assert!(net.client.links().is_empty(), "the TUN stayed");
    assert_eq!(net.leftovers(), "", "half-applied routes");
}

/// After a `kill -9` the rules and the table's routes stay; the next start removes them and
/// says so, and its own exit leaves nothing. Fails without the cleanup at start.
#[test]
fn routes_left_by_kill_9_are_cleaned_at_the_next_start() {
    common::need_root!();
    let net = Net::new("fRk");
    let _server = net.start_server();
    let args = net.client_args(&["-route", "all", "-exclude", "198.51.100.0/24"]);
    let mut client = start_client(&net.client, &args);
    wait_tun(&net);
    client.signal("KILL");
    client.wait_exit(Duration::from_secs(5)).expect("killed");
    wait_for(Duration::from_secs(5), "the TUN to go", || {
        net.client.links().is_empty()
    });
    let left = net.leftovers();
    assert!(left.contains("198.51.100.0/24"), "{left}");
    assert!(left.contains("25717:"), "{left}");
    // IPv6 stays blocked by the leftovers until the next start cleans them.
    let mut client = start_client(&net.client, &args);
    let tun = wait_tun(&net);
    let log = client.log();
    assert_eq!(
        lines_with(&log, &["left behind"]),
        1,
        "no cleanup reported:\n{log}"
    );
    ping_through(&net, &tun, INET, true);
    client.stop(Duration::from_secs(10));
    assert_eq!(net.leftovers(), "");
}

/// The examples' split-up.sh / split-down.sh with a `-compat` client (standing in for the
/// original) and a server given by name: everything through the tunnel but the whitelist and
/// the server, all of it undone at exit. Fails without the scripts.
#[test]
fn example_split_scripts_with_a_compat_client() {
    common::need_root!();
    let net = Net::new("fRe");
    let _server = net.start_server();
    // The server's name, for this namespace only.
    let _hosts = Hosts::new(&net.client, "10.77.0.1 vpn.fr.test");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/split-routing");
    let scripts = net.dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    for f in ["split-up.sh", "split-down.sh"] {
        std::fs::copy(format!("{examples}/{f}"), scripts.join(f)).unwrap();
    }
    let whitelist = net
        .dir
        .file("whitelist.txt", b"# stays home\n198.51.100.0/24\n");
    std::fs::write(
        scripts.join("split.conf"),
        format!(
            "SERVER=vpn.fr.test\nWHITELIST={}\nSTATE={}\n",
            path_str(&whitelist),
            path_str(&net.dir.path().join("state"))
        ),
    )
    .unwrap();
    let routes_before = net.client.ip(&["route"]);
    let up = scripts.join("split-up.sh");
    let down = scripts.join("split-down.sh");
    let args = [
        "-host",
        "vpn.fr.test",
        "-port",
        PORT,
        "-key",
        KEY,
        "-compat",
        "-up",
        path_str(&up),
        "-down",
        path_str(&down),
    ];
    let mut client = start_client(&net.client, &args);
    let tun = wait_tun(&net);
    wait_for(Duration::from_secs(10), "the up script's routes", || {
        net.client.routes().contains("128.0.0.0/1")
    });
    assert_eq!(net.route_dev(INET), tun);
    ping_through(&net, &tun, INET, true);
    assert_eq!(net.route_dev(EXCLUDED), "eth0");
    ping_through(&net, &tun, EXCLUDED, false);
    assert_eq!(net.route_dev(SERVER), "eth0");
    assert!(
        net.client
            .routes()
            .contains("10.77.0.1 via 10.77.1.1 dev eth0")
    );
    client.stop(Duration::from_secs(10));
    assert_eq!(net.client.ip(&["route"]), routes_before);
    let _ = &net.inet;
}

/// A reconnect, to another address of the server (its name now resolves elsewhere): the routes
/// stay (installed once), the server's throw route moves to the new address, and the full
/// tunnel works again. Fails if the routes were dropped or re-made per session, or if the
/// new address were routed into the tunnel (the session could not come back).
#[test]
fn routes_stay_across_a_reconnect_to_another_server_address() {
    common::need_root!();
    let net = Net::new("fRr");
    net.server.ip(&["addr", "add", "10.77.0.2/32", "dev", "lo"]);
    let hosts = Hosts::new(&net.client, "10.77.0.1 vpn.fr.test");
    let mut server = net.start_server();
    let args = [
        "-host",
        "vpn.fr.test",
        "-port",
        PORT,
        "-key",
        KEY,
        "-keepalive",
        "1s",
        "-route",
        "all",
    ];
    let mut client = start_client(&net.client, &args);
    let tun = wait_tun(&net);
    ping_through(&net, &tun, INET, true);
    let table = net.client.ip(&["route", "show", "table", TABLE]);
    assert!(table.contains("throw 10.77.0.1 "), "{table}");
    server.stop(Duration::from_secs(10));
    hosts.set("10.77.0.2 vpn.fr.test");
    let _server = start_server(
        &net.server,
        4443,
        &["-key", KEY, "-port", PORT, "-listen", "10.77.0.2"],
    );
    wait_for(Duration::from_secs(30), "the client to reconnect", || {
        lines_with(&client.log(), &[dtun::client::LOG_TUNNEL_UP, "10.77.0.2"]) == 1
    });
    assert_eq!(net.client.links(), vec![tun.clone()], "the TUN was kept");
    ping_through(&net, &tun, INET, true);
    let table = net.client.ip(&["route", "show", "table", TABLE]);
    assert!(table.contains("throw 10.77.0.2 "), "{table}");
    assert!(!table.contains("10.77.0.1"), "{table}");
    let log = client.log();
    assert_eq!(
        lines_with(&log, &[dtun_linux::routes::LOG_INSTALLED]),
        1,
        "{log}"
    );
    let rules = net.client.ip(&["rule"]);
    assert_eq!(lines_with(&rules, &["25717:"]), 1, "{rules}");
    client.stop(Duration::from_secs(10));
    assert_eq!(net.leftovers(), "");
}

/// Two `-route` clients in one namespace: the second (split routing, another instance) is
/// refused with a message naming the first, and touches nothing: the first one's rules and
/// table stay and its full tunnel still carries the inet host. Once the first has gone, the
/// second starts. Fails on the code before: the second took the first's rules and routes for
/// a crash's left-overs and removed them ("removed 6 routes and rules an earlier dtun left
/// behind"), so the first's traffic went the old way while it said it was up.
#[test]
fn a_second_route_client_is_refused_and_the_first_keeps_its_routes() {
    common::need_root!();
    let net = Net::new("fR2");
    let _server = net.start_server();
    let mut first = start_client(
        &net.client,
        &net.client_args(&["-route", "all", "-instance", "full"]),
    );
    let tun = wait_tun(&net);
    let before = net.leftovers();
    assert!(before.contains("25717:"), "{before}");
    let second_args = net.client_args(&[
        "-route",
        "10.99.0.0/16",
        "-instance",
        "split",
        "-id",
        "second",
    ]);
    let mut second = net.client.spawn(DTUN, &second_args, &[]);
    let status = second.wait_exit(Duration::from_secs(20));
    let log = second.log();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the second -route client runs:\n{log}"
    );
    let pid = first.pid().to_string();
    assert!(
        log.contains("another dtun routes this network namespace")
            && log.contains(&format!("pid {pid}"))
            && log.contains("instance full"),
        "{log}"
    );
    assert_eq!(net.leftovers(), before, "the second client changed routes");
    assert_eq!(net.route_dev(INET), tun);
    ping_through(&net, &tun, INET, true);
    assert_running(&mut first, "first client");
    first.stop(Duration::from_secs(10));
    assert_eq!(net.leftovers(), "");
    // The owner is gone: now the second may route.
    let mut second = start_client(&net.client, &second_args);
    let tun = wait_tun(&net);
    assert_eq!(net.route_dev("10.99.1.1"), tun);
    second.stop(Duration::from_secs(10));
    assert_eq!(net.leftovers(), "");
}
