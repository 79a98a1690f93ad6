use super::*;
use crate::handshake::testing::client_hello;

const SUITES: [Suite; 2] = [Suite::Aes128Gcm, Suite::Aes128Ccm8];

fn adm(now: Instant) -> Admission {
    Admission::new(SUITES.to_vec(), b"dtun".to_vec(), now)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Sends the first ClientHello, takes the cookie from the HelloVerifyRequest and sends the
/// second; returns the outcome of the second.
fn prove(a: &mut Admission, from: SocketAddr, random: [u8; 32], now: Instant) -> Outcome {
    assert!(matches!(
        a.datagram(&client_hello(random, b"", 0, 0), from, now, |_| vec![]),
        Outcome::Reply
    ));
    let cookie = a.reply[a.reply.len() - COOKIE_LEN..].to_vec();
    a.datagram(&client_hello(random, &cookie, 1, 1), from, now, |_| vec![])
}

#[test]
fn spoofed_hellos_leave_no_state() {
    let now = Instant::now();
    let mut a = adm(now);
    for i in 0..10_000u32 {
        let from = SocketAddr::new(std::net::Ipv4Addr::from(0x0a63_0000 + i).into(), 40000);
        let mut random = [0u8; 32];
        random[..4].copy_from_slice(&i.to_be_bytes());
        assert!(matches!(
            a.datagram(&client_hello(random, b"", 0, 0), from, now, |_| vec![]),
            Outcome::Reply
        ));
    }
    assert_eq!(a.pending.len(), 0);
    assert_eq!(a.counters.snapshot().cookies, 10_000);
    assert_eq!(a.counters.snapshot().started, 0);
}

#[test]
fn a_wrong_or_foreign_cookie_gets_a_new_hello_verify_request() {
    let now = Instant::now();
    let mut a = adm(now);
    let from = addr("192.0.2.1:1000");
    a.datagram(&client_hello([1; 32], b"", 0, 0), from, now, |_| vec![]);
    let cookie = a.reply[a.reply.len() - COOKIE_LEN..].to_vec();
    // Replayed from another address, or with another random: no state, just a cookie.
    for (f, r) in [(addr("192.0.2.2:1000"), [1; 32]), (from, [2; 32])] {
        assert!(matches!(
            a.datagram(&client_hello(r, &cookie, 1, 1), f, now, |_| vec![]),
            Outcome::Reply
        ));
        assert_eq!(
            a.reply[RECORD_HEADER_LEN_FOR_TEST], 3,
            "a HelloVerifyRequest"
        );
    }
    assert_eq!(a.pending.len(), 0);
    assert!(matches!(prove(&mut a, from, [1; 32], now), Outcome::Reply));
    assert_eq!(a.pending.len(), 1);
    assert_eq!(a.reply[RECORD_HEADER_LEN_FOR_TEST], 2, "a ServerHello");
}

const RECORD_HEADER_LEN_FOR_TEST: usize = crate::consts::RECORD_HEADER_LEN;

/// Proves a handshake from each address (random made from `i`) at `now`; returns the outcomes.
fn prove_all(a: &mut Admission, from: impl Iterator<Item = SocketAddr>, now: Instant) -> Vec<bool> {
    from.enumerate()
        .map(|(i, f)| {
            let mut random = [9u8; 32];
            random[..8].copy_from_slice(&(i as u64).to_be_bytes());
            matches!(prove(a, f, random, now), Outcome::Reply)
        })
        .collect()
}

#[test]
fn one_prefix_cannot_hold_more_than_its_share() {
    let t0 = Instant::now();
    let mut a = adm(t0);
    // 256 handshakes from one /24 (many addresses, many ports): 16 get a slot.
    let v4 = (0..256u32).map(|i| {
        SocketAddr::new(
            std::net::Ipv4Addr::new(198, 51, 100, (i % 200) as u8).into(),
            10_000 + i as u16,
        )
    });
    prove_all(&mut a, v4, t0);
    assert_eq!(a.pending.len(), MAX_HANDSHAKES_PER_PREFIX);
    assert_eq!(
        a.counters.snapshot().evicted,
        256 - MAX_HANDSHAKES_PER_PREFIX as u64
    );
    // The same from one IPv6 /64.
    let v6 = (0..256u16).map(|i| {
        SocketAddr::new(
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, i, 0, 0, 1).into(),
            20_000 + i,
        )
    });
    prove_all(&mut a, v6, t0);
    assert_eq!(a.pending.len(), 2 * MAX_HANDSHAKES_PER_PREFIX);
    // One address alone holds at most its own cap.
    let one = (0..20u16).map(|i| SocketAddr::new([203, 0, 113, 5].into(), 30_000 + i));
    prove_all(&mut a, one, t0);
    assert_eq!(
        a.pending.len(),
        2 * MAX_HANDSHAKES_PER_PREFIX + MAX_HANDSHAKES_PER_IP
    );
    // A newcomer from elsewhere gets in at once, and so does one of the full prefix: a random
    // handshake of its network makes room.
    for newcomer in ["192.0.2.77:5000", "198.51.100.250:1"] {
        assert!(matches!(
            prove(&mut a, addr(newcomer), [5; 32], t0),
            Outcome::Reply
        ));
        assert!(a.pending.contains_key(&addr(newcomer)));
    }
}

