//! The Hello exchange, client side. A dtun client says Hello after its peernet message (its
//! Lans, with several `-peernet` CIDRs, right before the Hello); a dtun server answers with
//! the client's IPv6 pair (Addr6) and its `-dns` (Dns), then the Hello answer, whose flags
//! (version 2) say that those two came and whether the server has the Lans. So the client
//! knows whether IPv6 comes before its up script runs, and knows what was lost: it says Hello
//! again (with the Lans, if the server lacks them) every [`HELLO_RESEND`] until nothing is
//! missing, for at most [`HELLO_WAIT`]. An Addr6 that is malformed or assigns addresses no
//! sane server would is a counted drop, logged; the tunnel then carries IPv4 only.

use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use dtun_linux::tun::{Tun, TunWriter};
use dtun_proto::consts::{CONTENT_ALERT, CONTENT_APPLICATION_DATA};
use dtun_proto::inbound;
use dtun_proto::inbound::{Counters, Inbound};
use dtun_proto::proto::Control;
use dtun_proto::proto::{Addr6, HelloFlags};
use dtun_proto::record::{self, Opener, Sealer};

use super::ClientError;
use super::forward::Sink;
use crate::pump::{self, Link};

/// How long a client that said Hello waits for a complete answer before going on with what
/// it has (an older dtun server answers at once; losses cost at most this much once).
pub(super) const HELLO_WAIT: Duration = Duration::from_secs(2);

/// How long without a complete answer before saying Hello again.
pub(super) const HELLO_RESEND: Duration = Duration::from_millis(400);

/// Most Hellos in one exchange (an answer that shows a loss is asked again at once, so a
/// server that keeps sending something broken gets no more than this).
const MAX_HELLOS: u32 = 8;

/// What one record from the server means while we wait for the Hello answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Msg {
    /// The Hello answer.
    Answer { version: u8, flags: HelloFlags },
    /// An Addr6: the pair if usable, `None` if not (a counted drop, logged).
    Addr6(Option<Addr6>),
    /// A Dns (already handed to the DNS settings).
    Dns,
    /// Anything else (a counted drop if malformed).
    Other,
}

/// Reads a control record that came while we wait: Addr6 is checked (a bad one is a counted
/// drop, logged with the reason), Dns is taken as in the forwarding loop.
pub(super) fn read(data: &[u8], counters: &Counters, dns: &dtun_linux::dns::Dns) -> Msg {
    match Control::parse(data) {
        Ok(Control::Hello { version, flags, .. }) => Msg::Answer { version, flags },
        Ok(Control::Addr6(a)) => match a.check() {
            Ok(()) => Msg::Addr6(Some(a)),
            Err(why) => {
                counters.count_drop(inbound::DropKind::Unexpected);
                tracing::warn!(
                    "the server's IPv6 addresses (local {} peer {} /{}) are unusable: {why}; the tunnel carries IPv4 only",
                    a.client,
                    a.server,
                    a.prefix_len
                );
                Msg::Addr6(None)
            }
        },
        Ok(Control::Dns(servers)) => {
            for _ in 0..dns.pushed(&servers) {
                counters.count_drop(inbound::DropKind::Unexpected);
            }
            Msg::Dns
        }
        Ok(_) => Msg::Other,
        Err(_) => {
            counters.count_drop(inbound::DropKind::Unexpected);
            if data.get(1) == Some(&6) {
                tracing::warn!(
                    "the server's IPv6 address message is malformed ({} bytes); the tunnel carries IPv4 only",
                    data.len()
                );
                return Msg::Addr6(None);
            }
            // A broken Dns still came: asking again would not mend it.
            if data.get(1) == Some(&5) {
                return Msg::Dns;
            }
            Msg::Other
        }
    }
}

/// What came so far in one exchange.
#[derive(Debug, Default)]
pub(super) struct Heard {
    answer: Option<(u8, HelloFlags)>,
    answers: u32,
    addr6: Option<Option<Addr6>>,
    dns: bool,
}

