//! AEAD usage limits end to end: a key that reaches its confidentiality
//! limit (records sealed) or its integrity limit (forged records that failed authentication)
//! ends the session, which a dtun client renews with a new handshake; an original peer's
//! session is not ended by forgeries. The limits are lowered by the test-only variable
//! `DTUN_TEST_AEAD_LIMITS=SEALED_BLOCKS,FAILED_OPENS`, which a release build does not read.
//! Needs root, /dev/net/tun, iproute2, iputils-ping and python3.
//!
//!   [server ns] 172.31.250.1 eth0 ──veth── eth0 172.31.250.2 [client ns]
//!                                              └─ forger: raw IPv4/UDP from the client's port

mod common;

use common::{DTUN, Proc, Topo, UP, assert_running, only_tun, wait_for, wait_p2p};
use std::time::Duration;

const PORT: u16 = 4433;
const SERVER: &str = "172.31.250.1";

/// Sends `n` records from the client's own UDP port (found in /proc/net/udp by its connected
/// peer) to the server: epoch 1, fresh sequence numbers far above the window, a plausible
/// length and a random body, so each passes the cheap checks and fails authentication.
const FORGER: &str = r#"
import os, socket, struct, sys
server, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
want = '%08X:%04X' % (struct.unpack('<I', socket.inet_aton(server))[0], port)
local = None
for line in open('/proc/net/udp').read().splitlines()[1:]:
    f = line.split()
    if f[2] == want:
        ip, p = f[1].split(':')
        local = (socket.inet_ntoa(struct.pack('<I', int(ip, 16))), int(p, 16))
assert local, 'no UDP socket connected to the server'
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(n):
    es = struct.pack('>Q', (1 << 48) | ((1 << 40) + i))  # epoch 1, a fresh sequence number
    body = es + os.urandom(64 + 16)  # explicit nonce, "ciphertext", "tag"
    rec = bytes([23, 0xfe, 0xfd]) + es + struct.pack('>H', len(body)) + body
    udp = struct.pack('>HHHH', local[1], port, 8 + len(rec), 0) + rec
    ip = struct.pack('>BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(local[0]), socket.inet_aton(server))
    raw.sendto(ip + udp, (server, 0))
print('sent', n, 'from', local)
"#;

fn forge(topo: &Topo, n: usize) {
    let out = topo.client().run(
        "python3",
        &["-c", FORGER, SERVER, &PORT.to_string(), &n.to_string()],
    );
    assert!(out.status.success(), "forger: {out:?}");
}

/// A server with lowered limits and a client, both `-keepalive 1s`; waits for the tunnel.
fn rig(tag: &str, limits: &str, compat: bool) -> (Topo, Proc, Proc, String) {
    let topo = Topo::pair(tag);
    let port = PORT.to_string();
    let mut args = vec!["-key", "foo", "-port", &port, "-keepalive", "1s", "-v"];
    if compat {
        args.push("-compat");
    }
    let mut server = topo
        .server
        .spawn(DTUN, &args, &[("DTUN_TEST_AEAD_LIMITS", limits)]);
    wait_for(UP, "server listening", || {
        assert_running(&mut server, "dtun server");
        topo.server.udp_listening(PORT)
    });
    let client = common::start_client(
        topo.client(),
        &[
            "-host",
            SERVER,
            "-port",
            &port,
            "-key",
            "foo",
            "-keepalive",
            "1s",
            "-v",
        ],
    );
    let (_, peer) = wait_p2p(topo.client(), &only_tun(topo.client()));
    (topo, server, client, peer.to_string())
}

fn tunnels_up(client: &Proc) -> usize {
    common::lines_with(&client.log(), &[dtun::client::LOG_TUNNEL_UP])
}

/// The server's send key reaches its (lowered) confidentiality limit: the server closes with
/// reason 4 (exhausted) while it can still seal the close, and the client handshakes again.
/// Before the fix only the 2^48 sequence numbers were counted: the session went on.
#[test]
fn a_send_key_at_its_usage_limit_closes_and_the_client_reconnects() {
    common::need_root!();
    // The 2^16-block reserve plus about 30 echo replies of 1 028 bytes (66 GCM blocks each).
    let limit = format!("{},1000000", (1u64 << 16) + 2000);
    let (topo, mut server, mut client, peer) = rig("lAs", &limit, false);
    let _pinger = topo.client().spawn(
        "ping",
        &["-n", "-q", "-s", "1000", "-i", "0.05", "-w", "25", &peer],
        &[],
    );
    wait_for(Duration::from_secs(25), "a second `tunnel up`", || {
        assert_running(&mut client, "dtun client");
        assert_running(&mut server, "dtun server");
        tunnels_up(&client) >= 2
    });
    let (s_log, c_log) = (server.log(), client.log());
    assert!(
        s_log.contains("keys are nearly used up"),
        "the server says why:\n{s_log}"
    );
    assert!(
        c_log.contains("the session's keys are used up"),
        "Close reason 4, in words:\n{c_log}"
    );
}

/// Forged records that pass the cheap checks and fail authentication reach the read key's
/// (lowered) integrity limit: the server ends the dtun client's session with reason 4 and the
/// client handshakes again. Before the fix failed authentications were only counted drops.
#[test]
fn forgeries_at_the_integrity_limit_make_a_dtun_pair_handshake_again() {
    common::need_root!();
    let (topo, mut server, mut client, _) = rig("lAf", "100000000000,20", false);
    forge(&topo, 30);
    wait_for(Duration::from_secs(20), "a second `tunnel up`", || {
        assert_running(&mut client, "dtun client");
        assert_running(&mut server, "dtun server");
        tunnels_up(&client) >= 2
    });
    let (s_log, c_log) = (server.log(), client.log());
    assert!(s_log.contains("integrity limit"), "{s_log}");
    assert!(s_log.contains("keys are nearly used up"), "{s_log}");
    assert!(
        c_log.contains("the session's keys are used up"),
        "Close reason 4, in words:\n{c_log}"
    );
}

/// With an original peer (a `-compat` server stands in for one side; the suite is CCM_8) the
/// same forgeries are logged but do not end the session: the original cannot be told why, so
/// closing would only hand an off-path spoofer a way to cut originals off at will.
#[test]
fn forgeries_do_not_end_an_original_peers_session() {
    common::need_root!();
    let (topo, mut server, mut client, peer) = rig("lAo", "100000000000,20", true);
    forge(&topo, 30);
    wait_for(Duration::from_secs(20), "the integrity warning", || {
        assert_running(&mut server, "dtun server");
        server.log().contains("integrity limit")
    });
    assert!(topo.client().ping_ok(&peer, 3), "{}", server.log());
    assert_running(&mut client, "dtun client");
    assert_eq!(tunnels_up(&client), 1, "{}", client.log());
    assert!(!server.log().contains("disconnected"), "{}", server.log());
}
