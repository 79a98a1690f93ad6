//! Records that arrive before the handshake returns, and the first record of a session: only
//! the shapes a server's first record can have are kept, so spoofed ones cannot crowd it out.

use tokio::net::UdpSocket;
use tokio::time::Instant;

use dtun_proto::consts::{
    ADDRESS_MESSAGE_LEN, CONTENT_ALERT, CONTENT_APPLICATION_DATA, HANDSHAKE_TIMEOUT, SETUP_TIMEOUT,
};
use dtun_proto::inbound;
use dtun_proto::inbound::{Counters, Inbound};
use dtun_proto::record::{self, Opener};

/// Most early candidates kept (at most 45 bytes each).
pub(super) const EARLY_CANDIDATES: usize = 64;

/// Application-data datagrams that arrive before our handshake has ended: the address message
/// overtakes the server's last flight when that is lost. They are opened once the handshake
/// is established (as when the `dtls` crate did the handshake and told the keys only then), so
/// they are kept as candidates until then; what a spoofer sends must not crowd out the real one:
/// - only a datagram of exactly one record shaped like the address message (application data,
///   epoch 1, 8 bytes of plaintext under CCM_8 or GCM) is a candidate;
/// - a copy of a kept datagram takes no second place;
/// - past [`EARLY_CANDIDATES`], reservoir sampling: every candidate seen so far stays with the
///   same chance, so a flood before the real record cannot push it out for sure (keeping the
///   first few did), nor can one after it (keeping the last few would).
///
/// A flood of well-shaped forgeries can still lower the real record's chance (to 64 in the
/// number of candidates); then the setup times out and the client reconnects. Our own
/// handshake knows the keys as its Finished goes out, so opening them then would keep nothing
/// but verified records (not done yet: the setup's behaviour stays as it was).
#[derive(Default)]
pub(super) struct EarlyRecords {
    pub(super) kept: Vec<Vec<u8>>,
    /// Distinct candidates seen.
    pub(super) seen: u64,
}

impl EarlyRecords {
    pub(super) fn push(&mut self, datagram: &[u8]) {
        if !could_be_first(datagram) || self.kept.iter().any(|k| k == datagram) {
            return;
        }
        self.seen += 1;
        if self.kept.len() < EARLY_CANDIDATES {
            self.kept.push(datagram.to_vec());
            return;
        }
        let mut r = [0u8; 8];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r).is_err() {
            return;
        }
        let slot = u64::from_le_bytes(r) % self.seen;
        if let Some(k) = usize::try_from(slot)
            .ok()
            .and_then(|s| self.kept.get_mut(s))
        {
            k.clear();
            k.extend_from_slice(datagram);
        }
    }
}

/// Whether a datagram is one record shaped like the server's first: the address message
/// (application data in epoch 1 with 8 bytes of plaintext under CCM_8 or GCM), or what a
/// server refusing us sends instead: a Close control record (at most 3 + 200 bytes) and an
/// encrypted alert (2 bytes: close_notify).
pub(super) fn could_be_first(datagram: &[u8]) -> bool {
    let Ok(h) = record::parse_header(datagram) else {
        return false;
    };
    let plain = [record::Suite::Aes128Ccm8, record::Suite::Aes128Gcm].map(|s| {
        h.body_len
            .checked_sub(s.overhead() - dtun_proto::consts::RECORD_HEADER_LEN)
    });
    let fits = |ok: &dyn Fn(usize) -> bool| plain.iter().flatten().any(|n| ok(*n));
    let shaped = match h.content_type {
        CONTENT_APPLICATION_DATA => fits(&|n| {
            n == ADDRESS_MESSAGE_LEN || (3..=3 + dtun_proto::proto::MAX_CLOSE_DETAIL).contains(&n)
        }),
        CONTENT_ALERT => fits(&|n| n == 2),
        _ => false,
    };
    shaped && h.epoch == 1 && datagram.len() == dtun_proto::consts::RECORD_HEADER_LEN + h.body_len
}

/// Waits (up to the setup timeout) for the first application record and returns its plaintext.
pub(super) async fn first_data(
    opener: &mut Opener,
    counters: &Counters,
    sock: &UdpSocket,
    buf: &mut [u8],
    early: EarlyRecords,
) -> Option<First> {
    for mut dg in early.kept {
        if let Some(msg) = open_first(opener, counters, &mut dg) {
            return Some(msg);
        }
    }
    let deadline = Instant::now() + SETUP_TIMEOUT.max(HANDSHAKE_TIMEOUT);
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
            Err(_) => return None,
            Ok(Err(_)) => continue,
            Ok(Ok(n)) => n,
        };
        if let Some(msg) = open_first(opener, counters, &mut buf[..n]) {
            return Some(msg);
        }
    }
}

/// The first authenticated record of a session: its data, or an alert that ends it (a server
/// at its `-max-clients` limit sends only close_notify to a client that may be an original).
pub(super) enum First {
    Data(Vec<u8>),
    Closed(String),
}

pub(super) fn open_first(opener: &mut Opener, counters: &Counters, dg: &mut [u8]) -> Option<First> {
    let mut at = 0;
    while at < dg.len() {
        let r = record::record_at(dg, at).ok()?;
        at = r.end;
        let ct = dg[r.start];
        if ct != CONTENT_APPLICATION_DATA && ct != CONTENT_ALERT {
            continue;
        }
        match inbound::open(opener, counters, &mut dg[r.clone()]) {
            Inbound::Data(p) if ct == CONTENT_APPLICATION_DATA => {
                return Some(First::Data(dg[r.start + p.start..r.start + p.end].to_vec()));
            }
            Inbound::Alert(_, 0) => {
                return Some(First::Closed(dtun_proto::consts::CLOSE_NOTIFY_WORDS.into()));
            }
            Inbound::Alert(level, desc) => {
                return Some(First::Closed(format!("alert {level}/{desc}")));
            }
            _ => {}
        }
    }
    None
}
