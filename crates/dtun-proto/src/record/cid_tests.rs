//! RFC 9146 connection ID records: layout, a known answer, tampering, padding, replay and
//! `newest`, epochs, the integrity limit, and how CCM_8 and openers without a CID drop them.

use super::*;
use crate::consts::{
    CID_PAYLOAD_OFFSET, CID_RECORD_HEADER_LEN, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
    CONTENT_TLS12_CID, DTLS12_VERSION, MAX_RECORD_PLAINTEXT, PAYLOAD_OFFSET,
};

const CID: Cid = [0xc1, 0xd0, 0, 1, 2, 3, 4, 5];
const OTHER: Cid = [0xc1, 0xd0, 0, 1, 2, 3, 4, 6];

/// A client's sealer and the server's opener (GCM, epoch 1), both with [`CID`].
fn pair() -> (Sealer, Opener) {
    let kb = KeyBlock::for_test();
    let (mut s, _) = session_pair(Suite::Aes128Gcm, &kb, true, 1, 7);
    let (_, mut o) = session_pair(Suite::Aes128Gcm, &kb, false, 1, 0);
    assert!(s.set_cid(Some(CID)));
    o.set_cid(Some(CID));
    (s, o)
}

/// One record of content type `ct`, in whichever format `s` seals.
fn seal_as(s: &mut Sealer, ct: u8, msg: &[u8]) -> Vec<u8> {
    let off = s.payload_offset();
    let mut buf = vec![0u8; off + msg.len() + s.trailer_len()];
    buf[off..off + msg.len()].copy_from_slice(msg);
    let n = s.seal(ct, &mut buf, msg.len()).unwrap();
    assert_eq!(
        n,
        buf.len(),
        "the record fills payload_offset + len + trailer_len"
    );
    buf
}

fn seal(s: &mut Sealer, msg: &[u8]) -> Vec<u8> {
    seal_as(s, CONTENT_APPLICATION_DATA, msg)
}

fn es(epoch: u16, seq: u64) -> u64 {
    (u64::from(epoch) << 48) | seq
}

#[test]
fn a_cid_record_round_trips_and_has_rfc_9146s_layout() {
    let (mut s, mut o) = pair();
    assert_eq!((s.cid(), o.cid()), (Some(CID), Some(CID)));
    assert_eq!((s.payload_offset(), s.trailer_len()), (29, 17));
    let mut rec = seal(&mut s, b"hello");
    assert_eq!(rec.len(), 29 + 5 + 1 + 16);
    assert_eq!(&rec[..3], &[CONTENT_TLS12_CID, 0xfe, 0xfd]);
    assert_eq!(&rec[3..11], &[0, 1, 0, 0, 0, 0, 0, 7]);
    assert_eq!(&rec[11..19], &CID);
    assert_eq!(&rec[19..21], &(8 + 6 + 16u16).to_be_bytes());
    assert_eq!(&rec[21..29], &[0, 1, 0, 0, 0, 0, 0, 7], "explicit nonce");
    let h = parse_header(&rec).unwrap();
    assert_eq!((h.cid, h.header_len, h.body_len), (Some(CID), 21, 30));
    assert_eq!((h.epoch, h.seq, h.content_type), (1, 7, CONTENT_TLS12_CID));
    assert_eq!(peek_cid(&rec), Some(CID));
    assert_eq!(o.open(&mut rec), Ok((CONTENT_APPLICATION_DATA, 29..34)));
    assert_eq!(&rec[29..34], b"hello");
    // An alert, and an empty record (the inner plaintext is its type alone).
    let mut alert = seal_as(&mut s, CONTENT_ALERT, &[1, 0]);
    assert_eq!(o.open(&mut alert), Ok((CONTENT_ALERT, 29..31)));
    let mut empty = seal(&mut s, b"");
    assert_eq!(o.open(&mut empty), Ok((CONTENT_APPLICATION_DATA, 29..29)));
    // Back to plain records; the opener reads both.
    assert!(s.set_cid(None));
    assert_eq!((s.payload_offset(), s.trailer_len()), (PAYLOAD_OFFSET, 16));
    let mut plain = seal(&mut s, b"plain");
    assert_eq!(plain[0], CONTENT_APPLICATION_DATA);
    assert_eq!(peek_cid(&plain), None);
    assert_eq!(o.open(&mut plain), Ok((CONTENT_APPLICATION_DATA, 21..26)));
}

