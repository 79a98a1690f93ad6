//! The DTLS 1.2 handshake, done by the webrtc-rs `dtls` crate over datagrams that we route to
//! it ourselves; afterwards only its key material is used (our `record` layer takes over).
//!
//! The crate reads from a [`ChannelConn`]: the socket's owner (server demultiplexer or client
//! loop) pushes each datagram of this peer into a channel, and the crate's replies go straight
//! out of the shared socket. Keeping the returned `DTLSConn` alive lets the crate answer a
//! retransmitted final flight after the handover.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dtls::cipher_suite::CipherSuiteId;
use dtls::config::{Config, ExtendedMasterSecretType};
use dtls::conn::DTLSConn;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use webrtc_util::conn::Conn;

use crate::consts::{FLIGHT_INTERVAL, HANDSHAKE_TIMEOUT};
use crate::kdf::{KeyBlock, RANDOM_LEN, key_block};
use crate::record::Suite;

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

/// Looks up the key for a client's PSK identity; None refuses the identity.
pub type KeyLookup = Arc<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// Which side of the handshake we are, with what it needs.
pub enum Role {
    Server { hint: Vec<u8>, lookup: KeyLookup },
    Client { identity: Vec<u8>, key: Vec<u8> },
}

/// A completed handshake.
pub struct Established {
    pub suite: Suite,
    pub keys: KeyBlock,
    /// Server: the client's PSK identity. Client: the server's identity hint.
    pub peer_identity: Vec<u8>,
    /// The crate's connection; dropping it stops the crate's tasks.
    pub conn: DTLSConn,
}

/// The datagram "connection" the crate reads and writes.
pub struct ChannelConn {
    rx: tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>,
    sock: Arc<UdpSocket>,
    peer: SocketAddr,
    /// The socket is connected to `peer` (client): use send, not send_to.
    connected: bool,
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
        let r = if self.connected {
            self.sock.send(buf).await
        } else {
            self.sock.send_to(buf, target).await
        };
        match r {
            // Dropped locally (firewall, full queue): lost like any datagram; the crate's
            // retransmission deals with it.
            Err(e) if crate::pump::is_lost_datagram(&e) => Ok(buf.len()),
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

/// Runs one handshake over `conn` with a deadline.
pub async fn handshake(role: Role, conn: ChannelConn) -> Result<Established, Failure> {
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    run_handshake(role, conn, &seen)
        .await
        .map_err(|error| Failure {
            error,
            peer_identity: seen.lock().map(|s| s.clone()).unwrap_or_default(),
        })
}

async fn run_handshake(
    role: Role,
    conn: ChannelConn,
    seen: &Arc<Mutex<Vec<u8>>>,
) -> Result<Established, HandshakeError> {
    let is_client = matches!(role, Role::Client { .. });
    let seen_cb = Arc::clone(seen);
    let (psk, hint): (PskCallback, Vec<u8>) = match role {
        Role::Server { hint, lookup } => (
            Arc::new(move |identity: &[u8]| {
                if let Ok(mut s) = seen_cb.lock() {
                    *s = identity.to_vec();
                }
                let key = lookup(identity);
                Box::pin(async move {
                    key.ok_or_else(|| dtls::Error::Other("unknown PSK identity".into()))
                })
            }),
            hint,
        ),
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
        cipher_suites: vec![CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8],
        extended_master_secret: ExtendedMasterSecretType::Require,
        flight_interval: FLIGHT_INTERVAL,
        psk: Some(psk),
        psk_identity_hint: Some(hint),
        ..Default::default()
    };
    let dtls_conn = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        DTLSConn::new(Arc::new(conn), config, is_client, None),
    )
    .await
    .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
    .map_err(|e| HandshakeError::Failed(e.to_string()))?;

    let state = dtls_conn.connection_state().await;
    let kl = state
        .key_log_data()
        .map_err(|_| HandshakeError::KeyMaterial("no key log data"))?;
    let random = |v: &[u8]| -> Result<[u8; RANDOM_LEN], HandshakeError> {
        v.try_into()
            .map_err(|_| HandshakeError::KeyMaterial("hello random is not 32 bytes"))
    };
    let (local, remote) = (random(&kl.local_random)?, random(&kl.remote_random)?);
    let (client_random, server_random) = if is_client {
        (local, remote)
    } else {
        (remote, local)
    };
    if kl.master_secret.len() != crate::kdf::MASTER_SECRET_LEN {
        return Err(HandshakeError::KeyMaterial("master secret is not 48 bytes"));
    }
    let keys = key_block(&kl.master_secret, &client_random, &server_random);
    let peer_identity = seen.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(Established {
        suite: Suite::Aes128Ccm8,
        keys,
        peer_identity,
        conn: dtls_conn,
    })
}
