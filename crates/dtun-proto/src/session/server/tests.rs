//! The server session's halves alone; `session::tests` runs them against our client.

use std::time::{Duration, Instant};

use super::*;
use crate::inbound::DropKind;

fn cfg() -> Config {
    Config {
        keepalive: Duration::from_secs(10),
        compat: false,
        rekey: false,
        cid: None,
    }
}

fn hello(keepalive_ms: u32) -> Control {
    Control::Hello {
        version: CONTROL_VERSION,
        keepalive_ms,
        flags: HelloFlags::default(),
    }
}

/// A ping flood is answered in the inlet: only the first is news; unknown control types and
/// malformed control records are counted drops; an unknown Close reason is still a Close.
#[test]
fn pings_answered_in_the_inlet_and_unknown_controls_counted() {
    let now = Instant::now();
    let mut inlet = Inlet::new(true, vec![], now);
    assert!(matches!(
        inlet.record(b"empty"),
        Record::Peernet(Ok(Peernet::Empty))
    ));
    let ping = Control::Ping.to_bytes();
    assert!(matches!(inlet.record(&ping), Record::Control));
    assert_eq!(
        inlet.control(now, &ping),
        ControlVerdict::Pong { first: true }
    );
    for _ in 0..10_000 {
        assert_eq!(
            inlet.control(now, &ping),
            ControlVerdict::Pong { first: false }
        );
    }
    for bad in [&[0u8, 9][..], &[0, 0xff, 1], &[0, 2, 0], &[0, 4]] {
        assert_eq!(
            inlet.control(now, bad),
            ControlVerdict::Drop(DropKind::Unexpected)
        );
    }
    assert!(matches!(
        inlet.control(now, &[0, 4, 9, b'x']),
        ControlVerdict::Pass(Control::Close {
            reason: CloseReason::Other(9),
            ..
        })
    ));
}

/// A flood of Hellos (or any control message but Ping) passes the session's budget and no
/// more: the rest are counted drops, so it cannot fill the queue the other sessions' events
/// share. An honest setup (8 Hellos, 8 Lans, a Close) fits, and the budget comes back with
/// time.
#[test]
fn a_control_flood_is_cut_to_the_sessions_budget() {
    let now = Instant::now();
    let mut inlet = Inlet::new(true, vec![], now);
    let hello = hello(0).to_bytes();
    let lans = Control::Lans(vec!["fd77::/64".parse().unwrap()]).to_bytes();
    let close = Control::Close {
        reason: CloseReason::Shutdown,
        detail: String::new(),
    }
    .to_bytes();
    let mut honest = vec![];
    for _ in 0..8 {
        honest.push(inlet.control(now, &lans));
        honest.push(inlet.control(now, &hello));
    }
    honest.push(inlet.control(now, &close));
    assert!(
        honest.iter().all(|v| matches!(v, ControlVerdict::Pass(_))),
        "an honest setup"
    );
    let passed = (0..10_000)
        .filter(|_| matches!(inlet.control(now, &hello), ControlVerdict::Pass(_)))
        .count();
    assert_eq!(passed + 17, CONTROL_BURST as usize);
    assert_eq!(
        inlet.control(now, &hello),
        ControlVerdict::Drop(DropKind::ControlFlood)
    );
    // A second later the session may speak again, a little.
    let later = now + Duration::from_secs(1);
    let passed = (0..100)
        .filter(|_| matches!(inlet.control(later, &hello), ControlVerdict::Pass(_)))
        .count();
    assert_eq!(passed, CONTROL_PER_SECOND as usize);
}

/// The first record is the peernet message; a control message or an IP packet in its place
/// means it was lost; a `-compat` server takes control records for packets.
#[test]
fn the_first_record_is_the_peernet_message() {
    let now = Instant::now();
    let mut inlet = Inlet::new(true, vec![], now);
    assert!(matches!(
        inlet.record(b"192.168.7.0/24"),
        Record::Peernet(Ok(Peernet::Net(_)))
    ));
    assert!(matches!(inlet.record(b"192.168.7.0/24"), Record::Packet));
    for lost in [hello(0).to_bytes(), {
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[3] = 20;
        ip
    }] {
        let mut inlet = Inlet::new(true, vec![], now);
        assert!(matches!(inlet.record(&lost), Record::SetupLost));
    }
    let mut inlet = Inlet::new(true, vec![], now);
    assert!(matches!(inlet.record(b"nonsense"), Record::Peernet(Err(_))));
    let mut compat = Inlet::new(false, vec![], now);
    let _ = compat.record(b"empty");
    assert!(matches!(
        compat.record(&Control::Ping.to_bytes()),
        Record::Packet
    ));
}