#[test]
fn peek_cid_needs_a_whole_cid_header() {
    let (mut s, _) = pair();
    let rec = seal(&mut s, b"x");
    assert_eq!(peek_cid(&rec[..CID_RECORD_HEADER_LEN]), Some(CID));
    assert_eq!(peek_cid(&rec[..CID_RECORD_HEADER_LEN - 1]), None);
    assert_eq!(peek_cid(&[]), None);
    assert_eq!(
        parse_header(&rec[..CID_RECORD_HEADER_LEN]),
        Err(DropReason::Truncated),
        "a header without its body"
    );
    let mut plain = rec.clone();
    plain[0] = CONTENT_APPLICATION_DATA;
    assert_eq!(peek_cid(&plain), None);
}

/// The record below was computed apart with Python's `cryptography` (AESGCM), from RFC 9146
/// §5.3's additional data; docs/PROTOCOL.md shows the same vector:
///
/// ```text
/// from cryptography.hazmat.primitives.ciphers.aead import AESGCM
/// key, salt = bytes(range(16)), bytes.fromhex("a0a1a2a3")
/// cid, es = bytes.fromhex("0102030405060708"), bytes.fromhex("0002000000000005")
/// inner = b"dtun roams" + bytes([23])
/// aad = b"\xff" * 8 + bytes([25, 8, 25]) + b"\xfe\xfd" + es + cid + len(inner).to_bytes(2, "big")
/// body = es + AESGCM(key).encrypt(salt + es, inner, aad)
/// print((bytes([25]) + b"\xfe\xfd" + es + cid + len(body).to_bytes(2, "big") + body).hex())
/// ```
#[test]
fn a_cid_record_matches_the_known_answer() {
    const RECORD: &str = "19fefd00020000000000050102030405060708002300020000000000059a2655a4\
                          25213f7ef8135ec4aa86fd8f5cac6b5d69581880f9687b";
    let key: [u8; 16] = std::array::from_fn(|i| i as u8);
    let salt = [0xa0, 0xa1, 0xa2, 0xa3];
    let cid = [1, 2, 3, 4, 5, 6, 7, 8];
    let mut s = Sealer::new(Suite::Aes128Gcm, &key, &salt, 2, 5);
    assert!(s.set_cid(Some(cid)));
    let rec = seal(&mut s, b"dtun roams");
    let hex: String = rec.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, RECORD);
    let aad = cid_aad(es(2, 5), DTLS12_VERSION, &cid, 11);
    assert_eq!(aad.len(), 31);
    assert_eq!(
        aad[..],
        [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 25, 8, 25, 0xfe, 0xfd, 0, 2, 0, 0, 0,
            0, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8, 0, 11
        ]
    );
    let mut o = Opener::new(Suite::Aes128Gcm, &key, &salt, 2);
    o.set_cid(Some(cid));
    let mut got = rec.clone();
    let (ct, p) = o.open(&mut got).unwrap();
    assert_eq!(
        (ct, &got[p]),
        (CONTENT_APPLICATION_DATA, &b"dtun roams"[..])
    );
    assert_eq!(o.newest(), es(2, 5));
}

