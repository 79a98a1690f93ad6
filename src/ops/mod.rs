//! Operating dtun, apart from the tunnel itself:
//! - **configuration**: the TOML file (`-config`, `config_file`, its values checked as they
//!   are read in `values`), `-check` (`check`), reloading a running server (SIGHUP and
//!   `dtun reload`, `reload`), adding a client to a server's file (`client_add`);
//! - **seeing what runs**: the control sockets `/run/dtun/NETNS.INSTANCE.sock` and
//!   `.admin.sock` behind `dtun status` and `dtun reload` (`control`), the snapshot it shows (`status`), `-metrics` over HTTP
//!   (`metrics`);
//! - **running as a service**: readiness for systemd (`notify`), what to say when a privilege
//!   is missing (`privilege`), shell completions and the man page (`docs`).
//!
//! Status and metrics read the same snapshots, taken off the data path: the server's manager
//! answers a request on a channel between its other events (its counters are relaxed atomics,
//! read in passing); the client publishes its state changes on a [`ClientBoard`] (a mutex
//! taken at each change of state and by readers, never per packet; `board`).

mod board;
pub mod check;
pub mod client_add;
pub mod control;
pub mod docs;
pub mod metrics;
pub mod notify;
pub mod perms;
pub mod reload;
pub mod status;

pub use board::{ClientBoard, LiveSession, RekeyCell};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use status::{Clock, ServerView, Status};

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
                    Ok(Ok(v)) => Some(Status::Server(Box::new(v))),
                    _ => None,
                }
            }
            Source::Client(board) => Some(Status::Client(Box::new(board.view(Clock::now())))),
        }
    }
}

/// Runs the control socket and, if given, the metrics listener until the task is aborted.
pub async fn serve(
    control: control::Control,
    metrics: Option<(tokio::net::TcpListener, Option<metrics::Token>)>,
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
    let _metrics = metrics
        .map(|(l, token)| AbortOnDrop(tokio::spawn(metrics::serve(l, source.clone(), token))));
    control::serve(control, source, reload).await;
}

/// Aborts its task when dropped (when `serve` is aborted, what it started ends with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
