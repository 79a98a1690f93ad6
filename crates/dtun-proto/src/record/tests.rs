use super::*;
use crate::consts::{CONTENT_APPLICATION_DATA, EXHAUSTION_MARGIN, MAX_SEQUENCE, PAYLOAD_OFFSET};

const SUITES: [Suite; 2] = [Suite::Aes128Ccm8, Suite::Aes128Gcm];

fn pair_of(suite: Suite) -> (Sealer, Opener) {
    let kb = KeyBlock::for_test();
    let (s, _) = session_pair(suite, &kb, true, 1, 7);
    let (_, o) = session_pair(suite, &kb, false, 1, 0);
    (s, o)
}

fn pair() -> (Sealer, Opener) {
    pair_of(Suite::Aes128Ccm8)
}

fn seal(s: &mut Sealer, msg: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + msg.len()].copy_from_slice(msg);
    let n = s
        .seal(CONTENT_APPLICATION_DATA, &mut buf, msg.len())
        .unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn round_trip_and_nonce_is_epoch_and_sequence() {
    for suite in SUITES {
        let (mut s, mut o) = pair_of(suite);
        let mut rec = seal(&mut s, b"hello");
        assert_eq!(rec.len(), 5 + suite.overhead());
        assert_eq!(&rec[3..11], &[0, 1, 0, 0, 0, 0, 0, 7]);
        assert_eq!(&rec[13..21], &[0, 1, 0, 0, 0, 0, 0, 7]);
        assert_ne!(
            &rec[21..26],
            b"hello",
            "{suite:?} left the plaintext in clear"
        );
        let (ct, r) = o.open(&mut rec).unwrap();
        assert_eq!(ct, CONTENT_APPLICATION_DATA);
        assert_eq!(&rec[r], b"hello");
    }
    assert_eq!(Suite::Aes128Gcm.overhead(), 37);
    assert_eq!(Suite::from_id(0x00a8), Some(Suite::Aes128Gcm));
    assert_eq!(Suite::from_id(0xc0a8), Some(Suite::Aes128Ccm8));
    assert_eq!(Suite::from_id(0xc0a4), None);
}

/// A record sealed under one suite never opens under the other with the same keys.
#[test]
fn suites_do_not_cross() {
    let (mut s, _) = pair_of(Suite::Aes128Gcm);
    let (_, mut o) = pair_of(Suite::Aes128Ccm8);
    let mut rec = seal(&mut s, b"hello");
    assert!(o.open(&mut rec).is_err());
}

#[test]
fn replay_corruption_truncation_and_epoch_are_drops() {
    for suite in SUITES {
        drops(suite);
    }
}

fn drops(suite: Suite) {
    let (mut s, mut o) = pair_of(suite);
    let rec = seal(&mut s, b"packet");
    let mut bad = rec.clone();
    bad[25] ^= 1;
    assert_eq!(o.open(&mut bad), Err(DropReason::BadTag));
    // The bad record must not have moved the window.
    let mut good = rec.clone();
    assert!(o.open(&mut good).is_ok());
    let mut again = rec.clone();
    assert_eq!(o.open(&mut again), Err(DropReason::Replay));
    let mut short = rec[..rec.len() - 1].to_vec();
    assert_eq!(o.open(&mut short), Err(DropReason::Truncated));
    let mut tiny = rec[..10].to_vec();
    assert_eq!(o.open(&mut tiny), Err(DropReason::Truncated));
    let mut epoch = seal(&mut s, b"x");
    epoch[4] = 2;
    assert_eq!(o.open(&mut epoch), Err(DropReason::BadEpoch));
}

#[test]
fn window_accepts_reordering_within_64() {
    let mut w = ReplayWindow::default();
    for seq in [100u64, 90, 99, 37, 101, 164] {
        if w.check(seq) {
            w.accept(seq);
        }
    }
    assert!(!w.check(100));
    assert!(!w.check(101));
    assert!(!w.check(100)); // left behind: 164 - 100 = 64
    assert!(w.check(120));
    assert!(!w.check(164));
    assert!(w.check(165));
    assert!(!w.check(MAX_SEQUENCE + 1));
}

