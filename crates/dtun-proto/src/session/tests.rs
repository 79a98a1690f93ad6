//! The client session against a scripted server in memory ([`pair::Pair`]): setup, lost
//! setup messages, keepalive and dead-peer detection, close reasons, an original server,
//! loss, duplication and reordering in the handshake, a link whose MTU is too small.

use std::time::Duration;

use super::pair::{Dir, Pair, ServerScript, clean, lose};
use super::*;

fn up(p: &Pair) -> Option<&Option<Option<Addr6>>> {
    p.client_events().into_iter().find_map(|e| match e {
        Event::Up { addr6 } => Some(addr6),
        _ => None,
    })
}

#[test]
fn a_whole_setup_in_memory() {
    let mut cfg = Pair::config();
    cfg.lans = vec!["192.168.8.0/24".parse().unwrap()];
    let mut p = Pair::new(cfg, ServerScript::default(), clean());
    p.run(Duration::from_secs(5));
    let ev = p.client_events();
    assert!(matches!(
        ev[0],
        Event::Established {
            suite: Suite::Aes128Gcm,
            negotiated: true,
            ..
        }
    ));
    assert!(matches!(ev[1], Event::Address(_)));
    let addr6 = up(&p).expect("the setup finished");
    assert_eq!(*addr6, Some(ServerScript::default().addr6));
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Dns(d) if d.len() == 1))
    );
    assert_eq!(p.saw().peernet.as_deref(), Some("192.168.7.0/24"));
    assert!(p.saw().lans && p.saw().hellos == 1);
    // Three handshake round trips (the address message comes with the final flight), then
    // the Hello's.
    assert_eq!(
        p.when(|e| matches!(e, Event::Up { .. })),
        Some(Duration::from_millis(80))
    );
    assert!(p.end().is_none(), "the session lives on");
}

#[test]
fn a_lost_hello_answer_is_asked_for_again() {
    // To the client: 0 HelloVerifyRequest, 1 flight, 2 final flight, 3 address message,
    // 4 Addr6, 5 Dns, 6 the Hello answer.
    let mut p = Pair::new(
        Pair::config(),
        ServerScript::default(),
        lose(Dir::ToClient, 6),
    );
    p.run(Duration::from_secs(5));
    assert_eq!(p.saw().hellos, 2);
    assert_eq!(
        *up(&p).unwrap(),
        Some(ServerScript::default().addr6),
        "complete after the second answer"
    );
}

#[test]
fn a_lost_addr6_is_asked_for_again_at_once() {
    let mut p = Pair::new(
        Pair::config(),
        ServerScript::default(),
        lose(Dir::ToClient, 4),
    );
    p.run(Duration::from_secs(5));
    assert_eq!(p.saw().hellos, 2);
    assert_eq!(*up(&p).unwrap(), Some(ServerScript::default().addr6));
    // The answer showed the loss: Hello again at once, not after HELLO_RESEND.
    let t = p.when(|e| matches!(e, Event::Up { .. })).unwrap();
    assert!(t < Duration::from_millis(80) + HELLO_RESEND, "{t:?}");
}

#[test]
fn without_any_answer_the_setup_goes_on_after_hello_wait() {
    // Every datagram to the client from the Addr6 on is lost.
    let fate = Box::new(|d: Dir, n: usize, _: &[u8]| {
        if d == Dir::ToClient && n >= 4 {
            vec![]
        } else {
            vec![Duration::ZERO]
        }
    });
    let mut p = Pair::new(Pair::config(), ServerScript::default(), fate);
    p.run(Duration::from_secs(5));
    assert_eq!(
        *up(&p).unwrap(),
        None,
        "IPv6 unknown: the TUN keeps what it had"
    );
    assert_eq!(
        p.saw().hellos,
        5,
        "one every HELLO_RESEND within HELLO_WAIT"
    );
}

#[test]
fn a_lost_address_message_ends_the_setup_after_its_timeout() {
    let mut p = Pair::new(
        Pair::config(),
        ServerScript::default(),
        lose(Dir::ToClient, 3),
    );
    p.run(Duration::from_secs(30));
    assert_eq!(p.end(), Some(&End::NoAddress));
    let t = p.when(|e| matches!(e, Event::Closed(_))).unwrap();
    assert_eq!(t, Duration::from_millis(60) + SETUP_TIMEOUT);
    assert!(p.saw().close_notify, "close_notify on the way out");
}

