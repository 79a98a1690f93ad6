//! A reload, the manager's half: new credentials (and the few settings that can change while
//! running) replace the old ones; sessions whose id was removed or whose key changed end with
//! Close "revoked"; a changed fixed address applies at the id's next connect; a changed
//! `lans=` re-checks the id's routed LANs; the first `group=` turns isolation groups on in the
//! nftables table (or the reload is refused). Reading and checking the new configuration is
//! `crate::ops::reload`'s half.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::Manager;
use crate::ops::reload::{Applied, Reconfigure};
use dtun_proto::keys::KeyStore;
use dtun_proto::proto::CloseReason;

impl Manager {
    pub(super) async fn reconfigure(&mut self, r: Reconfigure) {
        // First what can fail, so a failure leaves everything as it was.
        let groups_enforced = match self.enforce_groups(&r.keys) {
            Ok(turned_on) => turned_on,
            Err(e) => {
                let _ = r.done.send(Err(e));
                return;
            }
        };
        let old = std::mem::replace(&mut self.cfg.keys, r.keys.clone());
        let new = &r.keys;
        let mut applied = Applied {
            groups_enforced,
            ..Default::default()
        };
        self.compare_credentials(&old, new, &mut applied);
        applied.disabled = new.disabled.difference(&old.disabled).cloned().collect();
        applied.enabled = old.disabled.difference(&new.disabled).cloned().collect();
        self.compare_settings(&r, &mut applied);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        self.cfg.linger = r.linger;
        self.cfg.max_clients = r.max_clients;
        self.cfg.dns = r.dns.clone();
        self.end_revoked(new, &mut applied).await;
        self.regroup(new, &mut applied).await;
        self.recheck_lans(&old, new, &mut applied).await;
        applied.ended.sort();
        applied.ended.dedup();
        let _ = r.done.send(Ok(applied));
    }

    /// Which ids were added, removed, rekeyed or readdressed; a changed fixed address frees
    /// the old one at once where no device holds it, and new fixed addresses are held.
    fn compare_credentials(&mut self, old: &KeyStore, new: &KeyStore, applied: &mut Applied) {
        let ids: BTreeSet<&String> = old.clients.keys().chain(new.clients.keys()).collect();
        for id in ids {
            match (old.clients.get(id), new.clients.get(id)) {
                (None, Some(_)) => applied.added.push(id.clone()),
                (Some(_), None) => applied.removed.push(id.clone()),
                (Some(a), Some(b)) if a.key != b.key => applied.rekeyed.push(id.clone()),
                _ => {}
            }
            let fixed =
                |k: &dtun_proto::keys::KeyStore| k.clients.get(id).map(|c| (c.addr, c.addr6));
            if fixed(old).unwrap_or_default() != fixed(new).unwrap_or_default() {
                if old.clients.contains_key(id) && new.clients.contains_key(id) {
                    applied.readdressed.push(id.clone());
                }
                if self.devices.contains_key(id) {
                    self.stale_addr.insert(id.clone());
                } else {
                    self.pool.release(id);
                    if let Some(p6) = self.pool6.as_mut() {
                        p6.release(id);
                    }
                }
            }
        }
        // New fixed addresses are held at once where no device is in the way.
        for (id, c) in &new.clients {
            if let Some(a) = c.addr
                && !self.devices.contains_key(id)
                && let Err(e) = self.pool.assign_fixed(id, a)
            {
                tracing::warn!("reload: client {id}: fixed address {a}: {e}; it applies once free");
            }
        }
    }

    /// The settings a reload applies at once (`linger`, `max_clients`, `dns`), as `name old -> new`.
    fn compare_settings(&self, r: &Reconfigure, applied: &mut Applied) {
        if self.cfg.linger != r.linger {
            let (a, b) = (self.cfg.linger, r.linger);
            applied.settings.push(format!("linger {a:?} -> {b:?}"));
        }
        if self.cfg.max_clients != r.max_clients {
            let (a, b) = (self.cfg.max_clients, r.max_clients);
            applied.settings.push(format!("max_clients {a} -> {b}"));
        }
        if self.cfg.dns != r.dns {
            let show = |d: &[IpAddr]| {
                let v: Vec<String> = d.iter().map(ToString::to_string).collect();
                format!("[{}]", v.join(", "))
            };
            let (a, b) = (show(&self.cfg.dns), show(&r.dns));
            applied.settings.push(format!("dns {a} -> {b}"));
        }
    }

