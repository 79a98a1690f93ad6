//! IPv6 inside the tunnel, client side. A dtun server tells a client that said Hello its IPv6
//! pair (Addr6) right before its Hello answer, so a client that has the answer knows whether
//! IPv6 comes: it waits for that answer (at most [`HELLO_WAIT`]) before its up script runs,
//! and the script sees LOCAL_IP6 and PEER_IP6. An Addr6 that is malformed or assigns
//! addresses no sane server would is a counted drop, logged; the tunnel then carries IPv4 only.

use super::*;
use crate::proto::Addr6;
use forward::Sink;

/// How long a client that said Hello waits for the answer before going on without IPv6 (an
/// older dtun server answers at once, without Addr6; a lost answer costs this much once).
pub(super) const HELLO_WAIT: Duration = Duration::from_secs(2);

/// Log line when the tunnel gets its IPv6 pair.
pub const LOG_IPV6_UP: &str = "tunnel IPv6 up";

/// What one record from the server means while we wait for the Hello answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard {
    /// The Hello answer: stop waiting.
    Answer,
    /// A usable IPv6 pair.
    Addr6(Addr6),
    /// Anything else (already acted on, or a counted drop).
    Other,
}

/// Acts on a control record that came before the Hello answer: Addr6 is checked (a bad one
/// is a counted drop, logged with the reason), Dns is taken as in the forwarding loop.
pub(super) fn heard(data: &[u8], counters: &Counters, dns: &crate::dns::Dns) -> Heard {
    match Control::parse(data) {
        Ok(Control::Hello { .. }) => Heard::Answer,
        Ok(Control::Addr6(a)) => match a.check() {
            Ok(()) => Heard::Addr6(a),
            Err(why) => {
                counters.count_drop(pump::Drop::Unexpected);
                tracing::warn!(
                    "the server's IPv6 addresses (local {} peer {} /{}) are unusable: {why}; the tunnel carries IPv4 only",
                    a.client,
                    a.server,
                    a.prefix_len
                );
                Heard::Other
            }
        },
        Ok(Control::Dns(servers)) => {
            dns.pushed(&servers);
            Heard::Other
        }
        Ok(_) => Heard::Other,
        Err(_) => {
            counters.count_drop(pump::Drop::Unexpected);
            if data.get(1) == Some(&6) {
                tracing::warn!(
                    "the server's IPv6 address message is malformed ({} bytes); the tunnel carries IPv4 only",
                    data.len()
                );
            }
            Heard::Other
        }
    }
}

/// Waits for the server's Hello answer and returns the Addr6 that came before it, if any;
/// `Ok(None)`: no answer within [`HELLO_WAIT`] (lost, or a server that answers nothing), so
/// nothing is known. IP packets that come meanwhile go to the TUN.
pub(super) async fn await_answer(
    opener: &mut Opener,
    counters: &Counters,
    sock: &UdpSocket,
    buf: &mut [u8],
    tun: &Tun,
    dns: &crate::dns::Dns,
) -> Result<Option<Option<Addr6>>, ClientError> {
    let deadline = Instant::now() + HELLO_WAIT;
    let mut sink = Sink {
        dev: &tun.dev,
        writer: TunWriter::default(),
        mss: pump::mss_clamps(tun.mtu),
    };
    let mut addr6 = None;
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
            Err(_) => {
                tracing::debug!("no Hello answer within {HELLO_WAIT:?}: IPv6 as it was");
                return Ok(None);
            }
            Ok(Err(_)) => continue,
            Ok(Ok(n)) => n,
        };
        let mut at = 0;
        let mut answered = false;
        while at < n {
            let Ok(r) = record::record_at(&buf[..n], at) else {
                break;
            };
            at = r.end;
            let ct = buf[r.start];
            if ct != CONTENT_APPLICATION_DATA && ct != CONTENT_ALERT {
                continue;
            }
            match pump::open(opener, counters, &mut buf[r.clone()]) {
                Inbound::Data(p) if ct == CONTENT_APPLICATION_DATA => {
                    let data = &mut buf[r.start + p.start..r.start + p.end];
                    if Control::is_control(data) {
                        match heard(data, counters, dns) {
                            Heard::Answer => answered = true,
                            Heard::Addr6(a) => addr6 = Some(a),
                            Heard::Other => {}
                        }
                    } else if pump::accept_packet(counters, data) {
                        sink.push(data).await;
                    }
                }
                Inbound::Alert(_, 0) => return Err(ClientError::Closed("close_notify".into())),
                Inbound::Alert(level, desc) => {
                    return Err(ClientError::Closed(format!("alert {level}/{desc}")));
                }
                _ => {}
            }
        }
        sink.flush().await;
        if answered {
            return Ok(Some(addr6));
        }
    }
}

