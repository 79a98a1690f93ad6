//! The checks behind each fuzz target, one function per target, shared by three users: the
//! targets in `fuzz_targets/`, the seed generator `examples/gen_seeds.rs`, and the main crate's
//! corpus replay test (which includes this file with `#[path]`), so CI runs every corpus file
//! through exactly what the fuzzer ran, on stable and without libFuzzer.
//!
//! Each function takes bytes as they arrive from the network, must never panic on them, and
//! panics only when a parser contradicts itself.

#![allow(dead_code)]

use std::net::Ipv4Addr;

use dtun_proto::authz::source_allowed;
use dtun_proto::consts::{
    CID_PAYLOAD_OFFSET, CID_RECORD_HEADER_LEN, CONTENT_TLS12_CID, MAX_RECORD_PLAINTEXT,
    RECORD_HEADER_LEN,
};
use dtun_proto::inbound::Counters;
use dtun_proto::inbound::accept_packet;
use dtun_proto::mss;
use dtun_proto::proto::{AddressMessage, Control, Peernet};
use dtun_proto::record::{
    Cid, DropReason, Opener, Sealer, Suite, parse_header, peek_cid, record_at, records,
};
use ipnet::IpNet;

/// Keys of the `record_open` target; the seeds in `corpus/record_open/seed-*` are sealed with
/// them, the only way an input ever gets past the tag check.
pub const SUITE: Suite = Suite::Aes128Ccm8;
pub const KEY: [u8; 16] = *b"dtun-fuzz-key-01";
pub const SALT: [u8; 4] = *b"salt";
pub const EPOCH: u16 = 1;

/// Keys of the `cid` target (AES-128-GCM): its opener reads epoch 2 with `CID_KEY2` and, for
/// the overlap after a rekey, epoch 1 with `CID_KEY1`, both with CID records carrying `CID`.
/// The seeds in `corpus/cid/seed-*` are sealed with them.
pub const CID_KEY1: [u8; 16] = *b"dtun-fuzz-cid-e1";
pub const CID_KEY2: [u8; 16] = *b"dtun-fuzz-cid-e2";
pub const CID_SALT1: [u8; 4] = *b"cid1";
pub const CID_SALT2: [u8; 4] = *b"cid2";
pub const CID: Cid = *b"fuzz-cid";

/// The client of the `packet` target: its tunnel address and the LANs it may send from.
pub const TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 86, 0, 2);
/// The client's IPv6 tunnel address in the `packet` target.
pub const TUNNEL6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd64, 0x7475, 0x6e00, 0, 0, 0, 0, 2);
pub const LANS: [&str; 2] = ["10.200.0.0/24", "fd00:1::/64"];

/// Opens the input as one record, then every record `records` finds in it, all through one
/// `Opener` so the replay window sees a sequence (a lone valid record is opened, then replayed).
/// Returns how many records authenticated.
///
/// Then the batch path (`Opener::open_many`, CCM_8 passes of up to eight records) must agree
/// with the one-record path, record for record: same verdicts, same plaintexts.
pub fn record_open(data: &[u8]) -> usize {
    let mut opener = Opener::new(SUITE, &KEY, &SALT, EPOCH);
    let mut opened = usize::from(open_one(&mut opener, data));
    for r in records(data).flatten() {
        opened += usize::from(open_one(&mut opener, &data[r]));
    }
    batch_agrees(data);
    opened
}

fn batch_agrees(data: &[u8]) {
    agrees(data, || Opener::new(SUITE, &KEY, &SALT, EPOCH));
}

/// `Opener::open_many` over the records of `data` gives what `Opener::open` gives one by one,
/// with an opener from `make` each.
fn agrees(data: &[u8], make: impl Fn() -> Opener) {
    let ranges: Vec<_> = records(data).collect();
    let mut one = make();
    let mut serial = data.to_vec();
    let expected: Vec<_> = ranges
        .iter()
        .map(|r| match r {
            Ok(r) => one
                .open(&mut serial[r.clone()])
                .map(|(ct, p)| (ct, r.start + p.start..r.start + p.end)),
            Err(e) => Err(*e),
        })
        .collect();
    let mut many = make();
    let mut batched = data.to_vec();
    let mut got = vec![Err(DropReason::Truncated); ranges.len()];
    many.open_many(&mut batched, &ranges, &mut got);
    assert_eq!(got, expected, "open_many disagrees with open");
    for (ct, p) in got.into_iter().flatten() {
        assert_eq!(
            batched[p.clone()],
            serial[p.clone()],
            "plaintext of a type-{ct} record"
        );
    }
}