/// A batch seals to the same bytes as one record at a time, and opens back in a batch
/// with drops for exactly the damaged, duplicated and unparsed entries.
#[test]
fn batches_match_single_records_and_drop_per_record() {
    for suite in SUITES {
        let (mut one, _) = pair_of(suite);
        let (mut many, mut opener) = pair_of(suite);
        let sizes: Vec<usize> = (0..21)
            .map(|i| [1400, 1400, 1400, 60, 0, 1][i % 6])
            .collect();
        let mut slots: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut b = vec![0u8; PAYLOAD_OFFSET + n + 16];
                b[PAYLOAD_OFFSET..PAYLOAD_OFFSET + n].fill(i as u8);
                b
            })
            .collect();
        let singles: Vec<Vec<u8>> = slots
            .iter()
            .zip(&sizes)
            .map(|(b, &n)| seal(&mut one, &b[PAYLOAD_OFFSET..PAYLOAD_OFFSET + n]))
            .collect();
        let mut records = vec![0; sizes.len()];
        many.seal_many(CONTENT_APPLICATION_DATA, &mut slots, &sizes, &mut records)
            .unwrap();
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(&slot[..records[i]], &singles[i][..], "{suite:?} record {i}");
        }
        // One buffer of all records; damage record 5, repeat record 7 as record 8, and
        // put an unparsed entry last.
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        for (i, rec) in singles.iter().enumerate() {
            let rec = if i == 8 { &singles[7] } else { rec };
            ranges.push(Ok(buf.len()..buf.len() + rec.len()));
            buf.extend_from_slice(rec);
        }
        let last = buf.len() - 1;
        buf[ranges[5].clone().unwrap().end - 1] ^= 1;
        ranges.push(Err(DropReason::Truncated));
        let mut out = vec![Err(DropReason::Oversized); ranges.len()];
        opener.open_many(&mut buf, &ranges, &mut out);
        assert!(last < buf.len());
        for (i, o) in out.iter().enumerate() {
            match i {
                5 => assert_eq!(o, &Err(DropReason::BadTag), "{suite:?}"),
                8 => assert_eq!(o, &Err(DropReason::Replay), "{suite:?}"),
                21 => assert_eq!(o, &Err(DropReason::Truncated), "{suite:?}"),
                _ => {
                    let (ct, p) = o.clone().unwrap();
                    assert_eq!(ct, CONTENT_APPLICATION_DATA);
                    assert_eq!(p.len(), sizes[i], "{suite:?} record {i}");
                    assert!(buf[p].iter().all(|b| *b == i as u8), "{suite:?} record {i}");
                }
            }
        }
        // Record 5's sequence number was not taken by its forgery.
        let mut good = singles[5].clone();
        assert!(opener.open(&mut good).is_ok(), "{suite:?}");
    }
}

/// A sealer started near the end of the sequence space says when to close (the last
/// EXHAUSTION_MARGIN numbers are kept for the close), can still seal the close in that
/// reserve, and refuses once the space is gone, in one record and in a batch.
#[test]
fn a_sealer_near_the_end_of_the_sequence_space() {
    let kb = KeyBlock::for_test();
    for suite in SUITES {
        let first = MAX_SEQUENCE + 1 - EXHAUSTION_MARGIN - 2;
        let (mut s, _) = session_pair(suite, &kb, true, 1, first);
        assert_eq!(s.remaining(), EXHAUSTION_MARGIN + 2);
        assert!(!s.nearly_exhausted());
        seal(&mut s, b"a");
        assert!(!s.nearly_exhausted());
        seal(&mut s, b"b");
        assert!(s.nearly_exhausted(), "{suite:?}");
        // The reserve carries a Close and a close_notify.
        seal(&mut s, b"close");
        seal(&mut s, b"notify");
        let (mut last, _) = session_pair(suite, &kb, true, 1, MAX_SEQUENCE);
        let rec = seal(&mut last, b"x");
        assert_eq!(&rec[5..11], &[0xff; 6]);
        assert_eq!(last.remaining(), 0);
        let mut buf = vec![0u8; 64];
        assert_eq!(
            last.seal(CONTENT_APPLICATION_DATA, &mut buf, 1),
            Err(SealError::SequenceExhausted(1))
        );
        let mut slots = vec![vec![0u8; 64]; 2];
        let mut records = [0; 2];
        assert_eq!(
            last.seal_many(CONTENT_APPLICATION_DATA, &mut slots, &[1, 1], &mut records),
            Err(SealError::SequenceExhausted(1))
        );
        assert_eq!(records, [0, 0]);
    }
}