/// Who shares an address with a client that keeps its slots busy (a NAT) still gets in:
/// random eviction leaves a fresh handshake a fair chance of finishing.
#[test]
fn a_neighbour_cannot_lock_out_its_own_address() {
    let t0 = Instant::now();
    let mut a = adm(t0);
    let nat = |port: u16| SocketAddr::new([203, 0, 113, 9].into(), port);
    let mut survived = 0;
    let mut restarts = 0u32;
    let mut restart = |a: &mut Admission, port: u16, now: Instant| {
        restarts += 1;
        let mut random = [4u8; 32];
        random[..4].copy_from_slice(&restarts.to_be_bytes());
        prove(a, nat(port), random, now);
    };
    for round in 0..100u16 {
        let now = t0 + Duration::from_millis(100 * u64::from(round));
        // The neighbour restarts all of its eight handshakes.
        for i in 0..MAX_HANDSHAKES_PER_IP as u16 {
            restart(&mut a, 1000 + i, now);
        }
        // A real client at the same address starts one, then the neighbour restarts four more
        // (about the time the real one needs to finish).
        let real = nat(5000 + round);
        let mut random = [3u8; 32];
        random[..2].copy_from_slice(&round.to_be_bytes());
        prove(&mut a, real, random, now);
        for i in 0..4 {
            restart(&mut a, 1000 + i, now);
        }
        survived += usize::from(a.pending.contains_key(&real));
        a.pending.remove(&real);
    }
    // Each of the 4 neighbour restarts after it evicts it with probability 1/8: (7/8)^4 = 59 %.
    assert!(
        survived >= 35,
        "the real client survived {survived} of 100 rounds"
    );
}

#[test]
fn a_full_table_refuses_until_a_handshake_stalls() {
    let t0 = Instant::now();
    let mut a = adm(t0);
    // MAX_HANDSHAKES live handshakes from as many /16s.
    for i in 0..MAX_HANDSHAKES as u32 {
        let from = SocketAddr::new(std::net::Ipv4Addr::from(0x0b00_0000 + (i << 16)).into(), 1);
        let mut random = [0u8; 32];
        random[..4].copy_from_slice(&i.to_be_bytes());
        assert!(matches!(prove(&mut a, from, random, t0), Outcome::Reply));
    }
    let newcomer = addr("192.0.2.9:9");
    assert!(matches!(
        prove(&mut a, newcomer, [1; 32], t0 + Duration::from_secs(1)),
        Outcome::Refused
    ));
    assert_eq!(a.counters.snapshot().limit, 1);
    assert!(matches!(
        prove(&mut a, newcomer, [1; 32], t0 + STALL_TIMEOUT),
        Outcome::Reply
    ));
    assert_eq!(a.pending.len(), MAX_HANDSHAKES);
    assert!(a.pending.contains_key(&newcomer));
}

