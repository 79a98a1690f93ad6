//! Rekeying between our client and server sessions in memory ([`pair::Pair`]): traffic keeps
//! flowing across a hundred rekeys on a clean link and under loss and reordering, a rekey
//! happens only when both sides offer it, a usage limit asks for one at once, and a server
//! that never answers is given up like a dead peer.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use super::pair::{Dir, Fate, Pair, ServerScript, clean};
use super::*;

/// A pair whose client rekeys every `every` of traffic, with its data path sending a packet
/// each 100 ms (the server echoes them).
fn rekeying(every: Duration, script: ServerScript, fate: Fate) -> Pair {
    let mut cfg = Pair::config();
    cfg.rekey = Some(every);
    let mut p = Pair::new(cfg, script, fate);
    p.detach = true;
    p.data_every = Some(Duration::from_millis(100));
    p
}

/// Once `on` is set, loses `percent` of the datagrams and delays one in four by up to 30 ms
/// (so they overtake each other), from a fixed seed. (A setup message lost ends the session
/// for the client to start over, which `Pair` does not: loss starts once it is up.)
fn lossy(percent: u64, seed: u64, on: Rc<Cell<bool>>) -> Fate {
    let mut x = seed;
    Box::new(move |_, _, _| {
        if !on.get() {
            return vec![Duration::ZERO];
        }
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = x >> 33;
        if r % 100 < percent {
            vec![]
        } else if r.is_multiple_of(4) {
            vec![Duration::from_millis((r >> 8) % 30)]
        } else {
            vec![Duration::ZERO]
        }
    })
}

#[test]
fn a_hundred_rekeys_on_a_clean_link_lose_nothing() {
    let mut p = rekeying(Duration::from_secs(2), ServerScript::default(), clean());
    p.run(Duration::from_secs(215));
    assert!(p.end().is_none(), "{:?}", p.end());
    assert!(p.client.rekeys());
    let epoch = p.client.epoch();
    assert!(epoch >= 101, "epoch {epoch}");
    let sent = &p.saw().send_epochs;
    assert_eq!(
        sent.len(),
        usize::from(epoch) - 1,
        "the server followed each"
    );
    assert!(sent.windows(2).all(|w| w[1] == w[0] + 1));
    // Every packet came back but the ones still in flight.
    assert!(p.data_sent > 2000);
    assert!(
        p.data_sent - p.data_echoed <= 1,
        "{} sent, {} back",
        p.data_sent,
        p.data_echoed
    );
    let rekeyed = p
        .client_events()
        .iter()
        .filter(|e| matches!(e, Event::Rekeyed { .. }))
        .count();
    assert_eq!(rekeyed, usize::from(epoch) - 1);
    assert_eq!(p.saw().drops, 0);
}

#[test]
fn rekeys_survive_loss_and_reordering() {
    let on = Rc::new(Cell::new(false));
    let mut p = rekeying(
        Duration::from_secs(2),
        ServerScript::default(),
        lossy(10, 7, on.clone()),
    );
    p.run(Duration::from_secs(1));
    assert!(p.client.rekeys());
    on.set(true);
    p.run(Duration::from_secs(400));
    assert!(
        p.end().is_none(),
        "{:?} at {:?}, server: {:?}, epoch {}",
        p.end(),
        p.when(|e| matches!(e, Event::Closed(_))),
        p.saw().ended,
        p.client.epoch()
    );
    let epoch = p.client.epoch();
    assert!(epoch >= 101, "epoch {epoch}");
    // About a tenth lost each way, so about a fifth of the echoes.
    let lost = p.data_sent - p.data_echoed;
    assert!(lost * 100 / p.data_sent <= 30, "{lost} of {}", p.data_sent);
    assert!(p.data_echoed > 2000);
}

#[test]
fn both_sides_must_offer_it() {
    // The server does not: the client's offer goes unanswered, no rekey.
    let script = ServerScript {
        rekey: false,
        ..ServerScript::default()
    };
    let mut p = rekeying(Duration::from_secs(1), script, clean());
    p.run(Duration::from_secs(20));
    assert!(!p.client.rekeys() && p.client.epoch() == 1);
    assert!(p.saw().send_epochs.is_empty());
    assert!(p.data_sent - p.data_echoed <= 1);
    // The client does not: nothing either.
    let mut p = Pair::new(Pair::config(), ServerScript::default(), clean());
    p.detach = true;
    p.data_every = Some(Duration::from_millis(100));
    p.run(Duration::from_secs(20));
    assert!(!p.client.rekeys());
    assert!(p.saw().send_epochs.is_empty());
    // An original (-compat) server: no Hello, no rekey.
    let script = ServerScript {
        dtun: false,
        ..ServerScript::default()
    };
    let mut p = rekeying(Duration::from_secs(1), script, clean());
    p.run(Duration::from_secs(20));
    assert!(!p.client.rekeys());
    assert!(p.end().is_none());
}

