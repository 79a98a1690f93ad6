//! Known-answer tests against two real sessions of the original Go dtun (pion/dtls 2.0.8 and
//! 2.2.6 clients), captured on the wire: `tests/data/captures/` (see its README.md).
//!
//! Given only the key `foo`, each test rebuilds the handshake transcript from the capture,
//! derives the keys with `dtun_proto::kdf` (PSK premaster, RFC 7627 extended master secret, RFC 5246
//! key expansion), checks both Finished messages, opens every epoch-1 record with
//! `dtun_proto::record`, seals the plaintexts back into the captured bytes, and checks that tampered,
//! replayed and wrong-key records are dropped.

#[path = "kat/pcap.rs"]
mod pcap;

use std::collections::HashMap;
use std::net::SocketAddr;

use dtun_proto::consts::{
    CONTENT_APPLICATION_DATA, CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE, EXPLICIT_NONCE_LEN,
    PAYLOAD_OFFSET, RECORD_HEADER_LEN,
};
use dtun_proto::kdf::{
    KeyBlock, MASTER_SECRET_LEN, RANDOM_LEN, extended_master_secret, key_block, prf_sha256,
    psk_premaster,
};
use dtun_proto::record::{DropReason, Opener, Sealer, Suite, parse_header, records, session_pair};
use ring::digest::{SHA256, digest};

const KEY: &[u8] = b"foo";
const WRONG_KEY: &[u8] = b"fop";
const SERVER: &str = "172.31.250.1:4443";
const CLIENT_IDENTITY: &[u8] = b"demo";
const SERVER_HINT: &[u8] = b"dtun";
const ADDRESS_MESSAGE: [u8; 8] = [0x0a, 0x56, 0x00, 0x02, 0x0a, 0x56, 0x00, 0x01];
const PEERNET_MESSAGE: &[u8] = b"10.200.0.0/24";
const SUITE_PSK_AES_128_CCM_8: u16 = 0xc0a8;

const HS_CLIENT_HELLO: u8 = 1;
const HS_SERVER_HELLO: u8 = 2;
const HS_HELLO_VERIFY_REQUEST: u8 = 3;
const HS_SERVER_KEY_EXCHANGE: u8 = 12;
const HS_SERVER_HELLO_DONE: u8 = 14;
const HS_CLIENT_KEY_EXCHANGE: u8 = 16;
const HS_FINISHED: u8 = 20;
const HS_HEADER_LEN: usize = 12;

const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_EC_POINT_FORMATS: u16 = 11;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_EXTENDED_MASTER_SECRET: u16 = 23;
const EXT_RENEGOTIATION_INFO: u16 = 0xff01;

// ---------------------------------------------------------------------------------------------
// The capture as DTLS records

/// One DTLS record of the capture.
struct Record {
    /// 1-based pcap frame number.
    frame: usize,
    from_client: bool,
    bytes: Vec<u8>,
}

impl Record {
    fn content_type(&self) -> u8 {
        self.bytes[0]
    }
    fn epoch(&self) -> u16 {
        parse_header(&self.bytes).unwrap().epoch
    }
    fn seq(&self) -> u64 {
        parse_header(&self.bytes).unwrap().seq
    }
    fn body(&self) -> &[u8] {
        &self.bytes[RECORD_HEADER_LEN..]
    }
    fn explicit_nonce(&self) -> [u8; EXPLICIT_NONCE_LEN] {
        self.bytes[RECORD_HEADER_LEN..PAYLOAD_OFFSET]
            .try_into()
            .unwrap()
    }
}

struct Capture {
    name: &'static str,
    records: Vec<Record>,
}

impl Capture {
    /// The records of one frame.
    fn frame(&self, number: usize) -> Vec<&Record> {
        let v: Vec<&Record> = self.records.iter().filter(|r| r.frame == number).collect();
        assert!(
            !v.is_empty(),
            "{}: no DTLS record in frame {number}",
            self.name
        );
        v
    }

    /// The single record of a frame, which must be application data of epoch 1.
    fn app_frame(&self, number: usize) -> &Record {
        let v = self.frame(number);
        assert_eq!(
            v.len(),
            1,
            "{}: frame {number} holds {} records",
            self.name,
            v.len()
        );
        let r = v[0];
        assert_eq!(
            r.content_type(),
            CONTENT_APPLICATION_DATA,
            "{}: frame {number} is not application data",
            self.name
        );
        assert_eq!(r.epoch(), 1, "{}: frame {number} is not epoch 1", self.name);
        r
    }

    fn epoch1(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| r.epoch() == 1)
    }
}