/// Every header field is bound to the tag (or checked before it); the CID is checked first.
#[test]
fn tampered_cid_records_are_drops_and_cost_nothing_but_their_tag() {
    let (mut s, mut o) = pair();
    let rec = seal(&mut s, b"packet");
    let try_open = |o: &mut Opener, at: usize, bit: u8| {
        let mut bad = rec.clone();
        bad[at] ^= bit;
        o.open(&mut bad)
    };
    let mut tags = 0;
    for at in 0..rec.len() {
        let want = match at {
            0 => continue, // no longer a CID record: below
            3 | 4 => Err(DropReason::BadEpoch),
            11..=18 => Err(DropReason::BadCid),
            19 => Err(DropReason::Truncated), // the length runs past the record
            _ => Err(DropReason::BadTag),     // the length one short included
        };
        assert_eq!(try_open(&mut o, at, 1), want, "byte {at}");
        tags += u64::from(want == Err(DropReason::BadTag));
    }
    assert_eq!(o.failed_opens(), tags);
    // The inner type byte is the last before the tag.
    assert_eq!(
        try_open(&mut o, rec.len() - 17, 0x40),
        Err(DropReason::BadTag)
    );
    // The epoch is bound too: the same bytes under the keys of the epoch it was changed to.
    let mut other_epoch = rec.clone();
    other_epoch[4] = 2;
    let kb = KeyBlock::for_test();
    let (_, mut o2) = session_pair(Suite::Aes128Gcm, &kb, false, 2, 0);
    o2.set_cid(Some(CID));
    assert_eq!(o2.open(&mut other_epoch), Err(DropReason::BadTag));
    // Another session's CID, and no CID at all, whatever the rest says.
    let mut other = rec.clone();
    other[11..19].copy_from_slice(&OTHER);
    assert_eq!(o.open(&mut other), Err(DropReason::BadCid));
    let mut plain_type = rec.clone();
    plain_type[0] = CONTENT_APPLICATION_DATA;
    assert!(o.open(&mut plain_type).is_err());
    // None of it moved the window.
    assert!(o.open(&mut rec.clone()).is_ok());
}

/// A receiver strips trailing zeros (padding): the last non-zero byte is the real type, and
/// zeros before it are content. Our sealer never pads, so these records are sealed with type
/// 0 around a hand-made DTLSInnerPlaintext.
#[test]
fn padding_is_stripped_and_an_all_zero_inner_plaintext_is_a_drop() {
    let (mut s, mut o) = pair();
    let mut padded = seal_as(&mut s, 0, b"hello\x17\0\0\0");
    assert_eq!(o.open(&mut padded), Ok((CONTENT_APPLICATION_DATA, 29..34)));
    assert_eq!(&padded[29..34], b"hello");
    let mut zeros_inside = seal(&mut s, b"ab\0\0");
    let (_, p) = o.open(&mut zeros_inside).unwrap();
    assert_eq!(&zeros_inside[p], b"ab\0\0");
    let newest = o.newest();
    for inner in [&[][..], &[0; 40][..]] {
        let mut none = seal_as(&mut s, 0, inner);
        let copy = none.clone();
        assert_eq!(o.open(&mut none), Err(DropReason::BadInner));
        // Authentic: not a failed open, and its sequence number is spent; but a drop moves
        // nothing else.
        assert_eq!(o.open(&mut copy.clone()), Err(DropReason::Replay));
        assert_eq!(o.newest(), newest);
    }
    assert_eq!(o.failed_opens(), 0);
    // No room for the type at all: malformed before the tag.
    let mut empty = seal(&mut s, b"");
    empty[19..21].copy_from_slice(&24u16.to_be_bytes());
    assert_eq!(o.open(&mut empty[..45]), Err(DropReason::Truncated));
    assert_eq!(o.failed_opens(), 0);
}

