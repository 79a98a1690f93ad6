//! Benchmarks of the per-packet work in the protocol crate: what every tunnelled
//! packet costs in CPU before and after the sockets. Run with `cargo bench -p dtun-proto`
//! (a filter narrows it: `cargo bench -p dtun-proto -- seal/gcm`); docs/PERFORMANCE.md has
//! the numbers of the last run and how to read them.
//!
//! - `seal/{gcm,ccm8}/N×LEN`: [`Sealer::seal_many`] over N slots of LEN plaintext bytes, as the
//!   outbound pump seals one TUN read (src/pump.rs); 46×1400 is one 64 KB TCP super-packet
//!   split into MTU-sized packets (a GSO batch).
//! - `open/{gcm,ccm8}/N×LEN`: [`Inbox::open`] over a receive buffer of N datagrams of one
//!   LEN-byte record each (a GRO batch when N > 1), as the server's demultiplexer and the
//!   client open them: header walk, replay window, tag, classification, counters.
//! - `demux/…`: the pure steps the server's demultiplexer takes per datagram besides opening
//!   (src/server/demux.rs, src/server/demux/records.rs): is it a session's record, where are
//!   its records, is the inner packet's source the client's own; and admission's answer to a
//!   cookieless ClientHello (a flood's cost: parse, cookie HMAC, HelloVerifyRequest). The
//!   session table lookup and the queues stay in the binary crate and are not measured here.
//! - `mss/clamp/…`: [`mss::clamp`] on a TCP SYN (the option rewritten and the checksum fixed)
//!   and on a non-SYN segment (what nearly every packet pays).

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dtun_proto::admission::{self, Admission, Outcome};
use dtun_proto::authz;
use dtun_proto::consts::{CONTENT_APPLICATION_DATA, MAX_COMPAT_PLAINTEXT, PAYLOAD_OFFSET};
use dtun_proto::handshake::testing::client_hello;
use dtun_proto::inbound::{Counters, Inbound, Inbox};
use dtun_proto::mss;
use dtun_proto::record::{self, Opener, Sealer, Suite};
use ipnet::IpNet;

/// One outbound slot as the pump allocates it: header and nonce, up to 1 500 bytes, the tag.
const SLOT: usize = PAYLOAD_OFFSET + MAX_COMPAT_PLAINTEXT + 16;
/// Packets in a GSO batch: a 64 KB super-packet split into 1 400-byte packets.
const GSO_PACKETS: usize = 46;
/// (packets, bytes each) of every seal/open case.
const CASES: [(usize, usize); 3] = [(1, 64), (1, 1400), (GSO_PACKETS, 1400)];

const KEY: [u8; 16] = [0x42; 16];
const SALT: [u8; 4] = [7, 8, 9, 10];
const EPOCH: u16 = 1;

fn suites() -> [(&'static str, Suite); 2] {
    [("gcm", Suite::Aes128Gcm), ("ccm8", Suite::Aes128Ccm8)]
}

/// An IPv4/TCP packet of `len` bytes from `src` (an ACK segment unless `syn`, whose options
/// then are MSS 1460, SACK permitted, timestamps, NOP, window scale, like Linux sends).
fn tcp_packet(len: usize, src: Ipv4Addr, syn: bool) -> Vec<u8> {
    let mut p = vec![0u8; len.max(if syn { 60 } else { 40 })];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&[10, 86, 0, 1]);
    let tcp = &mut p[20..];
    tcp[0..4].copy_from_slice(&[0xc3, 0x50, 0x01, 0xbb]);
    if syn {
        tcp[12] = 10 << 4; // 40 bytes: 20 of header, 20 of options
        tcp[13] = 0x02;
        tcp[20..40].copy_from_slice(&[
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ]);
    } else {
        tcp[12] = 5 << 4;
        tcp[13] = 0x10;
    }
    p
}

/// Slots holding `n` packets of `len` bytes at `PAYLOAD_OFFSET`, as a TUN read leaves them.
fn slots(n: usize, len: usize) -> Vec<Vec<u8>> {
    let packet = tcp_packet(len, Ipv4Addr::new(10, 86, 0, 2), false);
    (0..n)
        .map(|_| {
            let mut s = vec![0u8; SLOT];
            s[PAYLOAD_OFFSET..PAYLOAD_OFFSET + len].copy_from_slice(&packet);
            s
        })
        .collect()
}

fn bench_seal(c: &mut Criterion) {
    for (name, suite) in suites() {
        let mut g = c.benchmark_group(format!("seal/{name}"));
        for (n, len) in CASES {
            g.throughput(Throughput::Bytes((n * len) as u64));
            let mut sealer = Sealer::new(suite, &KEY, &SALT, EPOCH, 1);
            let mut slots = slots(n, len);
            let sizes = vec![len; n];
            let mut records = vec![0usize; n];
            sealer
                .seal_many(CONTENT_APPLICATION_DATA, &mut slots, &sizes, &mut records)
                .expect("sealed");
            assert!(
                records
                    .iter()
                    .all(|&r| r == PAYLOAD_OFFSET + len + suite.tag_len())
            );
            g.bench_function(format!("{n}x{len}"), |b| {
                b.iter(|| {
                    // Sealing in place seals the last round's ciphertext: the same work.
                    sealer
                        .seal_many(CONTENT_APPLICATION_DATA, &mut slots, &sizes, &mut records)
                        .expect("far from the key's usage limit");
                    black_box(&records);
                })
            });
        }
        g.finish();
    }
}

