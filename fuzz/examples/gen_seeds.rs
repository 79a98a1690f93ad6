//! Writes the hand-made seeds of every target into `corpus/<target>/seed-*`:
//! `cargo run --example gen_seeds` from `fuzz/`. For `record_open` these are records sealed
//! with the target's own keys, the only way the fuzzer ever gets past the tag check; likewise
//! the `cid` target's connection ID records.

#[path = "../checks.rs"]
mod checks;

use std::fs;
use std::path::Path;

use dtun_proto::consts::{
    ALERT_CLOSE_NOTIFY, ALERT_LEVEL_WARNING, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
    CONTENT_HANDSHAKE, FIRST_APP_SEQUENCE,
};
use dtun_proto::proto::{AddressMessage, CloseReason, Control, HelloFlags, Peernet};
use dtun_proto::record::Sealer;

fn seal(s: &mut Sealer, content_type: u8, msg: &[u8]) -> Vec<u8> {
    let off = s.payload_offset();
    let mut buf = vec![0u8; off + msg.len() + 64];
    buf[off..off + msg.len()].copy_from_slice(msg);
    let n = s.seal(content_type, &mut buf, msg.len()).expect("seal");
    buf.truncate(n);
    buf
}

fn sealer(first_seq: u64) -> Sealer {
    Sealer::new(
        checks::SUITE,
        &checks::KEY,
        &checks::SALT,
        checks::EPOCH,
        first_seq,
    )
}

