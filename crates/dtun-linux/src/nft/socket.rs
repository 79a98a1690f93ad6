//! The one netlink socket a server keeps open for its nftables table. The table is made with
//! the owner flag (`NFT_TABLE_F_OWNER`, Linux 5.12): the kernel then accepts changes to it only
//! over the socket that made it, and deletes it when that socket closes, i.e. when dtun exits
//! or dies, `kill -9` included. So every batch of ours goes over this socket.
//!
//! rustables sends each batch over a fresh socket; here a finished batch
//! ([`rustables::Batch::finalize`]) is written to ours and the kernel's answers read back.
//! nf_tables handles a batch while the sender's `send` runs, so every acknowledgement and error
//! is queued by the time `send` returns: they are read without waiting until none is left.

use std::io::{self, Read};

use rustables::Batch;
use rustables::error::QueryError;
use rustables::sys::{nlmsgerr, nlmsghdr};
use socket2::{Domain, Protocol, Socket, Type};

/// NLMSG_ERROR: an acknowledgement (error 0) or an error.
const NLMSG_ERROR: u16 = 2;
const HEADER: usize = 16;

/// dtun's netlink socket to nf_tables.
#[derive(Debug)]
pub struct NftSocket(Socket);

impl NftSocket {
    pub fn open() -> Result<NftSocket, QueryError> {
        let sock = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::RAW.cloexec(),
            Some(Protocol::from(libc::NETLINK_NETFILTER)),
        )
        .map_err(|e| os_error(&e))?;
        sock.set_nonblocking(true).map_err(|e| os_error(&e))?;
        Ok(NftSocket(sock))
    }

    /// Sends `batch` and returns the kernel's first error, if any.
    pub fn send(&self, batch: Batch) -> Result<(), QueryError> {
        // Answers to an earlier batch that failed half-way, if any: not this batch's.
        self.drain(&mut |_| {});
        let bytes = batch.finalize();
        let mut sent = 0;
        while sent < bytes.len() {
            sent += self.0.send(&bytes[sent..]).map_err(|e| os_error(&e))?;
        }
        let mut first = None;
        self.drain(&mut |e| {
            first.get_or_insert(e);
        });
        match first {
            Some(e) => Err(QueryError::NetlinkError(e)),
            None => Ok(()),
        }
    }

    /// Reads every queued message, handing each error (not acknowledgements) to `on_error`.
    fn drain(&self, on_error: &mut dyn FnMut(nlmsgerr)) {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match (&self.0).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: nothing left. ENOBUFS: answers were lost; the batch's outcome
                // then shows in the next change failing, or in nothing (it took effect).
                Err(_) => return,
            };
            if n == 0 {
                return;
            }
            for e in errors(&buf[..n]) {
                on_error(e);
            }
        }
    }
}

/// The errors (error != 0) among the netlink messages in `buf`.
fn errors(mut buf: &[u8]) -> Vec<nlmsgerr> {
    let mut out = Vec::new();
    while buf.len() >= HEADER {
        let u32_at = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap_or_default());
        let len = u32_at(0) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < HEADER || len > buf.len() {
            break;
        }
        if kind == NLMSG_ERROR && len >= HEADER + 4 {
            let error = i32::from_ne_bytes(buf[HEADER..HEADER + 4].try_into().unwrap_or_default());
            if error != 0 {
                let msg = if len >= HEADER + 4 + HEADER {
                    let at = |i: usize| HEADER + 4 + i;
                    nlmsghdr {
                        nlmsg_len: u32_at(at(0)),
                        nlmsg_type: u16::from_ne_bytes([buf[at(4)], buf[at(5)]]),
                        nlmsg_flags: u16::from_ne_bytes([buf[at(6)], buf[at(7)]]),
                        nlmsg_seq: u32_at(at(8)),
                        nlmsg_pid: u32_at(at(12)),
                    }
                } else {
                    NO_HEADER
                };
                out.push(nlmsgerr { error, msg });
            }
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        buf = &buf[next.min(buf.len())..];
    }
    out
}

const NO_HEADER: nlmsghdr = nlmsghdr {
    nlmsg_len: 0,
    nlmsg_type: 0,
    nlmsg_flags: 0,
    nlmsg_seq: 0,
    nlmsg_pid: 0,
};

/// A failure of the socket itself, told as the kernel tells its errors (a negative errno), so
/// that one classification (`super::error`) serves both.
fn os_error(e: &io::Error) -> QueryError {
    QueryError::NetlinkError(nlmsgerr {
        error: -e.raw_os_error().unwrap_or(libc::EIO),
        msg: NO_HEADER,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = (HEADER + payload.len()) as u32;
        let mut m = len.to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
        m
    }

    #[test]
    fn errors_are_told_from_acknowledgements() {
        let mut buf = message(NLMSG_ERROR, &0i32.to_ne_bytes());
        let mut err = (-libc::EPERM).to_ne_bytes().to_vec();
        err.extend_from_slice(&message(0x0a00, &[1, 2, 3]));
        buf.extend(message(NLMSG_ERROR, &err));
        buf.extend(message(3, &[]));
        let e = errors(&buf);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].error, -libc::EPERM);
        assert_eq!(e[0].msg.nlmsg_type, 0x0a00);
        // Truncated or nonsense lengths end the walk, never a panic.
        assert!(errors(&buf[..buf.len() - 3]).len() <= 1);
        assert!(errors(&[0xff; 40]).is_empty());
        assert!(errors(&[]).is_empty());
    }
}
