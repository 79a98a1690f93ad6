//! IPv6 inside the tunnel, client side: the pair a dtun server told in its Hello exchange
//! (src/client/hello.rs) goes on the TUN before the up script runs, and the script sees
//! LOCAL_IP6 and PEER_IP6; a changed pair runs the down script first with the old values.

use dtun_linux::hooks;
use dtun_linux::netlink::Netlink;
use dtun_proto::proto::Addr6;

use super::{ClientError, Tunnel};
use crate::config::ClientConfig;

/// Log line when the tunnel gets its IPv6 pair.
pub const LOG_IPV6_UP: &str = "tunnel IPv6 up";

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
    if addr6.is_some() && t.tun.mtu < dtun_proto::pool6::IPV6_MIN_MTU {
        tracing::warn!("{}", dtun_linux::inet6::Inet6Error::Mtu(t.tun.mtu));
        addr6 = None;
    }
    if let Some(a) = addr6
        && t.addr6 != addr6
        && !super::pair::take_ipv6(cfg, nl, t, &a).await?
    {
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
        match dtun_linux::inet6::configure(
            nl,
            &t.tun.name,
            t.tun.index,
            t.tun.mtu,
            a.client,
            a.server,
        )
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
            Err(dtun_linux::inet6::Inet6Error::Netlink(e)) if e.is_permission_denied() => {
                return Err(e.into());
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(true)
}
