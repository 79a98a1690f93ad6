//! Operating dtun: readiness for systemd (`notify`), what to say when a privilege is missing
//! (`privilege`), shell completions and the man page (`docs`); the configuration file (`-config`, `config_file`), checking it (`-check`,
//! `check`) and reloading a running server (SIGHUP, `reload`); seeing what runs: the control socket `@dtun/INSTANCE` behind `dtun status` (`control`),
//! the snapshot it shows (`status`), and `-metrics` over HTTP (`metrics`).
//!
//! Both read the same snapshots, taken off the data path: the server's manager answers a
//! request on a channel between its other events (its counters are relaxed atomics, read in
//! passing); the client publishes its state changes on a [`ClientBoard`] (a mutex taken at
//! each change of state and by readers, never per packet).

pub mod check;
pub mod config_file;
pub mod control;
pub mod docs;
pub mod metrics;
pub mod notify;
pub mod privilege;
pub mod reload;
pub mod status;
mod values;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::pump::Counters;
use crate::record::Suite;
use status::{ClientView, Clock, ServerView, SessionView, Status, Traffic, TunnelView};

/// A request for the server's snapshot, answered by its manager.
pub type ServerRequest = oneshot::Sender<ServerView>;

/// How long a reader waits for a snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where snapshots come from.
#[derive(Clone)]
pub enum Source {
    Server(mpsc::Sender<ServerRequest>),
    Client(Arc<ClientBoard>),
}

impl Source {
    /// The server's source and the receiving end its manager answers; at most a few requests
    /// wait (readers are capped), a full queue makes a reader give up, never the manager wait.
    pub fn server() -> (Source, mpsc::Receiver<ServerRequest>) {
        let (tx, rx) = mpsc::channel(4);
        (Source::Server(tx), rx)
    }

    /// A snapshot now, or None if the server is too busy to answer in time.
    pub async fn snapshot(&self) -> Option<Status> {
        match self {
            Source::Server(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.try_send(reply).ok()?;
                match tokio::time::timeout(SNAPSHOT_TIMEOUT, rx).await {
                    Ok(Ok(v)) => Some(Status::Server(v)),
                    _ => None,
                }
            }
            Source::Client(board) => Some(Status::Client(board.view(Clock::now()))),
        }
    }
}

/// Runs the control socket and, if given, the metrics listener until the task is aborted.
pub async fn serve(
    control: tokio::net::UnixListener,
    metrics: Option<tokio::net::TcpListener>,
    source: Source,
    reload: Option<reload::ReloadHandle>,
) {
    let _sampler = match &source {
        Source::Client(board) => {
            let board = Arc::clone(board);
            // Samples the session's authenticated-record count once a second (the time of
            // the last one, to within a second, without a clock read per packet).
            Some(AbortOnDrop(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    board.sample();
                }
            })))
        }
        Source::Server(_) => None,
    };
    let _metrics = metrics.map(|l| AbortOnDrop(tokio::spawn(metrics::serve(l, source.clone()))));
    control::serve(control, source, reload).await;
}

/// Aborts its task when dropped (when `serve` is aborted, what it started ends with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client session that is up, as the board keeps it.
pub struct LiveSession {
    pub counters: Arc<Counters>,
    pub suite: Suite,
    pub device: String,
    pub local_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
    pub started: Instant,
    /// Negotiated (the server said Hello) and the period; None: not a dtun server, or -compat.
    pub keepalive: Option<Duration>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Up,
    BackingOff { until: Instant },
}

struct Board {
    instance: String,
    id: String,
    host: String,
    server: Option<SocketAddr>,
    state: State,
    since: Instant,
    last_error: Option<String>,
    session: Option<LiveSession>,
    sessions: u64,
    /// Sessions that ended, added up.
    past: Traffic,
    /// Authenticated records seen at the last sample, and when that count last moved.
    seen: (u64, Instant),
}