fn load(name: &'static str) -> Capture {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/captures")
        .join(name);
    let file = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "known-answer capture {} is missing or unreadable ({e}); it is part of the \
             repository (tests/data/captures/)",
            path.display()
        )
    });
    let server: SocketAddr = SERVER.parse().unwrap();
    let mut client: Option<SocketAddr> = None;
    let mut out = Vec::new();
    for packet in pcap::packets(&file) {
        let Some(dg) = pcap::udp(&packet) else {
            continue;
        };
        let from_client = if dg.dst == server {
            let c = *client.get_or_insert(dg.src);
            assert_eq!(dg.src, c, "{name}: frame {}: second client", dg.number);
            true
        } else {
            assert_eq!(
                dg.src, server,
                "{name}: frame {}: not the session",
                dg.number
            );
            assert_eq!(
                Some(dg.dst),
                client,
                "{name}: frame {}: server spoke first",
                dg.number
            );
            false
        };
        // The library's splitter must consume the datagram exactly.
        let mut end = 0;
        for range in records(&dg.payload) {
            let range = range
                .unwrap_or_else(|e| panic!("{name}: frame {}: malformed record: {e:?}", dg.number));
            assert_eq!(range.start, end, "{name}: frame {}: gap", dg.number);
            end = range.end;
            out.push(Record {
                frame: dg.number,
                from_client,
                bytes: dg.payload[range].to_vec(),
            });
        }
        assert_eq!(
            end,
            dg.payload.len(),
            "{name}: frame {}: trailing bytes",
            dg.number
        );
        for r in out.iter().filter(|r| r.frame == dg.number) {
            assert_eq!(
                &r.bytes[1..3],
                &[0xfe, 0xfd],
                "{name}: frame {}: not DTLS 1.2",
                r.frame
            );
        }
    }
    assert!(client.is_some(), "{name}: no datagram to {SERVER}");
    Capture { name, records: out }
}

// ---------------------------------------------------------------------------------------------
// Handshake reconstruction

struct HandshakeMessage {
    from_client: bool,
    msg_type: u8,
    message_seq: u16,
    body: Vec<u8>,
}

impl HandshakeMessage {
    /// The message as it enters the handshake hash: unfragmented 12-byte DTLS header ‖ body.
    fn hashed(&self) -> Vec<u8> {
        let len = u32::try_from(self.body.len()).unwrap().to_be_bytes();
        let mut v = vec![self.msg_type];
        v.extend_from_slice(&len[1..]);
        v.extend_from_slice(&self.message_seq.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0]);
        v.extend_from_slice(&len[1..]);
        v.extend_from_slice(&self.body);
        v
    }
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// The plaintext (epoch 0) handshake messages of both sides in order of first appearance,
/// reassembled from fragments, retransmissions dropped.
fn handshake_messages(cap: &Capture) -> Vec<HandshakeMessage> {
    struct Partial {
        msg_type: u8,
        body: Vec<u8>,
        have: Vec<bool>,
    }
    let mut order: Vec<(bool, u16)> = Vec::new();
    let mut partial: HashMap<(bool, u16), Partial> = HashMap::new();
    for r in cap
        .records
        .iter()
        .filter(|r| r.epoch() == 0 && r.content_type() == CONTENT_HANDSHAKE)
    {
        let mut b = r.body();
        while !b.is_empty() {
            assert!(
                b.len() >= HS_HEADER_LEN,
                "{}: frame {}: short",
                cap.name,
                r.frame
            );
            let msg_type = b[0];
            let length = u24(&b[1..4]);
            let message_seq = u16::from_be_bytes([b[4], b[5]]);
            let offset = u24(&b[6..9]);
            let frag_len = u24(&b[9..12]);
            let frag = &b[HS_HEADER_LEN..HS_HEADER_LEN + frag_len];
            assert!(
                offset + frag_len <= length,
                "{}: frame {}",
                cap.name,
                r.frame
            );
            let key = (r.from_client, message_seq);
            let p = partial.entry(key).or_insert_with(|| {
                order.push(key);
                Partial {
                    msg_type,
                    body: vec![0; length],
                    have: vec![false; length],
                }
            });
            assert_eq!(
                (p.msg_type, p.body.len()),
                (msg_type, length),
                "{}: frame {}: message_seq {message_seq} reused",
                cap.name,
                r.frame
            );
            for (i, &byte) in frag.iter().enumerate() {
                if p.have[offset + i] {
                    assert_eq!(
                        p.body[offset + i],
                        byte,
                        "{}: retransmission differs",
                        cap.name
                    );
                }
                p.body[offset + i] = byte;
                p.have[offset + i] = true;
            }
            b = &b[HS_HEADER_LEN + frag_len..];
        }
    }
    order
        .into_iter()
        .map(|key| {
            let p = partial.remove(&key).unwrap();
            assert!(
                p.have.iter().all(|&h| h),
                "{}: message {key:?} incomplete",
                cap.name
            );
            HandshakeMessage {
                from_client: key.0,
                msg_type: p.msg_type,
                message_seq: key.1,
                body: p.body,
            }
        })
        .collect()
}

/// A parsed ClientHello or ServerHello.
struct Hello {
    random: [u8; RANDOM_LEN],
    cookie: Vec<u8>,
    suites: Vec<u16>,
    extensions: Vec<(u16, Vec<u8>)>,
}