/// Our final flight goes again when the client repeats its own, at most once per
/// FINAL_FLIGHT_RESEND, and never once the client has sent a record.
#[test]
fn the_final_flight_is_resent_until_a_record_comes() {
    let now = Instant::now();
    let mut inlet = Inlet::new(true, b"flight".to_vec(), now);
    // A ChangeCipherSpec record: what the client's last flight starts with.
    let client_flight = [20u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1];
    assert!(crate::handshake::is_final_flight(&client_flight));
    // A handshake record that is not the client's last flight (a ClientHello, epoch 0) is
    // no reason to resend.
    let hello = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 1];
    assert!(!crate::handshake::is_final_flight(&hello));
    assert_eq!(inlet.final_flight_again(now, &hello), None);
    assert_eq!(
        inlet.final_flight_again(now, &client_flight),
        Some(&b"flight"[..])
    );
    assert_eq!(
        inlet.final_flight_again(now, &client_flight),
        None,
        "too soon"
    );
    let later = now + crate::consts::FINAL_FLIGHT_RESEND;
    assert!(inlet.final_flight_again(later, &client_flight).is_some());
    let _ = inlet.record(b"empty");
    let much_later = later + Duration::from_secs(5);
    assert_eq!(inlet.final_flight_again(much_later, &client_flight), None);
}

/// A Hello's answer: Addr6 and Dns when there are, then our Hello whose flags say so, and
/// whether the client's Lans came; the first Hello and a repeated one are told apart.
#[test]
fn a_hello_is_answered_with_what_came_and_flags_that_say_so() {
    let now = Instant::now();
    let mut s = ServerSession::new(cfg(), None, now);
    assert!(!s.is_dtun_peer());
    let step = s.control(hello(25_000));
    assert_eq!(
        step.events,
        vec![Event::Hello {
            first: true,
            keepalive: Duration::from_secs(25)
        }]
    );
    let addr6 = Addr6 {
        prefix_len: 64,
        client: "fd64::2".parse().unwrap(),
        server: "fd64::1".parse().unwrap(),
    };
    let dns: Vec<IpAddr> = vec!["10.86.0.1".parse().unwrap()];
    let step = s.answer_hello(Some(addr6), &dns);
    assert!(s.is_dtun_peer());
    let sent: Vec<Control> = step
        .send
        .iter()
        .map(|b| Control::parse(b).unwrap())
        .collect();
    assert!(matches!(
        &sent[..],
        [Control::Addr6(a), Control::Dns(d), Control::Hello { keepalive_ms: 10_000, flags, .. }]
            if *a == addr6 && *d == dns
                && flags.has(HelloFlags::ADDR6_SENT) && flags.has(HelloFlags::DNS_SENT)
                && !flags.has(HelloFlags::LANS_HEARD)
    ));
    let lans = vec!["192.168.9.0/24".parse().unwrap()];
    assert_eq!(
        s.control(Control::Lans(lans.clone())).events,
        vec![Event::Lans(lans)]
    );
    assert!(matches!(
        &s.control(hello(25_000)).events[..],
        [Event::Hello { first: false, .. }]
    ));
    let step = s.answer_hello(None, &[]);
    assert!(matches!(
        &step.send[..],
        [b] if matches!(Control::parse(b), Ok(Control::Hello { flags, .. })
            if flags.has(HelloFlags::LANS_HEARD) && !flags.has(HelloFlags::ADDR6_SENT))
    ));
}

/// A Ping before any Hello makes the client a dtun peer on our keepalive; after a Hello it is
/// nothing new; a `-compat` server never takes one so.
#[test]
fn a_ping_without_a_hello_makes_a_dtun_peer() {
    let now = Instant::now();
    let mut s = ServerSession::new(cfg(), None, now);
    assert_eq!(s.control(Control::Ping).events, vec![Event::DtunPeer]);
    assert!(s.is_dtun_peer());
    assert_eq!(s.keepalive(), Duration::from_secs(10));
    assert!(s.control(Control::Ping).events.is_empty());
    let mut compat = ServerSession::new(
        Config {
            compat: true,
            ..cfg()
        },
        None,
        now,
    );
    assert!(compat.control(Control::Ping).events.is_empty());
    assert!(!compat.is_dtun_peer());
}