#[test]
fn an_idle_session_does_not_rekey_and_a_usage_limit_rekeys_at_once() {
    let mut cfg = Pair::config();
    cfg.rekey = Some(Duration::from_secs(2));
    // No data path traffic: only keepalive Pings, ten seconds apart.
    let mut p = Pair::new(cfg, ServerScript::default(), clean());
    p.run(Duration::from_secs(120));
    assert!(p.client.rekeys());
    assert_eq!(p.client.epoch(), 1, "idle: never woken");
    // A usage limit near: at once, with the session's own keys (no data path).
    assert!(p.client.rekey_soon());
    let until = p.now - p.start + Duration::from_secs(2);
    p.run(until);
    assert_eq!(p.client.epoch(), 2);
    // The session's keys moved too: its keepalive goes on under epoch 2, and the server
    // follows at its first record.
    let pings = p.saw().pings;
    let until = p.now - p.start + Duration::from_secs(60);
    p.run(until);
    assert!(p.end().is_none(), "{:?}", p.end());
    assert!(p.saw().pings > pings);
    assert_eq!(p.saw().send_epochs, vec![2]);
}

#[test]
fn a_server_that_never_answers_a_rekey_is_given_up() {
    // Rekey fragments are the only datagrams over 400 bytes: lose those towards the server.
    let fate: Fate = Box::new(|d, _, b| {
        if d == Dir::ToServer && b.len() > 400 {
            vec![]
        } else {
            vec![Duration::ZERO]
        }
    });
    let mut p = rekeying(Duration::from_secs(2), ServerScript::default(), fate);
    p.run(Duration::from_secs(120));
    let Some(End::Dead(after)) = p.end() else {
        panic!("{:?}", p.end())
    };
    assert_eq!(*after, Duration::from_secs(30), "three keepalive periods");
    assert_eq!(p.client.epoch(), 1);
    assert_eq!(p.saw().close, Some(CloseReason::Timeout), "told why");
}

/// With a short keepalive (2 s: three periods are 6 s), an exchange still gets REKEY_GIVE_UP
/// (30 s) before the session is given up: a lossy path's lost fragments are not a dead peer
/// (tests/rekey.rs once lost a session under 10 % loss this way).
#[test]
fn a_short_keepalive_still_gives_a_rekey_thirty_seconds() {
    let fate: Fate = Box::new(|d, _, b| {
        if d == Dir::ToServer && b.len() > 400 {
            vec![]
        } else {
            vec![Duration::ZERO]
        }
    });
    let mut cfg = Pair::config();
    cfg.rekey = Some(Duration::from_secs(2));
    cfg.keepalive = Duration::from_secs(2);
    let mut p = Pair::new(cfg, ServerScript::default(), fate);
    p.detach = true;
    p.data_every = Some(Duration::from_millis(100));
    p.run(Duration::from_secs(20));
    assert!(p.end().is_none(), "given up within 20 s: {:?}", p.end());
    p.run(Duration::from_secs(120));
    let Some(End::Dead(after)) = p.end() else {
        panic!("{:?}", p.end())
    };
    assert_eq!(*after, REKEY_GIVE_UP);
}

#[test]
fn the_previous_epoch_is_read_only_for_the_overlap() {
    use crate::rekey::exchange::EPOCH_OVERLAP;
    for detach in [true, false] {
        let mut cfg = Pair::config();
        cfg.rekey = Some(Duration::from_secs(600));
        let mut p = Pair::new(cfg, ServerScript::default(), clean());
        p.detach = detach;
        p.run(Duration::from_secs(1));
        assert!(p.client.rekey_soon());
        p.run(Duration::from_secs(60));
        assert_eq!(p.client.epoch(), 2);
        if detach {
            let rekeyed = p.when(|e| matches!(e, Event::Rekeyed { .. })).unwrap();
            let retired = p.when(|e| matches!(e, Event::RetirePrevious)).unwrap();
            assert_eq!(retired - rekeyed, EPOCH_OVERLAP);
        } else {
            assert!(
                p.when(|e| matches!(e, Event::RetirePrevious)).is_none(),
                "the session's own keys: nothing to tell"
            );
        }
        assert!(p.end().is_none(), "{:?}", p.end());
        // The server, too: a record of epoch 1 (a copy from the capture, sent again) is a
        // stale epoch after the overlap, not a replay inside it.
        let old = p
            .wire
            .iter()
            .rev()
            .find(|(d, dg)| {
                *d == Dir::ToServer && dg.len() > 13 && dg[0] == 23 && dg[3..5] == [0, 1]
            })
            .map(|(_, dg)| dg.clone())
            .unwrap();
        p.inject(Dir::ToServer, old);
        let until = p.now - p.start + Duration::from_secs(1);
        p.run(until);
        assert_eq!(p.saw().bad_epoch, 1, "epoch 1 still read after the overlap");
    }
}

/// Dropping the server's Hello answers (45-byte records under GCM, told apart by size) for
/// the whole Hello exchange does not turn rekeying off: the server's hint, which the handshake
/// authenticates, says it rekeys (outside review: before, 0 rekeys in 600 s).
#[test]
fn dropping_the_hello_answers_does_not_turn_rekeying_off() {
    let seen = Rc::new(Cell::new(0u32));
    let s = seen.clone();
    let fate: Fate = Box::new(move |d, _, b| {
        // The first 45-byte record is the address message: the answers come after it.
        if d == Dir::ToClient && b.len() == 45 {
            s.set(s.get() + 1);
            if s.get() > 1 {
                return vec![];
            }
        }
        vec![Duration::ZERO]
    });
    let mut p = rekeying(Duration::from_secs(2), ServerScript::default(), fate);
    p.run(Duration::from_secs(30));
    assert!(seen.get() > 2, "no answer was dropped: {}", seen.get());
    assert!(p.client.rekeys(), "rekeying turned off");
    assert!(p.client.epoch() >= 5, "epoch {}", p.client.epoch());
    assert!(p.data_sent - p.data_echoed <= 1);
}
