//! Unit tests of the wire messages: exact bytes, round trips, and every malformed shape refused.

use super::*;

#[test]
fn address_message_matches_capture() {
    let m = AddressMessage::parse(&[0x0a, 0x56, 0, 2, 0x0a, 0x56, 0, 1]).unwrap();
    assert_eq!(m.client, Ipv4Addr::new(10, 86, 0, 2));
    assert_eq!(m.server, Ipv4Addr::new(10, 86, 0, 1));
    assert_eq!(m.to_bytes(), [0x0a, 0x56, 0, 2, 0x0a, 0x56, 0, 1]);
    assert_eq!(
        AddressMessage::parse(&[1; 7]),
        Err(ProtoError::AddressLength(7))
    );
    assert_eq!(
        AddressMessage::parse(&[1; 9]),
        Err(ProtoError::AddressLength(9))
    );
}

#[test]
fn peernet_forms() {
    assert_eq!(Peernet::parse(b"empty"), Ok(Peernet::Empty));
    let p = Peernet::parse(b"10.200.0.0/24").unwrap();
    assert_eq!(p.to_wire(), "10.200.0.0/24");
    assert_eq!(p.to_wire().len(), 13);
    assert_eq!(Peernet::parse(b"10.200.0.9/24"), Ok(p));
    assert!(matches!(
        Peernet::parse(b"fd00::/64"),
        Ok(Peernet::Net(IpNet::V6(_)))
    ));
    assert!(Peernet::parse(b"10.200.0.0").is_err());
    assert!(Peernet::parse(b"10.200.0.0/24\n").is_err());
    assert_eq!(
        Peernet::parse(&[0xff, 0xfe]),
        Err(ProtoError::PeernetNotText)
    );
    assert!(Peernet::parse(b"").is_err());
}

