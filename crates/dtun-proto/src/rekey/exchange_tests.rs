//! Each role's side of an exchange against the other's: when a rekey is due, lost, repeated
//! and reordered fragments, the give-up, a hundred epochs in a row, the last epoch.

use std::time::{Duration, Instant};

use ring::rand::SystemRandom;

use super::EpochSecret;
use super::RekeyError;
use super::exchange::*;
use super::message::Fragment;
use crate::proto::Control;

fn frag(b: &[u8]) -> Fragment {
    match Control::parse(b) {
        Ok(Control::Rekey(f)) => f,
        other => panic!("{other:?}"),
    }
}

fn pair(interval: Duration) -> (ClientRekey, ServerRekey) {
    let s1 = EpochSecret::from_bytes(1, [3; 32]);
    (
        ClientRekey::new(s1.clone(), interval, Duration::from_secs(30)),
        ServerRekey::new(s1),
    )
}

/// Traffic every `step` from `from` for `for_`; returns the time after.
fn flow(c: &mut ClientRekey, from: Instant, for_: Duration, step: Duration) -> Instant {
    let mut t = from;
    while t < from + for_ {
        c.traffic(t);
        t += step;
    }
    c.traffic(t);
    t
}

/// One whole exchange over a clean link; both sides' keys.
fn exchange(c: &mut ClientRekey, s: &mut ServerRekey, now: Instant) -> (NewEpoch, NewEpoch) {
    let rng = SystemRandom::new();
    let out = c.start(now, &rng).unwrap();
    assert!(!out.send.is_empty());
    let mut next = None;
    let mut reply = vec![];
    for f in &out.send {
        let o = s.fragment(&frag(f), &rng).unwrap();
        reply.extend(o.send);
        next = o.next.or(next);
    }
    let mut rekeyed = None;
    for f in &reply {
        rekeyed = c.fragment(now, &frag(f)).unwrap().rekeyed.or(rekeyed);
    }
    (rekeyed.unwrap(), next.unwrap())
}

#[test]
fn a_rekey_is_due_after_the_interval_of_traffic_and_both_sides_agree() {
    let t0 = Instant::now();
    let (mut c, mut s) = pair(REKEY_INTERVAL);
    let t = flow(
        &mut c,
        t0,
        REKEY_INTERVAL - Duration::from_secs(2),
        Duration::from_secs(1),
    );
    assert!(!c.due());
    let t = flow(&mut c, t, Duration::from_secs(2), Duration::from_secs(1));
    assert!(c.due());
    let (ours, theirs) = exchange(&mut c, &mut s, t);
    assert_eq!((ours.epoch, theirs.epoch), (2, 2));
    assert_eq!(ours.keys, theirs.keys);
    assert_eq!((c.epoch(), s.epoch()), (2, 2));
    assert!(!c.due(), "the next epoch starts young");
}

#[test]
fn an_idle_session_is_never_woken() {
    let t0 = Instant::now();
    let (mut c, _) = pair(REKEY_INTERVAL);
    // A packet every 11 s (more than IDLE_GAP apart) for an hour: no time counts.
    let mut t = t0;
    for _ in 0..330 {
        c.traffic(t);
        t += Duration::from_secs(11);
    }
    assert!(!c.due());
    assert_eq!(c.next_timeout(), None, "no timer without an exchange");
    c.soon();
    assert!(c.due(), "a usage limit near: at once");
}