#[test]
fn records_splits_and_stops_on_garbage() {
    let (mut s, _) = pair();
    let mut dg = seal(&mut s, b"a");
    let second = seal(&mut s, b"bc");
    dg.extend_from_slice(&second);
    dg.extend_from_slice(&[23, 0xfe]);
    let v: Vec<_> = records(&dg).collect();
    assert_eq!(v.len(), 3);
    assert_eq!(v[0], Ok(0..30));
    assert_eq!(v[1], Ok(30..61));
    assert_eq!(v[2], Err(DropReason::Truncated));
}

/// The confidentiality limit (lowered here): the sealer counts AES blocks, says when to close
/// while the reserve still carries the close, and refuses past the limit, alone and in a batch.
#[test]
fn a_sealer_stops_at_its_usage_limit() {
    for suite in SUITES {
        let cost = limits::blocks(suite, 100);
        let limit = limits::SEALED_BLOCKS_RESERVE + 10 * cost;
        let (s, _) = pair_of(suite);
        let mut s = s.with_limits(Limits {
            sealed_blocks: limit,
            failed_opens: u64::MAX,
        });
        for i in 0..10 {
            assert!(!s.nearly_exhausted(), "{suite:?} after {i}");
            seal(&mut s, &[0x45; 100]);
        }
        assert!(s.nearly_exhausted(), "{suite:?}");
        assert!(
            s.remaining() > EXHAUSTION_MARGIN,
            "the sequence space is not why"
        );
        // The reserve carries a Close and a close_notify, and a batch's tail.
        seal(&mut s, b"close");
        seal(&mut s, b"notify");
        let mut slots = vec![vec![0u8; 2048]; 1000];
        let mut records = vec![0; 1000];
        let sizes = vec![1400; 1000];
        assert_eq!(
            s.seal_many(CONTENT_APPLICATION_DATA, &mut slots, &sizes, &mut records),
            Err(SealError::UsageLimit(1)),
            "{suite:?}"
        );
        let sealed = records.iter().filter(|&&r| r > 0).count() as u64;
        assert!(sealed > 0 && sealed < 1000, "{suite:?}: {sealed}");
        assert!(s.blocks_left() < limits::blocks(suite, 1400), "{suite:?}");
        let mut buf = vec![0u8; 2048];
        assert_eq!(
            s.seal(CONTENT_APPLICATION_DATA, &mut buf, 1400),
            Err(SealError::UsageLimit(1))
        );
    }
}

/// The integrity limit (lowered here) counts only records that pass the cheap checks and then
/// fail authentication: a wrong epoch, a replay or a bad length costs a spoofer nothing here;
/// one by one and in a CCM_8 batch alike.
#[test]
fn an_opener_counts_only_failed_authentications() {
    for suite in SUITES {
        let (mut s, o) = pair_of(suite);
        let mut o = o.with_limits(Limits {
            sealed_blocks: u64::MAX,
            failed_opens: 3,
        });
        let good = seal(&mut s, b"hello");
        assert!(o.open(&mut good.clone()).is_ok());
        // A replay, a wrong epoch, a truncated record: dropped before the tag, not counted.
        assert_eq!(o.open(&mut good.clone()), Err(DropReason::Replay));
        let mut epoch2 = seal(&mut s, b"x");
        epoch2[4] = 2;
        assert_eq!(o.open(&mut epoch2), Err(DropReason::BadEpoch));
        let mut short = seal(&mut s, b"x");
        short[11..13].copy_from_slice(&4u16.to_be_bytes());
        assert!(o.open(&mut short[..17]).is_err());
        assert_eq!(o.failed_opens(), 0, "{suite:?}");
        // Forgeries: a flipped ciphertext byte under a fresh sequence number.
        let mut forge = |o: &mut Opener| {
            let mut f = seal(&mut s, b"forged");
            f[PAYLOAD_OFFSET] ^= 1;
            assert_eq!(o.open(&mut f), Err(DropReason::BadTag));
        };
        forge(&mut o);
        forge(&mut o);
        assert!(!o.integrity_limit_reached());
        // A batch: two forgeries among good records (CCM_8 opens them in one pass).
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        for i in 0..4 {
            let mut r = seal(&mut s, b"batch");
            if i % 2 == 1 {
                r[PAYLOAD_OFFSET] ^= 1;
            }
            ranges.push(Ok(buf.len()..buf.len() + r.len()));
            buf.extend_from_slice(&r);
        }
        let mut out = vec![Err(DropReason::Truncated); 4];
        o.open_many(&mut buf, &ranges, &mut out);
        assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 2, "{suite:?}");
        assert_eq!(o.failed_opens(), 4, "{suite:?}");
        assert!(o.integrity_limit_reached());
    }
}