#[test]
fn control_round_trips_and_rejects_garbage() {
    let all = [
        Control::Hello {
            version: CONTROL_VERSION,
            keepalive_ms: 10_000,
            flags: HelloFlags::default(),
        },
        Control::Hello {
            version: CONTROL_VERSION,
            keepalive_ms: 0,
            flags: HelloFlags(HelloFlags::ADDR6_SENT | HelloFlags::LANS_HEARD),
        },
        Control::Hello {
            version: 1,
            keepalive_ms: 10_000,
            flags: HelloFlags::default(),
        },
        Control::Ping,
        Control::Pong,
        Control::Close {
            reason: CloseReason::Replaced,
            detail: "192.0.2.7:4000".into(),
        },
        Control::Close {
            reason: CloseReason::Shutdown,
            detail: String::new(),
        },
        Control::Dns(vec!["203.0.113.10".parse().unwrap()]),
        Control::Dns(vec![
            "192.0.2.53".parse().unwrap(),
            "2001:db8::53".parse().unwrap(),
        ]),
        Control::Cid([1, 2, 3, 4, 5, 6, 7, 8]),
        Control::PathChallenge([9; 8]),
        Control::PathResponse([0xff; 8]),
    ];
    for c in all {
        let b = c.to_bytes();
        assert!(Control::is_control(&b));
        assert_eq!(Control::parse(&b), Ok(c));
    }
    for bad in [
        &[][..],
        &[0],
        &[0, 9],
        &[0, 2, 0],
        &[0, 1, 1, 0],
        &[0, 4],
        &[0x45, 2],
        &[0, 9, 1, 2, 3, 4, 5, 6, 7],
        &[0, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        &[0, 11],
    ] {
        assert_eq!(Control::parse(bad), Err(ProtoError::Control), "{bad:?}");
    }
    // Invalid UTF-8 in a Close detail is refused (found by the fuzzer: lossy decoding grew
    // the detail past its limit, so it no longer round-tripped).
    let bad = [&[0, 4, 1][..], &[0xff; 67]].concat();
    assert_eq!(Control::parse(&bad), Err(ProtoError::Control));
    let long = Control::Close {
        reason: CloseReason::Timeout,
        detail: "é".repeat(150),
    };
    let b = long.to_bytes();
    assert!(b.len() <= 3 + MAX_CLOSE_DETAIL);
    assert!(Control::parse(&b).is_ok());
    assert!(!Control::is_control(&[0x45]));
}

/// The Hello's flags byte exists from version 2 on: a version-1 Hello's extra bytes are
/// still ignored, and a version-2 Hello without the byte has no flags.
#[test]
fn hello_flags_come_with_version_two() {
    let v2 = Control::Hello {
        version: 2,
        keepalive_ms: 10_000,
        flags: HelloFlags(HelloFlags::ADDR6_SENT | HelloFlags::DNS_SENT),
    };
    assert_eq!(v2.to_bytes(), [0, 1, 2, 0, 0, 0x27, 0x10, 3]);
    let v1 = Control::Hello {
        version: 1,
        keepalive_ms: 10_000,
        flags: HelloFlags::default(),
    };
    assert_eq!(v1.to_bytes(), [0, 1, 1, 0, 0, 0x27, 0x10]);
    assert_eq!(Control::parse(&[0, 1, 1, 0, 0, 0x27, 0x10, 3, 9]), Ok(v1));
    let Ok(Control::Hello { flags, .. }) = Control::parse(&[0, 1, 2, 0, 0, 0x27, 0x10]) else {
        panic!("a version-2 Hello without flags");
    };
    assert_eq!(flags, HelloFlags::default());
    let Ok(Control::Hello { flags, .. }) = Control::parse(&[0, 1, 3, 0, 0, 0, 0, 0xfc, 1]) else {
        panic!("a later version's Hello");
    };
    assert!(!flags.has(HelloFlags::ADDR6_SENT) && flags.has(HelloFlags::LANS_HEARD));
}

/// Forward compatibility: a Close with a reason this build does not know is still a Close
/// (its number kept for the log and a round trip); known codes never become Other.
#[test]
fn close_with_unknown_reason_still_closes() {
    assert_eq!(
        Control::parse(&[0, 4, 99]),
        Ok(Control::Close {
            reason: CloseReason::Other(99),
            detail: String::new(),
        })
    );
    let c = Control::parse(b"\x00\x04\xc8later").unwrap();
    assert_eq!(
        c,
        Control::Close {
            reason: CloseReason::Other(200),
            detail: "later".into(),
        }
    );
    assert_eq!(c.to_bytes(), b"\x00\x04\xc8later");
    assert_eq!(format!("{:?}", CloseReason::Other(200)), "Other(200)");
    for code in 0..=u8::MAX {
        let r = CloseReason::from_code(code);
        assert_eq!(r.code(), code);
        let known = matches!(code, 1..=7);
        assert_eq!(!matches!(r, CloseReason::Other(_)), known, "{code}");
    }
    assert_eq!(CloseReason::from_code(1), CloseReason::Shutdown);
    assert_eq!(CloseReason::from_code(2), CloseReason::Replaced);
    assert_eq!(CloseReason::from_code(3), CloseReason::Timeout);
    // A detail that is too long or not UTF-8 is still malformed, whatever the reason.
    let long = [&[0, 4, 9][..], &[b'x'; MAX_CLOSE_DETAIL + 1]].concat();
    assert_eq!(Control::parse(&long), Err(ProtoError::Control));
}

/// Forward compatibility: a control record of a type this build does not know is an error,
/// which both receivers count as a drop (pump::Drop::Unexpected) and otherwise ignore.
#[test]
fn unknown_control_types_are_errors() {
    for t in [0u8, 8, 12, 0x7f, 0xff] {
        assert_eq!(
            Control::parse(&[0, t]),
            Err(ProtoError::Control),
            "type {t}"
        );
        assert_eq!(
            Control::parse(&[0, t, 1, 2, 3]),
            Err(ProtoError::Control),
            "type {t}"
        );
    }
}

/// The Dns message (type 5): its exact bytes, and every malformed shape refused.
#[test]
fn dns_message_bytes_and_garbage() {
    let m = Control::Dns(vec![
        "203.0.113.10".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    ]);
    let mut want = vec![0, 5, 2, 4, 203, 0, 113, 10, 6, 0x20, 0x01, 0x0d, 0xb8];
    want.extend_from_slice(&[0; 11]);
    want.push(1);
    assert_eq!(m.to_bytes(), want);
    assert_eq!(Control::parse(&want), Ok(m));
    let nine = [&[0u8, 5, 9][..], &[4, 1, 1, 1, 1].repeat(9)].concat();
    for bad in [
        &[0, 5][..],                  // no count
        &[0, 5, 0],                   // no servers
        &[0, 5, 1],                   // count without entries
        &[0, 5, 1, 4, 1, 2, 3],       // short IPv4
        &[0, 5, 1, 5, 1, 2, 3, 4],    // unknown family
        &[0, 5, 1, 4, 1, 2, 3, 4, 0], // trailing byte
        &[0, 5, 2, 4, 1, 2, 3, 4],    // fewer entries than counted
        &[0, 5, 1, 6, 1, 2, 3, 4],    // short IPv6
        &nine,                        // too many
    ] {
        assert_eq!(Control::parse(bad), Err(ProtoError::Control), "{bad:?}");
    }
    // More than the limit is cut on the way out, so it always parses back.
    let many = Control::Dns(vec!["192.0.2.1".parse().unwrap(); 12]);
    assert_eq!(
        Control::parse(&many.to_bytes()),
        Ok(Control::Dns(vec!["192.0.2.1".parse().unwrap(); 8]))
    );
}