#[test]
fn lost_and_reordered_fragments() {
    let rng = SystemRandom::new();
    let t0 = Instant::now();
    let (mut c, mut s) = pair(Duration::from_secs(1));
    let t = flow(&mut c, t0, Duration::from_secs(2), Duration::from_secs(1));
    let init = c.start(t, &rng).unwrap().send;
    assert_eq!(init.len(), 3);
    // The second Init fragment is lost: the server waits.
    for i in [2, 0] {
        let o = s.fragment(&frag(&init[i]), &rng).unwrap();
        assert!(o.send.is_empty() && o.next.is_none());
    }
    assert_eq!(c.next_timeout(), Some(t + REKEY_RETRY));
    assert!(c.timeout(t + REKEY_RETRY / 2).send.is_empty());
    let again = c.timeout(t + REKEY_RETRY).send;
    assert_eq!(again, init, "the same Init again");
    let mut reply = vec![];
    let mut next = None;
    // In order now: the first is a duplicate, the second completes the Init.
    for f in &again {
        let o = s.fragment(&frag(f), &rng).unwrap();
        reply.extend(o.send);
        next = o.next.or(next);
    }
    let next = next.unwrap();
    assert_eq!(reply.len(), 3);
    // The Reply's last fragment is lost: the client repeats its Init, the server answers with
    // the same Reply (never a second exchange for one epoch).
    for f in &reply[..2] {
        assert!(c.fragment(t, &frag(f)).unwrap().rekeyed.is_none());
    }
    let t2 = t + REKEY_RETRY * 2;
    let again = c.timeout(t2).send;
    let mut reply2 = vec![];
    for f in &again {
        let o = s.fragment(&frag(f), &rng).unwrap();
        assert!(o.next.is_none(), "no second exchange");
        reply2.extend(o.send);
    }
    assert_eq!(reply2, reply);
    // Reversed: the last fragment (the one it lacked) completes the Reply; the copies of
    // the two it had are drops after that.
    let results: Vec<_> = reply2
        .iter()
        .rev()
        .map(|f| c.fragment(t2, &frag(f)))
        .collect();
    assert!(matches!(
        &results[1..],
        [Err(RekeyError::Unexpected), Err(RekeyError::Unexpected)]
    ));
    let rekeyed = results
        .into_iter()
        .next()
        .unwrap()
        .unwrap()
        .rekeyed
        .unwrap();
    assert_eq!(rekeyed.keys, next.keys);
    assert_eq!(c.next_timeout(), None);
    // A stray copy of the Reply afterwards is a drop.
    assert_eq!(
        c.fragment(t2, &frag(&reply[0])).unwrap_err(),
        RekeyError::Unexpected
    );
}

#[test]
fn an_unanswered_exchange_gives_up_like_a_dead_peer() {
    let rng = SystemRandom::new();
    let t0 = Instant::now();
    let (mut c, _) = pair(Duration::from_secs(1));
    let t = flow(&mut c, t0, Duration::from_secs(2), Duration::from_secs(1));
    assert!(!c.start(t, &rng).unwrap().send.is_empty());
    let mut now;
    let mut sends = 0;
    loop {
        now = c.next_timeout().unwrap();
        let out = c.timeout(now);
        if out.gave_up {
            break;
        }
        sends += usize::from(!out.send.is_empty());
    }
    assert_eq!(now, t + Duration::from_secs(30));
    assert_eq!(sends, 29, "one Init a second until then");
    assert_eq!(c.epoch(), 1);
}

#[test]
fn stray_and_hostile_fragments_are_drops() {
    let rng = SystemRandom::new();
    let t0 = Instant::now();
    let (mut c, mut s) = pair(Duration::from_secs(1));
    let t = flow(&mut c, t0, Duration::from_secs(2), Duration::from_secs(1));
    let init = c.start(t, &rng).unwrap().send;
    // The server gets a Reply, the client an Init: drops.
    assert_eq!(
        c.fragment(t, &frag(&init[0])).unwrap_err(),
        RekeyError::Unexpected
    );
    // An Init for an epoch beyond the next: a drop.
    let mut far = frag(&init[0]);
    far.epoch = 3;
    assert_eq!(s.fragment(&far, &rng).unwrap_err(), RekeyError::Unexpected);
    // A whole Init whose encapsulation key is invalid: refused, no keys.
    let mut bad: Vec<Fragment> = init.iter().map(|f| frag(f)).collect();
    bad[0].data[2 + 32] = 0xff;
    bad[0].data[2 + 33] |= 0x0f;
    let mut last = Ok(ServerOut::default());
    for f in &bad {
        last = s.fragment(f, &rng);
    }
    assert_eq!(last.unwrap_err(), RekeyError::EncapsulationKey);
    assert_eq!(s.epoch(), 1);
    // The honest Init still works afterwards.
    let mut next = None;
    for f in &init {
        next = s.fragment(&frag(f), &rng).unwrap().next.or(next);
    }
    assert_eq!(next.unwrap().epoch, 2);
}