#[test]
fn openers_without_the_cid_and_ccm8_drop_cid_records() {
    let kb = KeyBlock::for_test();
    let (mut s, _) = pair();
    let rec = seal(&mut s, b"x");
    let (_, mut plain_only) = session_pair(Suite::Aes128Gcm, &kb, false, 1, 0);
    assert_eq!(plain_only.open(&mut rec.clone()), Err(DropReason::BadCid));
    // CCM_8: neither half takes a CID; the opener drops CID records one by one and in a batch.
    let (mut cs, _) = session_pair(Suite::Aes128Ccm8, &kb, true, 1, 7);
    let (_, mut co) = session_pair(Suite::Aes128Ccm8, &kb, false, 1, 0);
    assert!(!cs.set_cid(Some(CID)));
    assert_eq!(
        (cs.cid(), cs.payload_offset(), cs.trailer_len()),
        (None, 21, 8)
    );
    co.set_cid(Some(CID));
    assert_eq!(co.cid(), None);
    let plain = seal(&mut cs, b"y");
    assert_eq!(co.open(&mut rec.clone()), Err(DropReason::BadCid));
    assert_eq!(co.open(&mut rec[..20].to_vec()), Err(DropReason::Truncated));
    let mut buf = [plain.clone(), rec.clone(), plain.clone()].concat();
    let ranges: Vec<_> = records(&buf).collect();
    let mut out = vec![Err(DropReason::Truncated); 3];
    co.open_many(&mut buf, &ranges, &mut out);
    assert!(out[0].is_ok());
    assert_eq!(out[1], Err(DropReason::BadCid));
    assert_eq!(out[2], Err(DropReason::Replay));
    assert_eq!(co.failed_opens(), 0);
}

/// seal_many seals what seal does, one CID record per slot; CID and plain records mix in one
/// datagram, which `records` splits and `open_many` opens like `open` one by one.
#[test]
fn batches_and_mixed_datagrams() {
    let (mut one, _) = pair();
    let (mut many, mut batch) = pair();
    let (_, mut single) = pair();
    let sizes = [1400, 0, 60, MAX_RECORD_PLAINTEXT, 1];
    let mut slots: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut b = vec![0u8; CID_PAYLOAD_OFFSET + n + 17];
            b[CID_PAYLOAD_OFFSET..CID_PAYLOAD_OFFSET + n].fill(i as u8 + 1);
            b
        })
        .collect();
    let mut records_out = [0; 5];
    many.seal_many(
        CONTENT_APPLICATION_DATA,
        &mut slots,
        &sizes,
        &mut records_out,
    )
    .unwrap();
    assert_eq!(
        records_out[3], 0,
        "2^14 bytes and the type are over the limit"
    );
    for i in [0, 1, 2, 4] {
        let msg = vec![i as u8 + 1; sizes[i]];
        assert_eq!(
            slots[i][..records_out[i]],
            seal(&mut one, &msg)[..],
            "record {i}"
        );
    }
    // plain, CID, CID, plain, CID in one datagram.
    let mut dg = Vec::new();
    let mut want = Vec::new();
    for (i, cid) in [false, true, true, false, true].into_iter().enumerate() {
        assert!(many.set_cid(cid.then_some(CID)));
        let msg = vec![0x45 + i as u8; 10 * i];
        dg.extend_from_slice(&seal(&mut many, &msg));
        want.push(msg);
    }
    let ranges: Vec<_> = records(&dg).collect();
    assert_eq!(ranges.len(), 5);
    assert!(ranges.iter().all(|r| r.is_ok()));
    let mut serial = dg.clone();
    for (r, msg) in ranges.iter().zip(&want) {
        let r = r.clone().unwrap();
        assert_eq!(record_at(&dg, r.start), Ok(r.clone()));
        let (ct, p) = single.open(&mut serial[r.clone()]).unwrap();
        assert_eq!(ct, CONTENT_APPLICATION_DATA);
        assert_eq!(&serial[r.start + p.start..r.start + p.end], &msg[..]);
    }
    let mut out = vec![Err(DropReason::Truncated); 5];
    batch.open_many(&mut dg, &ranges, &mut out);
    for (o, msg) in out.iter().zip(&want) {
        let (_, p) = o.clone().unwrap();
        assert_eq!(&dg[p], &msg[..]);
    }
    assert_eq!(batch.newest(), single.newest());
}

