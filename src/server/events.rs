//! What the handshake tasks and the demultiplexer tell the manager (the manager's commands to
//! the demultiplexer are `demux::DemuxCmd`).

use std::net::SocketAddr;

use dtun_proto::handshake::Completed;
use dtun_proto::proto::{Control, Peernet, ProtoError};

/// Handshake tasks and the demultiplexer → manager.
pub(super) enum Event {
    Authenticated {
        addr: SocketAddr,
        est: Box<Completed>,
    },
    Peernet {
        session_id: u64,
        peernet: Result<Peernet, ProtoError>,
    },
    Closed {
        session_id: u64,
        level: u8,
        desc: u8,
    },
    Control {
        session_id: u64,
        msg: Control,
    },
    /// The client's peernet message was lost (something else came first).
    SetupLost {
        session_id: u64,
    },
    /// A roaming client answered our path challenge from `to`: its session's records go
    /// there now. `displaced`: a session that was at `to` (its client is gone from there),
    /// which the demultiplexer no longer routes to.
    Moved {
        session_id: u64,
        from: SocketAddr,
        to: SocketAddr,
        displaced: Option<u64>,
    },
}
