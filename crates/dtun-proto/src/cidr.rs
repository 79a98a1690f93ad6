//! One checker for every CIDR a user writes (`-pool`, `-pool6`, `-route`, `-exclude`,
//! `-peernet`, `lans`), so each flag refuses the same mistakes with the same words:
//! `"10.220.0.0/33": prefix length 33 is longer than 32 (an IPv4 prefix is 0 to 32)`,
//! `"10.220.0.1/16" has bits set past its prefix length: did you mean 10.220.0.0/16?`.
//!
//! [`parse`] refuses host bits (a range dtun routes or hands out); [`parse_lan`] clears them,
//! as Go's `net.ParseCIDR` does for the original's `-peernet 192.168.1.1/24`.

use std::net::IpAddr;

use ipnet::IpNet;

/// The example every message gives.
const EXAMPLE: &str = "such as 10.0.0.0/8 or 2001:db8::/32";

/// One CIDR, or a bare address (a /32 or /128). Host bits set are refused: `10.1.2.3/8` is most
/// likely a typo for something else than `10.0.0.0/8`.
pub fn parse(s: &str) -> Result<IpNet, String> {
    let written = parse_any(s.trim())?;
    let net = written.trunc();
    if written != net {
        return Err(format!(
            "{:?} has bits set past its prefix length: did you mean {net}?",
            s.trim()
        ));
    }
    Ok(net)
}

/// One CIDR with any host bits cleared (`192.168.1.1/24` is `192.168.1.0/24`), or a bare
/// address.
pub fn parse_lan(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if !s.contains('/') && s.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{s:?} has no prefix length: write {s}/{} for this one address",
            if s.contains(':') { 128 } else { 32 }
        ));
    }
    parse_any(s).map(|n| n.trunc())
}

/// CIDRs separated by commas, each as [`parse`].
pub fn parse_list(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',').map(parse).collect()
}

fn parse_any(s: &str) -> Result<IpNet, String> {
    let Some((addr, len)) = s.split_once('/') else {
        return s
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{s:?} is not a CIDR {EXAMPLE}"));
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{s:?}: the prefix length {len:?} is not a number"))?;
    if len > max {
        return Err(format!(
            "{s:?}: prefix length {len} is longer than {max} (an {family} prefix is 0 to {max})"
        ));
    }
    IpNet::new(addr, len).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_style_for_every_mistake() {
        assert_eq!(parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse(" 10.1.2.3 ").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
        let e = parse("10.220.0.0/33").unwrap_err();
        assert_eq!(
            e,
            "\"10.220.0.0/33\": prefix length 33 is longer than 32 (an IPv4 prefix is 0 to 32)"
        );
        let e = parse("10.220.0.1/16").unwrap_err();
        assert_eq!(
            e,
            "\"10.220.0.1/16\" has bits set past its prefix length: did you mean 10.220.0.0/16?"
        );
        let e = parse("10.220.0/16").unwrap_err();
        assert!(e.contains("\"10.220.0\" is not an IP address"), "{e}");
        let e = parse("10.0.0.0/x").unwrap_err();
        assert!(e.contains("prefix length \"x\" is not a number"), "{e}");
        assert!(
            parse("bogus")
                .unwrap_err()
                .contains("is not a CIDR such as")
        );
        assert_eq!(
            parse_lan("192.168.1.1/24").unwrap().to_string(),
            "192.168.1.0/24"
        );
        assert!(
            parse_lan("192.168.1.1/40")
                .unwrap_err()
                .contains("longer than 32")
        );
        assert!(
            parse_lan("1.2.3.4")
                .unwrap_err()
                .contains("write 1.2.3.4/32")
        );
    }
}
