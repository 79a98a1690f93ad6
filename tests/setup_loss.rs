//! Setup messages lost on the way: a dtun client says Hello again until the server's Hello
//! answer shows that nothing is missing (src/client/hello.rs), so a lost Addr6, Dns, Hello
//! answer or Lans no longer costs the session its IPv6, its DNS or its LANs. The loss is made
//! by a UDP relay of the test's own (tests/tools/relay.py) in the client's namespace, which
//! loses the first datagram of the lost message's exact size; the relay says what it lost, so
//! a test whose loss did not happen fails instead of passing without testing anything.
//!
//!   ns client: dtun client -> 127.0.0.1:443 relay.py -> 172.31.250.1:443 (ns server)
//!
//! Needs root, /dev/net/tun, iproute2, iputils-ping and python3.
//! Run one test: `cargo test --test setup_loss -- --nocapture`.

mod common;

use std::time::Duration;

use common::ipv6::{KEY, LOG_IPV6_UP, wait_p2p6};
use common::{Proc, Topo, UP, lines_with, only_tun, start_client, start_server, wait_for};
use dtun_proto::proto::{Addr6, AddressMessage, CONTROL_VERSION, Control, HelloFlags};

const RELAY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/relay.py");

/// Bytes an AES-128-GCM record (what two dtun peers choose) adds to its plaintext: header,
/// explicit nonce, tag.
const GCM_OVERHEAD: usize = 13 + 8 + 16;

/// The UDP payload length of the record that carries `msg`.
fn wire_len(msg: &Control) -> usize {
    msg.to_bytes().len() + GCM_OVERHEAD
}

fn addr6_len() -> usize {
    wire_len(&Control::Addr6(Addr6 {
        prefix_len: 64,
        client: "fd64::2".parse().unwrap(),
        server: "fd64::1".parse().unwrap(),
    }))
}

fn answer_len() -> usize {
    wire_len(&Control::Hello {
        version: CONTROL_VERSION,
        keepalive_ms: 0,
        flags: HelloFlags::default(),
    })
}

/// The pair topology with the relay in the client's namespace, losing what `drops` says
/// (`up|down:LEN`).
fn lossy(tag: &str, drops: &[String]) -> (Topo, Proc) {
    let topo = Topo::pair(tag);
    let mut args = vec![
        RELAY,
        "--listen",
        "127.0.0.1:443",
        "--server",
        "172.31.250.1:443",
    ];
    for d in drops {
        args.extend(["--drop", d.as_str()]);
    }
    let mut relay = topo.client().spawn("python3", &args, &[]);
    relay.wait_log("relaying", UP);
    (topo, relay)
}

fn client(topo: &Topo, extra: &[&str]) -> Proc {
    let mut args = vec!["-host", "127.0.0.1", "-key", KEY, "-id", "lossy", "-v"];
    args.extend_from_slice(extra);
    start_client(topo.client(), &args)
}

/// Waits until the relay has lost each of `drops`.
fn assert_lost(relay: &mut Proc, drops: &[String]) {
    for d in drops {
        let mut what = d.split(':');
        let (dir, len) = (what.next().unwrap(), what.next().unwrap());
        relay.wait_log(&format!("dropped {dir} {len}"), UP);
    }
}

/// The client's TUN has its IPv6 pair and a ping6 crosses it; then both sides stop.
fn ping6_then_stop(topo: &Topo, mut c: Proc, mut server: Proc) {
    let dev = only_tun(topo.client());
    let (_, peer6) = wait_p2p6(topo.client(), &dev);
    assert!(
        topo.client().ping_ok(&peer6.to_string(), 2),
        "ping6 {peer6}"
    );
    c.stop(Duration::from_secs(5));
    server.stop(Duration::from_secs(5));
}

/// The Addr6 and the Dns before the Hello answer are lost: the answer's flags say both came,
/// so the client asks again at once and gets its IPv6 pair and the DNS servers.
#[test]
fn a_lost_addr6_and_dns_are_asked_for_again() {
    common::need_root!();
    let dns_len = wire_len(&Control::Dns(vec!["2001:db8::53".parse().unwrap()]));
    let drops = [format!("down:{}", addr6_len()), format!("down:{dns_len}")];
    let (topo, mut relay) = lossy("slA", &drops);
    let server = start_server(&topo.server, 443, &["-key", KEY, "-dns", "2001:db8::53"]);
    let mut c = client(&topo, &[]);
    assert_lost(&mut relay, &drops);
    c.wait_log(LOG_IPV6_UP, UP);
    let log = c.log();
    assert_eq!(
        lines_with(&log, &[dtun_linux::dns::LOG_DNS_IGNORED, "2001:db8::53"]),
        1,
        "the pushed DNS servers never came:\n{log}"
    );
    assert!(log.contains("saying Hello again"), "{log}");
    ping6_then_stop(&topo, c, server);
}

/// The Hello answer is lost (its Addr6 came): the client says Hello again after a while and
/// the tunnel comes up with IPv6, well before its 2 s wait would have ended. (The address
/// message before it has the answer's size: the relay lets that one pass.)
#[test]
fn a_lost_hello_answer_is_asked_for_again() {
    common::need_root!();
    let address = AddressMessage {
        client: "10.0.0.2".parse().unwrap(),
        server: "10.0.0.1".parse().unwrap(),
    };
    let skip = usize::from(address.to_bytes().len() + GCM_OVERHEAD == answer_len());
    let drops = [format!("down:{}:1:{skip}", answer_len())];
    let (topo, mut relay) = lossy("slH", &drops);
    let server = start_server(&topo.server, 443, &["-key", KEY]);
    let mut c = client(&topo, &[]);
    assert_lost(&mut relay, &drops);
    c.wait_log(LOG_IPV6_UP, UP);
    let log = c.log();
    assert!(log.contains("saying Hello again"), "{log}");
    assert!(!log.contains("setup incomplete"), "{log}");
    ping6_then_stop(&topo, c, server);
}

/// The client's Lans (its IPv6 LAN) is lost: the Hello answer does not confirm it, so the
/// client sends it again, and the server routes the LAN (a ping6 from the server reaches it).
#[test]
fn a_lost_lans_message_is_sent_again() {
    common::need_root!();
    let lans = Control::Lans(vec!["fd77::/64".parse().unwrap()]);
    let drops = [format!("up:{}", wire_len(&lans))];
    let (topo, mut relay) = lossy("slL", &drops);
    topo.client()
        .ip(&["-6", "addr", "add", "fd77::1/64", "dev", "lo", "nodad"]);
    topo.client()
        .ip(&["addr", "add", "192.168.77.1/24", "dev", "lo"]);
    let mut server = start_server(&topo.server, 443, &["-key", KEY]);
    let mut c = client(&topo, &["-peernet", "192.168.77.0/24,fd77::/64"]);
    assert_lost(&mut relay, &drops);
    let sdev = only_tun(&topo.server);
    wait_for(UP, "the IPv6 LAN's route on the server", || {
        topo.server
            .routes6()
            .contains(&format!("fd77::/64 dev {sdev}"))
    });
    assert!(topo.server.ping_ok("fd77::1", 2), "IPv6 LAN");
    assert!(c.log().contains("saying Hello again"), "{}", c.log());
    c.stop(Duration::from_secs(5));
    server.stop(Duration::from_secs(5));
}
