//! A live session as the manager keeps it (the demultiplexer's half is `demux::SessionRx`),
//! and what can go wrong while one is set up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::pump::{self, OutboundCmd};
use dtun_linux::netlink::NetlinkError;
use dtun_linux::tun::TunError;
use dtun_proto::inbound::Counters;
use dtun_proto::pool::PoolError;
use dtun_proto::record;
use dtun_proto::session::server::ServerSession;

pub(super) struct Session {
    pub(super) session_id: u64,
    pub(super) addr: SocketAddr,
    pub(super) out_tx: mpsc::Sender<OutboundCmd>,
    pub(super) out_task: pump::OutboundTask,
    pub(super) counters: Arc<Counters>,
    /// The session's control logic: setup deadline, Hello exchange, keepalive, endings.
    pub(super) control: ServerSession,
    /// Authenticated records seen at the last check (when it moves, the session heard from
    /// its client).
    pub(super) seen: u64,
    /// The key its handshake was completed with: a reload that changes the id's key ends it.
    pub(super) key_id: dtun_proto::keys::KeyId,
    /// The session's suite and when its handshake completed (for status).
    pub(super) suite: record::Suite,
    pub(super) started: Instant,
    /// When its keys last changed by a rekey.
    pub(super) rekeyed_at: Option<Instant>,
    /// How often it moved to a new address (roaming).
    pub(super) moves: u64,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("sending to {0} failed: {1}")]
    Send(SocketAddr, std::io::Error),
    #[error(transparent)]
    Firewall(#[from] dtun_linux::nft::NftError),
}

impl SessionError {
    /// What the client is told (Close "setup failed"): the kind of failure only. The server's
    /// log has the whole error; its text may name other clients (a fixed address held by
    /// another id) or say how many there are.
    pub(super) fn for_the_client(&self) -> String {
        match self {
            SessionError::Pool(_) => "no tunnel address is free for this id".into(),
            SessionError::Tun(_) => "its TUN device could not be made".into(),
            SessionError::Netlink(_) => "its device could not be configured".into(),
            SessionError::Send(..) => "sending failed".into(),
            SessionError::Firewall(_) => "the firewall could not take its device".into(),
        }
    }
}
