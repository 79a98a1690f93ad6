//! The client session against our server session in memory ([`pair::Pair`]): setup, lost
//! setup messages, keepalive and dead-peer detection on both sides, the server's setup
//! deadline, close reasons, an original (`-compat`) server, loss, duplication and reordering
//! in the handshake, a link whose MTU is too small.

use std::time::Duration;

use super::pair::{Dir, Fate, Pair, ServerScript, clean, lose};
use super::*;
use crate::consts::SETUP_TIMEOUT;
use crate::handshake::HandshakeError;
use crate::inbound::DropKind;

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
    // The server's setup deadline comes first (its clock started half a round trip before
    // the client's): it ends the session with close_notify (the client is no dtun peer yet).
    let mut p = Pair::new(
        Pair::config(),
        ServerScript::default(),
        lose(Dir::ToClient, 3),
    );
    p.run(Duration::from_secs(30));
    assert!(matches!(p.end(), Some(End::Alert(1, 0))), "{:?}", p.end());
    assert!(
        matches!(&p.saw().ended, Some((Some(CloseReason::Timeout), why)) if why.contains("no peernet")),
        "{:?}",
        p.saw().ended
    );
    // The server's word lost too: the client's own deadline.
    let fate: Fate = Box::new(|d, i, _| {
        if d == Dir::ToClient && (i == 3 || i == 4) {
            vec![]
        } else {
            vec![Duration::ZERO]
        }
    });
    let mut p = Pair::new(Pair::config(), ServerScript::default(), fate);
    p.run(Duration::from_secs(30));
    assert!(matches!(p.end(), Some(End::NoAddress)), "{:?}", p.end());
    let t = p.when(|e| matches!(e, Event::Closed(_))).unwrap();
    assert_eq!(
        t,
        Duration::from_millis(60) + SETUP_TIMEOUT.max(crate::consts::HANDSHAKE_TIMEOUT)
    );
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
    assert!(
        matches!(p.end(), Some(End::Closed { reason: CloseReason::Refused, detail }) if detail == "full"),
        "{:?}",
        p.end()
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
    let step = p.client.close(p.now, Some(CloseReason::Shutdown));
    assert_eq!(step.send.len(), 2, "Close, then close_notify");
    assert!(matches!(
        &step.events[..],
        [Event::Closed(End::Ours(Some(CloseReason::Shutdown)))]
    ));
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
    // A -compat server takes control records for packets: none came.
    assert_eq!(p.saw().packets, 0, "no control record at all");
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
    assert!(matches!(
        p.end(),
        Some(End::Handshake(HandshakeError::Timeout(_)))
    ));
    assert!(p.too_big > 0);
}

/// A Pair whose client hands its keys to a data path once up (as src/client does), or not.
fn live(script: ServerScript, detach: bool) -> Pair {
    let mut p = Pair::new(Pair::config(), script, clean());
    p.detach = detach;
    p.run(Duration::from_secs(1));
    assert!(up(&p).is_some(), "{:?}", p.client_events());
    p
}

#[test]
fn a_detached_session_keeps_the_ping_schedule_then_declares_the_server_dead() {
    let script = ServerScript {
        pongs: false,
        ..ServerScript::default()
    };
    let mut p = Pair::new(Pair::config(), script, clean());
    p.detach = true;
    p.run(Duration::from_secs(60));
    let up_at = p.when(|e| matches!(e, Event::Up { .. })).unwrap();
    let Some(End::Dead(quiet)) = p.end() else {
        panic!("{:?}", p.end())
    };
    assert_eq!(*quiet, Duration::from_secs(30), "KEEPALIVE_MISSES periods");
    assert_eq!(
        p.when(|e| matches!(e, Event::Closed(_))),
        Some(up_at + Duration::from_secs(30))
    );
    // One ping a period while quiet, four a period once a reply is overdue.
    let pings: Vec<u64> = p
        .saw()
        .ping_times
        .iter()
        .map(|t| (*t - up_at - p.latency).as_millis() as u64)
        .collect();
    assert_eq!(
        pings,
        [10_000, 15_000, 17_500, 20_000, 22_500, 25_000, 27_500]
    );
    assert_eq!(p.saw().close, Some(CloseReason::Timeout), "told why");
    assert!(p.saw().close_notify);
}

