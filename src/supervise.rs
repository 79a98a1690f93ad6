//! No task the process needs may die alone. A panic anywhere is logged through `tracing` and
//! ends the process with [`EXIT_INTERNAL`], so systemd or the user restarts it; the release
//! profile also has `panic = "abort"`. The long-lived tasks (the server's demultiplexer, the
//! client's loop) are awaited by their owners as well, which turn an unexpected end into the
//! same exit ([`TaskEnded`]).
//!
//! With the test-only cargo feature `fault-injection`, [`fault_point`] panics on a crafted
//! inner packet, so the tests can watch that happen; without it, it compiles to nothing.

/// Exit status after an internal error (a panic, a task that ended unexpectedly):
/// EX_SOFTWARE of sysexits.h.
pub const EXIT_INTERNAL: i32 = 70;

/// Words of the log line a panic leaves (tests look for them).
pub const LOG_PANIC: &str = "internal error (panic)";

/// A task the process needs ended (`why`: a panic's message, or that it returned).
#[derive(Debug, thiserror::Error)]
#[error("internal error: the {task} stopped ({why}); exiting so that dtun is restarted")]
pub struct TaskEnded {
    pub task: &'static str,
    pub why: String,
}

impl TaskEnded {
    /// From a task's join result: a panic's message, or that it returned.
    pub fn from_join<T>(task: &'static str, r: Result<T, tokio::task::JoinError>) -> TaskEnded {
        let why = match r {
            Ok(_) => "it returned".to_string(),
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("panicked: {msg}")
            }
            Err(e) => e.to_string(),
        };
        TaskEnded { task, why }
    }
}

/// Installs the process's panic hook: one error line through `tracing` (with the thread and
/// the place), then exit with [`EXIT_INTERNAL`]. A panicking task would otherwise vanish while
/// the process ran on without it (the server's demultiplexer: no session and no handshake
/// works any more, and nothing restarts it).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            "{LOG_PANIC} in thread {name}{at}: {msg}; exiting with status {EXIT_INTERNAL} so that dtun is restarted"
        );
        eprintln!("dtun: {LOG_PANIC} in thread {name}{at}: {msg}");
        std::process::exit(EXIT_INTERNAL);
    }));
}

/// Where a fault can be injected (test-only feature `fault-injection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// The server's demultiplexer, on a client's authenticated packet.
    Demux,
    /// An outbound task, on a packet read from the TUN.
    Outbound,
    /// The client's loop, on the server's authenticated packet.
    Client,
}

impl Site {
    pub fn name(self) -> &'static str {
        match self {
            Site::Demux => "demux",
            Site::Outbound => "outbound",
            Site::Client => "client",
        }
    }
}

/// Start of the IP payload that triggers a fault, followed by the site's name; the packet is
/// IPv4 with protocol 253 (RFC 3692: for experiments) and a 20-byte header.
pub const FAULT_MAGIC: &[u8] = b"dtun-fault-injection:";
pub const FAULT_PROTOCOL: u8 = 253;

/// Panics if `packet` asks for a fault at `site` (test-only feature `fault-injection`).
#[cfg(feature = "fault-injection")]
pub fn fault_point(site: Site, packet: &[u8]) {
    if packet.len() >= 20 + FAULT_MAGIC.len()
        && packet[0] == 0x45
        && packet[9] == FAULT_PROTOCOL
        && packet[20..].starts_with(FAULT_MAGIC)
        && packet[20 + FAULT_MAGIC.len()..].starts_with(site.name().as_bytes())
    {
        panic!("fault injected in the {}", site.name());
    }
}

/// The first sequence number of our application records in epoch 1: [`FIRST_APP_SEQUENCE`];
/// with the test-only feature `fault-injection`, `DTUN_TEST_FIRST_SEQUENCE` if set, so a test
/// can start a session near the end of the sequence space.
///
/// [`FIRST_APP_SEQUENCE`]: dtun_proto::consts::FIRST_APP_SEQUENCE
pub fn first_app_sequence() -> u64 {
    #[cfg(feature = "fault-injection")]
    if let Some(seq) = std::env::var("DTUN_TEST_FIRST_SEQUENCE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seq;
    }
    dtun_proto::consts::FIRST_APP_SEQUENCE
}

/// Without the test-only feature: nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fault_point(_site: Site, _packet: &[u8]) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task's panic becomes a TaskEnded that names the task and the panic's message (what
    /// the server logs and exits 70 with when the exiting hook is not installed).
    #[tokio::test]
    async fn a_panicking_task_is_reported_with_its_message() {
        let r = tokio::spawn(async { panic!("boom") }).await;
        let e = TaskEnded::from_join("demultiplexer", r);
        assert_eq!(e.task, "demultiplexer");
        assert_eq!(e.why, "panicked: boom");
        assert!(e.to_string().contains("the demultiplexer stopped"), "{e}");
        let e = TaskEnded::from_join("client loop", Ok::<(), tokio::task::JoinError>(()));
        assert_eq!(e.why, "it returned");
    }

    /// The fault trigger fires only on its exact shape and site.
    #[cfg(feature = "fault-injection")]
    #[test]
    fn faults_fire_only_on_the_crafted_packet() {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[9] = FAULT_PROTOCOL;
        p.extend_from_slice(FAULT_MAGIC);
        p.extend_from_slice(b"demux");
        fault_point(Site::Client, &p);
        fault_point(Site::Outbound, &p);
        fault_point(Site::Demux, &p[..p.len() - 1]);
        let mut other = p.clone();
        other[9] = 6;
        fault_point(Site::Demux, &other);
        let fired = std::panic::catch_unwind(|| fault_point(Site::Demux, &p));
        assert!(fired.is_err());
    }
}