/// `newest` moves only on an authentic record that is not a replay, and never down: a late
/// older record opens without moving it; a forgery, a replay, a wrong CID never move it.
#[test]
fn replays_and_newest() {
    let (mut s, mut o) = pair();
    assert_eq!(o.newest(), 0);
    let recs: Vec<Vec<u8>> = (0..5).map(|i| seal(&mut s, &[i; 20])).collect();
    assert!(o.open(&mut recs[3].clone()).is_ok());
    assert_eq!(o.newest(), es(1, 10));
    assert!(
        o.open(&mut recs[1].clone()).is_ok(),
        "reordered, inside the window"
    );
    assert_eq!(o.newest(), es(1, 10));
    assert_eq!(o.open(&mut recs[3].clone()), Err(DropReason::Replay));
    let mut forged = recs[4].clone();
    forged[40] ^= 1;
    assert_eq!(o.open(&mut forged), Err(DropReason::BadTag));
    let mut other = recs[4].clone();
    other[18] ^= 1;
    assert_eq!(o.open(&mut other), Err(DropReason::BadCid));
    assert_eq!(o.newest(), es(1, 10));
    // In a batch too: a replay, a late one, a new one, a forgery of a newer one.
    let mut newer = seal(&mut s, b"newer");
    newer[40] ^= 1;
    let mut buf = [
        recs[1].clone(),
        recs[0].clone(),
        recs[4].clone(),
        newer.clone(),
    ]
    .concat();
    let ranges: Vec<_> = records(&buf).collect();
    let mut out = vec![Err(DropReason::Truncated); 4];
    o.open_many(&mut buf, &ranges, &mut out);
    assert_eq!(out[0], Err(DropReason::Replay));
    assert!(out[1].is_ok() && out[2].is_ok());
    assert_eq!(out[3], Err(DropReason::BadTag));
    assert_eq!(o.newest(), es(1, 11));
}

/// Plain records move `newest` as CID records do, in CCM_8 batches too.
#[test]
fn newest_follows_plain_records_in_ccm8_batches() {
    let kb = KeyBlock::for_test();
    let (mut s, _) = session_pair(Suite::Aes128Ccm8, &kb, true, 1, 100);
    let (_, mut o) = session_pair(Suite::Aes128Ccm8, &kb, false, 1, 0);
    let recs: Vec<Vec<u8>> = (0..12).map(|i| seal(&mut s, &[i; 30])).collect();
    let mut forged = recs[11].clone();
    forged[30] ^= 1;
    let order = [3, 1, 7, 2, 9, 0, 4, 5, 6, 8];
    let mut buf: Vec<u8> = order.iter().flat_map(|&i| recs[i].clone()).collect();
    buf.extend_from_slice(&forged);
    let ranges: Vec<_> = records(&buf).collect();
    let mut out = vec![Err(DropReason::Truncated); ranges.len()];
    o.open_many(&mut buf, &ranges, &mut out);
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 10);
    assert_eq!(o.newest(), es(1, 109));
    assert!(o.open(&mut recs[10].clone()).is_ok());
    assert_eq!(o.newest(), es(1, 110));
    // After a rekey, a batch's record of the previous epoch moves it too.
    rekey_opener(&mut o, &KeyBlock::for_test(), false, 2);
    let mut buf = recs[11].clone();
    let ranges: Vec<_> = records(&buf).collect();
    o.open_many(&mut buf, &ranges, &mut out[..1]);
    assert!(out[0].is_ok());
    assert_eq!(o.newest(), es(1, 111));
}

