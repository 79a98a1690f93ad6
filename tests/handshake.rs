//! Our two handshakes (`dtun_proto::handshake`) against the webrtc-rs `dtls` crate
//! (tests/common/dtls_peer.rs), an independent implementation:
//! - our server and admission against the crate's client (what a dtun client ran before it
//!   had its own), over two UDP sockets on loopback: both suites complete with the same keys on
//!   both sides; a wrong key and an unknown identity fail alike, with the same alert on the
//!   wire (RFC 4279 §2: ids cannot be enumerated);
//! - our client (`ClientHandshake`) against the crate's server over an in-process channel, no
//!   socket: the crate's HelloVerifyRequest, both suites in our order, the same keys, the hint
//!   and identity across; with datagrams lost on the way, our client's resends get through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/dtls_peer.rs"]
mod dtls;

use dtls::{ChannelConn, Role};
use dtun_proto::admission::{Admission, Outcome};
use dtun_proto::handshake::{ClientHandshake, Progress};
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

/// Our client against the crate's server; `lose(n)` says whether the n-th datagram of either
/// direction is lost. Returns both sides' results.
async fn ours_against_the_crate(
    client_suites: &[Suite],
    server_suites: &[Suite],
    mut lose: impl FnMut(usize) -> bool,
) -> (
    Result<Box<dtun_proto::handshake::Established>, dtun_proto::handshake::Failure>,
    Result<dtls::Established, dtls::Failure>,
) {
    let (to_server, server_rx) = mpsc::channel(64);
    let (server_tx, mut to_client) = mpsc::channel(64);
    let conn = ChannelConn::in_memory(server_rx, server_tx);
    let suites = server_suites.to_vec();
    let server =
        tokio::spawn(
            async move { dtls::serve(b"the key", b"dtun;dtun-ctl=1", &suites, conn).await },
        );
    let rng = ring::rand::SystemRandom::new();
    let (mut hs, first) =
        ClientHandshake::new(b"laptop", b"the key", client_suites, &rng, Instant::now()).unwrap();
    let mut n = 0;
    let mut send = |dg: Vec<u8>| {
        n += 1;
        if !lose(n - 1) {
            to_server.try_send(dg).unwrap();
        }
    };
    send(first);
    let client = loop {
        let timer = tokio::time::Instant::from_std(hs.next_timeout().unwrap());
        tokio::select! {
            Some(dg) = to_client.recv() => match hs.datagram(Instant::now(), &dg) {
                Ok(Progress::Send(d)) => send(d),
                Ok(Progress::Wait) => {}
                Ok(Progress::Established(e)) => break Ok(e),
                Err(f) => break Err(f),
            },
            _ = tokio::time::sleep_until(timer) => match hs.timeout(Instant::now()) {
                Ok(Some(d)) => send(d),
                Ok(None) => {}
                Err(f) => break Err(f),
            },
        }
    };
    let server = tokio::time::timeout(Duration::from_secs(25), server)
        .await
        .unwrap()
        .unwrap();
    (client, server)
}

#[tokio::test]
async fn our_client_completes_against_the_crates_server_with_the_same_keys() {
    let both = [Suite::Aes128Gcm, Suite::Aes128Ccm8];
    for (ours, theirs) in [
        (vec![Suite::Aes128Gcm, Suite::Aes128Ccm8], both.to_vec()),
        (vec![Suite::Aes128Ccm8, Suite::Aes128Gcm], both.to_vec()),
        (
            vec![Suite::Aes128Gcm, Suite::Aes128Ccm8],
            vec![Suite::Aes128Ccm8],
        ),
    ] {
        let (c, s) = ours_against_the_crate(&ours, &theirs, |_| false).await;
        let c = c.unwrap_or_else(|f| panic!("our client failed: {:?}", f.error));
        let s = s.unwrap_or_else(|f| panic!("the crate's server failed: {:?}", f.error));
        let expect = *ours.iter().find(|x| theirs.contains(x)).unwrap();
        assert_eq!(
            (c.suite, s.suite),
            (expect, expect),
            "{ours:?} to {theirs:?}"
        );
        assert_eq!(c.keys, s.keys, "both sides derived the same keys");
        assert_eq!(
            c.peer_identity, b"dtun;dtun-ctl=1",
            "we got the crate's hint"
        );
        assert_eq!(s.peer_identity, b"laptop", "the crate got our identity");
    }
}

#[tokio::test]
async fn our_client_resends_through_lost_datagrams_to_the_crates_server() {
    // Our second ClientHello (the one with the cookie) and our first last flight are lost.
    for lost in [1, 2] {
        let started = Instant::now();
        let (c, s) =
            ours_against_the_crate(&[Suite::Aes128Gcm], &[Suite::Aes128Gcm], |n| n == lost).await;
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.keys, s.keys);
        let took = started.elapsed();
        assert!(
            took >= dtun_proto::consts::FLIGHT_INTERVAL / 2 && took < Duration::from_secs(5),
            "datagram {lost} lost: took {took:?}"
        );
    }
}