/// No peernet message by SETUP_TIMEOUT ends the session ("timeout"); one in time stops that
/// clock; a lost one ends it at once.
#[test]
fn the_setup_deadline() {
    let now = Instant::now();
    let mut s = ServerSession::new(cfg(), None, now);
    assert_eq!(s.next_timeout(), Some(now + SETUP_TIMEOUT));
    assert!(s.timeout(now + SETUP_TIMEOUT / 2).events.is_empty());
    assert!(matches!(
        &s.timeout(now + SETUP_TIMEOUT).events[..],
        [Event::Ended { reason: Some(CloseReason::Timeout), why }] if why.contains("no peernet message")
    ));
    assert!(s.is_ended() && s.next_timeout().is_none());
    assert!(s.timeout(now + SETUP_TIMEOUT * 2).events.is_empty(), "once");

    let mut s = ServerSession::new(cfg(), None, now);
    assert_eq!(
        s.peernet(Ok(Peernet::Empty)).events,
        vec![Event::Peernet(Peernet::Empty)]
    );
    assert_eq!(s.next_timeout(), None, "no keepalive yet, no deadline");
    assert!(s.timeout(now + SETUP_TIMEOUT * 3).events.is_empty());

    let mut s = ServerSession::new(cfg(), None, now);
    assert!(matches!(
        &s.setup_lost().events[..],
        [Event::Ended { reason: Some(CloseReason::Timeout), why }] if why.contains("lost")
    ));
}

/// A dtun client with a keepalive that goes quiet for KEEPALIVE_MISSES of its periods is
/// gone; anything authenticated moves that; no keepalive on either side, no check.
#[test]
fn dead_peer_detection() {
    let now = Instant::now();
    let mut s = ServerSession::new(cfg(), None, now);
    let _ = s.peernet(Ok(Peernet::Empty));
    let _ = s.control(hello(5_000));
    let _ = s.answer_hello(None, &[]);
    let period = Duration::from_secs(5);
    assert_eq!(s.next_timeout(), Some(now + period * KEEPALIVE_MISSES));
    s.heard(now + period * 2);
    assert!(s.timeout(now + period * KEEPALIVE_MISSES).events.is_empty());
    let at = now + period * 2 + period * KEEPALIVE_MISSES;
    assert_eq!(s.next_timeout(), Some(at));
    assert!(matches!(
        &s.timeout(at).events[..],
        [Event::Ended { reason: Some(CloseReason::Timeout), why }] if why == "no keepalive for 15.0s"
    ));
    // The client has no keepalive, or the server none: no check.
    for (ours, theirs) in [(10_000, 0), (0, 5_000)] {
        let mut s = ServerSession::new(
            Config {
                keepalive: Duration::from_millis(ours),
                compat: false,
                rekey: false,
                cid: None,
            },
            None,
            now,
        );
        let _ = s.peernet(Ok(Peernet::Empty));
        let _ = s.control(hello(theirs));
        let _ = s.answer_hello(None, &[]);
        assert_eq!(s.next_timeout(), None);
        assert!(s.timeout(now + Duration::from_secs(3600)).events.is_empty());
    }
}

/// How a session ends: an alert from the client says nothing back; our own reasons give a
/// Close to a dtun peer only, and the session ends once.
#[test]
fn endings() {
    let now = Instant::now();
    let mut s = ServerSession::new(cfg(), None, now);
    assert!(matches!(
        &s.alert(1, 0).events[..],
        [Event::Ended { reason: None, why }] if why == "peer sent close_notify"
    ));
    assert!(s.alert(2, 80).events.is_empty(), "once");
    let mut s = ServerSession::new(cfg(), None, now);
    assert!(matches!(
        &s.alert(2, 80).events[..],
        [Event::Ended { reason: None, why }] if why == "peer sent alert 2/80"
    ));
    let mut original = ServerSession::new(cfg(), None, now);
    assert_eq!(original.farewell(CloseReason::Shutdown, ""), None);
    let mut s = ServerSession::new(cfg(), None, now);
    let _ = s.control(Control::Ping);
    let bye = s.farewell(CloseReason::Replaced, "192.0.2.9:5555").unwrap();
    assert!(matches!(
        Control::parse(&bye),
        Ok(Control::Close { reason: CloseReason::Replaced, detail }) if detail == "192.0.2.9:5555"
    ));
    assert!(s.is_ended());
    assert!(s.control(hello(0)).events.is_empty());
    assert!(s.answer_hello(None, &[]).send.is_empty());
}