fn open_one(opener: &mut Opener, record: &[u8]) -> bool {
    let mut buf = record.to_vec();
    match opener.open(&mut buf) {
        Ok((content_type, plain)) => {
            assert_eq!(content_type, record[0], "content type of an opened record");
            assert!(
                plain.start <= plain.end && plain.end <= buf.len(),
                "plaintext {plain:?}"
            );
            true
        }
        Err(_) => false,
    }
}

/// The opener of the `cid` target: epoch 2, epoch 1 still read, CID records with `CID`.
pub fn cid_opener() -> Opener {
    let mut o = Opener::new(Suite::Aes128Gcm, &CID_KEY1, &CID_SALT1, 1);
    o.set_cid(Some(CID));
    o.rekey(2, &CID_KEY2, &CID_SALT2);
    o
}

/// A sealer of the `cid` target's keys: epoch 1 or 2, CID records (`cid`) or plain ones.
pub fn cid_sealer(epoch: u16, first_seq: u64, cid: Option<Cid>) -> Sealer {
    let (key, salt) = match epoch {
        1 => (&CID_KEY1, &CID_SALT1),
        _ => (&CID_KEY2, &CID_SALT2),
    };
    let mut s = Sealer::new(Suite::Aes128Gcm, key, salt, epoch, first_seq);
    assert!(s.set_cid(cid), "GCM takes a CID");
    s
}

/// `cid`: connection ID records (RFC 9146). The input as a datagram: `records_split`, and
/// `peek_cid` agrees with `parse_header`; then the whole input and each record it holds through
/// one opener with a CID (`cid_opener`), and `open_many` agrees with `open`. An opened CID
/// record's content lies after its header and explicit nonce; `newest` moves only when a
/// record opens, and then to the larger of itself and that record's epoch and sequence number.
/// Then the input as plaintext: sealed as CID records (one record, and a batch of up to four
/// pieces) it must open back to itself. Returns how many fuzzed records opened.
pub fn cid(data: &[u8]) -> usize {
    records_split(data);
    let first = data.first().copied();
    match peek_cid(data) {
        Some(c) => {
            assert!(first == Some(CONTENT_TLS12_CID) && data.len() >= CID_RECORD_HEADER_LEN);
            assert_eq!(c[..], data[11..19]);
        }
        None => assert!(first != Some(CONTENT_TLS12_CID) || data.len() < CID_RECORD_HEADER_LEN),
    }
    if let Ok(h) = parse_header(data) {
        assert_eq!(h.cid, peek_cid(data), "header {h:?}");
        let want = if h.cid.is_some() {
            CID_RECORD_HEADER_LEN
        } else {
            RECORD_HEADER_LEN
        };
        assert_eq!(h.header_len, want);
    }
    let mut opener = cid_opener();
    let mut opened = usize::from(open_cid_one(&mut opener, data));
    for r in records(data).flatten() {
        opened += usize::from(open_cid_one(&mut opener, &data[r]));
    }
    agrees(data, cid_opener);
    cid_round_trip(data);
    opened
}

fn open_cid_one(opener: &mut Opener, record: &[u8]) -> bool {
    let before = opener.newest();
    let mut buf = record.to_vec();
    let Ok((content_type, plain)) = opener.open(&mut buf) else {
        assert_eq!(opener.newest(), before, "newest moved on a drop");
        return false;
    };
    assert!(
        plain.start <= plain.end && plain.end <= buf.len(),
        "{plain:?}"
    );
    let h = parse_header(record).expect("an opened record parses");
    if h.cid.is_some() {
        assert_eq!(h.cid, Some(CID));
        assert_eq!(plain.start, CID_PAYLOAD_OFFSET);
        assert_ne!(content_type, 0, "a CID record's real type is never 0");
        assert!(plain.len() < h.body_len, "the type is not content");
    } else {
        assert_eq!(content_type, record[0]);
    }
    // The newest of what opened so far: this record, or an earlier one.
    let this = (u64::from(h.epoch) << 48) | h.seq;
    assert_eq!(opener.newest(), before.max(this), "newest");
    true
}