impl Hello {
    fn parse(m: &HandshakeMessage) -> Hello {
        let b = &m.body[..];
        assert_eq!(&b[..2], &[0xfe, 0xfd], "hello version is not DTLS 1.2");
        let random = b[2..2 + RANDOM_LEN].try_into().unwrap();
        let mut at = 2 + RANDOM_LEN;
        at += 1 + usize::from(b[at]); // session id
        let (cookie, suites) = if m.msg_type == HS_CLIENT_HELLO {
            let cookie = b[at + 1..at + 1 + usize::from(b[at])].to_vec();
            at += 1 + cookie.len();
            let n = usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
            let suites = b[at + 2..at + 2 + n]
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            at += 2 + n;
            assert_eq!(
                &b[at..at + 2],
                &[1, 0],
                "compression methods must be [null]"
            );
            at += 2;
            (cookie, suites)
        } else {
            let suite = u16::from_be_bytes([b[at], b[at + 1]]);
            assert_eq!(b[at + 2], 0, "server chose a compression method");
            at += 3;
            (Vec::new(), vec![suite])
        };
        let mut extensions = Vec::new();
        if at < b.len() {
            let total = usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
            at += 2;
            assert_eq!(at + total, b.len(), "extensions length");
            while at < b.len() {
                let t = u16::from_be_bytes([b[at], b[at + 1]]);
                let n = usize::from(u16::from_be_bytes([b[at + 2], b[at + 3]]));
                extensions.push((t, b[at + 4..at + 4 + n].to_vec()));
                at += 4 + n;
            }
        }
        Hello {
            random,
            cookie,
            suites,
            extensions,
        }
    }

    fn extension_types(&self) -> Vec<u16> {
        self.extensions.iter().map(|e| e.0).collect()
    }
}

/// Everything the handshake fixes, given the key.
struct Session {
    client_hello_1: Hello,
    client_hello: Hello,
    server_hello: Hello,
    psk_identity: Vec<u8>,
    psk_hint: Vec<u8>,
    /// Handshake messages from the cookie ClientHello through ClientKeyExchange.
    transcript: Vec<u8>,
    master: [u8; MASTER_SECRET_LEN],
    kb: KeyBlock,
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest(&SHA256, data).as_ref().to_vec()
}

fn u16_prefixed(b: &[u8]) -> Vec<u8> {
    let n = usize::from(u16::from_be_bytes([b[0], b[1]]));
    assert_eq!(2 + n, b.len(), "length-prefixed field");
    b[2..].to_vec()
}

fn derive(cap: &Capture, key: &[u8]) -> Session {
    let msgs = handshake_messages(cap);
    let kinds: Vec<(bool, u8)> = msgs.iter().map(|m| (m.from_client, m.msg_type)).collect();
    assert_eq!(
        kinds,
        [
            (true, HS_CLIENT_HELLO),
            (false, HS_HELLO_VERIFY_REQUEST),
            (true, HS_CLIENT_HELLO),
            (false, HS_SERVER_HELLO),
            (false, HS_SERVER_KEY_EXCHANGE),
            (false, HS_SERVER_HELLO_DONE),
            (true, HS_CLIENT_KEY_EXCHANGE),
        ],
        "{}: unexpected handshake flights",
        cap.name
    );
    let client_hello_1 = Hello::parse(&msgs[0]);
    let client_hello = Hello::parse(&msgs[2]);
    assert!(
        client_hello_1.cookie.is_empty(),
        "{}: first hello has a cookie",
        cap.name
    );
    // HelloVerifyRequest: server_version(2) ‖ cookie<0..255>.
    let hvr_cookie = &msgs[1].body[3..];
    assert_eq!(hvr_cookie.len(), 20, "{}: cookie length", cap.name);
    assert_eq!(
        client_hello.cookie, hvr_cookie,
        "{}: cookie not echoed",
        cap.name
    );
    let server_hello = Hello::parse(&msgs[3]);
    let psk_hint = u16_prefixed(&msgs[4].body);
    let psk_identity = u16_prefixed(&msgs[6].body);

    // RFC 6347 §4.2.1: the first ClientHello and the HelloVerifyRequest are not hashed.
    let transcript: Vec<u8> = msgs[2..]
        .iter()
        .flat_map(HandshakeMessage::hashed)
        .collect();
    let master = extended_master_secret(&psk_premaster(key), &sha256(&transcript));
    let kb = key_block(&master, &client_hello.random, &server_hello.random);
    Session {
        client_hello_1,
        client_hello,
        server_hello,
        psk_identity,
        psk_hint,
        transcript,
        master,
        kb,
    }
}

// ---------------------------------------------------------------------------------------------
// Records

fn client_opener(s: &Session) -> Opener {
    session_pair(Suite::Aes128Ccm8, &s.kb, true, 1, 0).1
}

fn server_opener(s: &Session) -> Opener {
    session_pair(Suite::Aes128Ccm8, &s.kb, false, 1, 0).1
}

/// The opener that reads what the record's sender wrote.
fn opener_for(s: &Session, r: &Record) -> Opener {
    if r.from_client {
        server_opener(s)
    } else {
        client_opener(s)
    }
}

