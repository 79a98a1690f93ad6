//! TCP MSS clamping: a SYN crossing the tunnel gets its MSS option lowered so that neither end
//! of a TCP connection sends segments larger than the tunnel (or the path under it) carries.
//! Without it, a path below 1500 bytes (PPPoE, LTE, a tunnel in a tunnel) black-holes TCP
//! wherever ICMP "fragmentation needed" is filtered. Pure functions on packet bytes, no I/O.

/// TCP option kinds.
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;

/// The MSS that fits an inner packet of `mtu` bytes: less the IP and TCP headers.
pub fn mss_for_mtu(mtu: u32, ipv6: bool) -> u16 {
    let headers = if ipv6 { 60 } else { 40 };
    mtu.saturating_sub(headers).min(u32::from(u16::MAX)) as u16
}

/// The MSS clamps (IPv4, IPv6) that keep a tunnelled TCP segment within a path of
/// `path_mtu` bytes: the inner MTU is the path MTU less `overhead`, the outer IP and UDP
/// headers plus the record overhead of the session's suite.
pub fn mss_for_path(path_mtu: u32, overhead: usize) -> (u16, u16) {
    let overhead = u32::try_from(overhead).unwrap_or(u32::MAX);
    let inner = path_mtu.saturating_sub(overhead);
    (mss_for_mtu(inner, false), mss_for_mtu(inner, true))
}

