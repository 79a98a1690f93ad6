//! The data path allocates nothing per packet: a counting global allocator watches this test's
//! thread while thousands of packets go through every per-packet step of dtun's own code, over
//! a real UDP socket pair with GSO and GRO:
//!
//! ```text
//!   test thread ── unshare(CLONE_NEWNET) ──> fresh netns, lo up
//!     sender:   MSS clamp -> Sealer::seal_many -> Batcher (UDP GSO runs) -> 127.0.0.1:A
//!     receiver: Receiver (recvmmsg + GRO) -> Inbox::open (Opener::open_many) -> accept_packet
//!               -> MSS clamp -> TunWriter::push
//! ```
//!
//! Left out, because they are other crates' code: the TUN read and split (tun-rs
//! `recv_multiple`) and the coalesced TUN write (tun-rs `send_multiple`). Needs root.

mod common;

use dtun_proto::inbound;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;

use dtun_linux::tun::TunWriter;
use dtun_linux::udp::{Batcher, Receiver, Udp};
use dtun_proto::consts::{CONTENT_APPLICATION_DATA, PAYLOAD_OFFSET};
use dtun_proto::inbound::{Counters, Inbound, Inbox};
use dtun_proto::kdf::KeyBlock;
use dtun_proto::record::{Suite, session_pair};
use nix::sched::{CloneFlags, unshare};

struct Counting;

thread_local! {
    /// Allocations made on this thread while counting (None: not counting).
    static ALLOCATIONS: Cell<Option<u64>> = const { Cell::new(None) };
}

thread_local! {
    static LAST_SIZE: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation(size: usize) {
    let _ = ALLOCATIONS.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
            let _ = LAST_SIZE.try_with(|l| l.set(size));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only a
// thread-local Cell and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// An IPv4 TCP data segment of `len` bytes (a SYN every 10th, so the MSS clamp
/// has work), with a valid-looking header.
fn fill_packet(buf: &mut [u8], len: usize, i: usize) {
    let p = &mut buf[..len];
    p.fill(0xab);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 86, 0, 2]);
    p[16..20].copy_from_slice(&[10, 86, 0, 1]);
    p[32] = 6 << 4; // data offset 24: one option
    p[33] = if i.is_multiple_of(10) { 0x02 } else { 0x10 };
    p[40..44].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
}

/// Sends `batches` batches of `per_batch` packets and receives them all; returns how many
/// packets arrived.
async fn rounds(
    batches: usize,
    per_batch: usize,
    a: &Udp,
    b: &Udp,
    to_b: SocketAddr,
    state: &mut State,
) -> usize {
    let mtu = 1435;
    let mut delivered = 0;
    for _ in 0..batches {
        for (i, slot) in state.slots[..per_batch].iter_mut().enumerate() {
            fill_packet(&mut slot[PAYLOAD_OFFSET..], mtu, i);
            dtun_proto::mss::clamp(&mut slot[PAYLOAD_OFFSET..PAYLOAD_OFFSET + mtu], 1395, 1375);
            state.sizes[i] = mtu;
        }
        state
            .sealer
            .seal_many(
                CONTENT_APPLICATION_DATA,
                &mut state.slots[..per_batch],
                &state.sizes[..per_batch],
                &mut state.records[..per_batch],
            )
            .expect("seal");
        for (slot, &n) in state.slots.iter().zip(&state.records[..per_batch]) {
            state.batcher.push(a, to_b, &slot[..n]).await;
        }
        state.batcher.flush(a, to_b).await;
        let mut got = 0;
        while got < per_batch {
            let n = state.rx.recv(b).await.expect("recv");
            for i in 0..n {
                let (_, stride, buf) = state.rx.buffer(i);
                let records =
                    state
                        .inbox
                        .open(&mut state.opener, &state.counters, buf, stride, |_| true);
                for record in records {
                    got += 1;
                    if let Inbound::Data(r) = record {
                        let packet = &mut buf[r.clone()];
                        if inbound::accept_packet(&state.counters, packet) {
                            dtun_proto::mss::clamp(packet, 1395, 1375);
                            assert!(!state.writer.push(packet), "batch of 40 fills no writer");
                            delivered += 1;
                        }
                    }
                }
            }
        }
        // The write to a TUN is tun-rs's; here the batch is only emptied, as a flush would.
        state.writer.clear();
    }
    delivered
}

struct State {
    slots: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    records: Vec<usize>,
    inbox: Inbox,
    sealer: dtun_proto::record::Sealer,
    opener: dtun_proto::record::Opener,
    batcher: Batcher,
    rx: Receiver,
    writer: TunWriter,
    counters: Counters,
}

#[test]
fn the_data_path_allocates_nothing_per_packet() {
    common::need_root!();
    let thread = std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) needs root");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            // lo comes up with its addresses once set up: a fresh namespace has it down.
            let nl = dtun_linux::netlink::Netlink::new().expect("netlink");
            let lo = nl.link_index("lo").await.expect("lo");
            nl.set_link_up(lo, 65536).await.expect("lo up");
            for suite in [Suite::Aes128Gcm, Suite::Aes128Ccm8] {
                let sa = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let sb = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let to_b = sb.local_addr().unwrap();
                let a = Udp::new(Arc::new(sa)).expect("udp a");
                let b = Udp::new(Arc::new(sb)).expect("udp b");
                let kb = KeyBlock {
                    client_key: [1; 16],
                    server_key: [2; 16],
                    client_iv: [3; 4],
                    server_iv: [4; 4],
                };
                let (sealer, _) = session_pair(suite, &kb, true, 1, 1 << 32);
                let (_, opener) = session_pair(suite, &kb, false, 1, 1 << 32);
                let mut state = State {
                    slots: vec![vec![0u8; 2048]; 40],
                    sizes: vec![0; 40],
                    records: vec![0; 40],
                    inbox: Inbox::default(),
                    sealer,
                    opener,
                    batcher: Batcher::new(&a),
                    rx: Receiver::default(),
                    writer: TunWriter::default(),
                    counters: Counters::default(),
                };
                // Warm up: the runtime registers the sockets, buffers reach their size.
                let warm = rounds(50, 40, &a, &b, to_b, &mut state).await;
                assert_eq!(warm, 2000, "{suite:?}: warm-up packets lost on loopback");
                ALLOCATIONS.with(|c| c.set(Some(0)));
                let first = rounds(50, 40, &a, &b, to_b, &mut state).await;
                let once = ALLOCATIONS.with(|c| c.replace(None)).unwrap_or(0);
                eprintln!("{suite:?}: {once} allocation(s) in a first counted run of {first} packets");
                // One-off growth inside the runtime may land here, never one per packet.
                assert!(once <= 2, "{suite:?}: {once} allocations in {first} packets");
                ALLOCATIONS.with(|c| c.set(Some(0)));
                let delivered = rounds(250, 40, &a, &b, to_b, &mut state).await;
                let allocations = ALLOCATIONS.with(|c| c.replace(None)).unwrap_or(0);
                assert_eq!(delivered, 10000, "{suite:?}: packets lost on loopback");
                assert_eq!(
                    allocations, 0,
                    "{suite:?}: {allocations} heap allocations for {delivered} packets (last of {} bytes)",
                    LAST_SIZE.with(|l| l.get())
                );
            }
        });
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}
