//! A forged ServerHello must not change the suite a session's records use.
//!
//! `Topo::pair`: while a dtun client (offering AES-128-GCM first) connects, a tool in its
//! namespace watches each of its ClientHellos and sends the server forged ServerHellos choosing
//! AES-128-CCM_8 from the client's own address and port within the next 10 ms, that is,
//! during the handshake. The old server read the negotiated suite off every ServerHello
//! passing through its handshake, in either direction, so it sealed with the wrong suite and
//! the session never carried a packet. Now the server's suite is the one it chose itself (and
//! the client takes only the first ServerHello that reaches it).
//!
//! ```text
//!  ns server 172.31.250.1 ── veth ── ns client 172.31.250.2 (dtun client, server_hello_race.py)
//! ```

mod common;

use std::time::Duration;

use common::{Topo, UP, only_tun, start_server, wait_p2p};

const RACE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/tools/server_hello_race.py"
);

#[test]
fn forged_server_hellos_do_not_switch_the_suite() {
    common::need_root!();
    let topo = Topo::pair("suite");
    let mut server = start_server(
        &topo.server,
        443,
        &["-key", "suite-race-key-0123456789", "-v"],
    );
    let mut race = topo
        .client()
        .spawn("python3", &[RACE, "eth0", "443", "25", "8", "c0a8"], &[]);
    race.wait_log("watching", Duration::from_secs(10));
    let mut client = common::spawn_client(
        topo.client(),
        &Topo::server_ip(0),
        "raced",
        "suite-race-key-0123456789",
        "1s",
        &[],
    );
    client.wait_log(dtun::client::LOG_TUNNEL_UP, UP);
    let (_, peer) = wait_p2p(topo.client(), &only_tun(topo.client()));
    // Pings over a few seconds: the forged ServerHellos of the first handshake have all
    // arrived by then, and a session whose server switched suites carries nothing.
    common::wait_for(
        Duration::from_secs(15),
        "pings through the raced tunnel",
        || topo.client().ping_ok(&peer.to_string(), 2),
    );
    assert!(
        race.log().contains("ClientHello from"),
        "the race tool saw no ClientHello; log:\n{}",
        race.log()
    );
    // Every forged ServerHello for every ClientHello seen so far has gone out.
    common::wait_for(Duration::from_secs(5), "the forged ServerHellos", || {
        let log = race.log();
        common::lines_with(&log, &["forged "])
            >= 8 * common::lines_with(&log, &["ClientHello from"])
    });
    assert!(
        topo.client().ping_ok(&peer.to_string(), 3),
        "the tunnel stopped carrying packets after the forged ServerHellos arrived"
    );
    eprintln!("{}", race.log().lines().last().unwrap_or_default());
    client.stop(Duration::from_secs(5));
    race.stop(Duration::from_secs(2));
    server.stop(Duration::from_secs(5));
}
