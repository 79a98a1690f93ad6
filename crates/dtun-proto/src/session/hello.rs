//! What one control record from the server means during the Hello exchange. A dtun client
//! says Hello after its peernet message (its Lans, with several `-peernet` CIDRs, right
//! before); a dtun server answers with the client's IPv6 pair (Addr6) and its `-dns` (Dns),
//! then the Hello answer, whose flags (version 2) say that those two came and whether the
//! server has the Lans. An Addr6 that is malformed or assigns addresses no sane server would
//! is a counted drop, logged; the tunnel then carries IPv4 only.

use std::net::IpAddr;

use crate::inbound::{Counters, DropKind};
use crate::proto::{Addr6, Control, HelloFlags};

use super::Heard;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Msg {
    /// The Hello answer.
    Answer { version: u8, flags: HelloFlags },
    /// An Addr6: the pair if usable, `None` if not (a counted drop, logged).
    Addr6(Option<Addr6>),
    /// A Dns: its servers, or `None` if it was malformed (it came: asking again would not
    /// mend it).
    Dns(Option<Vec<IpAddr>>),
    /// A Cid: the connection ID for roaming.
    Cid([u8; 8]),
    /// Anything else (a counted drop if malformed).
    Other,
}

/// Reads a control record that came while we wait for the Hello answer.
pub(super) fn read(data: &[u8], counters: &Counters) -> Msg {
    match Control::parse(data) {
        Ok(Control::Hello { version, flags, .. }) => Msg::Answer { version, flags },
        Ok(Control::Addr6(a)) => match a.check() {
            Ok(()) => Msg::Addr6(Some(a)),
            Err(why) => {
                counters.count_drop(DropKind::Unexpected);
                tracing::warn!(
                    "the server's IPv6 addresses (local {} peer {} /{}) are unusable: {why}; the tunnel carries IPv4 only",
                    a.client,
                    a.server,
                    a.prefix_len
                );
                Msg::Addr6(None)
            }
        },
        Ok(Control::Dns(servers)) => Msg::Dns(Some(servers)),
        Ok(Control::Cid(cid)) => Msg::Cid(cid),
        Ok(_) => Msg::Other,
        Err(_) => {
            counters.count_drop(DropKind::Unexpected);
            if data.get(1) == Some(&6) {
                tracing::warn!(
                    "the server's IPv6 address message is malformed ({} bytes); the tunnel carries IPv4 only",
                    data.len()
                );
                return Msg::Addr6(None);
            }
            if data.get(1) == Some(&5) {
                return Msg::Dns(None);
            }
            Msg::Other
        }
    }
}

/// Takes one record's meaning into what was heard.
pub(super) fn take(heard: &mut Heard, msg: &Msg) {
    match msg {
        Msg::Answer { version, flags } => heard.answer(*version, *flags),
        Msg::Addr6(a) => heard.addr6(*a),
        Msg::Dns(_) => heard.dns(),
        Msg::Cid(cid) => heard.cid(*cid),
        Msg::Other => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::CONTROL_VERSION;

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
        let counters = Counters::default();
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
            assert_eq!(read(b, &counters), Msg::Addr6(None), "{b:02x?}");
        }
        assert_eq!(counters.drops(DropKind::Unexpected), bad.len() as u64);
        assert_eq!(read(&bytes, &counters), Msg::Addr6(Some(good())));
        let hello = Control::Hello {
            version: CONTROL_VERSION,
            keepalive_ms: 10_000,
            flags: HelloFlags(HelloFlags::ADDR6_SENT),
        };
        assert_eq!(
            read(&hello.to_bytes(), &counters),
            answer(CONTROL_VERSION, HelloFlags::ADDR6_SENT)
        );
        assert_eq!(read(&[0, 5, 0], &counters), Msg::Dns(None));
        assert_eq!(read(&[0, 9], &counters), Msg::Other);
        assert_eq!(counters.drops(DropKind::Unexpected), bad.len() as u64 + 2);
    }

    /// What makes the exchange complete, and what the session gets, for each loss.
    #[test]
    fn an_answer_shows_what_was_lost() {
        const A: u8 = HelloFlags::ADDR6_SENT;
        const D: u8 = HelloFlags::DNS_SENT;
        const L: u8 = HelloFlags::LANS_HEARD;
        let dns = Msg::Dns(Some(vec![]));
        // Nothing yet: the IPv6 pair stays as it was, and the Lans are resent.
        let mut h = Heard::default();
        assert!(!h.complete(false) && h.lans_missing() && h.outcome().is_none());
        // Only the Addr6 came (its answer was lost): the pair is known, the exchange is not done.
        take(&mut h, &Msg::Addr6(Some(good())));
        assert!(!h.complete(false));
        assert_eq!(h.outcome(), Some(Some(good())));
        // The Addr6 was lost: the answer says it came, so ask again; meanwhile keep the old pair.
        let mut h = Heard::default();
        take(&mut h, &answer(2, A | D));
        take(&mut h, &dns);
        assert!(!h.complete(false));
        assert_eq!(h.outcome(), None);
        take(&mut h, &Msg::Addr6(Some(good())));
        assert!(h.complete(false));
        assert_eq!(h.outcome(), Some(Some(good())));
        // The Dns was lost.
        let mut h = Heard::default();
        take(&mut h, &answer(2, D));
        assert!(!h.complete(false));
        assert_eq!(h.outcome(), Some(None), "no IPv6 from this server");
        take(&mut h, &dns);
        assert!(h.complete(false));
        // Our Lans were lost: the answer lacks LANS_HEARD; a later one has it.
        let mut h = Heard::default();
        take(&mut h, &answer(2, 0));
        assert!(h.complete(false) && !h.complete(true) && h.lans_missing());
        take(&mut h, &answer(2, L));
        assert!(h.complete(true) && !h.lans_missing());
        // A version-1 server says nothing of what it sent: its answer completes the exchange.
        let mut h = Heard::default();
        take(&mut h, &answer(1, 0));
        assert!(h.complete(true) && !h.lans_missing());
        assert_eq!(h.outcome(), Some(None));
        // An unusable Addr6 came: nothing to ask again, IPv4 only.
        let mut h = Heard::default();
        take(&mut h, &Msg::Addr6(None));
        take(&mut h, &answer(2, A));
        assert!(h.complete(false));
        assert_eq!(h.outcome(), Some(None));
    }
}