#[test]
fn a_handshake_over_its_budget_is_dropped() {
    let now = Instant::now();
    let mut a = adm(now);
    let from = addr("192.0.2.1:1000");
    assert!(matches!(prove(&mut a, from, [1; 32], now), Outcome::Reply));
    let junk = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0];
    for _ in 1..HANDSHAKE_MAX_DATAGRAMS {
        assert!(matches!(
            a.datagram(&junk, from, now, |_| vec![]),
            Outcome::Quiet
        ));
    }
    assert!(matches!(
        a.datagram(&junk, from, now, |_| vec![]),
        Outcome::Failed { alert: false, .. }
    ));
    assert_eq!(a.pending.len(), 0);
    // Then the junk is nobody's.
    assert!(matches!(
        a.datagram(&junk, from, now, |_| vec![]),
        Outcome::NotOurs
    ));
    // Bytes count too: three datagrams of 8 KB.
    assert!(matches!(prove(&mut a, from, [2; 32], now), Outcome::Reply));
    let big = vec![0u8; 8 * 1024];
    let outcomes: Vec<bool> = (0..2)
        .map(|_| {
            matches!(
                a.datagram(&big, from, now, |_| vec![]),
                Outcome::Failed { .. }
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [false, true],
        "the ClientHello and two 8 KB datagrams exceed 16 KB"
    );
}

#[test]
fn handshakes_expire_and_resends_are_paced() {
    let t0 = Instant::now();
    let mut a = adm(t0);
    let from = addr("192.0.2.1:1000");
    a.datagram(&client_hello([1; 32], b"", 0, 0), from, t0, |_| vec![]);
    let cookie = a.reply[a.reply.len() - COOKIE_LEN..].to_vec();
    let again = client_hello([1; 32], &cookie, 1, 1);
    assert!(matches!(
        a.datagram(&again, from, t0, |_| vec![]),
        Outcome::Reply
    ));
    // The second ClientHello again: our flight is resent at most every FLIGHT_RESEND.
    assert!(matches!(
        a.datagram(&again, from, t0, |_| vec![]),
        Outcome::Quiet
    ));
    assert!(matches!(
        a.datagram(&again, from, t0 + FLIGHT_RESEND, |_| vec![]),
        Outcome::Reply
    ));
    assert_eq!(a.sweep(t0 + HANDSHAKE_STATE_TIMEOUT), 1);
    assert_eq!(a.pending.len(), 0);
}

#[test]
fn a_network_that_fills_the_table_gives_way() {
    let t0 = Instant::now();
    let mut a = adm(t0);
    // One IPv6 /48: 64 /64s of 16 fresh handshakes each fill the table.
    let site = (0..64u16).flat_map(|net| {
        (0..16u16).map(move |h| {
            SocketAddr::new(
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 7, net, 0, 0, 0, h + 1).into(),
                40_000,
            )
        })
    });
    let admitted = prove_all(&mut a, site, t0).iter().filter(|ok| **ok).count();
    assert_eq!(admitted, MAX_HANDSHAKES);
    // A newcomer from elsewhere gets a slot at once, from that /48.
    assert!(matches!(
        prove(&mut a, addr("192.0.2.9:9"), [1; 32], t0),
        Outcome::Reply
    ));
    assert_eq!(a.counters.snapshot().evicted, 1);
    // Another address of the same /48 does not.
    assert!(matches!(
        prove(&mut a, addr("[2001:db8:7:ffff::1]:9"), [2; 32], t0),
        Outcome::Refused
    ));
}