/// The sealer of the record's sender.
fn sealer_for(s: &Session, r: &Record) -> Sealer {
    session_pair(Suite::Aes128Ccm8, &s.kb, r.from_client, 1, 0).0
}

/// Opens a copy of `bytes`: content type and plaintext.
fn open(o: &mut Opener, bytes: &[u8]) -> Result<(u8, Vec<u8>), DropReason> {
    let mut buf = bytes.to_vec();
    let (ct, range) = o.open(&mut buf)?;
    Ok((ct, buf[range].to_vec()))
}

/// Every epoch-1 record decrypted, one opener per direction in capture order.
fn decrypt_all<'a>(cap: &'a Capture, s: &Session) -> Vec<(&'a Record, u8, Vec<u8>)> {
    let (mut from_server, mut from_client) = (client_opener(s), server_opener(s));
    cap.epoch1()
        .map(|r| {
            let o = if r.from_client {
                &mut from_client
            } else {
                &mut from_server
            };
            let (ct, pt) = open(o, &r.bytes).unwrap_or_else(|e| {
                panic!(
                    "{}: frame {} (seq {}) does not open: {e:?}",
                    cap.name,
                    r.frame,
                    r.seq()
                )
            });
            assert_eq!(ct, r.content_type());
            (r, ct, pt)
        })
        .collect()
}

fn finished_verify_data(master: &[u8], label: &[u8], transcript: &[u8]) -> [u8; 12] {
    let mut v = [0u8; 12];
    prf_sha256(master, label, &sha256(transcript), &mut v);
    v
}

// ---------------------------------------------------------------------------------------------
// The checks, run on each capture

fn check_handshake_shape(cap: &Capture, expect_first: &[u16], expect_second: &[u16]) {
    let s = derive(cap, KEY);
    assert_eq!(
        s.client_hello_1.extension_types(),
        expect_first,
        "{}",
        cap.name
    );
    assert_eq!(
        s.client_hello.extension_types(),
        expect_second,
        "{}",
        cap.name
    );
    assert_eq!(
        s.client_hello_1.suites,
        [SUITE_PSK_AES_128_CCM_8],
        "{}",
        cap.name
    );
    assert_eq!(
        s.client_hello.suites,
        [SUITE_PSK_AES_128_CCM_8],
        "{}",
        cap.name
    );
    assert_eq!(
        s.server_hello.suites,
        [SUITE_PSK_AES_128_CCM_8],
        "{}",
        cap.name
    );
    assert_eq!(
        s.server_hello.extension_types(),
        [EXT_RENEGOTIATION_INFO, EXT_EXTENDED_MASTER_SECRET],
        "{}",
        cap.name
    );
    if let Some((_, sni)) = s
        .client_hello
        .extensions
        .iter()
        .find(|e| e.0 == EXT_SERVER_NAME)
    {
        // server_name_list(2) ‖ type host_name(1) ‖ name<2>
        assert_eq!(&sni[5..], b"172.31.250.1", "{}: SNI", cap.name);
    }
    assert_eq!(
        s.psk_identity, CLIENT_IDENTITY,
        "{}: PSK identity",
        cap.name
    );
    assert_eq!(s.psk_hint, SERVER_HINT, "{}: PSK identity hint", cap.name);
    // Flight 5 and 6 each end with ChangeCipherSpec (epoch 0) and a Finished (epoch 1).
    for (frame, from_client) in [(5, true), (6, false)] {
        let kinds: Vec<(u8, u16)> = cap
            .frame(frame)
            .iter()
            .filter(|r| r.epoch() == 1 || r.content_type() == CONTENT_CHANGE_CIPHER_SPEC)
            .map(|r| {
                assert_eq!(r.from_client, from_client);
                (r.content_type(), r.epoch())
            })
            .collect();
        assert_eq!(
            kinds,
            [(CONTENT_CHANGE_CIPHER_SPEC, 0), (CONTENT_HANDSHAKE, 1)],
            "{}: frame {frame}",
            cap.name
        );
    }
}

fn check_finished(cap: &Capture) {
    let s = derive(cap, KEY);
    let finished = |frame: usize| {
        let r = cap
            .frame(frame)
            .into_iter()
            .find(|r| r.epoch() == 1 && r.content_type() == CONTENT_HANDSHAKE)
            .unwrap();
        let (ct, pt) = open(&mut opener_for(&s, r), &r.bytes)
            .unwrap_or_else(|e| panic!("{}: Finished in frame {frame}: {e:?}", cap.name));
        assert_eq!(ct, CONTENT_HANDSHAKE);
        assert_eq!(pt.len(), HS_HEADER_LEN + 12, "{}: frame {frame}", cap.name);
        assert_eq!(pt[0], HS_FINISHED, "{}: frame {frame}", cap.name);
        assert_eq!(u24(&pt[1..4]), 12);
        assert_eq!(&pt[6..12], &[0, 0, 0, 0, 0, 12]);
        pt
    };
    let client_fin = finished(5);
    let server_fin = finished(6);
    assert_eq!(
        client_fin[HS_HEADER_LEN..],
        finished_verify_data(&s.master, b"client finished", &s.transcript),
        "{}: client Finished verify_data",
        cap.name
    );
    let mut with_client_fin = s.transcript.clone();
    with_client_fin.extend_from_slice(&client_fin);
    assert_eq!(
        server_fin[HS_HEADER_LEN..],
        finished_verify_data(&s.master, b"server finished", &with_client_fin),
        "{}: server Finished verify_data",
        cap.name
    );
}