#[test]
fn pongs_keep_a_detached_session_alive() {
    let mut p = live(ServerScript::default(), true);
    p.run(Duration::from_secs(120));
    assert!(p.end().is_none(), "{:?}", p.end());
    assert!(p.saw().pings >= 10, "{}", p.saw().pings);
    // The pings are a period apart: each answered at once.
    for w in p.saw().ping_times.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_secs(10), "{w:?}");
    }
}

#[test]
fn an_icmp_unreachable_is_checked_not_believed() {
    for detach in [false, true] {
        // The server answers the ping at once: the session goes on.
        let mut p = live(ServerScript::default(), detach);
        let pings = p.saw().pings;
        p.icmp_unreachable();
        p.run(Duration::from_secs(25));
        assert!(p.end().is_none(), "{:?}", p.end());
        assert!(p.saw().pings > pings, "pinged at once");
        // A second hint after the first was answered starts a new check.
        p.icmp_unreachable();
        p.run(Duration::from_secs(28));
        assert!(p.end().is_none(), "{:?}", p.end());
        // Nothing answers: the session ends a keepalive period after the hint, with
        // close_notify but no Close (the server may be gone).
        let script = ServerScript {
            pongs: false,
            ..ServerScript::default()
        };
        let mut p = live(script, detach);
        let at = p.now - p.start;
        p.icmp_unreachable();
        p.icmp_unreachable(); // one check at a time
        assert_eq!(
            p.client_events()
                .iter()
                .filter(|e| matches!(e, Event::Checking(_)))
                .count(),
            1
        );
        p.run(Duration::from_secs(60));
        assert!(
            matches!(p.end(), Some(End::Unreachable(g)) if *g == Duration::from_secs(10)),
            "{:?}",
            p.end()
        );
        assert_eq!(
            p.when(|e| matches!(e, Event::Closed(_))),
            Some(at + Duration::from_secs(10))
        );
        assert!(p.saw().close_notify && p.saw().close.is_none());
    }
}

#[test]
fn the_servers_close_reasons_end_the_session_without_a_farewell() {
    for detach in [false, true] {
        let cases = [
            (CloseReason::Replaced, "192.0.2.9:5555"),
            (CloseReason::Shutdown, ""),
            (CloseReason::Timeout, ""),
        ];
        for (reason, detail) in cases {
            let mut p = live(ServerScript::default(), detach);
            let msg = Control::Close {
                reason,
                detail: detail.into(),
            };
            p.server_says(CONTENT_APPLICATION_DATA, &msg.to_bytes());
            p.run(Duration::from_secs(2));
            assert!(
                matches!(p.end(), Some(End::Closed { reason: r, detail: d }) if *r == reason && d == detail),
                "{:?}",
                p.end()
            );
            assert!(!p.saw().close_notify, "the server ended it: nothing back");
        }
        // Revoked is a warning: the server's manager closes the session itself.
        let mut p = live(ServerScript::default(), detach);
        let msg = Control::Close {
            reason: CloseReason::Revoked,
            detail: String::new(),
        };
        p.server_says(CONTENT_APPLICATION_DATA, &msg.to_bytes());
        p.run(Duration::from_secs(2));
        assert!(p.end().is_none(), "{:?}", p.end());
        // close_notify, and another alert.
        for desc in [0u8, 80] {
            let mut p = live(ServerScript::default(), detach);
            p.server_says(crate::consts::CONTENT_ALERT, &[2, desc]);
            p.run(Duration::from_secs(2));
            assert!(
                matches!(p.end(), Some(End::Alert(2, d)) if *d == desc),
                "{:?}",
                p.end()
            );
        }
    }
}

