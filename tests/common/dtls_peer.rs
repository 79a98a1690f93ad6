//! The webrtc-rs `dtls` crate as an independent reference peer for our two handshakes
//! (`dtun_proto::handshake`): its client (what a dtun client ran before it had its own) over a
//! UDP socket the test made, and its server over an in-process channel, no socket at all. Only
//! its key material is read afterwards; our record layer does the rest.
//!
//! Included with `#[path = "common/dtls_peer.rs"] mod dtls;` by the tests that use it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dtls::cipher_suite::CipherSuiteId;
use dtls::config::{Config, ExtendedMasterSecretType};
use dtls::conn::DTLSConn;
use dtun_proto::consts::{FLIGHT_INTERVAL, HANDSHAKE_TIMEOUT};
use dtun_proto::handshake::server_hello_suite;
use dtun_proto::kdf::{KeyBlock, MASTER_SECRET_LEN, RANDOM_LEN, key_block};
use dtun_proto::record::Suite;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use webrtc_util::conn::Conn;

#[derive(Debug)]
pub enum HandshakeError {
    Timeout,
    Failed(String),
    KeyMaterial(&'static str),
}

/// The crate's PSK callback type (not exported by the crate under a name).
type PskCallback = Arc<
    dyn (Fn(
            &[u8],
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Vec<u8>, dtls::Error>> + Send>,
        >) + Send
        + Sync,
>;

/// The crate's client: our identity and key.
pub enum Role {
    Client { identity: Vec<u8>, key: Vec<u8> },
}

/// A completed handshake of the crate's.
pub struct Established {
    pub suite: Suite,
    pub keys: KeyBlock,
    /// The identity hint (client) or identity (server) the peer sent.
    pub peer_identity: Vec<u8>,
    /// The crate's connection; dropping it stops the crate's tasks.
    pub conn: DTLSConn,
}

#[derive(Debug)]
pub struct Failure {
    pub error: HandshakeError,
    pub peer_identity: Vec<u8>,
}

/// The datagram "connection" the crate's client reads and writes: the test pushes each
/// datagram of the server into `rx`, the crate's go out of the socket.
pub struct ChannelConn {
    rx: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
    out: Out,
    peer: SocketAddr,
    /// Cipher suite of the first ServerHello that passed (0: none yet). The crate does not
    /// tell which suite it negotiated, so it is read off the wire.
    suite: Arc<AtomicU16>,
}

enum Out {
    /// A UDP socket connected to the peer.
    Socket(Arc<UdpSocket>),
    /// A channel to the peer, in the test's own process.
    Channel(mpsc::Sender<Vec<u8>>),
}

impl ChannelConn {
    /// Over a UDP socket: `connected` must be true (the socket is connected to `peer`).
    pub fn new(
        rx: mpsc::Receiver<Vec<u8>>,
        sock: Arc<UdpSocket>,
        peer: SocketAddr,
        connected: bool,
    ) -> Self {
        assert!(connected, "the socket is connected to the peer");
        ChannelConn {
            rx: tokio::sync::Mutex::new(rx),
            out: Out::Socket(sock),
            peer,
            suite: Arc::default(),
        }
    }

    /// Over two channels, no socket at all.
    pub fn in_memory(rx: mpsc::Receiver<Vec<u8>>, tx: mpsc::Sender<Vec<u8>>) -> Self {
        ChannelConn {
            rx: tokio::sync::Mutex::new(rx),
            out: Out::Channel(tx),
            peer: "192.0.2.1:443".parse().unwrap(),
            suite: Arc::default(),
        }
    }

    fn sniff(&self, datagram: &[u8]) {
        if let Some(id) = server_hello_suite(datagram) {
            let _ = self
                .suite
                .compare_exchange(0, id, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl Conn for ChannelConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        match self.rx.lock().await.recv().await {
            Some(d) => {
                self.sniff(&d);
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => std::future::pending().await,
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let n = self.recv(buf).await?;
        Ok((n, self.peer))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.peer).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.sniff(buf);
        match &self.out {
            Out::Socket(s) => s.send(buf).await.map_err(webrtc_util::Error::from),
            Out::Channel(tx) => {
                // A full or closed channel loses the datagram, as a network would.
                let _ = tx.try_send(buf.to_vec());
                Ok(buf.len())
            }
        }
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok("192.0.2.2:4000".parse().unwrap())
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

fn config(suites: &[Suite], psk: PskCallback, hint: Vec<u8>) -> Config {
    Config {
        cipher_suites: suites
            .iter()
            .map(|s| match s {
                Suite::Aes128Ccm8 => CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
                Suite::Aes128Gcm => CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
            })
            .collect(),
        extended_master_secret: ExtendedMasterSecretType::Require,
        flight_interval: FLIGHT_INTERVAL,
        psk: Some(psk),
        psk_identity_hint: Some(hint),
        ..Default::default()
    }
}

/// The key block from the crate's connection state.
async fn keys_of(conn: &DTLSConn, client: bool) -> Result<KeyBlock, HandshakeError> {
    let state = conn.connection_state().await;
    let kl = state
        .key_log_data()
        .map_err(|_| HandshakeError::KeyMaterial("no key log data"))?;
    let random = |v: &[u8]| -> Result<[u8; RANDOM_LEN], HandshakeError> {
        v.try_into()
            .map_err(|_| HandshakeError::KeyMaterial("hello random is not 32 bytes"))
    };
    let (local, remote) = (random(&kl.local_random)?, random(&kl.remote_random)?);
    let (client_random, server_random) = if client {
        (local, remote)
    } else {
        (remote, local)
    };
    if kl.master_secret.len() != MASTER_SECRET_LEN {
        return Err(HandshakeError::KeyMaterial("master secret is not 48 bytes"));
    }
    Ok(key_block(&kl.master_secret, &client_random, &server_random))
}

/// The crate's client: one handshake over `conn` with a deadline, offering `suites` in order.
pub async fn handshake(
    role: Role,
    suites: &[Suite],
    conn: ChannelConn,
) -> Result<Established, Failure> {
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let Role::Client { identity, key } = role;
    let seen_cb = Arc::clone(&seen);
    let psk: PskCallback = Arc::new(move |hint: &[u8]| {
        *seen_cb.lock().unwrap() = hint.to_vec();
        let key = key.clone();
        Box::pin(async move { Ok(key) })
    });
    run(config(suites, psk, identity), conn, true, &seen).await
}

/// The crate's server: one handshake over `conn`, with `key` for every identity and `hint`.
pub async fn serve(
    key: &[u8],
    hint: &[u8],
    suites: &[Suite],
    conn: ChannelConn,
) -> Result<Established, Failure> {
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let seen_cb = Arc::clone(&seen);
    let key = key.to_vec();
    let psk: PskCallback = Arc::new(move |identity: &[u8]| {
        *seen_cb.lock().unwrap() = identity.to_vec();
        let key = key.clone();
        Box::pin(async move { Ok(key) })
    });
    run(config(suites, psk, hint.to_vec()), conn, false, &seen).await
}

async fn run(
    config: Config,
    conn: ChannelConn,
    client: bool,
    seen: &Arc<Mutex<Vec<u8>>>,
) -> Result<Established, Failure> {
    let fail = |error| Failure {
        error,
        peer_identity: seen.lock().unwrap().clone(),
    };
    let chosen = Arc::clone(&conn.suite);
    let dtls_conn = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        DTLSConn::new(Arc::new(conn), config, client, None),
    )
    .await
    .map_err(|_| fail(HandshakeError::Timeout))?
    .map_err(|e| fail(HandshakeError::Failed(e.to_string())))?;
    let suite = Suite::from_id(chosen.load(Ordering::Relaxed)).ok_or_else(|| {
        fail(HandshakeError::KeyMaterial(
            "no ServerHello with a suite of ours was seen",
        ))
    })?;
    let keys = keys_of(&dtls_conn, client).await.map_err(fail)?;
    Ok(Established {
        suite,
        keys,
        peer_identity: seen.lock().unwrap().clone(),
        conn: dtls_conn,
    })
}