#[test]
fn a_hundred_epochs_chain_alike_on_both_sides() {
    let t0 = Instant::now();
    let (mut c, mut s) = pair(Duration::from_secs(1));
    let mut t = t0;
    for e in 2..=101u16 {
        t = flow(&mut c, t, Duration::from_secs(2), Duration::from_secs(1));
        let (ours, theirs) = exchange(&mut c, &mut s, t);
        assert_eq!((ours.epoch, theirs.epoch), (e, e));
        assert_eq!(ours.keys, theirs.keys);
    }
}

#[test]
fn the_last_epoch_asks_for_a_new_handshake() {
    let rng = SystemRandom::new();
    let t0 = Instant::now();
    let last = EpochSecret::from_bytes(LAST_EPOCH, [1; 32]);
    let mut c = ClientRekey::new(
        last.clone(),
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    let t = flow(&mut c, t0, Duration::from_secs(2), Duration::from_secs(1));
    let out = c.start(t, &rng).unwrap();
    assert!(out.exhausted && out.send.is_empty());
    // A server at the last epoch takes no Init for the one after it.
    let mut s = ServerRekey::new(last);
    let other = EpochSecret::from_bytes(LAST_EPOCH - 1, [1; 32]);
    let mut c2 = ClientRekey::new(other, Duration::from_secs(1), Duration::from_secs(30));
    flow(&mut c2, t0, Duration::from_secs(2), Duration::from_secs(1));
    let init = c2.start(t, &rng).unwrap().send;
    let mut f = frag(&init[0]);
    f.epoch = u16::MAX;
    assert_eq!(s.fragment(&f, &rng).unwrap_err(), RekeyError::Unexpected);
}

#[test]
fn small_fragments_for_a_small_path() {
    let rng = SystemRandom::new();
    let t0 = Instant::now();
    let s1 = EpochSecret::from_bytes(1, [3; 32]);
    let mut c = ClientRekey::new(s1.clone(), Duration::from_secs(1), Duration::from_secs(30))
        .with_fragment(200);
    let mut s = ServerRekey::new(s1).with_fragment(200);
    let t = flow(&mut c, t0, Duration::from_secs(2), Duration::from_secs(1));
    let init = c.start(t, &rng).unwrap().send;
    assert_eq!(init.len(), 7);
    assert!(init.iter().all(|f| f.len() <= 200 + 9));
    let mut reply = vec![];
    for f in &init {
        reply.extend(s.fragment(&frag(f), &rng).unwrap().send);
    }
    assert_eq!(reply.len(), 6);
    let mut done = None;
    for f in &reply {
        done = c.fragment(t, &frag(f)).unwrap().rekeyed.or(done);
    }
    assert_eq!(done.unwrap().epoch, 2);
}

/// An Init whose fragments say the next epoch but whose message names another is malformed:
/// no keys, no Reply (found by the `rekey` fuzz target: keys were announced for epoch 0x0a0b
/// while the schedule was at 2).
#[test]
fn an_init_naming_another_epoch_than_its_fragments_is_malformed() {
    use super::hybrid::Initiator;
    use super::message::{Kind, MAX_FRAGMENT, fragments, init_message};
    let rng = SystemRandom::new();
    let (_, mut s) = pair(Duration::from_secs(1));
    let i = Initiator::new(&rng).unwrap();
    let mut msg = init_message(2, i.share());
    msg[..2].copy_from_slice(&0x0a0bu16.to_be_bytes());
    let frags = fragments(Kind::Init, 2, &msg, MAX_FRAGMENT);
    let mut last = Ok(ServerOut::default());
    for f in &frags {
        last = s.fragment(&frag(f), &rng);
    }
    assert_eq!(last.unwrap_err(), RekeyError::Malformed);
    assert_eq!(s.epoch(), 1);
}