#[test]
fn our_close_reasons_reach_a_dtun_server_and_only_close_notify_an_original() {
    for detach in [false, true] {
        for reason in [
            CloseReason::Shutdown,
            CloseReason::Exhausted,
            CloseReason::Timeout,
        ] {
            let mut p = live(ServerScript::default(), detach);
            let step = p.client.close(p.now, Some(reason));
            let records = if detach {
                step.seal.len()
            } else {
                step.send.len()
            };
            assert_eq!(records, 2, "Close, then close_notify");
            assert!(matches!(
                &step.events[..],
                [Event::Closed(End::Ours(Some(r)))] if *r == reason
            ));
            // What went out reaches the server.
            let mut p = live(ServerScript::default(), detach);
            let _ = p.client.close(p.now, Some(reason));
            assert!(p.client.is_closed());
            assert!(
                p.client.close(p.now, Some(reason)).events.is_empty(),
                "once"
            );
        }
        let script = ServerScript {
            dtun: false,
            ..ServerScript::default()
        };
        let mut p = live(script, detach);
        let step = p.client.close(p.now, Some(CloseReason::Shutdown));
        let (send, seal) = (step.send.len(), step.seal.len());
        assert_eq!(send + seal, 1, "an original server gets close_notify only");
        if detach {
            assert_eq!(step.seal[0].0, crate::consts::CONTENT_ALERT);
        }
    }
}

#[test]
fn the_farewell_reaches_the_server() {
    for detach in [false, true] {
        let mut p = live(ServerScript::default(), detach);
        p.close_now(CloseReason::Shutdown);
        p.run(Duration::from_secs(2));
        assert_eq!(p.saw().close, Some(CloseReason::Shutdown));
        assert!(p.saw().close_notify);
        assert!(
            matches!(&p.saw().ended, Some((None, why)) if why == "peer sent close_notify"),
            "{:?}",
            p.saw().ended
        );
    }
}

/// The server's side of keepalive: a dtun client that falls silent (its datagrams stop
/// reaching the server) is gone after KEEPALIVE_MISSES of its periods without an
/// authenticated record; the server says so (Close "timeout"), and the client hears why.
#[test]
fn the_server_declares_a_silent_client_dead_and_says_so() {
    for detach in [false, true] {
        let cut = std::rc::Rc::new(std::cell::Cell::new(false));
        let c = cut.clone();
        let fate: Fate = Box::new(move |d, _, _| {
            if d == Dir::ToServer && c.get() {
                vec![]
            } else {
                vec![Duration::ZERO]
            }
        });
        let mut p = Pair::new(Pair::config(), ServerScript::default(), fate);
        p.detach = detach;
        p.run(Duration::from_secs(1));
        assert!(up(&p).is_some(), "{:?}", p.client_events());
        cut.set(true);
        // The client hears the server a second later (a Dns), so its own dead-peer deadline
        // is a second after the server's.
        p.run(Duration::from_secs(2));
        p.now = p.start + Duration::from_secs(2);
        let dns = Control::Dns(vec!["10.86.0.1".parse().unwrap()]).to_bytes();
        p.server_says(CONTENT_APPLICATION_DATA, &dns);
        let heard = p.now - p.start;
        p.run(Duration::from_secs(60));
        let closed = p.when(|e| matches!(e, Event::Closed(_))).unwrap();
        assert!(closed < heard + Duration::from_secs(30), "{closed:?}");
        let Some((Some(CloseReason::Timeout), why)) = &p.saw().ended else {
            panic!("{:?}", p.saw().ended)
        };
        assert!(why.starts_with("no keepalive for 30."), "{why}");
        assert!(
            matches!(
                p.end(),
                Some(End::Closed {
                    reason: CloseReason::Timeout,
                    ..
                })
            ),
            "{:?}",
            p.end()
        );
    }
}