fn check_known_plaintexts(cap: &Capture) {
    let s = derive(cap, KEY);
    let f7 = cap.app_frame(7);
    assert!(
        !f7.from_client,
        "{}: frame 7 must be server → client",
        cap.name
    );
    let (ct, pt) = open(&mut client_opener(&s), &f7.bytes)
        .unwrap_or_else(|e| panic!("{}: frame 7: {e:?}", cap.name));
    assert_eq!(ct, CONTENT_APPLICATION_DATA);
    assert_eq!(
        pt, ADDRESS_MESSAGE,
        "{}: frame 7 (address message)",
        cap.name
    );

    let f8 = cap.app_frame(8);
    assert!(
        f8.from_client,
        "{}: frame 8 must be client → server",
        cap.name
    );
    let (ct, pt) = open(&mut server_opener(&s), &f8.bytes)
        .unwrap_or_else(|e| panic!("{}: frame 8: {e:?}", cap.name));
    assert_eq!(ct, CONTENT_APPLICATION_DATA);
    assert_eq!(
        pt, PEERNET_MESSAGE,
        "{}: frame 8 (peernet message)",
        cap.name
    );

    // The directions are not interchangeable: the key block's halves are the right way round.
    assert_eq!(
        open(&mut server_opener(&s), &f7.bytes),
        Err(DropReason::BadTag)
    );
    assert_eq!(
        open(&mut client_opener(&s), &f8.bytes),
        Err(DropReason::BadTag)
    );
}

fn check_all_records(cap: &Capture, expect_app_records: usize) {
    let s = derive(cap, KEY);
    let all = decrypt_all(cap, &s);
    let app: Vec<_> = all
        .iter()
        .filter(|(_, ct, _)| *ct == CONTENT_APPLICATION_DATA)
        .collect();
    assert_eq!(
        app.len(),
        expect_app_records,
        "{}: application records",
        cap.name
    );
    assert!(app[0].0.frame == 7 && app[1].0.frame == 8, "{}", cap.name);
    assert_eq!(app[0].2, ADDRESS_MESSAGE);
    assert_eq!(app[1].2, PEERNET_MESSAGE);
    for (r, _, pt) in &app[2..] {
        let version = pt.first().map(|b| b >> 4);
        assert!(
            matches!(version, Some(4 | 6)),
            "{}: frame {}: plaintext is not an IP packet: {:02x?}",
            cap.name,
            r.frame,
            pt
        );
        if version == Some(6) {
            let payload_len = usize::from(u16::from_be_bytes([pt[4], pt[5]]));
            assert_eq!(
                pt.len(),
                40 + payload_len,
                "{}: frame {}: IPv6 length",
                cap.name,
                r.frame
            );
        } else {
            let total = usize::from(u16::from_be_bytes([pt[2], pt[3]]));
            assert_eq!(
                pt.len(),
                total,
                "{}: frame {}: IPv4 length",
                cap.name,
                r.frame
            );
        }
    }
}

fn check_reseal(cap: &Capture) {
    let s = derive(cap, KEY);
    let all = decrypt_all(cap, &s);
    assert!(all.iter().any(|(r, _, _)| r.frame == 7));
    assert!(all.iter().any(|(r, _, _)| r.frame == 8));
    for (r, ct, pt) in all {
        let sealer = sealer_for(&s, r);
        let mut buf = vec![0u8; r.bytes.len() + 64];
        buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + pt.len()].copy_from_slice(&pt);
        let n = sealer
            .seal_with_explicit_nonce(ct, &mut buf, pt.len(), r.seq(), r.explicit_nonce())
            .unwrap();
        assert_eq!(
            hex::encode(&buf[..n]),
            hex::encode(&r.bytes),
            "{}: frame {} (seq {}) does not reseal byte for byte",
            cap.name,
            r.frame,
            r.seq()
        );
    }
}

