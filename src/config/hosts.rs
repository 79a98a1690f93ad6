//! The one `-host` grammar: a comma-separated list of servers, each `host`, `host:port`,
//! `[v6]:port` (or a bare IPv6 literal), or `scheme://host[:port][/path]`. An entry without a
//! port takes `-port`. `udp://` is the default transport; `tcp://`, `ws://`, `wss://` and
//! `https://` are reserved for the stream transport planned for UDP-blocked networks and
//! refused until it exists. A client tries the servers in order (`src/client`).

use std::fmt;

/// How a server is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
}

/// One server of `-host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub transport: Transport,
    /// A name or an IP literal (without brackets).
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Schemes a later transport will take.
const RESERVED: &[&str] = &["tcp", "ws", "wss", "https", "http", "tls"];

/// Parses `-host` (see the module header); `port` is `-port`.
pub fn parse_hosts(s: &str, port: u16) -> Result<Vec<Endpoint>, String> {
    let mut out = Vec::new();
    for entry in s.split(',') {
        let e = parse_one(entry.trim(), port)?;
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

fn parse_one(entry: &str, default_port: u16) -> Result<Endpoint, String> {
    let bad = |why: &str| {
        Err(format!(
            "-host {entry:?}: {why} (use host, host:port, [IPv6]:port or udp://host:port, several separated by commas)"
        ))
    };
    if entry.is_empty() {
        return bad("an empty server");
    }
    let (transport, rest) = match entry.split_once("://") {
        None => (Transport::Udp, entry),
        Some(("udp", rest)) => (Transport::Udp, rest),
        Some((scheme, _)) if RESERVED.contains(&scheme) => {
            return bad(&format!(
                "the {scheme}:// transport is planned but not supported yet; dtun runs over udp"
            ));
        }
        Some((scheme, _)) => return bad(&format!("unknown transport {scheme:?}")),
    };
    // A path belongs to a stream transport's URL; UDP has none.
    let rest = match rest.split_once('/') {
        Some((hostport, "")) => hostport,
        Some(_) => return bad("a path is only for a stream transport"),
        None => rest,
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return bad("an unclosed [");
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("[…] holds an IPv6 address only");
        }
        match after {
            "" => (host, None),
            p => match p.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return bad("after ] comes :PORT"),
            },
        }
    } else if rest.matches(':').count() > 1 {
        // A bare IPv6 literal; with a port it needs brackets.
        if rest.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("too many ':' (an IPv6 address with a port is written [IPv6]:port)");
        }
        (rest, None)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/@?#[]".contains(c))
    {
        return bad("not a host name or address");
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return bad(&format!("port {p:?} is not a number from 1 to 65535")),
        },
    };
    Ok(Endpoint {
        transport,
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> String {
        let v = parse_hosts(s, 443).unwrap();
        v.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn the_grammar() {
        assert_eq!(one("vpn.example.com"), "vpn.example.com:443");
        assert_eq!(one("vpn.example.com:8443"), "vpn.example.com:8443");
        assert_eq!(one("192.0.2.1"), "192.0.2.1:443");
        assert_eq!(one("2001:db8::1"), "[2001:db8::1]:443");
        assert_eq!(one("[2001:db8::1]:53"), "[2001:db8::1]:53");
        assert_eq!(one("[2001:db8::1]"), "[2001:db8::1]:443");
        assert_eq!(one("udp://a:1/"), "a:1");
        assert_eq!(one("a, b:2 ,a"), "a:443,b:2");
        for (bad, says) in [
            ("h:443:443", "[IPv6]:port"),
            ("h:x", "port \"x\""),
            ("h:0", "1 to 65535"),
            ("tcp://h:443", "planned but not supported yet"),
            ("wss://h/dtun", "planned"),
            ("gopher://h", "unknown transport"),
            ("udp://h/path", "a path"),
            ("[h]:1", "IPv6 address only"),
            ("[::1", "unclosed"),
            ("a,,b", "an empty server"),
            ("a b", "not a host"),
        ] {
            let e = parse_hosts(bad, 443).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
