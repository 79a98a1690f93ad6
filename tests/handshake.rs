//! Our server handshake (`dtun_proto::handshake`, `dtun_proto::admission`) against the DTLS crate's
//! client (what a dtun client runs), over two UDP sockets on loopback: both suites complete
//! with the same keys on both sides; a wrong key and an unknown identity fail alike, with the
//! same alert on the wire (RFC 4279 §2: ids cannot be enumerated).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtun::dtls::{self, ChannelConn, Role};
use dtun_proto::admission::{Admission, Outcome};
use dtun_proto::record::Suite;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// What the server side saw: the keys of a completed handshake, or the failure and the bytes
/// of the alert it sent.
enum Seen {
    Done(Box<dtun_proto::handshake::Completed>),
    Failed(String, Vec<u8>),
}

async fn run(
    client_key: &[u8],
    server_key: Option<&[u8]>,
    suites: &[Suite],
) -> (Seen, Result<dtls::Established, dtls::Failure>) {
    let server = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let client = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let server_addr = server.local_addr().unwrap();
    client.connect(server_addr).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    let reader = Arc::clone(&client);
    let pump = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = reader.recv(&mut buf).await {
            if tx.send(buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
    });
    let conn = ChannelConn::new(rx, Arc::clone(&client), server_addr, true);
    let role = Role::Client {
        identity: b"laptop".to_vec(),
        key: client_key.to_vec(),
    };
    let suites_c = suites.to_vec();
    let hs = tokio::spawn(async move { dtls::handshake(role, &suites_c, conn).await });

    let mut adm = Admission::new(suites.to_vec(), b"dtun;dtun-ctl=1".to_vec(), Instant::now());
    let mut buf = vec![0u8; 2048];
    let dummy = b"a dummy key the client cannot know".to_vec();
    let seen = loop {
        let (n, from): (usize, SocketAddr) =
            tokio::time::timeout(Duration::from_secs(10), server.recv_from(&mut buf))
                .await
                .expect("the client went quiet")
                .unwrap();
        let key = |id: &[u8]| {
            assert_eq!(id, b"laptop");
            server_key
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| dummy.clone())
        };
        match adm.datagram(&buf[..n], from, Instant::now(), key) {
            Outcome::Reply => {
                server.send_to(&adm.reply, from).await.unwrap();
            }
            Outcome::Completed(c) => {
                server.send_to(&c.final_flight, from).await.unwrap();
                break Seen::Done(c);
            }
            Outcome::Failed { why, alert, .. } => {
                assert!(alert, "a failed Finished is answered with an alert");
                server.send_to(&adm.reply, from).await.unwrap();
                break Seen::Failed(why, adm.reply.clone());
            }
            Outcome::Quiet => {}
            Outcome::NotOurs | Outcome::Refused => panic!("unexpected outcome"),
        }
    };
    let est = tokio::time::timeout(Duration::from_secs(25), hs)
        .await
        .unwrap()
        .unwrap();
    pump.abort();
    (seen, est)
}

#[tokio::test]
async fn the_crate_client_completes_both_suites_with_the_same_keys() {
    for suites in [
        vec![Suite::Aes128Gcm, Suite::Aes128Ccm8],
        vec![Suite::Aes128Ccm8],
        vec![Suite::Aes128Gcm],
    ] {
        let (seen, est) = run(b"the key", Some(b"the key"), &suites).await;
        let Seen::Done(c) = seen else {
            panic!("server side failed for {suites:?}")
        };
        let est = est.unwrap_or_else(|f| panic!("client side failed: {:?}", f.error));
        assert_eq!(c.suite, suites[0], "the client's first choice");
        assert_eq!(est.suite, c.suite);
        assert_eq!(est.keys, c.keys, "both sides derived the same keys");
        assert_eq!(c.identity, b"laptop");
        assert_eq!(
            est.peer_identity, b"dtun;dtun-ctl=1",
            "the client got our hint"
        );
    }
}

#[tokio::test]
async fn a_wrong_key_and_an_unknown_identity_look_the_same_on_the_wire() {
    let (wrong, est_w) = run(b"client key", Some(b"server key"), &[Suite::Aes128Gcm]).await;
    let (unknown, est_u) = run(b"client key", None, &[Suite::Aes128Gcm]).await;
    let (Seen::Failed(why_w, alert_w), Seen::Failed(why_u, alert_u)) = (wrong, unknown) else {
        panic!("both must fail")
    };
    assert_eq!(why_w, why_u);
    assert_eq!(alert_w, alert_u, "the same alert record");
    assert_eq!(&alert_w[13..], &[2, 51], "fatal decrypt_error");
    assert!(est_w.is_err() && est_u.is_err());
}