/// The input as plaintext (at most 2^14 - 1 bytes, the type takes one), its first byte as
/// content type (0 means 23): sealed as one CID record and as a batch of pieces (cut where the
/// input's second byte says), each must open to exactly itself; a second time, a replay.
fn cid_round_trip(data: &[u8]) {
    let msg = &data[..data.len().min(MAX_RECORD_PLAINTEXT - 1)];
    let ct = match msg.first() {
        Some(&t) if t != 0 => t,
        _ => 23,
    };
    let seq = u64::from(msg.get(2).copied().unwrap_or(0)) << 8;
    let mut s = cid_sealer(2, seq, Some(CID));
    let mut o = cid_opener();
    let off = s.payload_offset();
    let mut buf = vec![0u8; off + msg.len() + s.trailer_len()];
    buf[off..off + msg.len()].copy_from_slice(msg);
    let n = s.seal(ct, &mut buf, msg.len()).expect("a CID record fits");
    assert_eq!(n, buf.len());
    assert_eq!(peek_cid(&buf), Some(CID));
    let copy = buf.clone();
    let (got_ct, p) = o.open(&mut buf).expect("our own CID record opens");
    assert_eq!((got_ct, &buf[p]), (ct, msg), "round trip");
    assert_eq!(o.newest(), (2 << 48) | seq);
    assert_eq!(o.open(&mut copy.clone()), Err(DropReason::Replay));
    // A batch of up to four pieces, sealed by seal_many into slots and opened by open_many
    // from one datagram.
    let cut = usize::from(msg.get(1).copied().unwrap_or(0)).max(1);
    let pieces: Vec<&[u8]> = msg.chunks(cut).take(4).collect();
    let mut slots: Vec<Vec<u8>> = pieces
        .iter()
        .map(|p| {
            let mut b = vec![0u8; off + p.len() + s.trailer_len()];
            b[off..off + p.len()].copy_from_slice(p);
            b
        })
        .collect();
    let sizes: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
    let mut lens = vec![0; pieces.len()];
    s.seal_many(ct, &mut slots, &sizes, &mut lens)
        .expect("sealed");
    let mut dg: Vec<u8> = slots
        .iter()
        .zip(&lens)
        .flat_map(|(b, &n)| b[..n].to_vec())
        .collect();
    let ranges: Vec<_> = records(&dg).collect();
    assert_eq!(ranges.len(), pieces.len());
    let mut out = vec![Err(DropReason::Truncated); ranges.len()];
    o.open_many(&mut dg, &ranges, &mut out);
    for (o, piece) in out.into_iter().zip(&pieces) {
        let (got_ct, p) = o.expect("our own batch opens");
        assert_eq!((got_ct, &dg[p]), (ct, *piece));
    }
}

/// `parse_header`, `records` and `record_at` over a whole datagram: every range lies inside it,
/// ranges follow each other from 0, an error ends the iteration, `record_at` agrees at each
/// record start and answers at any offset, even past the end.
pub fn records_split(data: &[u8]) {
    if let Ok(h) = parse_header(data) {
        assert!(h.header_len + h.body_len <= data.len(), "header {h:?}");
        assert!(h.header_len >= RECORD_HEADER_LEN, "header {h:?}");
        assert!(h.seq < 1 << 48, "header {h:?}");
    }
    let mut at = 0;
    let mut failed = false;
    for item in records(data) {
        assert!(!failed, "records yielded after an error");
        match item {
            Ok(r) => {
                assert_eq!(r.start, at);
                assert!(
                    r.end <= data.len() && r.end - r.start >= RECORD_HEADER_LEN,
                    "{r:?}"
                );
                assert_eq!(record_at(data, at), Ok(r.clone()));
                at = r.end;
            }
            Err(e) => {
                assert_eq!(record_at(data, at), Err(e));
                failed = true;
            }
        }
    }
    assert!(
        failed || at == data.len(),
        "records stopped at {at} of {}",
        data.len()
    );
    for i in 0..=data.len() + 1 {
        if let Ok(r) = record_at(data, i) {
            assert!(
                r.start == i && r.end <= data.len(),
                "record_at({i}) = {r:?}"
            );
        }
    }
}