/// Both halves keep their CID across a rekey; the previous epoch's CID records still open,
/// and move `newest` only while they are the newest the opener has seen.
#[test]
fn cid_records_across_a_rekey() {
    let next = KeyBlock {
        client_key: [5; 16],
        server_key: [6; 16],
        client_iv: [7; 4],
        server_iv: [8; 4],
    };
    let (mut s, mut o) = pair();
    let old: Vec<Vec<u8>> = (0..4).map(|i| seal(&mut s, &[i; 30])).collect();
    rekey_sealer(&mut s, &next, true, 2);
    assert_eq!(s.cid(), Some(CID));
    let new: Vec<Vec<u8>> = (0..3).map(|i| seal(&mut s, &[10 + i; 30])).collect();
    assert_eq!(new[0][0], CONTENT_TLS12_CID);
    assert!(o.open(&mut old[1].clone()).is_ok());
    rekey_opener(&mut o, &next, false, 2);
    assert_eq!(o.cid(), Some(CID));
    assert_eq!(o.newest(), es(1, 8), "a rekey keeps newest");
    // The previous epoch: newer than anything seen moves it; once epoch 2 opened, not.
    assert!(o.open(&mut old[2].clone()).is_ok());
    assert_eq!(o.newest(), es(1, 9));
    assert!(o.open(&mut new[0].clone()).is_ok());
    assert_eq!(o.newest(), es(2, 0));
    let mut buf = [old[3].clone(), old[2].clone(), new[1].clone()].concat();
    let ranges: Vec<_> = records(&buf).collect();
    let mut out = vec![Err(DropReason::Truncated); 3];
    o.open_many(&mut buf, &ranges, &mut out);
    assert!(out[0].is_ok());
    assert_eq!(out[1], Err(DropReason::Replay));
    assert!(out[2].is_ok());
    assert_eq!(o.newest(), es(2, 1));
    o.retire_previous();
    assert_eq!(o.newest(), es(2, 1), "retiring never moves it down");
    // set_cid reaches the previous epoch's key too.
    let (mut s, mut o) = pair();
    let old = seal(&mut s, b"old");
    rekey_opener(&mut o, &next, false, 2);
    o.set_cid(Some(OTHER));
    assert_eq!(o.open(&mut old.clone()), Err(DropReason::BadCid));
    o.set_cid(Some(CID));
    assert!(o.open(&mut old.clone()).is_ok());
}

/// Forged CID records count towards the integrity limit like plain ones; the cheap drops
/// (CID, epoch, length, replay) and an authentic record without a type do not.
#[test]
fn the_integrity_limit_counts_forged_cid_records() {
    let (mut s, o) = pair();
    let mut o = o.with_limits(Limits {
        sealed_blocks: u64::MAX,
        failed_opens: 4,
    });
    let good = seal(&mut s, b"good");
    assert!(o.open(&mut good.clone()).is_ok());
    assert_eq!(o.open(&mut good.clone()), Err(DropReason::Replay));
    let mut cid = seal(&mut s, b"x");
    cid[12] ^= 1;
    assert_eq!(o.open(&mut cid), Err(DropReason::BadCid));
    let mut epoch = seal(&mut s, b"x");
    epoch[4] = 9;
    assert_eq!(o.open(&mut epoch), Err(DropReason::BadEpoch));
    let mut inner = seal_as(&mut s, 0, &[0; 3]);
    assert_eq!(o.open(&mut inner), Err(DropReason::BadInner));
    assert_eq!(o.failed_opens(), 0);
    let forge = |s: &mut Sealer| {
        let mut f = seal(s, b"forged");
        f[CID_PAYLOAD_OFFSET] ^= 1;
        f
    };
    for _ in 0..2 {
        assert_eq!(o.open(&mut forge(&mut s)), Err(DropReason::BadTag));
    }
    assert!(!o.integrity_limit_reached());
    let mut buf = [forge(&mut s), seal(&mut s, b"ok"), forge(&mut s)].concat();
    let ranges: Vec<_> = records(&buf).collect();
    let mut out = vec![Err(DropReason::Truncated); 3];
    o.open_many(&mut buf, &ranges, &mut out);
    assert!(out[1].is_ok());
    assert_eq!(o.failed_opens(), 4);
    assert!(o.integrity_limit_reached());
}