fn check_drops(cap: &Capture) {
    let s = derive(cap, KEY);
    for frame in [7, 8] {
        let r = cap.app_frame(frame);
        let good = &r.bytes;
        // Any flipped byte of content type, version, sequence number, nonce, ciphertext or tag.
        let authenticated = std::iter::once(0)
            .chain(1..3)
            .chain(5..11)
            .chain(RECORD_HEADER_LEN..good.len());
        for i in authenticated {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            assert_eq!(
                open(&mut opener_for(&s, r), &bad),
                Err(DropReason::BadTag),
                "{}: frame {frame} with byte {i} flipped",
                cap.name
            );
        }
        // Header fields checked before the tag.
        for (i, why) in [
            (3, DropReason::BadEpoch),
            (4, DropReason::BadEpoch),
            (11, DropReason::Truncated),
            (12, DropReason::Truncated),
        ] {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            assert_eq!(
                open(&mut opener_for(&s, r), &bad),
                Err(why),
                "{}: byte {i}",
                cap.name
            );
        }
        let mut short = good.clone();
        short.pop();
        assert_eq!(
            open(&mut opener_for(&s, r), &short),
            Err(DropReason::Truncated)
        );

        // A record that failed its tag does not move the window; one that opened does.
        let mut o = opener_for(&s, r);
        let mut bad = good.clone();
        bad[good.len() - 1] ^= 1;
        assert_eq!(open(&mut o, &bad), Err(DropReason::BadTag));
        assert!(open(&mut o, good).is_ok(), "{}: frame {frame}", cap.name);
        assert_eq!(
            open(&mut o, good),
            Err(DropReason::Replay),
            "{}: frame {frame}",
            cap.name
        );
        assert_eq!(
            open(&mut o, &bad),
            Err(DropReason::Replay),
            "{}: frame {frame}",
            cap.name
        );
    }

    // The wrong key: same transcript, different secrets; nothing opens, Finished disagrees.
    let wrong = derive(cap, WRONG_KEY);
    assert_ne!(wrong.master, s.master);
    assert_ne!(wrong.kb, s.kb);
    for r in cap.epoch1() {
        assert_eq!(
            open(&mut opener_for(&wrong, r), &r.bytes),
            Err(DropReason::BadTag),
            "{}: frame {} opens under the wrong key",
            cap.name,
            r.frame
        );
    }
    assert_ne!(
        finished_verify_data(&wrong.master, b"client finished", &wrong.transcript),
        finished_verify_data(&s.master, b"client finished", &s.transcript)
    );
}

/// `handshake::server_hello_suite`, which tells the tests the suite the DTLS crate negotiated, finds
/// CCM_8 in the one datagram carrying the ServerHello and nothing in any other datagram.
fn check_server_hello_sniff(cap: &Capture) {
    let mut frames: Vec<usize> = cap.records.iter().map(|r| r.frame).collect();
    frames.dedup();
    let mut found = Vec::new();
    for f in frames {
        let datagram: Vec<u8> = cap.frame(f).iter().flat_map(|r| r.bytes.clone()).collect();
        if let Some(id) = dtun_proto::handshake::server_hello_suite(&datagram) {
            found.push((f, id));
        }
    }
    assert_eq!(found.len(), 1, "{}: {found:?}", cap.name);
    assert_eq!(found[0].1, 0xc0a8, "{}", cap.name);
    assert!(
        cap.frame(found[0].0).iter().any(|r| !r.from_client
            && r.content_type() == CONTENT_HANDSHAKE
            && r.body()[0] == HS_SERVER_HELLO),
        "{}: frame {} holds no ServerHello",
        cap.name,
        found[0].0
    );
}

macro_rules! known_answers {
    ($module:ident, $file:literal, $records:literal, $first:expr, $second:expr) => {
        mod $module {
            use super::*;

            fn cap() -> Capture {
                load($file)
            }

            #[test]
            fn handshake_has_the_documented_shape() {
                check_handshake_shape(&cap(), &$first, &$second);
            }

            #[test]
            fn finished_messages_verify() {
                check_finished(&cap());
            }

            #[test]
            fn frames_7_and_8_decrypt_to_the_setup_messages() {
                check_known_plaintexts(&cap());
            }

            #[test]
            fn every_record_decrypts_and_later_ones_are_ip_packets() {
                check_all_records(&cap(), $records);
            }

            #[test]
            fn every_record_reseals_byte_for_byte() {
                check_reseal(&cap());
            }

            #[test]
            fn tampered_replayed_and_wrong_key_records_are_dropped() {
                check_drops(&cap());
            }

            #[test]
            fn the_server_hello_suite_is_read_off_the_wire() {
                check_server_hello_sniff(&cap());
            }
        }
    };
}

known_answers!(
    pion_2_0_8,
    "pion-2.0.8-session.pcap",
    10,
    [
        EXT_SIGNATURE_ALGORITHMS,
        EXT_RENEGOTIATION_INFO,
        EXT_EXTENDED_MASTER_SECRET,
        EXT_SERVER_NAME
    ],
    [
        EXT_SIGNATURE_ALGORITHMS,
        EXT_RENEGOTIATION_INFO,
        EXT_EXTENDED_MASTER_SECRET,
        EXT_SERVER_NAME
    ]
);

known_answers!(
    pion_2_2_6,
    "pion-2.2.6-session.pcap",
    18,
    [
        EXT_SIGNATURE_ALGORITHMS,
        EXT_RENEGOTIATION_INFO,
        EXT_EXTENDED_MASTER_SECRET
    ],
    [
        EXT_SIGNATURE_ALGORITHMS,
        EXT_RENEGOTIATION_INFO,
        EXT_SUPPORTED_GROUPS,
        EXT_EC_POINT_FORMATS,
        EXT_EXTENDED_MASTER_SECRET
    ]
);

