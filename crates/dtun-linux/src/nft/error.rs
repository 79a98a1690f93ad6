//! What can go wrong with dtun's nftables table, as messages that say what to do.

use std::io;

use rustables::error::QueryError;

use super::{IP_FORWARD, Policy, what};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "-instance {0:?}: use 1 to 32 letters, digits, '-' or '_' (it names the nftables table dtun-NAME)"
    )]
    BadInstance(String),
    #[error(
        "another dtun runs as instance {0:?} in this network namespace (its nftables table dtun-{0} is in use): give this one another -instance NAME"
    )]
    InstanceInUse(String),
    #[error(
        "{what} needs CAP_NET_ADMIN to create the nftables table {table}: {grant}",
        grant = crate::privilege::GRANT_NET_ADMIN
    )]
    Permission { what: &'static str, table: String },
    #[error(
        "{what}: this kernel has no nf_tables support ({detail}): load the modules (modprobe nf_tables \
         nft_masq nft_ct) or build the kernel with CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET, \
         CONFIG_NFT_MASQ and CONFIG_NFT_CT; or run without {what}"
    )]
    NoNfTables { what: &'static str, detail: String },
    #[error("{what}: the kernel refused the nftables table {table}: {detail}")]
    Kernel {
        what: &'static str,
        table: String,
        detail: String,
    },
    #[error("cannot take the forwarding lock: {0}")]
    Lock(String),
    #[error(transparent)]
    RunDir(crate::rundir::RunDirError),
    #[error("cannot record IPv4 forwarding from before dtun in {0}: {1}")]
    State(String, io::Error),
    #[error("cannot find the index of the TUN device {0}: {1}")]
    Device(String, io::Error),
    #[error(
        "cannot turn on IPv4 forwarding ({IP_FORWARD}: {0}): run as root in a namespace whose \
         /proc/sys is writable (with CAP_NET_ADMIN; under systemd without ProtectKernelTunables=), \
         or run without -nat / -client-to-client on"
    )]
    Forwarding(io::Error),
}

/// Turns a failure of nf_tables into a message that says what to do.
pub(super) fn classify(e: QueryError, policy: &Policy, table: &str) -> NftError {
    let what = what(policy);
    let errno = match &e {
        // The kernel sends a negative errno; take its magnitude whatever the sign convention.
        QueryError::NetlinkError(m) => Some(m.error.abs()),
        QueryError::NetlinkOpenError(n)
        | QueryError::NetlinkSendError(n)
        | QueryError::NetlinkRecvError(n) => Some(*n as i32),
        _ => None,
    };
    classify_errno(errno, &e.to_string(), what, table)
}

pub(super) fn classify_errno(
    errno: Option<i32>,
    text: &str,
    what: &'static str,
    table: &str,
) -> NftError {
    let detail = match errno {
        Some(n) => format!("{text}: {}", io::Error::from_raw_os_error(n)),
        None => text.to_string(),
    };
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => NftError::Permission {
            what,
            table: table.to_string(),
        },
        // No nfnetlink (EPROTONOSUPPORT), no nf_tables subsystem or family (EAFNOSUPPORT,
        // EOPNOTSUPP), or no expression/chain type such as masq, ct or nat (ENOENT).
        Some(libc::EPROTONOSUPPORT)
        | Some(libc::EAFNOSUPPORT)
        | Some(libc::EOPNOTSUPP)
        | Some(libc::ENOENT) => NftError::NoNfTables { what, detail },
        _ => NftError::Kernel {
            what,
            table: table.to_string(),
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do() {
        let m = classify_errno(Some(libc::EPROTONOSUPPORT), "open", "-nat", "dtun-x").to_string();
        assert!(m.contains("no nf_tables") && m.contains("modprobe"), "{m}");
        let m = classify_errno(Some(libc::ENOENT), "kernel", "-nat", "dtun-x").to_string();
        assert!(m.contains("CONFIG_NFT_MASQ"), "{m}");
        let m = classify_errno(Some(libc::EPERM), "kernel", "-nat", "dtun-x").to_string();
        assert!(m.contains("CAP_NET_ADMIN") && m.contains("dtun-x"), "{m}");
        let m = classify_errno(Some(libc::EINVAL), "kernel", "-nat", "dtun-x").to_string();
        assert!(m.contains("refused") && m.contains("dtun-x"), "{m}");
        let m = NftError::Forwarding(io::Error::from_raw_os_error(libc::EROFS)).to_string();
        assert!(
            m.contains("ip_forward") && m.contains("without -nat"),
            "{m}"
        );
    }
}
