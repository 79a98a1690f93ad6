//! The one place with `unsafe`: socket options that neither std, socket2 nor quinn-udp offer
//! (SO_PEERCRED on a blocking socket among them), killpg(2) for the scripts' process groups,
//! if_nametoindex(3), and dissolving a UDP socket's association (connect to AF_UNSPEC).
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

/// Sets IP_MTU_DISCOVER (and IPV6_MTU_DISCOVER on an IPv6 socket) to "want": don't-fragment is
/// set while a datagram fits the path MTU, and the kernel fragments one that does not (the
/// default for UDP, which quinn-udp replaces with "probe").
pub fn set_pmtudisc_want(sock: &socket2::SockRef<'_>) -> std::io::Result<()> {
    let v4 = setsockopt_int(
        sock,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_WANT,
    );
    let v6 = setsockopt_int(
        sock,
        libc::IPPROTO_IPV6,
        libc::IPV6_MTU_DISCOVER,
        libc::IPV6_PMTUDISC_WANT,
    );
    v4.or(v6)
}

/// Turns UDP GRO on or off: while on, the kernel may hand over several same-sized datagrams
/// of one sender as one buffer, with their size in a control message.
pub fn set_udp_gro(sock: &socket2::SockRef<'_>, on: bool) -> std::io::Result<()> {
    setsockopt_int(sock, libc::SOL_UDP, libc::UDP_GRO, libc::c_int::from(on))
}

/// Sets SO_MARK: the firewall mark every packet of the socket carries, which policy routing
/// rules can match (`-route`: dtun's own datagrams skip its routing table). Needs CAP_NET_ADMIN.
pub fn set_mark(sock: &socket2::SockRef<'_>, mark: u32) -> std::io::Result<()> {
    setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

/// Dissolves a connected UDP socket's association (connect(2) to an AF_UNSPEC address): a
/// socket bound to no address and port of its own also forgets its source address and port,
/// so the next connect picks both afresh, as the routes are now (the client re-binds after
/// its address changed).
pub fn disconnect(sock: &impl AsRawFd) -> std::io::Result<()> {
    // SAFETY: an all-zero sockaddr with sa_family AF_UNSPEC is a valid argument of its size;
    // the fd is a live socket borrowed for the call.
    let r = unsafe {
        let mut addr: libc::sockaddr = std::mem::zeroed();
        addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            sock.as_raw_fd(),
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn setsockopt_int(
    sock: &socket2::SockRef<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: the fd is a live socket borrowed for the call; the option value is a c_int on
    // the stack whose size is passed along, as setsockopt(2) requires.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The path MTU the kernel currently knows for a connected UDP socket: IP_MTU for an IPv4
/// socket, IPV6_MTU for an IPv6 one (which also covers v4-mapped peers). It starts at the
/// route's MTU and drops once an ICMP "fragmentation needed" / "packet too big" came back for
/// a datagram sent with don't-fragment. Fails with ENOTCONN on an unconnected socket.
pub fn path_mtu(sock: &socket2::SockRef<'_>) -> std::io::Result<u32> {
    let (level, name) = if sock.local_addr()?.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is a live socket borrowed for the call; the kernel writes at most `len`
    // bytes into the c_int on the stack and stores the size it wrote back into `len`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    u32::try_from(value).map_err(|_| std::io::Error::other("negative path MTU"))
}

/// Sends `signal` to every process of process group `pgid` (killpg(2)). Refuses group ids 0
/// and 1, which would mean our own group or init's.
pub fn kill_process_group(pgid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|&g| g > 1)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: killpg takes plain integers and touches no memory of ours.
    let r = unsafe { libc::killpg(pgid, signal) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The index of the network interface `name` in this network namespace (if_nametoindex(3)).
pub fn if_index(name: &str) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a name"))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which only reads it.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// Our effective user id (geteuid(2)): the one user besides root the status socket admits.
pub fn euid() -> u32 {
    // SAFETY: geteuid takes nothing, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the process at the other end of a connected Unix socket, as it was when that
/// end listened or connected (SO_PEERCRED).
pub fn peer_uid(sock: &impl AsRawFd) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live socket borrowed for the call; `cred` and `len` are on the stack
    // and `len` holds the size of `cred`, as getsockopt(2) requires.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(cred.uid)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Our effective group id (getegid(2)): a secret's group may read it if it is ours.
pub fn egid() -> u32 {
    // SAFETY: getegid takes nothing, touches no memory and cannot fail.
    unsafe { libc::getegid() }
}