/// A minimal IPv4/ICMP echo packet, as the pump would carry.
fn ipv4_ping() -> Vec<u8> {
    vec![
        0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 86, 0, 2, 10, 86, 0, 1, 8, 0, 0, 0, 0, 1, 0, 1,
    ]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("create corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");

    // Records sealed with the target's keys.
    let mut s = sealer(FIRST_APP_SEQUENCE);
    let ping = seal(&mut s, CONTENT_APPLICATION_DATA, &ipv4_ping());
    let empty = seal(&mut s, CONTENT_APPLICATION_DATA, &[]);
    let alert = seal(
        &mut s,
        CONTENT_ALERT,
        &[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY],
    );
    let ctl = seal(&mut s, CONTENT_APPLICATION_DATA, &Control::Ping.to_bytes());
    let big = seal(&mut s, CONTENT_APPLICATION_DATA, &[0x60; 1400]);
    // Three records in one datagram, the middle one older: the window must take all three.
    let mut a = sealer(100);
    let r100 = seal(&mut a, CONTENT_APPLICATION_DATA, b"\x45first");
    let mut b = sealer(40);
    let r40 = seal(&mut b, CONTENT_APPLICATION_DATA, b"\x45older");
    let mut c = sealer(200);
    let r200 = seal(&mut c, CONTENT_APPLICATION_DATA, b"\x45jump");
    let multi = [r100.clone(), r40, r200].concat();
    // The same record twice: the second is a replay.
    let twice = [ping.clone(), ping.clone()].concat();
    // A valid record followed by garbage, and one whose tag was flipped.
    let trailing = [alert.clone(), vec![CONTENT_APPLICATION_DATA, 0xfe]].concat();
    let mut bad_tag = ctl.clone();
    *bad_tag.last_mut().unwrap() ^= 1;
    // Epoch 0 handshake-looking header and a wrong epoch.
    let mut wrong_epoch = ping.clone();
    wrong_epoch[4] = 2;
    let mut handshake = ping.clone();
    handshake[0] = CONTENT_HANDSHAKE;
    handshake[4] = 0;

    let records: [(&str, &[u8]); 11] = [
        ("sealed-ping", &ping),
        ("sealed-empty", &empty),
        ("sealed-alert", &alert),
        ("sealed-control", &ctl),
        ("sealed-big", &big),
        ("sealed-multi", &multi),
        ("sealed-twice", &twice),
        ("sealed-trailing", &trailing),
        ("broken-bad-tag", &bad_tag),
        ("broken-wrong-epoch", &wrong_epoch),
        ("broken-handshake", &handshake),
    ];
    for (name, bytes) in records {
        write(&root.join("record_open"), name, bytes);
        write(&root.join("records"), name, bytes);
    }
    write(&root.join("records"), "header-only", &r100[..13]);
    write(&root.join("records"), "short", &r100[..10]);

    // Connection ID records sealed with the `cid` target's keys: epoch 2 (current) and epoch 1
    // (the previous one, still read), a plain record among them, a padded record (type
    // 0 around a hand-made inner plaintext), one without a type, another CID, a replay.
    let cid_root = root.join("cid");
    let mut c2 = checks::cid_sealer(2, 50, Some(checks::CID));
    let cid_ping = seal(&mut c2, CONTENT_APPLICATION_DATA, &ipv4_ping());
    let cid_alert = seal(
        &mut c2,
        CONTENT_ALERT,
        &[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY],
    );
    let cid_empty = seal(&mut c2, CONTENT_APPLICATION_DATA, &[]);
    let cid_big = seal(&mut c2, CONTENT_APPLICATION_DATA, &[0x60; 1400]);
    let cid_padded = seal(&mut c2, 0, b"\x45padded\x17\0\0\0\0");
    let cid_no_type = seal(&mut c2, 0, &[0; 16]);
    let mut c1 = checks::cid_sealer(1, 9, Some(checks::CID));
    let cid_old = seal(&mut c1, CONTENT_APPLICATION_DATA, b"\x45old epoch");
    let mut p2 = checks::cid_sealer(2, 80, None);
    let plain_new = seal(&mut p2, CONTENT_APPLICATION_DATA, b"\x45plain");
    let mixed = [
        plain_new.clone(),
        cid_ping.clone(),
        cid_old.clone(),
        cid_alert.clone(),
    ]
    .concat();
    let cid_twice = [cid_ping.clone(), cid_ping.clone()].concat();
    let mut other = checks::cid_sealer(2, 90, Some(*b"other-ci"));
    let cid_other = seal(&mut other, CONTENT_APPLICATION_DATA, b"\x45other");
    let mut cid_bad_tag = cid_ping.clone();
    *cid_bad_tag.last_mut().unwrap() ^= 1;
    let cid_seeds: [(&str, &[u8]); 13] = [
        ("sealed-cid-ping", &cid_ping),
        ("sealed-cid-alert", &cid_alert),
        ("sealed-cid-empty", &cid_empty),
        ("sealed-cid-big", &cid_big),
        ("sealed-cid-padded", &cid_padded),
        ("sealed-cid-previous-epoch", &cid_old),
        ("sealed-mixed", &mixed),
        ("sealed-cid-twice", &cid_twice),
        ("broken-cid-no-type", &cid_no_type),
        ("broken-cid-other", &cid_other),
        ("broken-cid-bad-tag", &cid_bad_tag),
        ("broken-cid-header-only", &cid_ping[..21]),
        ("broken-cid-short", &cid_ping[..20]),
    ];
    for (name, bytes) in cid_seeds {
        // Only the sealed ones get the fuzzer past the tag: they must open.
        let opened = checks::cid(bytes);
        assert_eq!(
            opened > 0,
            name.starts_with("sealed-"),
            "{name}: {opened} opened"
        );
        write(&cid_root, name, bytes);
    }
    write(&root.join("records"), "cid-mixed", &mixed);

    // Setup and control messages.
    let proto = root.join("proto");
    let addr = AddressMessage {
        client: [10, 86, 0, 2].into(),
        server: [10, 86, 0, 1].into(),
    };
    write(&proto, "address", &addr.to_bytes());
    for (name, p) in [
        ("peernet-empty", Peernet::Empty),
        ("peernet-v4", Peernet::parse_str("10.200.0.0/24").unwrap()),
        ("peernet-v6", Peernet::parse_str("fd00:1::/64").unwrap()),
    ] {
        write(&proto, name, p.to_wire().as_bytes());
    }
    write(&proto, "peernet-host-bits", b"192.168.1.77/16");
    let controls = [
        (
            "hello",
            Control::Hello {
                version: 1,
                keepalive_ms: 10_000,
                flags: HelloFlags::default(),
            },
        ),
        ("ping", Control::Ping),
        ("pong", Control::Pong),
        (
            "close-replaced",
            Control::Close {
                reason: CloseReason::Replaced,
                detail: "192.0.2.7:4000".into(),
            },
        ),
        (
            "close-shutdown",
            Control::Close {
                reason: CloseReason::Shutdown,
                detail: String::new(),
            },
        ),
        (
            "close-timeout",
            Control::Close {
                reason: CloseReason::Timeout,
                detail: "é".repeat(100),
            },
        ),
    ];
    for (name, c) in controls {
        write(&proto, name, &c.to_bytes());
    }
    let mut hello_ext = Control::Hello {
        version: 2,
        keepalive_ms: 1,
        flags: HelloFlags(HelloFlags::ADDR6_SENT),
    }
    .to_bytes();
    hello_ext.extend_from_slice(b"future");
    write(&proto, "hello-extended", &hello_ext);
    let addr6 = Control::Addr6(dtun_proto::proto::Addr6 {
        prefix_len: 64,
        client: "fd64:7475:6e00::2".parse().expect("v6"),
        server: "fd64:7475:6e00::1".parse().expect("v6"),
    });
    write(&proto, "addr6", &addr6.to_bytes());
    // Insane: a multicast client address in a /8.
    let mut insane = addr6.to_bytes();
    insane[2] = 8;
    insane[3] = 0xff;
    write(&proto, "addr6-insane", &insane);
    let lans = Control::Lans(vec![
        "192.168.77.0/24".parse().expect("net"),
        "fd77::/64".parse().expect("net"),
    ]);
    write(&proto, "lans", &lans.to_bytes());
    // Inner packets of a client: from its tunnel address, its LAN, elsewhere; IPv6 alike.
    let packet = root.join("packet");
    let v4 = |src: [u8; 4]| {
        let mut p = ipv4_ping();
        p[12..16].copy_from_slice(&src);
        p
    };
    let v6 = |src: [u8; 16]| {
        let mut p = vec![0x60, 0, 0, 0, 0, 8, 58, 64];
        p.extend_from_slice(&src);
        p.extend_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[128, 0, 0, 0, 0, 1, 0, 1]);
        p
    };
    let lan6 = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    let link_local = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    let outside6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    write(&packet, "v4-tunnel", &v4(checks::TUNNEL.octets()));
    write(&packet, "v4-lan", &v4([10, 200, 0, 7]));
    write(&packet, "v4-spoofed", &v4([192, 0, 2, 1]));
    write(&packet, "v4-short", &v4([10, 200, 0, 7])[..19]);
    write(&packet, "v6-lan", &v6(lan6));
    write(&packet, "v6-link-local", &v6(link_local));
    write(&packet, "v6-spoofed", &v6(outside6));
    write(&packet, "control-ping", &Control::Ping.to_bytes());
    // The review's crash of `mss::clamp`: IHL 15 (a 60-byte header) in a shorter TCP packet
    // from the sender's own tunnel address; and IPv6 TCP whose payload length passes the end.
    let ihl_past_end = |len: usize| {
        let mut p = vec![0u8; len];
        p[0] = 0x4f;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[9] = 6;
        p[12..16].copy_from_slice(&checks::TUNNEL.octets());
        p
    };
    let mut with_dst = ihl_past_end(40);
    with_dst[8] = 64;
    with_dst[16..20].copy_from_slice(&[10, 86, 0, 1]);
    write(&packet, "mss-v4-ihl-past-end", &with_dst);
    write(&packet, "mss-v4-ihl-59", &ihl_past_end(59));
    let mut syn6 = vec![0x60, 0, 0, 0, 0, 28, 6, 0];
    syn6.resize(40, 0);
    let mut tcp = [0u8; 28];
    tcp[12] = 7 << 4;
    tcp[13] = 2;
    tcp[20..26].copy_from_slice(&[1, 1, 2, 4, 0x05, 0xa0]);
    syn6.extend_from_slice(&tcp);
    write(&packet, "mss-v6-syn", &syn6);
    write(&packet, "mss-v6-payload-past-end", &syn6[..60]);

    // Rekey: a real Init's fragments (framed u16 length + bytes), in order, reversed, and
    // twice (the server answers once, then repeats its Reply); a real Reply to another Init.
    let rekey = root.join("rekey");
    let rng = ring::rand::SystemRandom::new();
    let init = dtun_proto::rekey::Initiator::new(&rng).expect("an initiator");
    let init_msg = dtun_proto::rekey::message::init_message(2, init.share());
    let frags = dtun_proto::rekey::message::fragments(
        dtun_proto::rekey::message::Kind::Init,
        2,
        &init_msg,
        dtun_proto::rekey::message::MAX_FRAGMENT,
    );
    let framed = |msgs: &mut dyn Iterator<Item = &Vec<u8>>| {
        let mut b = Vec::new();
        for m in msgs {
            b.extend_from_slice(&(m.len() as u16).to_be_bytes());
            b.extend_from_slice(m);
        }
        b
    };
    write(&rekey, "init", &framed(&mut frags.iter()));
    write(&rekey, "init-reversed", &framed(&mut frags.iter().rev()));
    write(
        &rekey,
        "init-twice",
        &framed(&mut frags.iter().chain(frags.iter())),
    );
    let (reply_share, _) = dtun_proto::rekey::respond(init.share(), &rng).expect("a reply");
    let reply_msg = dtun_proto::rekey::message::reply_message(2, &reply_share);
    let reply = dtun_proto::rekey::message::fragments(
        dtun_proto::rekey::message::Kind::Reply,
        2,
        &reply_msg,
        200,
    );
    write(&rekey, "reply-small-fragments", &framed(&mut reply.iter()));

    for target in ["record_open", "records", "proto", "packet", "rekey", "cid"] {
        drop_copies_of_seeds(&root.join(target));
    }
    println!("seeds written under {}", root.display());
}

/// `cargo fuzz cmin` renames every file it keeps to its hash; delete those copies so each seed
/// is kept once, under its readable name.
fn drop_copies_of_seeds(dir: &Path) {
    let files: Vec<_> = fs::read_dir(dir)
        .expect("read corpus dir")
        .map(|e| e.expect("corpus entry").path())
        .collect();
    let is_seed = |p: &Path| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
    };
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .filter(|p| is_seed(p))
        .map(|p| fs::read(p).expect("read seed"))
        .collect();
    for p in files.iter().filter(|p| !is_seed(p)) {
        if seeds.contains(&fs::read(p).expect("read corpus file")) {
            fs::remove_file(p).expect("remove copy of a seed");
        }
    }
}