    /// Ends every session whose key is no longer the one it was completed with (a removed or
    /// changed entry, or a changed -key / master key for unlisted ids), and removes the devices
    /// of ids whose key is gone.
    async fn end_revoked(&mut self, new: &KeyStore, applied: &mut Applied) {
        let revoked: Vec<(String, bool, bool)> = self
            .devices
            .iter()
            .filter_map(|(id, d)| {
                let now = new.key_id_for(id.as_bytes());
                let live = d.session.as_ref().is_some_and(|s| Some(s.key_id) != now);
                (live || now.is_none()).then(|| (id.clone(), now.is_none(), live))
            })
            .collect();
        for (id, gone, live) in revoked {
            let why = if gone {
                "its credentials were removed (reload)"
            } else {
                "its key changed (reload)"
            };
            if live {
                self.end_session_because(&id, Some(CloseReason::Revoked), "reload", why)
                    .await;
                applied.ended.push(id.clone());
            }
            if gone {
                self.remove_device(&id).await;
            }
        }
    }

    /// A device whose TUN sits in another group's set than the id's group now: the old group
    /// must not stay reachable, so the session ends and the device goes.
    async fn regroup(&mut self, new: &KeyStore, applied: &mut Applied) {
        let regrouped: Vec<String> = self
            .devices
            .iter()
            .filter(|(id, d)| d.group.as_deref() != new.group_of(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in regrouped {
            if self.devices.get(&id).is_some_and(|d| d.session.is_some()) {
                let why = "its isolation group changed (reload)";
                self.end_session_because(&id, Some(CloseReason::Revoked), "reload", why)
                    .await;
                applied.ended.push(id.clone());
            }
            self.remove_device(&id).await;
            applied.regrouped.push(id);
        }
    }

    /// A changed lans= applies to the LANs routed now: each such id's LANs are checked again
    /// (what is no longer allowed goes, what now is comes).
    async fn recheck_lans(&mut self, old: &KeyStore, new: &KeyStore, applied: &mut Applied) {
        let relisted: Vec<String> = self
            .devices
            .keys()
            .filter(|id| {
                let lans = |k: &KeyStore| k.clients.get(*id).map(|c| c.lans.clone());
                lans(old) != lans(new)
            })
            .cloned()
            .collect();
        for id in relisted {
            let Some(d) = self.devices.get(&id) else {
                continue;
            };
            let (before, wanted) = (d.routes.clone(), d.wanted.clone());
            self.set_lans(&id, wanted, true).await;
            let after = self
                .devices
                .get(&id)
                .map(|d| d.routes.clone())
                .unwrap_or_default();
            let changes: Vec<String> = before
                .iter()
                .filter(|n| !after.contains(n))
                .map(|n| format!("-{n}"))
                .chain(
                    after
                        .iter()
                        .filter(|n| !before.contains(n))
                        .map(|n| format!("+{n}")),
                )
                .collect();
            if !changes.is_empty() {
                applied.lans.push(format!("{id} ({})", changes.join(" ")));
            }
        }
    }

    /// Isolation groups in `new` on a server whose table does not enforce them yet (it
    /// started without any `group=`): the table is made, or its rules are built again, with
    /// the group sets, and every device's TUN goes into the set of the group it was made in
    /// (devices whose group changes are removed after). Returns whether it turned them on; an
    /// error means nothing changed, and the reload must be refused.
    fn enforce_groups(&mut self, new: &KeyStore) -> Result<bool, String> {
        let mut groups: Vec<String> = new
            .clients
            .values()
            .filter_map(|c| c.group.clone())
            .collect();
        if groups.is_empty() || self.cfg.firewall.is_some_and(|p| p.groups) {
            return Ok(false);
        }
        groups.sort();
        groups.dedup();
        let policy = match self.cfg.firewall {
            Some(p) => dtun_linux::nft::Policy { groups: true, ..p },
            None => dtun_linux::nft::Policy {
                nat: false,
                client_to_client: None,
                groups: true,
            },
        };
        let members: Vec<(String, Option<String>)> = self
            .devices
            .values()
            .map(|d| (d.tun.name.clone(), d.group.clone()))
            .collect();
        let why = |e: dtun_linux::nft::NftError| {
            format!(
                "isolation groups (group=) cannot be enforced: {e}; remove group= or restart the server"
            )
        };
        match self.firewall.as_mut() {
            // -client-to-client off: nothing passes between clients, groups or not.
            Some(_) if !policy.grouped() => {}
            Some(fw) => fw.enable_groups(&policy, &groups, &members).map_err(why)?,
            None => {
                let mut fw = dtun_linux::nft::Firewall::apply(&self.cfg.instance, policy, &groups)
                    .map_err(why)?;
                for (tun, group) in &members {
                    if let Err(e) = fw.add_tun(tun, group.as_deref()) {
                        fw.remove();
                        return Err(why(e));
                    }
                }
                self.firewall = Some(fw);
            }
        }
        self.cfg.firewall = Some(policy);
        Ok(policy.grouped())
    }

    /// A device made before a reload changed the id's fixed address is replaced at the id's
    /// next connect (its session, if any, is ended as by any new session of the id).
    pub(super) async fn readdress_if_stale(&mut self, id: &str, addr: SocketAddr) {
        if !self.stale_addr.remove(id) || !self.devices.contains_key(id) {
            return;
        }
        self.end_replaced(id, addr).await;
        self.remove_device(id).await;
    }
}