/// A rekey: the sealer moves to the new epoch from sequence number 0; the opener reads the new
/// epoch and, until retired, the previous one (its own replay window), in one record or a
/// batch that mixes both; a third epoch drops the first.
#[test]
fn a_rekey_moves_both_halves_and_the_previous_epoch_overlaps() {
    let next = KeyBlock {
        client_key: [5; 16],
        server_key: [6; 16],
        client_iv: [7; 4],
        server_iv: [8; 4],
    };
    for suite in SUITES {
        let (mut s, mut o) = pair_of(suite);
        let old: Vec<Vec<u8>> = (0..6).map(|i| seal(&mut s, &[i; 40])).collect();
        rekey_sealer(&mut s, &next, true, 2);
        assert_eq!(s.epoch(), 2);
        let new: Vec<Vec<u8>> = (0..6).map(|i| seal(&mut s, &[10 + i; 40])).collect();
        assert_eq!(&new[0][3..11], &[0, 2, 0, 0, 0, 0, 0, 0], "epoch 2 from 0");
        // Not rekeyed yet: the new epoch is a drop.
        assert_eq!(o.open(&mut new[0].clone()), Err(DropReason::BadEpoch));
        rekey_opener(&mut o, &next, false, 2);
        assert_eq!((o.epoch(), o.previous_epoch()), (2, Some(1)));
        // One at a time, interleaved: both epochs open; only the new epoch's says the peer
        // has the new keys.
        assert!(!o.has_opened());
        assert!(o.open(&mut old[0].clone()).is_ok(), "{suite:?}");
        assert!(
            !o.has_opened(),
            "{suite:?}: an old-epoch record proves nothing"
        );
        assert!(o.open(&mut new[0].clone()).is_ok(), "{suite:?}");
        assert!(o.has_opened());
        assert_eq!(o.open(&mut old[0].clone()), Err(DropReason::Replay));
        // A batch that mixes them, a replay of each included.
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        let order: [(bool, usize); 8] = [
            (true, 1),
            (false, 1),
            (true, 2),
            (false, 2),
            (false, 3),
            (true, 2),
            (true, 3),
            (false, 1),
        ];
        for (is_new, i) in order {
            let rec = if is_new { &new[i] } else { &old[i] };
            ranges.push(Ok(buf.len()..buf.len() + rec.len()));
            buf.extend_from_slice(rec);
        }
        let mut out = vec![Err(DropReason::Oversized); ranges.len()];
        o.open_many(&mut buf, &ranges, &mut out);
        for (k, ((is_new, i), got)) in order.iter().zip(&out).enumerate() {
            if k == 5 || k == 7 {
                assert_eq!(got, &Err(DropReason::Replay), "{suite:?} {k}");
                continue;
            }
            let (_, p) = got
                .clone()
                .unwrap_or_else(|e| panic!("{suite:?} {k}: {e:?}"));
            let want = if *is_new { 10 + *i as u8 } else { *i as u8 };
            assert!(buf[p].iter().all(|b| *b == want), "{suite:?} {k}");
        }
        // Retired: the old epoch is a drop; the new one goes on.
        o.retire_previous();
        assert_eq!(o.open(&mut old[4].clone()), Err(DropReason::BadEpoch));
        assert!(o.open(&mut new[4].clone()).is_ok());
        // A third epoch keeps only the second as previous; in a CCM_8 batch too, a record of
        // the new epoch counts.
        rekey_opener(&mut o, &next, false, 3);
        assert!(!o.has_opened());
        assert_eq!(o.previous_epoch(), Some(2));
        assert!(o.open(&mut new[5].clone()).is_ok());
        assert_eq!(o.open(&mut old[5].clone()), Err(DropReason::BadEpoch));
    }
}