/// Puts the session's IPv6 pair on the TUN (or takes an old one off). Returns whether the up
/// script must run: it must if it had to already, or if the pair changed (then the down
/// script runs first with the old values).
pub(super) async fn apply(
    cfg: &ClientConfig,
    nl: &Netlink,
    t: &mut Tunnel,
    addr6: Option<Addr6>,
    run_up: bool,
) -> Result<bool, ClientError> {
    let mut addr6 = addr6;
    if addr6.is_some() && t.tun.mtu < crate::pool6::IPV6_MIN_MTU {
        tracing::warn!("{}", crate::inet6::Inet6Error::Mtu(t.tun.mtu));
        addr6 = None;
    }
    if t.addr6 == addr6 {
        return Ok(run_up);
    }
    if !run_up
        && let Some(down) = &cfg.common.down
        && let Err(e) = hooks::run("down", down, &t.env()).await
    {
        tracing::warn!("{e}");
    }
    if t.addr6.take().is_some() {
        nl.flush_addresses6(t.tun.index).await?;
    }
    if let Some(a) = addr6 {
        match crate::inet6::configure(nl, &t.tun.name, t.tun.index, t.tun.mtu, a.client, a.server)
            .await
        {
            Ok(()) => {
                tracing::info!(
                    "{LOG_IPV6_UP}: dev {} local {} peer {}",
                    t.tun.name,
                    a.client,
                    a.server
                );
                t.addr6 = Some(a);
            }
            Err(crate::inet6::Inet6Error::Netlink(e)) if e.is_permission_denied() => {
                return Err(e.into());
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Malformed and insane Addr6 records are counted drops that assign nothing; a good one is
    /// taken; the Hello answer ends the wait.
    #[test]
    fn bad_addr6_is_a_counted_drop() {
        let dns = crate::dns::Dns::with_paths(
            std::path::Path::new("/nonexistent/resolv.conf"),
            std::path::Path::new("/nonexistent/run"),
            vec![],
            false,
        );
        let counters = Counters::default();
        let good = Addr6 {
            prefix_len: 64,
            client: "fd64:7475:6e00::2".parse().unwrap(),
            server: "fd64:7475:6e00::1".parse().unwrap(),
        };
        let bytes = Control::Addr6(good).to_bytes();
        let mut insane = [good; 4];
        insane[0].client = "ff02::1".parse().unwrap();
        insane[1].server = good.client;
        insane[2].prefix_len = 0;
        insane[3].client = "fe80::2".parse().unwrap();
        let mut bad: Vec<Vec<u8>> = vec![
            bytes[..bytes.len() - 1].to_vec(),
            [&bytes[..], &[0]].concat(),
            vec![0, 6],
        ];
        bad.extend(insane.iter().map(|a| Control::Addr6(*a).to_bytes()));
        for b in &bad {
            assert_eq!(heard(b, &counters, &dns), Heard::Other, "{b:02x?}");
        }
        assert_eq!(counters.drops(pump::Drop::Unexpected), bad.len() as u64);
        assert_eq!(heard(&bytes, &counters, &dns), Heard::Addr6(good));
        let hello = Control::Hello {
            version: CONTROL_VERSION,
            keepalive_ms: 10_000,
        };
        assert_eq!(heard(&hello.to_bytes(), &counters, &dns), Heard::Answer);
        assert_eq!(counters.drops(pump::Drop::Unexpected), bad.len() as u64);
    }
}