/// The client's state, published at each change for `dtun status` and `-metrics`.
pub struct ClientBoard(Mutex<Board>);

impl ClientBoard {
    pub fn new(instance: &str, id: &str, host: &str) -> ClientBoard {
        let now = Instant::now();
        ClientBoard(Mutex::new(Board {
            instance: instance.to_string(),
            id: id.to_string(),
            host: host.to_string(),
            server: None,
            state: State::Connecting,
            since: now,
            last_error: None,
            session: None,
            sessions: 0,
            past: Traffic::zero(),
            seen: (0, now),
        }))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Board) -> R) -> R {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut b)
    }

    fn set_state(b: &mut Board, s: State) {
        if b.state != s {
            b.state = s;
            b.since = Instant::now();
        }
    }

    /// A new try starts.
    pub fn connecting(&self) {
        self.with(|b| Self::set_state(b, State::Connecting));
    }

    /// The server's address for this try.
    pub fn server(&self, addr: SocketAddr) {
        self.with(|b| b.server = Some(addr));
    }

    /// The tunnel is up and forwarding.
    pub fn up(&self, s: LiveSession) {
        self.with(|b| {
            b.seen = (s.counters.authenticated(), Instant::now());
            b.session = Some(s);
            b.sessions += 1;
            Self::set_state(b, State::Up);
        });
    }

    /// The session (if one was up) ended; its counters go to the totals.
    pub fn ended(&self) {
        self.with(|b| {
            if let Some(s) = b.session.take() {
                b.past.add(&Traffic::of(&s.counters));
            }
        });
    }

    /// The last try failed with `error`; the next starts after `delay`.
    pub fn backing_off(&self, delay: Duration, error: String) {
        self.with(|b| {
            Self::set_state(
                b,
                State::BackingOff {
                    until: Instant::now() + delay,
                },
            );
            b.last_error = Some(error);
        });
    }

    fn sample(&self) {
        self.with(|b| {
            if let Some(s) = &b.session {
                let n = s.counters.authenticated();
                if n != b.seen.0 {
                    b.seen = (n, Instant::now());
                }
            }
        });
    }

    pub fn view(&self, clock: Clock) -> ClientView {
        self.sample();
        self.with(|b| {
            let tunnel = b.session.as_ref().map(|s| {
                let keepalive =
                    status::Keepalive::new(s.keepalive.is_some(), s.keepalive.unwrap_or_default());
                TunnelView {
                    device: s.device.clone(),
                    local_ip: s.local_ip,
                    peer_ip: s.peer_ip,
                    session: SessionView {
                        cipher: s.suite.name(),
                        last_handshake: clock.unix(s.started),
                        last_handshake_age: clock.age(s.started),
                        last_authenticated: clock.unix(b.seen.1),
                        last_authenticated_age: clock.age(b.seen.1),
                        keepalive,
                    },
                    traffic: Traffic::of(&s.counters),
                }
            });
            let traffic = match &tunnel {
                Some(t) => b.past.clone().plus(&t.traffic),
                None => b.past.clone(),
            };
            let (state, until) = match b.state {
                State::Connecting => ("connecting", None),
                State::Up => ("up", None),
                State::BackingOff { until } => ("backing_off", Some(until)),
            };
            ClientView {
                role: "client",
                instance: b.instance.clone(),
                version: env!("CARGO_PKG_VERSION"),
                pid: std::process::id(),
                now: clock.unix_now(),
                id: b.id.clone(),
                server_host: b.host.clone(),
                server_address: b.server.map(|a| a.to_string()),
                state,
                state_since: clock.unix(b.since),
                state_since_age: clock.age(b.since),
                backoff_until: until.map(|t| clock.unix(t)),
                backoff_until_in: until.map(|t| clock.until(t)),
                last_error: b.last_error.clone(),
                sessions_started: b.sessions,
                tunnel,
                traffic,
            }
        })
    }
}
