//! What dtun tells a user who runs it without a privilege it needs: the capability by name and
//! the three ways to grant it (root, a file capability, a systemd unit's ambient capability).

/// How to give dtun CAP_NET_ADMIN (TUN devices, addresses, routes, nftables, SO_MARK).
pub const GRANT_NET_ADMIN: &str = "run as root, or `setcap cap_net_admin+ep /usr/bin/dtun` \
     (the binary's path), or AmbientCapabilities=CAP_NET_ADMIN in its systemd unit";

/// How to let dtun bind a UDP port below 1024 (the default 443).
pub const GRANT_NET_BIND_SERVICE: &str = "run as root, or `setcap \
     cap_net_admin,cap_net_bind_service+ep /usr/bin/dtun`, or \
     AmbientCapabilities=CAP_NET_BIND_SERVICE in its systemd unit, or use -port 1024 or above";

/// What to do when /etc/resolv.conf (or dtun's backup directory) is not writable: dtun runs
/// as a user that may not change the system's DNS.
pub const GRANT_RESOLV_CONF: &str = "run dtun as root, or in its systemd unit grant \
     ReadWritePaths=/etc/resolv.conf and RuntimeDirectory=dtun (dtun@.service does), or leave \
     out -dns/-accept-dns and set DNS in an -up script";

/// CAP_NET_ADMIN's bit in the capability sets.
const CAP_NET_ADMIN: u32 = 12;

/// The TUN clone device.
const TUN_NODE: &str = "/dev/net/tun";

/// What dtun lacks to run at all.
#[derive(Debug, thiserror::Error)]
pub enum Missing {
    /// CAP_NET_ADMIN is not in the effective set.
    #[error(
        "dtun needs CAP_NET_ADMIN to create its TUN device, addresses and routes (it runs as \
         uid {uid} without it): {GRANT_NET_ADMIN}"
    )]
    NetAdmin { uid: String },
    /// /dev/net/tun cannot be opened read-write (CAP_NET_ADMIN does not bypass file modes).
    #[error(
        "dtun cannot open {TUN_NODE} ({why}; its mode is {mode:o}, dtun runs as uid {uid}): \
         make it readable and writable by everyone as udev does (chmod 0666 {TUN_NODE}; \
         creating a device still needs CAP_NET_ADMIN), or run dtun as root"
    )]
    TunNode {
        uid: String,
        mode: u32,
        why: std::io::Error,
    },
}

/// Refuses to start without CAP_NET_ADMIN or access to /dev/net/tun, before anything is made:
/// otherwise a server would listen and fail only at its first client. What cannot be read
/// (no /proc, no /dev/net/tun) is left to the kernel's answer later, with its own message.
pub fn check() -> Result<(), Missing> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Ok(());
    };
    let uid = field(&status, "Uid:")
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    if net_admin_in(&status) == Some(false) {
        return Err(Missing::NetAdmin { uid });
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_NODE)
    {
        Err(why) if why.kind() == std::io::ErrorKind::PermissionDenied => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(TUN_NODE)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0);
            Err(Missing::TunNode { uid, mode, why })
        }
        _ => Ok(()),
    }
}

/// Whether the `CapEff:` line of a /proc/PID/status text holds CAP_NET_ADMIN.
pub fn net_admin_in(status: &str) -> Option<bool> {
    let eff = u64::from_str_radix(field(status, "CapEff:")?.trim(), 16).ok()?;
    Some(eff & (1 << CAP_NET_ADMIN) != 0)
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(name))
}

/// Added to "cannot read FILE: …" when the answer was EACCES: who must be able to read it.
pub fn unreadable_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        ": make it readable by the user dtun runs as (the packaged units run as user dtun: \
         chown root:dtun FILE && chmod 0640 FILE)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_is_read_from_proc_status() {
        let with = "Name:\tdtun\nUid:\t4242\t4242\t4242\t4242\nCapEff:\t0000000000001000\n";
        assert_eq!(net_admin_in(with), Some(true));
        let without = "Uid:\t4242\t4242\t4242\t4242\nCapEff:\t0000000000000400\n";
        assert_eq!(net_admin_in(without), Some(false));
        assert_eq!(net_admin_in("Name:\tdtun\n"), None);
        assert_eq!(net_admin_in("CapEff:\tzz\n"), None);
    }
}
