//! The client's DTLS 1.2 handshake, done by the webrtc-rs `dtls` crate over datagrams that we
//! route to it ourselves; afterwards only its key material is used (our `record` layer takes
//! over). The server's side is our own (`dtun_proto::handshake`), so that admission under a flood
//! is ours from the first byte.
//!
//! The crate reads from a [`ChannelConn`]: the client loop pushes each datagram of the server
//! into a channel, and the crate's replies go straight out of the socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dtls::cipher_suite::CipherSuiteId;
use dtls::config::{Config, ExtendedMasterSecretType};
use dtls::conn::DTLSConn;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use webrtc_util::conn::Conn;

use dtun_proto::consts::{
    CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE, FLIGHT_INTERVAL, HANDSHAKE_TIMEOUT,
    RECORD_HEADER_LEN,
};
use dtun_proto::kdf::{KeyBlock, RANDOM_LEN, key_block};
use dtun_proto::record::{self, Suite};

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no handshake completed within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Failed(String),
    #[error("unexpected key material from the DTLS crate: {0}")]
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

/// Looks up the key for a client's PSK identity; None: unknown.
pub type KeyLookup = Arc<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// What our side of the handshake needs: the client's identity and key.
pub enum Role {
    Client { identity: Vec<u8>, key: Vec<u8> },
}

/// A completed client handshake.
pub struct Established {
    pub suite: Suite,
    pub keys: KeyBlock,
    /// The server's identity hint.
    pub peer_identity: Vec<u8>,
    /// The crate's connection; dropping it stops the crate's tasks.
    pub conn: DTLSConn,
}

/// The datagram "connection" the crate reads and writes.
pub struct ChannelConn {
    rx: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    /// The socket is connected to `peer`: use send, not send_to.
    connected: bool,
    /// Cipher suite of the first ServerHello that came in (0: none yet). The crate does not
    /// tell which suite it negotiated, so we read it off the wire as it passes.
    suite: Arc<AtomicU16>,
}

impl ChannelConn {
    pub fn new(
        rx: mpsc::Receiver<Vec<u8>>,
        sock: Arc<UdpSocket>,
        peer: SocketAddr,
        connected: bool,
    ) -> Self {
        ChannelConn {
            rx: tokio::sync::Mutex::new(rx),
            sock,
            peer,
            connected,
            suite: Arc::default(),
        }
    }

