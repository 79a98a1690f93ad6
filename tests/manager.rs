//! The server's manager must never wait on one client for another: a slow server-side up
//! script (`-up` runs per device) runs beside it, not in it.
//!
//! Run: `cargo test --test manager -- --nocapture`.

mod common;

use common::{DTUN, Netns, Proc, Topo, UP, start_server, wait_for};
use std::time::{Duration, Instant};

fn client(ns: &Netns, server_ip: &str, id: &str) -> Proc {
    ns.spawn(
        DTUN,
        &[
            "-host",
            server_ip,
            "-id",
            id,
            "-key",
            "shared-key-0123456789",
        ],
        &[],
    )
}

/// The first device's up script sleeps 20 s; a second client connecting meanwhile is up
/// within a few seconds, and so is the first (its tunnel does not wait for the server's
/// script either).
#[test]
fn slow_server_up_script_does_not_stall_other_clients() {
    common::need_root!();
    let topo = Topo::star("hB2s", 2);
    let marker = topo.dir.path().join("slow");
    let ran = topo.dir.path().join("ran");
    // Only the first run sleeps (mkdir succeeds once); `exec` so that killing the script on
    // shutdown kills the sleep too.
    let up = topo.dir.script(
        "up",
        &format!(
            "#!/bin/sh\nif mkdir {m} 2>/dev/null; then exec sleep 20; fi\necho \"$TUN\" >> {r}\n",
            m = marker.display(),
            r = ran.display()
        ),
    );
    let mut server = start_server(
        &topo.server,
        443,
        &[
            "-key",
            "shared-key-0123456789",
            "-up",
            up.to_str().unwrap(),
            "-v",
        ],
    );
    let mut first = client(&topo.clients[0], &Topo::server_ip(0), "first");
    wait_for(UP, "the first device's up script to start sleeping", || {
        marker.exists()
    });
    let t0 = Instant::now();
    let mut second = client(&topo.clients[1], &Topo::server_ip(1), "second");
    let limit = Duration::from_secs(5);
    second.wait_log(dtun::client::LOG_TUNNEL_UP, limit);
    let second_up = t0.elapsed();
    wait_for(limit, "the second device's up script", || ran.exists());
    first.wait_log(dtun::client::LOG_TUNNEL_UP, limit);
    let first_up = t0.elapsed();
    eprintln!("second client up after {second_up:?}, first after {first_up:?}");
    // Both tunnels carry traffic while the first script still sleeps.
    for ns in &topo.clients {
        let dev = common::only_tun(ns);
        let (_, peer) = common::wait_p2p(ns, &dev);
        assert!(ns.ping_ok(&peer.to_string(), 2), "no ping through {dev}");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    common::assert_running(&mut server, "server");
}