#[test]
fn the_final_flight_lost_the_address_message_waits_for_the_handshake() {
    let mut p = Pair::new(
        Pair::config(),
        ServerScript::default(),
        lose(Dir::ToClient, 2),
    );
    p.run(Duration::from_secs(5));
    assert!(up(&p).is_some(), "{:?}", p.client_events());
    assert!(p.when(|e| matches!(e, Event::Address(_))).unwrap() >= crate::consts::FLIGHT_INTERVAL);
}

#[test]
fn a_full_server_says_so_instead_of_the_address() {
    let script = ServerScript {
        refuse: Some(CloseReason::Refused),
        ..ServerScript::default()
    };
    let mut p = Pair::new(Pair::config(), script, clean());
    p.run(Duration::from_secs(5));
    assert_eq!(
        p.end(),
        Some(&End::Closed {
            reason: CloseReason::Refused,
            detail: "full".into()
        })
    );
}

#[test]
fn keepalive_pings_a_quiet_server_then_declares_it_dead() {
    let script = ServerScript {
        pongs: false,
        ..ServerScript::default()
    };
    let mut p = Pair::new(Pair::config(), script, clean());
    p.run(Duration::from_secs(60));
    let Some(End::Dead(quiet)) = p.end() else {
        panic!("{:?}", p.end())
    };
    assert!(*quiet >= Duration::from_secs(30), "{quiet:?}");
    // A ping a period while quiet, four a period once a reply is overdue.
    assert!(p.saw().pings >= 3, "{}", p.saw().pings);
    assert_eq!(p.saw().close, Some(CloseReason::Timeout), "told why");
    // With Pongs, no end.
    let mut p = Pair::new(Pair::config(), ServerScript::default(), clean());
    p.run(Duration::from_secs(120));
    assert!(p.end().is_none());
    assert!(p.saw().pings >= 10);
}

#[test]
fn closing_tells_a_dtun_server_why() {
    let mut p = Pair::new(Pair::config(), ServerScript::default(), clean());
    p.run(Duration::from_secs(1));
    let step = p.client.close(p.now, CloseReason::Shutdown);
    assert_eq!(step.send.len(), 2, "Close, then close_notify");
    assert_eq!(
        step.events,
        vec![Event::Closed(End::Ours(CloseReason::Shutdown))]
    );
}

#[test]
fn an_original_server_gets_no_control_message() {
    let script = ServerScript {
        dtun: false,
        ..ServerScript::default()
    };
    let mut p = Pair::new(Pair::config(), script, clean());
    p.run(Duration::from_secs(60));
    assert_eq!(*up(&p).unwrap(), Some(None));
    assert_eq!(p.saw().hellos, 0);
    assert_eq!(p.saw().pings, 0, "no keepalive without negotiation");
    assert!(p.end().is_none());
}

#[test]
fn a_lossy_duplicating_reordering_link_still_sets_up() {
    // Every third handshake datagram lost (the address message is never resent: losing it
    // ends the setup, above), every datagram also again 15 ms later.
    let fate = Box::new(|_: Dir, n: usize, dg: &[u8]| {
        let handshake = matches!(dg.first(), Some(20 | 22));
        if handshake && n % 3 == 1 {
            vec![]
        } else {
            vec![Duration::ZERO, Duration::from_millis(15)]
        }
    });
    let mut p = Pair::new(Pair::config(), ServerScript::default(), fate);
    p.run(Duration::from_secs(30));
    assert!(up(&p).is_some(), "{:?}", p.client_events());
}

#[test]
fn a_link_whose_mtu_is_below_the_client_hello_never_sets_up() {
    let mut p = Pair::new(Pair::config(), ServerScript::default(), clean());
    p.mtu = 100;
    p.run(Duration::from_secs(30));
    assert!(matches!(p.end(), Some(End::Handshake(why)) if why.contains("no handshake")));
    assert!(p.too_big > 0);
}