/// The original's server, as captured, drives our client's session state machine
/// (`dtun_proto::session::ClientSession`, what `dtun -c` runs) once it has the session's keys
/// (the handshake itself cannot be replayed: the server's flights answer pion's ClientHello,
/// not ours): its address message (frame 7) is taken; its hint `dtun` means an original, so
/// no control message and no Hello; our peernet record opens at the original's server as the
/// original client's did (frame 8); every later record of the server's comes out as the same
/// IP packet, nothing dropped.
#[test]
fn our_client_session_takes_the_original_servers_records() {
    use dtun_proto::handshake::Established;
    use dtun_proto::inbound::DropKind;
    use dtun_proto::session::{ClientSession, Config, Event};
    for name in ["pion-2.0.8-session.pcap", "pion-2.2.6-session.pcap"] {
        let cap = load(name);
        let s = derive(&cap, KEY);
        let cfg = Config {
            identity: CLIENT_IDENTITY.to_vec(),
            key: zeroize::Zeroizing::new(KEY.to_vec()),
            suites: vec![Suite::Aes128Ccm8],
            peernet: String::from_utf8(PEERNET_MESSAGE.to_vec()).unwrap(),
            lans: vec![],
            keepalive: std::time::Duration::from_secs(10),
            compat: false,
            first_sequence: dtun_proto::consts::FIRST_APP_SEQUENCE,
            rekey: None,
            roam: false,
        };
        let est = Established {
            suite: Suite::Aes128Ccm8,
            keys: s.kb.clone(),
            peer_identity: s.psk_hint.clone(),
            epoch1: dtun_proto::rekey::EpochSecret::first(
                &s.master,
                &s.client_hello.random,
                &s.server_hello.random,
            ),
        };
        assert_eq!(s.psk_hint, SERVER_HINT);
        let now = std::time::Instant::now();
        let (mut c, step) = ClientSession::established_for_test(cfg, est, now);
        assert!(
            matches!(
                &step.events[..],
                [Event::Established {
                    negotiated: false,
                    ..
                }]
            ),
            "{name}: {:?}",
            step.events
        );
        let step = c.datagram(now, &cap.app_frame(7).bytes);
        assert!(
            matches!(&step.events[..], [Event::Address(a)] if a.to_bytes() == ADDRESS_MESSAGE),
            "{name}: {:?}",
            step.events
        );
        let step = c.tunnel_ready(now);
        assert!(
            matches!(&step.events[..], [Event::Up { addr6: Some(None) }]),
            "{name}: {:?}",
            step.events
        );
        assert_eq!(step.send.len(), 1, "{name}: the peernet message only");
        let (ct, pt) = open(&mut server_opener(&s), &step.send[0]).unwrap();
        assert_eq!((ct, &pt[..]), (CONTENT_APPLICATION_DATA, PEERNET_MESSAGE));
        let mut packets = 0;
        for (r, ct, pt) in decrypt_all(&cap, &s) {
            if r.from_client || r.frame <= 7 || ct != CONTENT_APPLICATION_DATA {
                continue;
            }
            let step = c.datagram(now, &r.bytes);
            assert!(
                matches!(&step.events[..], [Event::Packet(p)] if *p == pt),
                "{name}: frame {}: {:?}",
                r.frame,
                step.events
            );
            assert!(step.send.is_empty(), "{name}: nothing back to an original");
            packets += 1;
        }
        assert!(packets > 0, "{name}: the server sent packets");
        for d in DropKind::all() {
            assert_eq!(c.counters().drops(d), 0, "{name}: {}", d.as_str());
        }
        assert!(!c.is_closed());
    }
}

// ---------------------------------------------------------------------------------------------
// Forward secrecy: a capture of our own session with rekeys, read by someone who has the PSK

/// A session of our client and server in memory (`dtun_proto::session::pair`), rekeying every
/// 2 s of traffic, captured datagram by datagram as a `Capture`; with the epochs and shared
/// secrets of its rekeys (X25519, ML-KEM), which only the peers know.
/// Each rekey's epoch and its shared secrets (X25519, ML-KEM).
type Revealed = Vec<(u16, [u8; 32], [u8; 32])>;

fn rekeyed_capture() -> (Capture, Revealed) {
    use dtun_proto::session::pair::{Dir, Pair, ServerScript, clean};
    let mut cfg = Pair::config();
    cfg.rekey = Some(std::time::Duration::from_secs(2));
    let mut p = Pair::new(cfg, ServerScript::default(), clean());
    p.detach = true;
    p.data_every = Some(std::time::Duration::from_millis(100));
    p.run(std::time::Duration::from_secs(7));
    assert!(p.client.epoch() >= 3, "epoch {}", p.client.epoch());
    let mut cap = Capture {
        name: "in-memory rekeyed session",
        records: vec![],
    };
    for (frame, (dir, dg)) in p.wire.iter().enumerate() {
        for r in records(dg).flatten() {
            cap.records.push(Record {
                frame: frame + 1,
                from_client: *dir == Dir::ToServer,
                bytes: dg[r].to_vec(),
            });
        }
    }
    (cap, p.client.revealed_for_test())
}