/// Every parser of setup and control records; whatever parses must survive a round trip
/// through its own wire form.
pub fn proto(data: &[u8]) {
    let _ = dtun_proto::rekey::message::parse_init(data);
    let _ = dtun_proto::rekey::message::parse_reply(data);
    if let Ok(m) = AddressMessage::parse(data) {
        assert_eq!(&m.to_bytes()[..], data);
    }
    if let Ok(p) = Peernet::parse(data) {
        assert_eq!(Peernet::parse(p.to_wire().as_bytes()), Ok(p));
    }
    if let Ok(c) = Control::parse(data) {
        assert!(Control::is_control(data));
        // A Dns message holds 1 to MAX_DNS_SERVERS servers and is exactly its own bytes.
        if let Control::Dns(servers) = &c {
            assert!((1..=dtun_proto::proto::MAX_DNS_SERVERS).contains(&servers.len()));
            assert_eq!(c.to_bytes(), data);
        }
        // An Addr6 message is exactly its bytes, and its sanity check (which the client runs
        // before touching its TUN) never panics; what passes it is unicast and distinct.
        // A Lans message holds 1 to MAX_LANS networks without host bits: exactly its bytes.
        if let Control::Lans(lans) = &c {
            assert!((1..=dtun_proto::proto::MAX_LANS).contains(&lans.len()));
            assert!(lans.iter().all(|n| n.trunc() == *n));
            assert_eq!(c.to_bytes(), data);
        }
        if let Control::Addr6(a) = &c {
            assert_eq!(c.to_bytes(), data);
            if a.check().is_ok() {
                assert!(
                    a.client != a.server && !a.client.is_multicast() && !a.server.is_unspecified()
                );
            }
        }
        // Roaming's messages (a connection ID, a path token) are exactly their 10 bytes.
        if matches!(
            c,
            Control::Cid(_) | Control::PathChallenge(_) | Control::PathResponse(_)
        ) {
            assert_eq!(data.len(), 10);
            assert_eq!(c.to_bytes(), data);
        }
        // A rekey fragment is exactly its bytes, stays within its message, and reassembles
        // into a whole one only when it covers all of it.
        if let Control::Rekey(f) = &c {
            assert_eq!(c.to_bytes(), data);
            let mut r = dtun_proto::rekey::message::Reassembly::new(f.kind, f.epoch);
            if let Some(m) = r.add(f) {
                assert_eq!(m.len(), f.kind.message_len());
                assert_eq!(f.offset, 0);
            }
        }
        let wire = c.to_bytes();
        assert_eq!(
            Control::parse(&wire),
            Ok(c),
            "round trip of {data:02x?} via {wire:02x?}"
        );
    }
}

/// What dtun does with an authenticated packet before the TUN, and with a TUN packet before
/// sealing: `authz::source_allowed` reads its source address, `inbound::accept_packet` its
/// version, and `mss::clamp` its IPv4 or IPv6 and TCP headers. An allowed source is always a
/// whole enough IPv4 or IPv6 header, an IP packet is what the pump accepts, and the clamp
/// never panics, changes at most the MSS option and the checksum (4 bytes), and is idempotent.
/// The clamp runs on the input as it is and with its first nibble made 4 and 6, so both
/// header parsers see every input.
pub fn packet(data: &[u8]) {
    let lans: Vec<IpNet> = LANS.iter().map(|n| n.parse().expect("LANS")).collect();
    let allowed = source_allowed(data, TUNNEL, Some(TUNNEL6), &lans);
    let version = data.first().map(|b| b >> 4);
    if allowed {
        assert!(
            (version == Some(4) && data.len() >= 20) || (version == Some(6) && data.len() >= 40),
            "source allowed for a packet that is not a whole IP header"
        );
    }
    let accepted = accept_packet(&Counters::default(), data);
    assert_eq!(accepted, matches!(version, Some(4) | Some(6)));
    for nibble in [None, Some(0x40u8), Some(0x60)] {
        let mut input = data.to_vec();
        if let (Some(n), Some(first)) = (nibble, input.first_mut()) {
            *first = n | (*first & 0x0f);
        }
        for (v4, v6) in [(1395u16, 1375u16), (536, 1220), (0, 0)] {
            let mut p = input.clone();
            let changed = mss::clamp(&mut p, v4, v6);
            assert_eq!(p.len(), input.len());
            let differ = p.iter().zip(&input).filter(|(a, b)| a != b).count();
            if changed {
                assert!(differ <= 4, "clamp changed {differ} bytes");
                assert!(
                    !mss::clamp(&mut p.clone(), v4, v6),
                    "clamp is not idempotent"
                );
            } else {
                assert_eq!(differ, 0, "clamp changed a packet it said it left alone");
            }
        }
    }
}

