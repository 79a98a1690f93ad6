//! Who owns the routing of a network namespace: one dtun at a time, the holder of the
//! per-namespace lock `routes` ([`RunDir::lock`]). Two `-route` clients share one table, two
//! rules and one firewall mark, so the second would take the first one's routes for a crash's
//! left-overs; instead it is refused with a message naming the first. Left-overs (and a kill
//! switch) are removed only by a holder of the lock, so only when their owner is gone; `dtun
//! down` is such a holder.

use crate::netlink::{Netlink, NetlinkError};
use crate::rundir::{Lock, LockError, RunDir, RunDirError};

/// The per-namespace lock of whoever owns dtun's routing.
const LOCK: &str = "routes";

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error(
        "another dtun routes this network namespace ({holder}): two clients cannot both own its routes; stop that one first (or, for a few prefixes beside its full tunnel, run this client without -route and add them in its -up script, `ip route add CIDR dev \"$TUN\"`: the main table's routes more specific than the default win over a full tunnel)"
    )]
    Busy { holder: String },
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(
        "{0}: dtun notes who owns this network namespace's routing in /run/dtun and cannot write there; run it as root, or in the group of a /run/dtun that is root:dtun 1770 (the package's tmpfiles.d entry makes it so)"
    )]
    Lock(LockError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// The lock `routes`, held until dropped (or the process dies).
#[derive(Debug)]
pub struct Owner {
    _lock: Lock,
    rundir: RunDir,
}

impl Owner {
    /// Takes the lock for `what` (`instance NAME`, `dtun down`), written into it with our pid
    /// for a second comer's message.
    pub fn take(what: &str) -> Result<Owner, RoutesError> {
        let rundir = RunDir::open()?;
        let who = format!("dtun pid {}, {what}", std::process::id());
        match rundir.lock(LOCK, &who) {
            Ok(lock) => Ok(Owner {
                _lock: lock,
                rundir,
            }),
            Err(LockError::Held { holder }) => Err(RoutesError::Busy { holder }),
            Err(e) => Err(RoutesError::Lock(e)),
        }
    }

    pub fn rundir(&self) -> &RunDir {
        &self.rundir
    }
}

/// `dtun down`: once no live dtun owns the routing of this network namespace, removes what a
/// killed one left (its kill switch, its rules and routes) and says what it did.
pub async fn down() -> Result<String, RoutesError> {
    let owner = Owner::take("dtun down")?;
    let nl = Netlink::new()?;
    let kill = super::kill_switch::remove_all(&nl, owner.rundir()).await?;
    let tunnel = super::flush_tunnel(&nl).await?;
    Ok(match (kill, tunnel) {
        (0, 0) => "nothing of dtun's routing was left in this network namespace".to_string(),
        (0, n) => format!("removed {n} routes and rules a killed dtun left"),
        (k, 0) => format!("removed the kill switch ({k} routes and rules)"),
        (k, n) => format!(
            "removed the kill switch ({k} routes and rules) and {n} more routes and rules a killed dtun left"
        ),
    })
}