impl Heard {
    pub(super) fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Answer { version, flags } => {
                self.answer = Some((version, flags));
                self.answers += 1;
            }
            Msg::Addr6(a) => self.addr6 = Some(a),
            Msg::Dns => self.dns = true,
            Msg::Other => {}
        }
    }

    /// The answer's flags, when its version has them.
    fn flags(&self) -> Option<HelloFlags> {
        self.answer.filter(|(v, _)| *v >= 2).map(|(_, f)| f)
    }

    /// Whether the server still lacks our Lans, as far as we know.
    pub(super) fn lans_missing(&self) -> bool {
        match (self.answer, self.flags()) {
            (Some(_), None) => false, // a version-1 server does not say: assume it has them
            (_, Some(f)) => !f.has(HelloFlags::LANS_HEARD),
            (None, None) => true,
        }
    }

    /// Whether nothing we wait for is missing.
    pub(super) fn complete(&self, sent_lans: bool) -> bool {
        match (self.answer, self.flags()) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(_), Some(f)) => {
                (!f.has(HelloFlags::ADDR6_SENT) || self.addr6.is_some())
                    && (!f.has(HelloFlags::DNS_SENT) || self.dns)
                    && !(sent_lans && self.lans_missing())
            }
        }
    }

    /// The IPv6 pair for the session: `Some(pair or None)` once we know, `None` when we do
    /// not (no answer, or an answer that says an Addr6 came that we never got): the TUN then
    /// keeps the IPv6 it had.
    pub(super) fn outcome(&self) -> Option<Option<Addr6>> {
        match (self.addr6, self.answer, self.flags()) {
            (Some(a), _, _) => Some(a),
            (None, Some(_), Some(f)) if f.has(HelloFlags::ADDR6_SENT) => None,
            (None, Some(_), _) => Some(None),
            (None, None, _) => None,
        }
    }

    /// What is still missing, for the log.
    fn missing(&self, sent_lans: bool) -> String {
        let mut m = vec![];
        if self.answer.is_none() {
            m.push("the Hello answer");
        }
        if let Some(f) = self.flags() {
            if f.has(HelloFlags::ADDR6_SENT) && self.addr6.is_none() {
                m.push("the IPv6 addresses");
            }
            if f.has(HelloFlags::DNS_SENT) && !self.dns {
                m.push("the DNS servers");
            }
        }
        if sent_lans && self.lans_missing() {
            m.push("the server's receipt of our LANs");
        }
        m.join(", ")
    }
}