/// A lost peernet message: the next record (the client's Lans or Hello) shows it, and the
/// server ends the session at once so the client starts over; one that never sends anything
/// after its handshake is given up at the setup deadline. Not yet a dtun peer either way:
/// close_notify only.
#[test]
fn the_server_gives_up_on_a_lost_peernet_message() {
    // ToServer: 0 ClientHello, 1 ClientHello with the cookie, 2 the client's last flight,
    // 3 the peernet message.
    let mut p = Pair::new(
        Pair::config(),
        ServerScript::default(),
        lose(Dir::ToServer, 3),
    );
    p.run(Duration::from_secs(30));
    let ended = p.saw().ended.clone();
    assert!(
        matches!(&ended, Some((Some(CloseReason::Timeout), why)) if why == "its peernet message was lost"),
        "{ended:?}"
    );
    assert!(matches!(p.end(), Some(End::Alert(1, 0))), "{:?}", p.end());

    let fate: Fate = Box::new(|d, i, _| {
        if d == Dir::ToServer && i >= 3 {
            vec![]
        } else {
            vec![Duration::ZERO]
        }
    });
    let mut p = Pair::new(Pair::config(), ServerScript::default(), fate);
    p.run(Duration::from_secs(30));
    let ended = p.saw().ended.clone();
    assert!(
        matches!(&ended, Some((Some(CloseReason::Timeout), why)) if why == "no peernet message within 10s"),
        "{ended:?}"
    );
    assert!(matches!(p.end(), Some(End::Alert(1, 0))), "{:?}", p.end());
    let t = p.when(|e| matches!(e, Event::Closed(_))).unwrap();
    // The server's clock started with the client's last flight in (50 ms); the alert takes 10 ms.
    assert_eq!(t, Duration::from_millis(60) + SETUP_TIMEOUT);
}

#[test]
fn garbage_control_records_are_counted_drops() {
    for detach in [false, true] {
        let mut p = live(ServerScript::default(), detach);
        let before = p.client.counters().drops(DropKind::Unexpected);
        let garbage: [&[u8]; 6] = [
            &[0u8, 5][..],
            &[0, 5, 0],
            &[0, 5, 1, 4, 203, 0, 113],
            &[0, 5, 1, 7, 203, 0, 113, 10],
            &[0, 5, 1, 4, 203, 0, 113, 10, 0xff],
            &[0, 5, 9, 4, 1, 1, 1, 1],
        ];
        for g in garbage {
            p.server_says(CONTENT_APPLICATION_DATA, g);
        }
        p.run(Duration::from_secs(2));
        assert!(p.end().is_none(), "{:?}", p.end());
        assert_eq!(p.client.counters().drops(DropKind::Unexpected), before + 6);
        let dns = p
            .client_events()
            .iter()
            .filter(|e| matches!(e, Event::Dns(_)))
            .count();
        let good = Control::Dns(vec!["203.0.113.10".parse().unwrap()]).to_bytes();
        p.server_says(CONTENT_APPLICATION_DATA, &good);
        p.run(Duration::from_secs(3));
        let after = p
            .client_events()
            .iter()
            .filter(|e| matches!(e, Event::Dns(_)))
            .count();
        assert_eq!(after, dns + 1, "a good Dns reaches the caller");
        assert_eq!(p.client.counters().drops(DropKind::Unexpected), before + 6);
    }
}

#[test]
fn a_bad_addr6_is_a_counted_drop_and_the_tunnel_carries_ipv4_only() {
    let mut script = ServerScript::default();
    script.addr6.as_mut().unwrap().client = "ff02::1".parse().unwrap();
    let mut p = Pair::new(Pair::config(), script, clean());
    p.run(Duration::from_secs(5));
    assert_eq!(*up(&p).unwrap(), Some(None), "it came: nobody asks again");
    assert_eq!(p.saw().hellos, 1);
    assert_eq!(p.client.counters().drops(DropKind::Unexpected), 1);
}

#[test]
fn the_data_path_gets_the_keys_only_once_up() {
    let mut p = Pair::new(Pair::config(), ServerScript::default(), clean());
    assert!(
        p.client.take_keys(p.now).is_none(),
        "not during the handshake"
    );
    p.run(Duration::from_secs(5));
    assert!(p.client.take_keys(p.now).is_some());
    assert!(p.client.take_keys(p.now).is_none(), "once");
}