/// Lowers the MSS option of a TCP SYN (or SYN-ACK) in `packet` to at most `max_mss` (the
/// family's value: `v4` for IPv4, `v6` for IPv6) and fixes the TCP checksum incrementally.
/// Returns whether the packet was changed. Anything that is not a well-formed, unfragmented
/// TCP SYN is left alone.
#[inline]
pub fn clamp(packet: &mut [u8], v4: u16, v6: u16) -> bool {
    let Some((tcp_range, max_mss)) = tcp_offset(packet, v4, v6) else {
        return false;
    };
    let Some(tcp) = packet.get_mut(tcp_range) else {
        return false;
    };
    if tcp.len() < 20 || tcp[13] & TCP_FLAG_SYN == 0 {
        return false;
    }
    let data_off = usize::from(tcp[12] >> 4) * 4;
    if data_off < 20 || data_off > tcp.len() {
        return false;
    }
    let mut i = 20;
    while i < data_off {
        match tcp[i] {
            OPT_END => return false,
            OPT_NOP => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || i + len > data_off {
                    return false;
                }
                if kind == OPT_MSS && len == 4 {
                    let old = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    tcp[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    let sum = u16::from_be_bytes([tcp[16], tcp[17]]);
                    // The option sits at an even offset in every real stack, but a field at an
                    // odd offset would need its bytes swapped in the sum: leave those alone.
                    let fixed = if i % 2 == 0 {
                        checksum_replace(sum, old, max_mss)
                    } else {
                        checksum_replace(sum, old.swap_bytes(), max_mss.swap_bytes())
                    };
                    tcp[16..18].copy_from_slice(&fixed.to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// Where the TCP segment lies and which clamp applies, for an unfragmented TCP packet whose
/// header lengths agree with the buffer: an IPv4 IHL of at least 5 (20 bytes) and a total
/// length from the header's end to at most the buffer's end; an IPv6 payload length that fits
/// the buffer. A packet is untrusted input (a peer's, or a local program's through the TUN):
/// every length is checked before it is used as an index.
fn tcp_offset(p: &[u8], v4: u16, v6: u16) -> Option<(std::ops::Range<usize>, u16)> {
    match p.first()? >> 4 {
        4 => {
            if p.len() < 20 || p[9] != IPPROTO_TCP {
                return None;
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if ihl < 20 || total < ihl || total > p.len() {
                return None;
            }
            // Only the first fragment carries the TCP header; a fragmented SYN is left alone.
            let frag = u16::from_be_bytes([p[6], p[7]]);
            if frag & 0x3fff != 0 {
                return None;
            }
            Some((ihl..total, v4))
        }
        // Extension headers before TCP are rare on a SYN; those packets are left alone.
        6 if p.len() >= 40 && p[6] == IPPROTO_TCP => {
            let end = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
            (end <= p.len()).then_some((40..end, v6))
        }
        _ => None,
    }
}

/// RFC 1624 incremental update: HC' = ~(~HC + ~m + m').
fn checksum_replace(sum: u16, old: u16, new: u16) -> u16 {
    let mut s = u32::from(!sum) + u32::from(!old) + u32::from(new);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One's-complement checksum over `data` plus a starting sum.
    fn csum(mut acc: u32, data: &[u8]) -> u16 {
        for c in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    fn tcp_checksum_v4(p: &[u8]) -> u16 {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let tcp = &p[ihl..];
        let mut acc = 0u32;
        for c in p[12..20].chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        acc += u32::from(IPPROTO_TCP) + tcp.len() as u32;
        csum(acc, tcp)
    }

    /// An IPv4 TCP SYN with options NOP NOP MSS(mss) and a valid checksum.
    fn syn_v4(mss: u16) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(48u16).to_be_bytes());
        p[8] = 64;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&1234u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = 7 << 4;
        t[13] = TCP_FLAG_SYN;
        t[20..24].copy_from_slice(&[OPT_NOP, OPT_NOP, OPT_MSS, 4]);
        t[24..26].copy_from_slice(&mss.to_be_bytes());
        t[26..28].copy_from_slice(&[OPT_NOP, OPT_END]);
        let sum = tcp_checksum_v4(&p);
        p[36..38].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(tcp_checksum_v4(&p), 0);
        p
    }

    #[test]
    fn a_large_mss_is_lowered_and_the_checksum_stays_valid() {
        for mss in [1460u16, 8960, 65495, 1396] {
            let mut p = syn_v4(mss);
            assert!(clamp(&mut p, 1395, 1375));
            assert_eq!(u16::from_be_bytes([p[44], p[45]]), 1395);
            assert_eq!(tcp_checksum_v4(&p), 0, "checksum after clamping {mss}");
        }
    }

    #[test]
    fn small_mss_non_syn_and_malformed_packets_are_left_alone() {
        let mut p = syn_v4(1200);
        assert!(!clamp(&mut p, 1395, 1375));
        assert_eq!(p, syn_v4(1200));
        let mut ack = syn_v4(1460);
        ack[33] = 0x10;
        assert!(!clamp(&mut ack, 1395, 1375));
        let mut frag = syn_v4(1460);
        frag[7] = 1;
        assert!(!clamp(&mut frag, 1395, 1375));
        for cut in 0..48 {
            let mut short = syn_v4(1460)[..cut].to_vec();
            clamp(&mut short, 1395, 1375);
        }
        let mut bad_off = syn_v4(1460);
        bad_off[32] = 15 << 4;
        assert!(!clamp(&mut bad_off, 1395, 1375));
        assert!(!clamp(&mut [], 1395, 1375));
    }

    /// The review's packet: first byte 0x4f (IHL 15, a 60-byte header), protocol 6, 20 to 59
    /// bytes long. Before the fix `clamp` sliced past the end and panicked.
    #[test]
    fn a_header_longer_than_the_packet_is_left_alone() {
        for len in 20..60 {
            let mut p = vec![0u8; len];
            p[0] = 0x4f;
            p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            p[9] = IPPROTO_TCP;
            p[12..16].copy_from_slice(&[10, 86, 0, 2]);
            assert!(!clamp(&mut p, 1395, 1375), "length {len}");
        }
        // IHL below 5, and a total length that disagrees with the buffer.
        for ihl in 0..5u8 {
            let mut p = syn_v4(1460);
            p[0] = 0x40 | ihl;
            assert!(!clamp(&mut p, 1395, 1375), "IHL {ihl}");
        }
        for total in [0u16, 19, 47, 49, 1500] {
            let mut p = syn_v4(1460);
            p[2..4].copy_from_slice(&total.to_be_bytes());
            assert!(!clamp(&mut p, 1395, 1375), "total length {total}");
        }
        // An IPv6 header whose payload length disagrees with the buffer, and short ones.
        let v4 = syn_v4(1440);
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&28u16.to_be_bytes());
        v6[6] = IPPROTO_TCP;
        v6.extend_from_slice(&v4[20..]);
        for payload in [0u16, 27, 29, 1000] {
            let mut p = v6.clone();
            p[4..6].copy_from_slice(&payload.to_be_bytes());
            assert!(!clamp(&mut p, 1395, 1375), "IPv6 payload length {payload}");
        }
        for cut in 0..v6.len() {
            let mut p = v6[..cut].to_vec();
            assert!(!clamp(&mut p, 1395, 1375), "IPv6 cut to {cut}");
        }
        // Every first byte and length up to 80: never a panic.
        for first in 0..=255u8 {
            for len in 0..80 {
                let mut p = vec![0u8; len];
                if len > 0 {
                    p[0] = first;
                }
                if len > 9 {
                    p[9] = IPPROTO_TCP;
                }
                if len > 6 {
                    p[6] = IPPROTO_TCP;
                }
                clamp(&mut p, 1395, 1375);
            }
        }
    }

    #[test]
    fn ipv6_syn_is_clamped_to_the_v6_value() {
        let v4 = syn_v4(1440);
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&28u16.to_be_bytes());
        p[6] = IPPROTO_TCP;
        p.extend_from_slice(&v4[20..]);
        assert!(clamp(&mut p, 1395, 1375));
        assert_eq!(u16::from_be_bytes([p[64], p[65]]), 1375);
        // The checksum moved by exactly the MSS change (the pseudo-header is not touched).
        let before = u16::from_be_bytes([v4[36], v4[37]]);
        assert_eq!(
            u16::from_be_bytes([p[56], p[57]]),
            checksum_replace(before, 1440, 1375)
        );
    }

    #[test]
    fn mss_follows_the_mtu() {
        assert_eq!(mss_for_mtu(1435, false), 1395);
        assert_eq!(mss_for_mtu(1415, true), 1355);
        assert_eq!(mss_for_mtu(10, false), 0);
    }

    #[test]
    fn mss_follows_the_path_mtu() {
        // 1280 over IPv4 (28) with a 16-byte tag (13 + 8 + 16 = 37): inner MTU 1215.
        assert_eq!(mss_for_path(1280, 28 + 37), (1175, 1155));
        // CCM8's 8-byte tag (29) over IPv6 (48): inner MTU 1203.
        assert_eq!(mss_for_path(1280, 48 + 29), (1163, 1143));
        // A 1500-byte path gives what the default TUN MTU (1500 - 28 - 37) gives.
        assert_eq!(
            mss_for_path(1500, 28 + 37),
            (mss_for_mtu(1435, false), mss_for_mtu(1435, true))
        );
        assert_eq!(mss_for_path(50, 28 + 37), (0, 0));
    }
}
