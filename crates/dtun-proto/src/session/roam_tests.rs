//! Roaming between our client and server sessions in memory ([`pair::Pair`]): a session that
//! roams rekeys at once and carries its connection ID from that epoch on (RFC 9146 records),
//! only where both sides can (the client offers it, the server gives an ID, both rekey, the
//! suite is AES-GCM); a lost connection ID is asked for again; the client answers a path
//! challenge, and only a roaming client does. Where a session moves is `server::Path`'s (its
//! own tests) and the demultiplexer's.

use std::time::Duration;

use super::pair::{Dir, Pair, ServerScript, clean};
use crate::consts::CONTENT_APPLICATION_DATA;
use crate::proto::Control;

const CID: [u8; 8] = [0xc1, 0xd0, 2, 3, 4, 5, 6, 7];

/// A pair whose client (offering roaming if `roam`) rekeys every 2 minutes, sending a packet
/// each 100 ms, against a server playing `script`.
fn pair_with(roam: bool, script: ServerScript, fate: super::pair::Fate) -> Pair {
    let mut cfg = Pair::config();
    cfg.rekey = Some(Duration::from_secs(120));
    cfg.roam = roam;
    let mut p = Pair::new(cfg, script, fate);
    p.detach = true;
    p.data_every = Some(Duration::from_millis(100));
    p
}

/// A server that rekeys and has `cid` for the session.
fn server(cid: Option<[u8; 8]>) -> ServerScript {
    ServerScript {
        rekey: true,
        cid,
        ..ServerScript::default()
    }
}

fn roaming(cid: Option<[u8; 8]>) -> Pair {
    pair_with(true, server(cid), clean())
}

#[test]
fn a_roaming_session_rekeys_at_once_then_carries_its_connection_id() {
    let mut p = roaming(Some(CID));
    p.run(Duration::from_secs(5));
    assert!(p.end().is_none(), "{:?}", p.end());
    assert!(p.client.roams());
    // At once, not after the two minutes of -rekey: the session roams (and its traffic is
    // forward secret) from its first seconds.
    assert_eq!(p.client.epoch(), 2);
    let saw = p.saw();
    assert_eq!(saw.first_cid_epoch, Some(2), "from the next epoch on");
    assert!(
        saw.cid_records >= 30,
        "{} records with the ID",
        saw.cid_records
    );
    assert!(p.data_sent - p.data_echoed <= 1);
    assert_eq!(saw.drops, 0);
}

/// No roaming, and no early rekey, unless both sides can: a client that does not offer it,
/// a server without an ID for the session, a server that does not rekey, a CCM_8 session.
#[test]
fn roaming_only_where_both_sides_can() {
    let cases = [
        ("no ID from the server", true, server(None)),
        (
            "server does not rekey",
            true,
            ServerScript {
                rekey: false,
                ..server(Some(CID))
            },
        ),
        (
            "CCM_8",
            true,
            ServerScript {
                suites: vec![crate::record::Suite::Aes128Ccm8],
                ..server(Some(CID))
            },
        ),
        ("client does not offer it", false, server(Some(CID))),
    ];
    for (what, roam, script) in cases {
        let mut p = pair_with(roam, script, clean());
        p.run(Duration::from_secs(5));
        assert!(p.end().is_none(), "{what}: {:?}", p.end());
        assert!(!p.client.roams(), "{what}");
        assert_eq!(p.saw().cid_records, 0, "{what}");
        assert!(p.client.epoch() <= 1, "{what}: rekeyed early");
    }
}

/// The connection ID message lost: the answer's ROAM flag says it came, so the client says
/// Hello again and gets it.
#[test]
fn a_lost_connection_id_is_asked_for_again() {
    let cid_len = {
        let mut s =
            crate::record::Sealer::new(crate::record::Suite::Aes128Gcm, &[0; 16], &[0; 4], 1, 0);
        super::seal_record(
            &mut s,
            CONTENT_APPLICATION_DATA,
            &Control::Cid(CID).to_bytes(),
        )
        .unwrap()
        .len()
    };
    let mut lost = false;
    let fate = Box::new(move |dir, _, dg: &[u8]| {
        if dir == Dir::ToClient && dg.len() == cid_len && !lost {
            lost = true;
            return vec![];
        }
        vec![Duration::ZERO]
    });
    let mut p = pair_with(true, server(Some(CID)), fate);
    p.run(Duration::from_secs(5));
    assert!(p.end().is_none(), "{:?}", p.end());
    assert!(p.saw().hellos >= 2, "{} Hellos", p.saw().hellos);
    assert!(p.client.roams());
    assert_eq!(p.saw().first_cid_epoch, Some(2));
}

/// A path challenge is answered from where the client is (in its current format: with the
/// connection ID); a client that does not roam ignores one.
#[test]
fn path_challenges_are_answered_by_roaming_clients_only() {
    for (cid, answers) in [(Some(CID), 1), (None, 0)] {
        let mut p = roaming(cid);
        p.run(Duration::from_secs(3));
        p.server_says(
            CONTENT_APPLICATION_DATA,
            &Control::PathChallenge([9; 8]).to_bytes(),
        );
        p.run(Duration::from_secs(4));
        assert!(p.end().is_none(), "{:?}", p.end());
        assert_eq!(p.saw().path_responses, answers, "cid {cid:?}");
    }
}