/// The confidentiality limit counts a CID record's inner plaintext (content and type), and a
/// record that does not fit its buffer or the 2^14 limit takes no sequence number.
#[test]
fn a_cid_sealer_counts_the_inner_plaintext() {
    let (mut s, _) = pair();
    for (len, blocks) in [(15, 2), (16, 3), (1400, 89)] {
        let before = s.blocks_left();
        seal(&mut s, &vec![0x45; len]);
        assert_eq!(before - s.blocks_left(), blocks, "{len} bytes");
        assert_eq!(blocks, limits::blocks(Suite::Aes128Gcm, len + 1));
    }
    let remaining = s.remaining();
    let mut buf = vec![0u8; CID_PAYLOAD_OFFSET + MAX_RECORD_PLAINTEXT + 17];
    assert_eq!(
        s.seal(CONTENT_APPLICATION_DATA, &mut buf, MAX_RECORD_PLAINTEXT),
        Err(SealError::BufferTooSmall(MAX_RECORD_PLAINTEXT))
    );
    let mut short = vec![0u8; CID_PAYLOAD_OFFSET + 10 + 16];
    assert_eq!(
        s.seal(CONTENT_APPLICATION_DATA, &mut short, 10),
        Err(SealError::BufferTooSmall(10))
    );
    assert_eq!(s.remaining(), remaining);
    let n = s
        .seal(CONTENT_APPLICATION_DATA, &mut buf, MAX_RECORD_PLAINTEXT - 1)
        .unwrap();
    assert_eq!(n, buf.len() - 1);
}

/// `authentic_copy`: the opened copy only for a record the window already holds and whose tag verifies
/// (in either format, in the previous epoch too), and it moves nothing: the original still
/// counts as a replay, the next record still opens, `newest` stays; a forged copy counts as a
/// failed authentication.
#[test]
fn an_authentic_copy_is_told_from_a_forged_one_and_moves_nothing() {
    let (mut s, mut o) = pair();
    let first = seal(&mut s, b"first");
    let mut copy = first.clone();
    let mut fresh = seal(&mut s, b"fresh");
    assert!(
        o.authentic_copy(&mut fresh.clone()).is_none(),
        "not accepted yet"
    );
    o.open(&mut first.clone()).unwrap();
    let newest = o.newest();
    let mut forged = first.clone();
    *forged.last_mut().unwrap() ^= 1;
    assert!(o.authentic_copy(&mut forged).is_none());
    assert_eq!(o.failed_opens(), 1);
    let (ct, range) = o.authentic_copy(&mut copy).unwrap();
    assert_eq!(
        (ct, &copy[range]),
        (CONTENT_APPLICATION_DATA, &b"first"[..])
    );
    assert_eq!(o.newest(), newest);
    assert_eq!(o.open(&mut first.clone()), Err(DropReason::Replay));
    assert!(o.open(&mut fresh).is_ok());
    // A plain record of the same session too, and one of the previous epoch after a rekey.
    let (mut plain_s, _) = session_pair(Suite::Aes128Gcm, &KeyBlock::for_test(), true, 1, 100);
    let plain = seal(&mut plain_s, b"plain");
    o.open(&mut plain.clone()).unwrap();
    assert!(o.authentic_copy(&mut plain.clone()).is_some());
    let kb = KeyBlock::for_test();
    rekey_opener(&mut o, &kb, false, 2);
    assert!(
        o.authentic_copy(&mut plain.clone()).is_some(),
        "the previous epoch's window"
    );
    assert!(
        o.authentic_copy(&mut seal(&mut s, b"never")).is_none(),
        "never accepted"
    );
}