/// Opens `r` under `keys` (GCM: what two dtun peers choose) in its epoch; its plaintext.
fn open_gcm(keys: &KeyBlock, epoch: u16, r: &Record) -> Result<Vec<u8>, DropReason> {
    let mut opener = session_pair(Suite::Aes128Gcm, keys, !r.from_client, epoch, 0).1;
    let mut b = r.bytes.clone();
    let (_, p) = opener.open(&mut b)?;
    Ok(b[p].to_vec())
}

/// The Init and Reply of the rekey into `epoch`, put together from the capture's records of
/// the epoch before (opened with `keys`).
fn rekey_messages(cap: &Capture, keys: &KeyBlock, epoch: u16) -> (Vec<u8>, Vec<u8>) {
    use dtun_proto::proto::Control;
    use dtun_proto::rekey::message::{Kind, Reassembly};
    let (mut init, mut reply) = (None, None);
    let mut ri = Reassembly::new(Kind::Init, epoch);
    let mut rr = Reassembly::new(Kind::Reply, epoch);
    for r in cap.records.iter().filter(|r| r.epoch() == epoch - 1) {
        let Ok(plain) = open_gcm(keys, epoch - 1, r) else {
            continue;
        };
        if let Ok(Control::Rekey(f)) = Control::parse(&plain)
            && f.epoch == epoch
        {
            match f.kind {
                Kind::Init => init = ri.add(&f).or(init),
                Kind::Reply => reply = rr.add(&f).or(reply),
            }
        }
    }
    (init.expect("the Init"), reply.expect("the Reply"))
}

/// How many of the capture's application records of `epoch` open under `keys`, of how many.
fn opened(cap: &Capture, keys: &KeyBlock, epoch: u16) -> (usize, usize) {
    let recs: Vec<&Record> = cap
        .records
        .iter()
        .filter(|r| r.epoch() == epoch && r.content_type() == CONTENT_APPLICATION_DATA)
        .collect();
    let ok = recs
        .iter()
        .filter(|r| open_gcm(keys, epoch, r).is_ok())
        .count();
    (ok, recs.len())
}

/// The proof the issue asks for. Given only the PSK and the capture, every record before the
/// first rekey opens (the handshake's keys come from the PSK and what the capture shows), and
/// so do the rekey's own messages; not one record after it does, with the handshake's keys
/// or with the next epoch's keys computed without the shared secrets. Given the X25519
/// secret as well (X25519 broken), still none: the ML-KEM half protects; given the ML-KEM
/// secret but not the X25519 one, none either. Given both, every record opens (so the
/// harness can read what it says it cannot).
#[test]
fn a_leaked_psk_opens_only_what_came_before_the_first_rekey() {
    use dtun_proto::rekey::EpochSecret;
    use dtun_proto::rekey::hybrid::Shared;
    let (cap, secrets) = rekeyed_capture();
    let psk = b"the key"; // Pair's
    let s = derive(&cap, psk);
    let kb1 = s.kb.clone();
    let (ok, all) = opened(&cap, &kb1, 1);
    assert!(
        all > 10 && ok == all,
        "epoch 1: {ok}/{all} open with the PSK"
    );
    let s1 = EpochSecret::first(&s.master, &s.client_hello.random, &s.server_hello.random);
    let (init, reply) = rekey_messages(&cap, &kb1, 2);
    let (epoch, x25519, mlkem) = secrets[0];
    assert_eq!(epoch, 2);
    let keys2 = |x: [u8; 32], k: [u8; 32]| {
        s1.next(
            &Shared {
                x25519: x,
                mlkem: k,
            },
            &init,
            &reply,
        )
        .unwrap()
        .keys()
    };
    let (_, all2) = opened(&cap, &kb1, 2);
    assert!(all2 > 10, "{all2} records in epoch 2");
    for (what, keys) in [
        ("the handshake's keys", kb1.clone()),
        ("no shared secret", keys2([0; 32], [0; 32])),
        ("the X25519 secret only", keys2(x25519, [0; 32])),
        ("the ML-KEM secret only", keys2([0; 32], mlkem)),
    ] {
        let (ok, all) = opened(&cap, &keys, 2);
        assert_eq!(ok, 0, "epoch 2 with {what}: {ok}/{all} opened");
    }
    let (ok, all) = opened(&cap, &keys2(x25519, mlkem), 2);
    assert_eq!(ok, all, "epoch 2 with both secrets: {ok}/{all}");
    // And later epochs stay closed to the PSK: epoch 3's records, with epoch 1's keys.
    let (ok, all) = opened(&cap, &kb1, 3);
    assert!(all > 0 && ok == 0, "epoch 3: {ok}/{all}");
}
