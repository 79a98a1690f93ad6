//! A minimal reader of packet captures for the known-answer tests: classic pcap (either byte
//! order, micro- or nanosecond timestamps) and pcapng (section header, interface description,
//! enhanced / simple / obsolete packet blocks), link types Ethernet, Linux cooked v1/v2 and raw
//! IP, IPv4 or IPv6 carrying UDP. Test code: every malformation is a panic with a message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_IPV6: u32 = 229;
const LINKTYPE_LINUX_SLL2: u32 = 276;

/// One captured packet.
pub struct Packet {
    /// 1-based frame number, as Wireshark counts them.
    pub number: usize,
    pub linktype: u32,
    pub data: Vec<u8>,
}

/// One UDP datagram out of a captured packet.
pub struct Datagram {
    /// 1-based frame number of the packet that carried it.
    pub number: usize,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Endian(bool); // true: big-endian

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let v = [b[at], b[at + 1]];
        if self.0 {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    }

    fn u32(self, b: &[u8], at: usize) -> u32 {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.0 {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    }
}

fn slice<'a>(b: &'a [u8], at: usize, len: usize, what: &str) -> &'a [u8] {
    b.get(at..at + len)
        .unwrap_or_else(|| panic!("capture truncated in {what} at byte {at}"))
}

/// All packets of a classic pcap or pcapng file, numbered from 1.
pub fn packets(file: &[u8]) -> Vec<Packet> {
    assert!(file.len() >= 4, "capture file too short");
    let magic = [file[0], file[1], file[2], file[3]];
    match magic {
        [0x0a, 0x0d, 0x0d, 0x0a] => pcapng(file),
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => classic(file, Endian(true)),
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => classic(file, Endian(false)),
        _ => panic!("not a pcap or pcapng file (magic {magic:02x?})"),
    }
}

fn classic(file: &[u8], e: Endian) -> Vec<Packet> {
    let header = slice(file, 0, 24, "pcap file header");
    let linktype = e.u32(header, 20) & 0x0fff_ffff;
    let mut out = Vec::new();
    let mut at = 24;
    while at < file.len() {
        let rec = slice(file, at, 16, "pcap record header");
        let caplen = e.u32(rec, 8) as usize;
        let data = slice(file, at + 16, caplen, "pcap packet data").to_vec();
        out.push(Packet {
            number: out.len() + 1,
            linktype,
            data,
        });
        at += 16 + caplen;
    }
    out
}

fn pcapng(file: &[u8]) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut e = Endian(false);
    // Link types of the current section's interfaces, by interface id.
    let mut interfaces: Vec<u32> = Vec::new();
    let mut at = 0;
    while at < file.len() {
        let head = slice(file, at, 12, "pcapng block header");
        if head[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
            e = match head[8..12] {
                [0x1a, 0x2b, 0x3c, 0x4d] => Endian(true),
                [0x4d, 0x3c, 0x2b, 0x1a] => Endian(false),
                ref m => panic!("bad pcapng byte-order magic {m:02x?}"),
            };
            interfaces.clear();
        }
        let block_type = e.u32(head, 0);
        let total = e.u32(head, 4) as usize;
        assert!(
            total >= 12 && total.is_multiple_of(4),
            "bad pcapng block length {total} at byte {at}"
        );
        let block = slice(file, at, total, "pcapng block");
        assert_eq!(
            e.u32(block, total - 4) as usize,
            total,
            "pcapng block at byte {at}: trailing length differs"
        );
        let body = &block[8..total - 4];
        let mut push = |iface: usize, caplen: usize, from: usize| {
            let linktype = *interfaces
                .get(iface)
                .unwrap_or_else(|| panic!("packet on undeclared interface {iface}"));
            let data = slice(body, from, caplen, "pcapng packet data").to_vec();
            out.push(Packet {
                number: out.len() + 1,
                linktype,
                data,
            });
        };
        match block_type {
            // Interface description block.
            1 => interfaces.push(u32::from(e.u16(body, 0))),
            // Obsolete packet block: interface(2) drops(2) ts(8) caplen(4) len(4) data.
            2 => push(usize::from(e.u16(body, 0)), e.u32(body, 12) as usize, 20),
            // Simple packet block: original length, data (interface 0, caplen = what fits).
            3 => {
                let orig = e.u32(body, 0) as usize;
                push(0, orig.min(body.len() - 4), 4)
            }
            // Enhanced packet block: interface(4) ts(8) caplen(4) len(4) data.
            6 => push(e.u32(body, 0) as usize, e.u32(body, 12) as usize, 20),
            _ => {}
        }
        at += total;
    }
    out
}

/// The UDP datagram a packet carries, if it is one (not fragmented).
pub fn udp(packet: &Packet) -> Option<Datagram> {
    let d = &packet.data;
    let (ethertype, l3) = match packet.linktype {
        LINKTYPE_ETHERNET => {
            let mut at = 12;
            let mut ethertype = u16::from_be_bytes([d[at], d[at + 1]]);
            // 802.1Q / 802.1ad tags.
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                at += 4;
                ethertype = u16::from_be_bytes([d[at], d[at + 1]]);
            }
            (ethertype, &d[at + 2..])
        }
        LINKTYPE_LINUX_SLL => (u16::from_be_bytes([d[14], d[15]]), &d[16..]),
        LINKTYPE_LINUX_SLL2 => (u16::from_be_bytes([d[0], d[1]]), &d[20..]),
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => match d.first()? >> 4 {
            4 => (0x0800, &d[..]),
            6 => (0x86dd, &d[..]),
            _ => return None,
        },
        other => panic!("frame {}: unsupported link type {other}", packet.number),
    };
    let (src, dst, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(l3[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([l3[2], l3[3]]));
            let frag = u16::from_be_bytes([l3[6], l3[7]]);
            if l3[9] != 17 || frag & 0x3fff != 0 {
                return None;
            }
            let s: [u8; 4] = l3[12..16].try_into().unwrap();
            let t: [u8; 4] = l3[16..20].try_into().unwrap();
            (
                IpAddr::V4(Ipv4Addr::from(s)),
                IpAddr::V4(Ipv4Addr::from(t)),
                &l3[ihl..total],
            )
        }
        0x86dd => {
            // No extension headers in these captures: UDP must follow directly.
            if l3[6] != 17 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([l3[4], l3[5]]));
            let s: [u8; 16] = l3[8..24].try_into().unwrap();
            let t: [u8; 16] = l3[24..40].try_into().unwrap();
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(t)),
                &l3[40..40 + len],
            )
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    let len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
    assert!(
        len >= 8 && len <= l4.len(),
        "frame {}: bad UDP length {len}",
        packet.number
    );
    Some(Datagram {
        number: packet.number,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        payload: l4[8..len].to_vec(),
    })
}