/// Says Hello (after the Lans, if any) and waits for a complete answer, saying it again every
/// [`HELLO_RESEND`] while something is missing; returns the IPv6 pair as
/// [`Heard::outcome`] tells. IP packets that come meanwhile go to the TUN.
#[allow(clippy::too_many_arguments)]
pub(super) async fn exchange(
    link: &Link,
    sealer: &mut Sealer,
    opener: &mut Opener,
    counters: &Counters,
    sock: &UdpSocket,
    buf: &mut [u8],
    tun: &Tun,
    dns: &dtun_linux::dns::Dns,
    hello: &[u8],
    lans: &[u8],
) -> Result<Option<Option<Addr6>>, ClientError> {
    let deadline = Instant::now() + HELLO_WAIT;
    let sent_lans = !lans.is_empty();
    let mut sink = Sink {
        dev: &tun.dev,
        writer: TunWriter::default(),
        mss: pump::mss_clamps(tun.mtu),
    };
    let mut heard = Heard::default();
    let mut said = 0u32;
    let mut resend_at = Instant::now();
    loop {
        if heard.complete(sent_lans) {
            return Ok(heard.outcome());
        }
        if Instant::now() >= resend_at && said < MAX_HELLOS {
            if said > 0 {
                tracing::debug!("saying Hello again: missing {}", heard.missing(sent_lans));
            }
            let lans = if sent_lans && heard.lans_missing() {
                lans
            } else {
                &[]
            };
            for msg in [lans, hello] {
                if msg.is_empty() {
                    continue;
                }
                if let Err(e) = link
                    .send_record(sealer, CONTENT_APPLICATION_DATA, msg)
                    .await
                {
                    return Err(ClientError::Send(link.peer, e));
                }
            }
            said += 1;
            resend_at = Instant::now() + HELLO_RESEND;
        }
        let wake = if said < MAX_HELLOS {
            resend_at.min(deadline)
        } else {
            deadline
        };
        let answers = heard.answers;
        let n = match tokio::time::timeout_at(wake, sock.recv(buf)).await {
            Err(_) if Instant::now() >= deadline => {
                tracing::info!(
                    "setup incomplete after {HELLO_WAIT:?} and {said} Hellos: missing {}; going on without it",
                    heard.missing(sent_lans)
                );
                return Ok(heard.outcome());
            }
            Err(_) => continue,
            Ok(Err(_)) => continue,
            Ok(Ok(n)) => n,
        };
        let mut at = 0;
        while at < n {
            let Ok(r) = record::record_at(&buf[..n], at) else {
                break;
            };
            at = r.end;
            let ct = buf[r.start];
            if ct != CONTENT_APPLICATION_DATA && ct != CONTENT_ALERT {
                continue;
            }
            match inbound::open(opener, counters, &mut buf[r.clone()]) {
                Inbound::Data(p) if ct == CONTENT_APPLICATION_DATA => {
                    let data = &mut buf[r.start + p.start..r.start + p.end];
                    if Control::is_control(data) {
                        heard.take(read(data, counters, dns));
                    } else if inbound::accept_packet(counters, data) {
                        sink.push(data).await;
                    }
                }
                Inbound::Alert(_, 0) => {
                    return Err(ClientError::Closed(
                        dtun_proto::consts::CLOSE_NOTIFY_WORDS.into(),
                    ));
                }
                Inbound::Alert(level, desc) => {
                    return Err(ClientError::Closed(format!("alert {level}/{desc}")));
                }
                _ => {}
            }
        }
        sink.flush().await;
        // A new answer that shows a loss: say Hello again at once.
        if heard.answers > answers && !heard.complete(sent_lans) {
            resend_at = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtun_proto::proto::CONTROL_VERSION;

    fn no_dns() -> dtun_linux::dns::Dns {
        dtun_linux::dns::Dns::with_paths(
            std::path::Path::new("/nonexistent/resolv.conf"),
            std::path::Path::new("/nonexistent/run"),
            vec![],
            false,
        )
    }

    fn good() -> Addr6 {
        Addr6 {
            prefix_len: 64,
            client: "fd64:7475:6e00::2".parse().unwrap(),
            server: "fd64:7475:6e00::1".parse().unwrap(),
        }
    }

    fn answer(version: u8, flags: u8) -> Msg {
        Msg::Answer {
            version,
            flags: HelloFlags(flags),
        }
    }

    /// Malformed and insane Addr6 records are counted drops that assign nothing (they came,
    /// so nobody asks again); a good one is taken; the Hello answer is read with its flags.
    #[test]
    fn bad_addr6_is_a_counted_drop() {
        let (dns, counters) = (no_dns(), Counters::default());
        let bytes = Control::Addr6(good()).to_bytes();
        let mut insane = [good(); 4];
        insane[0].client = "ff02::1".parse().unwrap();
        insane[1].server = good().client;
        insane[2].prefix_len = 0;
        insane[3].client = "fe80::2".parse().unwrap();
        let mut bad: Vec<Vec<u8>> = vec![
            bytes[..bytes.len() - 1].to_vec(),
            [&bytes[..], &[0]].concat(),
            vec![0, 6],
        ];
        bad.extend(insane.iter().map(|a| Control::Addr6(*a).to_bytes()));
        for b in &bad {
            assert_eq!(read(b, &counters, &dns), Msg::Addr6(None), "{b:02x?}");
        }
        assert_eq!(
            counters.drops(inbound::DropKind::Unexpected),
            bad.len() as u64
        );
        assert_eq!(read(&bytes, &counters, &dns), Msg::Addr6(Some(good())));
        let hello = Control::Hello {
            version: CONTROL_VERSION,
            keepalive_ms: 10_000,
            flags: HelloFlags(HelloFlags::ADDR6_SENT),
        };
        assert_eq!(
            read(&hello.to_bytes(), &counters, &dns),
            answer(CONTROL_VERSION, HelloFlags::ADDR6_SENT)
        );
        assert_eq!(read(&[0, 5, 0], &counters, &dns), Msg::Dns);
        assert_eq!(read(&[0, 9], &counters, &dns), Msg::Other);
        assert_eq!(
            counters.drops(inbound::DropKind::Unexpected),
            bad.len() as u64 + 2
        );
    }

    /// What makes the exchange complete, and what the session gets, for each loss.
    #[test]
    fn an_answer_shows_what_was_lost() {
        const A: u8 = HelloFlags::ADDR6_SENT;
        const D: u8 = HelloFlags::DNS_SENT;
        const L: u8 = HelloFlags::LANS_HEARD;
        // Nothing yet: the IPv6 pair stays as it was, and the Lans are resent.
        let mut h = Heard::default();
        assert!(!h.complete(false) && h.lans_missing() && h.outcome().is_none());
        // Only the Addr6 came (its answer was lost): the pair is known, the exchange is not done.
        h.take(Msg::Addr6(Some(good())));
        assert!(!h.complete(false));
        assert_eq!(h.outcome(), Some(Some(good())));
        // The Addr6 was lost: the answer says it came, so ask again; meanwhile keep the old pair.
        let mut h = Heard::default();
        h.take(answer(2, A | D));
        h.take(Msg::Dns);
        assert!(!h.complete(false));
        assert_eq!(h.outcome(), None);
        h.take(Msg::Addr6(Some(good())));
        assert!(h.complete(false));
        assert_eq!(h.outcome(), Some(Some(good())));
        // The Dns was lost.
        let mut h = Heard::default();
        h.take(answer(2, D));
        assert!(!h.complete(false));
        assert_eq!(h.outcome(), Some(None), "no IPv6 from this server");
        h.take(Msg::Dns);
        assert!(h.complete(false));
        // Our Lans were lost: the answer lacks LANS_HEARD; a later one has it.
        let mut h = Heard::default();
        h.take(answer(2, 0));
        assert!(h.complete(false) && !h.complete(true) && h.lans_missing());
        h.take(answer(2, L));
        assert!(h.complete(true) && !h.lans_missing());
        // A version-1 server says nothing of what it sent: its answer completes the exchange.
        let mut h = Heard::default();
        h.take(answer(1, 0));
        assert!(h.complete(true) && !h.lans_missing());
        assert_eq!(h.outcome(), Some(None));
        // An unusable Addr6 came: nothing to ask again, IPv4 only.
        let mut h = Heard::default();
        h.take(Msg::Addr6(None));
        h.take(answer(2, A));
        assert!(h.complete(false));
        assert_eq!(h.outcome(), Some(None));
    }
}