/// A whole DTLS 1.2 ClientHello datagram (GCM and CCM_8, extended master secret), as a dtun
/// client sends it, with `cookie`.
pub fn client_hello(random: [u8; 32], cookie: &[u8], msg_seq: u16, rec_seq: u8) -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend_from_slice(&random);
    body.push(0);
    body.push(cookie.len() as u8);
    body.extend_from_slice(cookie);
    body.extend_from_slice(&[0, 4, 0x00, 0xa8, 0xc0, 0xa8, 1, 0]);
    body.extend_from_slice(&[0, 9, 0x00, 0x17, 0, 0, 0xff, 0x01, 0, 1, 0]);
    let len = (body.len() as u32).to_be_bytes();
    let mut msg = vec![1, len[1], len[2], len[3]];
    msg.extend_from_slice(&msg_seq.to_be_bytes());
    msg.extend_from_slice(&[0, 0, 0, len[1], len[2], len[3]]);
    msg.extend_from_slice(&body);
    let mut dg = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, rec_seq];
    dg.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    dg.extend_from_slice(&msg);
    dg
}

/// The server's handshake admission, before any authentication: the input is a sequence of
/// datagrams (each: a source byte, a length byte pair, the bytes) fed to one `Admission`, after
/// one client has proven its address (so the bytes also reach a handshake in progress). Every
/// datagram also goes through the demultiplexer's classification and the ClientHello parser.
///
/// Must hold: no panic; a HelloVerifyRequest is sent for a ClientHello without a valid cookie
/// and no state is kept for it; the table never exceeds its caps; a reply is never larger than
/// our own flight.
pub fn admission(data: &[u8]) -> usize {
    use dtun_proto::admission::{Admission, Outcome, is_session_record};
    use dtun_proto::handshake::parse_client_hello;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    let t0 = Instant::now();
    let mut adm = Admission::new(
        vec![Suite::Aes128Gcm, Suite::Aes128Ccm8],
        b"dtun".to_vec(),
        t0,
    );
    let proven: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let sources: [SocketAddr; 4] = [
        proven,
        "192.0.2.2:4000".parse().unwrap(),
        "[2001:db8::1]:4000".parse().unwrap(),
        "[::ffff:192.0.2.1]:4001".parse().unwrap(),
    ];
    let random = [7u8; 32];
    adm.datagram(&client_hello(random, b"", 0, 0), proven, t0, |_| vec![]);
    let cookie = adm.reply[adm.reply.len() - 20..].to_vec();
    let second = client_hello(random, &cookie, 1, 1);
    assert!(matches!(
        adm.datagram(&second, proven, t0, |_| vec![]),
        Outcome::Reply
    ));
    let flight_len = adm.reply.len();

    let mut rest = data;
    let mut n = 0;
    while rest.len() >= 3 {
        let from = sources[usize::from(rest[0]) % sources.len()];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        let dg = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[(3 + len).min(rest.len())..];
        let _ = is_session_record(dg);
        let hello = parse_client_hello(dg).map(|ch| ch.cookie.is_empty());
        let now = t0 + Duration::from_millis(300 * n as u64);
        let before = adm.counters.snapshot();
        match adm.datagram(dg, from, now, |id| id.to_vec()) {
            Outcome::Reply => {
                assert!(!adm.reply.is_empty() && adm.reply.len() <= flight_len.max(64) + 64);
                if hello == Some(true) && adm.counters.snapshot().cookies > before.cookies {
                    assert_eq!(
                        adm.counters.snapshot().started,
                        before.started,
                        "state for a cookieless hello"
                    );
                }
            }
            Outcome::Completed(_) => panic!("a handshake completed without a valid Finished"),
            _ => {}
        }
        assert!(adm.counters.snapshot().started <= before.started + 1);
        n += 1;
    }
    n
}