/// A receive buffer of `n` datagrams of one sealed record each (`len` bytes of plaintext),
/// and its stride.
fn sealed_buffer(suite: Suite, n: usize, len: usize) -> (Vec<u8>, usize) {
    let mut sealer = Sealer::new(suite, &KEY, &SALT, EPOCH, 1);
    let mut slots = slots(n, len);
    let mut records = vec![0usize; n];
    sealer
        .seal_many(
            CONTENT_APPLICATION_DATA,
            &mut slots,
            &vec![len; n],
            &mut records,
        )
        .expect("sealed");
    let stride = records[0];
    let buf = slots.iter().flat_map(|s| s[..stride].to_vec()).collect();
    (buf, stride)
}

fn bench_open(c: &mut Criterion) {
    for (name, suite) in suites() {
        let mut g = c.benchmark_group(format!("open/{name}"));
        for (n, len) in CASES {
            g.throughput(Throughput::Bytes((n * len) as u64));
            let (sealed, stride) = sealed_buffer(suite, n, len);
            let counters = Counters::default();
            let mut inbox = Inbox::default();
            // Each round needs a fresh replay window and the ciphertext again: both are made
            // outside the timed part.
            g.bench_function(format!("{n}x{len}"), |b| {
                b.iter_batched_ref(
                    || (Opener::new(suite, &KEY, &SALT, EPOCH), sealed.clone()),
                    |(opener, buf)| {
                        let inbound = inbox.open(opener, &counters, buf, stride, |_| true);
                        debug_assert!(inbound.iter().all(|i| matches!(i, Inbound::Data(_))));
                        black_box(inbound.len());
                    },
                    BatchSize::SmallInput,
                )
            });
            let mut buf = sealed.clone();
            let mut opener = Opener::new(suite, &KEY, &SALT, EPOCH);
            let inbound = inbox.open(&mut opener, &counters, &mut buf, stride, |_| true);
            assert_eq!(inbound.len(), n);
            assert!(
                inbound.iter().all(|i| matches!(i, Inbound::Data(_))),
                "{inbound:?}"
            );
        }
        g.finish();
    }
}

fn bench_demux(c: &mut Criterion) {
    let mut g = c.benchmark_group("demux");
    let (sealed, stride) = sealed_buffer(Suite::Aes128Gcm, GSO_PACKETS, 1400);
    let datagram = &sealed[..stride];
    // Every datagram of a GRO buffer is checked before the session opens the buffer.
    g.bench_function("is_session_record", |b| {
        b.iter(|| admission::is_session_record(black_box(datagram)))
    });
    g.throughput(Throughput::Elements(GSO_PACKETS as u64));
    g.bench_function(format!("is_session_record/{GSO_PACKETS}_datagrams"), |b| {
        b.iter(|| {
            black_box(&sealed[..])
                .chunks(stride)
                .all(admission::is_session_record)
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("records_of_a_datagram", |b| {
        b.iter(|| record::records(black_box(datagram)).count())
    });

    // The source check on an opened packet: the client's own tunnel address (nearly every
    // packet), a LAN behind it (the last of 8 -route prefixes), and a forged source.
    let tunnel = Ipv4Addr::new(10, 86, 0, 2);
    let lans: Vec<IpNet> = (0..8)
        .map(|i| format!("192.168.{i}.0/24").parse().unwrap())
        .collect();
    for (what, src) in [
        ("tunnel_address", tunnel),
        ("lan_8th_prefix", Ipv4Addr::new(192, 168, 7, 9)),
        ("forged", Ipv4Addr::new(10, 86, 0, 9)),
    ] {
        let packet = tcp_packet(1400, src, false);
        let expected = what != "forged";
        assert_eq!(
            authz::source_allowed(&packet, tunnel, None, &lans),
            expected
        );
        g.bench_function(format!("source_allowed/{what}"), |b| {
            b.iter(|| authz::source_allowed(black_box(&packet), tunnel, None, &lans))
        });
    }

    // A ClientHello without a cookie: parsed, answered with a HelloVerifyRequest, nothing kept.
    let now = Instant::now();
    let mut adm = Admission::new(vec![Suite::Aes128Gcm, Suite::Aes128Ccm8], Vec::new(), now);
    let hello = client_hello([3; 32], &[], 0, 0);
    let addr: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    assert!(matches!(
        adm.datagram(&hello, addr, now, |_| Vec::new()),
        Outcome::Reply
    ));
    g.bench_function("admission/cookieless_client_hello", |b| {
        b.iter(|| {
            let o = adm.datagram(black_box(&hello), addr, now, |_| Vec::new());
            black_box(matches!(o, Outcome::Reply))
        })
    });
    g.finish();
}

fn bench_mss(c: &mut Criterion) {
    let mut g = c.benchmark_group("mss/clamp");
    let syn = tcp_packet(60, Ipv4Addr::new(10, 86, 0, 2), true);
    let mut check = syn.clone();
    assert!(
        mss::clamp(&mut check, 1360, 1340),
        "the SYN's MSS is lowered"
    );
    // Each round clamps a fresh copy (made outside the timed part): the rewrite and the
    // checksum fix, not the "already low enough" path.
    g.bench_function("syn", |b| {
        b.iter_batched_ref(
            || syn.clone(),
            |p| mss::clamp(black_box(p), 1360, 1340),
            BatchSize::SmallInput,
        )
    });
    let mut ack = tcp_packet(1400, Ipv4Addr::new(10, 86, 0, 2), false);
    assert!(!mss::clamp(&mut ack, 1360, 1340));
    g.bench_function("non_syn", |b| {
        b.iter(|| mss::clamp(black_box(&mut ack), 1360, 1340))
    });
    g.finish();
}

criterion_group!(benches, bench_seal, bench_open, bench_demux, bench_mss);
criterion_main!(benches);