    /// Reads what the crate does not tell: the negotiated suite. Only handshake datagrams
    /// pass here.
    fn sniff(&self, datagram: &[u8], outgoing: bool) {
        // Only the peer's ServerHello says what was negotiated, and only the first one: a
        // spoofed one arriving later must not switch the record layer.
        if !outgoing && let Some(id) = server_hello_suite(datagram) {
            let _ = self
                .suite
                .compare_exchange(0, id, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

const SERVER_HELLO: u8 = 2;

/// Calls `f(msg_type, fragment)` for each unencrypted (epoch 0) handshake message in a
/// datagram whose fragment starts the message.
fn for_each_hello(datagram: &[u8], mut f: impl FnMut(u8, &[u8])) {
    /// msg_type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3).
    const HS_HEADER: usize = 12;
    let u24 = |b: &[u8]| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
    for range in record::records(datagram) {
        let Some(rec) = range.ok().and_then(|r| datagram.get(r)) else {
            return;
        };
        if rec[0] != CONTENT_HANDSHAKE || rec[3..5] != [0, 0] {
            continue;
        }
        let mut body = &rec[RECORD_HEADER_LEN..];
        while body.len() >= HS_HEADER {
            let (offset, len) = (u24(&body[6..9]), u24(&body[9..12]));
            let Some(frag) = body.get(HS_HEADER..HS_HEADER + len) else {
                return;
            };
            if offset == 0 {
                f(body[0], frag);
            }
            body = &body[HS_HEADER + len..];
        }
    }
}

/// Whether a datagram carries part of a last handshake flight: a ChangeCipherSpec record or
/// an encrypted handshake record (the Finished, the only one in epoch 1). Only the last flight
/// of each side has either: the server's ChangeCipherSpec + Finished, the client's
/// ClientKeyExchange + ChangeCipherSpec + Finished.
pub fn is_final_flight(datagram: &[u8]) -> bool {
    record::records(datagram).any(|r| {
        r.ok().and_then(|r| datagram.get(r)).is_some_and(|rec| {
            rec[0] == CONTENT_CHANGE_CIPHER_SPEC
                || (rec[0] == CONTENT_HANDSHAKE && rec[3..5] != [0, 0])
        })
    })
}

/// The cipher suite a ServerHello in this datagram chose, if the datagram carries one.
pub fn server_hello_suite(datagram: &[u8]) -> Option<u16> {
    let mut found = None;
    for_each_hello(datagram, |t, frag| {
        if t == SERVER_HELLO {
            // server_version(2) random(32) session_id<0..32> cipher_suite(2)
            let sid = frag.get(34).map(|n| usize::from(*n));
            if let Some(cs) = sid.and_then(|sid| frag.get(35 + sid..37 + sid)) {
                found = Some(u16::from_be_bytes([cs[0], cs[1]]));
            }
        }
    });
    found
}

#[async_trait]
impl Conn for ChannelConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        match self.rx.lock().await.recv().await {
            Some(d) => {
                self.sniff(&d, false);
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            // The router let go of this peer: never wake the crate's reader again (an error
            // would make it spin); it ends when its DTLSConn is dropped.
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

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.sniff(buf, true);
        let r = if self.connected {
            self.sock.send(buf).await
        } else {
            self.sock.send_to(buf, target).await
        };
        match r {
            // Dropped locally (firewall, full queue): lost like any datagram; the crate's
            // retransmission deals with it.
            Err(e) if dtun_linux::udp::is_lost_datagram(&e) => Ok(buf.len()),
            r => r.map_err(webrtc_util::Error::from),
        }
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.sock.local_addr().map_err(webrtc_util::Error::from)
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

/// A failed handshake, with the identity the peer claimed (server) or hinted (client), if any.
#[derive(Debug)]
pub struct Failure {
    pub error: HandshakeError,
    pub peer_identity: Vec<u8>,
}

/// Runs one handshake over `conn` with a deadline, offering `suites` in order of preference
/// (a client's order decides).
pub async fn handshake(
    role: Role,
    suites: &[Suite],
    conn: ChannelConn,
) -> Result<Established, Failure> {
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    run_handshake(role, suites, conn, &seen)
        .await
        .map_err(|error| Failure {
            error,
            peer_identity: seen.lock().map(|s| s.clone()).unwrap_or_default(),
        })
}

async fn run_handshake(
    role: Role,
    suites: &[Suite],
    conn: ChannelConn,
    seen: &Arc<Mutex<Vec<u8>>>,
) -> Result<Established, HandshakeError> {
    let seen_cb = Arc::clone(seen);
    let (psk, hint): (PskCallback, Vec<u8>) = match role {
        Role::Client { identity, key } => (
            Arc::new(move |server_hint: &[u8]| {
                if let Ok(mut s) = seen_cb.lock() {
                    *s = server_hint.to_vec();
                }
                let key = key.clone();
                Box::pin(async move { Ok(key) })
            }),
            identity,
        ),
    };
    let config = Config {
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
    };
    let chosen = Arc::clone(&conn.suite);
    let dtls_conn = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        DTLSConn::new(Arc::new(conn), config, true, None),
    )
    .await
    .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
    .map_err(|e| HandshakeError::Failed(e.to_string()))?;

    let suite = Suite::from_id(chosen.load(Ordering::Relaxed))
        .filter(|s| suites.contains(s))
        .ok_or(HandshakeError::KeyMaterial(
            "no ServerHello with an offered suite was seen",
        ))?;
    let state = dtls_conn.connection_state().await;
    let kl = state
        .key_log_data()
        .map_err(|_| HandshakeError::KeyMaterial("no key log data"))?;
    let random = |v: &[u8]| -> Result<[u8; RANDOM_LEN], HandshakeError> {
        v.try_into()
            .map_err(|_| HandshakeError::KeyMaterial("hello random is not 32 bytes"))
    };
    let (local, remote) = (random(&kl.local_random)?, random(&kl.remote_random)?);
    let (client_random, server_random) = (local, remote);
    if kl.master_secret.len() != dtun_proto::kdf::MASTER_SECRET_LEN {
        return Err(HandshakeError::KeyMaterial("master secret is not 48 bytes"));
    }
    let keys = key_block(&kl.master_secret, &client_random, &server_random);
    let peer_identity = seen.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(Established {
        suite,
        keys,
        peer_identity,
        conn: dtls_conn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtun_proto::handshake::{ServerHandshake, parse_client_hello, testing::client_hello};

    /// A datagram with a ServerHello choosing `suite` (our server's flight).
    fn server_hello(suite: Suite) -> Vec<u8> {
        let ch = client_hello([1; 32], b"c", 1, 1);
        let ch = parse_client_hello(&ch).unwrap();
        ServerHandshake::start(&ch, &[suite], b"", std::time::Instant::now())
            .unwrap()
            .flight()
    }

    /// Review item 7: a ServerHello spoofed after the real one (or one seen going out) must not
    /// switch the suite the record layer uses.
    #[tokio::test]
    async fn only_the_first_incoming_server_hello_sets_the_suite() {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (_tx, rx) = mpsc::channel(1);
        let conn = ChannelConn::new(rx, sock, "127.0.0.1:9".parse().unwrap(), true);
        let (gcm, ccm8) = (
            server_hello(Suite::Aes128Gcm),
            server_hello(Suite::Aes128Ccm8),
        );
        conn.sniff(&ccm8, true);
        assert_eq!(
            conn.suite.load(Ordering::Relaxed),
            0,
            "outgoing ServerHellos are not ours"
        );
        conn.sniff(&gcm, false);
        conn.sniff(&ccm8, false);
        assert_eq!(
            conn.suite.load(Ordering::Relaxed),
            Suite::Aes128Gcm.id(),
            "a later ServerHello switched the suite"
        );
    }
}