/// The client's handshake (`handshake::ClientHandshake`) against what a hostile or broken
/// server sends: the first input byte picks the stage the handshake reached with our real
/// server (0: ClientHello out, 1: ClientHello with the cookie out, 2: our last flight out), then
/// the rest is a sequence of datagrams (each: a length byte pair, the bytes) for the client.
///
/// Must hold: no panic; nothing establishes without the server's real Finished; an answer is
/// one datagram no larger than our own last flight; after a failure nothing more is sent.
pub fn client_handshake(data: &[u8]) -> usize {
    use dtun_proto::admission::{Admission, Outcome};
    use dtun_proto::handshake::{ClientHandshake, Progress};
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    let Some((&stage, mut rest)) = data.split_first() else {
        return 0;
    };
    let t0 = Instant::now();
    let from: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let suites = [Suite::Aes128Gcm, Suite::Aes128Ccm8];
    let mut adm = Admission::new(suites.to_vec(), b"dtun;dtun-ctl=1".to_vec(), t0);
    let rng = ring::rand::SystemRandom::new();
    let (mut hs, mut out) = ClientHandshake::new(b"fuzz", b"key", &suites, &rng, t0).unwrap();
    for _ in 0..stage % 3 {
        let Outcome::Reply = adm.datagram(&out, from, t0, |_| b"key".to_vec()) else {
            panic!("our server did not answer our client");
        };
        let reply = adm.reply.clone();
        let Ok(Progress::Send(next)) = hs.datagram(t0, &reply) else {
            panic!("our client did not answer our server");
        };
        out = next;
    }
    let largest = out.len().max(512);
    let mut n = 0;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let dg = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        let now = t0 + Duration::from_millis(100 * n as u64);
        n += 1;
        match hs.datagram(now, dg) {
            Ok(Progress::Send(d)) => assert!(d.len() <= largest, "answered {} bytes", d.len()),
            Ok(Progress::Wait) => {}
            Ok(Progress::Established(_)) => panic!("established without the server's Finished"),
            Err(_) => {
                assert!(
                    hs.next_timeout().is_none(),
                    "a failed handshake keeps a timer"
                );
                break;
            }
        }
    }
    n
}

/// `rekey`: fuzzed control records into both sides of a rekey exchange, framed as u16 length +
/// bytes and parsed as the real receivers parse them: a server at epoch 1 takes them as the
/// client's, a client with an exchange for epoch 2 in flight as the server's.
///
/// Must hold: no panic; the server gives keys only for the epoch after its own, each time with
/// a Reply to send, and never twice for one epoch; what either side answers is whole control
/// messages of type 8 within the fragment size; nothing grows past one message per side.
/// (An authenticated peer can end the client's exchange with a well-formed Reply of its own:
/// the keys then differ and the session dies as with any hostile peer, so that is allowed.)
pub fn rekey(data: &[u8]) -> usize {
    use dtun_proto::proto::Control;
    use dtun_proto::rekey::EpochSecret;
    use dtun_proto::rekey::exchange::{ClientRekey, ServerRekey};
    use dtun_proto::rekey::message::{FRAGMENT_HEADER, MAX_FRAGMENT, REKEY_TYPE};
    use std::time::{Duration, Instant};

    let rng = ring::rand::SystemRandom::new();
    let t0 = Instant::now();
    let s1 = EpochSecret::first(&[7; 48], &[1; 32], &[2; 32]);
    let mut server = ServerRekey::new(s1.clone());
    // The client's exchange costs two key generations: made only for an input that holds a
    // Reply fragment, so the fuzzer spends its time on the parsers.
    let mut client = None;
    let make_client = || {
        let mut c = ClientRekey::new(s1.clone(), Duration::from_secs(1), Duration::from_secs(30));
        c.soon();
        let first = c.start(t0, &rng).ok()?;
        assert_eq!(first.send.len(), 3, "an Init is three fragments");
        Some(c)
    };
    let mut rest = data;
    let mut n = 0;
    let mut keyed = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let msg = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        n += 1;
        let Ok(Control::Rekey(f)) = Control::parse(msg) else {
            continue;
        };
        let before = server.epoch();
        if let Ok(out) = server.fragment(&f, &rng) {
            for m in &out.send {
                assert!(m.len() <= FRAGMENT_HEADER + MAX_FRAGMENT && m[1] == REKEY_TYPE);
                assert!(matches!(Control::parse(m), Ok(Control::Rekey(_))));
            }
            if let Some(next) = out.next {
                assert_eq!(next.epoch, before + 1, "keys for another epoch");
                assert!(!out.send.is_empty(), "keys without a Reply");
                assert!(!keyed.contains(&next.epoch), "two exchanges for one epoch");
                keyed.push(next.epoch);
            }
        }
        if f.kind != dtun_proto::rekey::message::Kind::Reply {
            continue;
        }
        if client.is_none() {
            client = make_client();
        }
        let now = t0 + Duration::from_millis(10 * n as u64);
        if let Some(Ok(out)) = client.as_mut().map(|c| c.fragment(now, &f)) {
            assert!(out.send.is_empty(), "the client answers no fragment");
        }
    }
    n
}
