//! `-metrics ADDR`: the snapshot of [`super::status`] as OpenMetrics text (`prometheus-client`
//! encodes it) at `GET /metrics`, over HTTP/1.1 (`hyper`). Off unless asked for. Each scrape
//! takes a fresh snapshot and encodes it into a registry of its own, so nothing is counted
//! twice and the data path keeps its plain atomics.
//!
//! Access: a loopback bind may go without a token; any other needs `-metrics-token FILE`,
//! and then every scrape must send `Authorization: Bearer TOKEN` (what Prometheus'
//! `authorization` setting sends), compared in constant time; otherwise the start (and
//! `-check`) is refused, because the ids and addresses it shows are for the operator only.
//!
//! A scraper cannot tie dtun up: at most [`MAX_CONNECTIONS`] connections at once and
//! [`MAX_PER_SOURCE`] from one address (more are closed), headers within
//! [`HEADER_TIMEOUT`] (slowloris), a whole connection within [`CONNECTION_TIMEOUT`], one
//! request per connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Source;
use super::status::{ClientView, ServerView, Status, Traffic};

pub const MAX_CONNECTIONS: usize = 8;
/// Connections one source address may hold at once, so one scraper (or one attacker) cannot
/// take all of [`MAX_CONNECTIONS`].
pub const MAX_PER_SOURCE: usize = 2;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for -metrics on {addr}: {error}{hint}")]
pub struct MetricsError {
    addr: SocketAddr,
    error: std::io::Error,
    hint: &'static str,
}

/// Why `-metrics` with its token is refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "-metrics {0} is not a loopback address: anyone who reaches it could read every client id and address; give -metrics-token FILE (scrapers then send `Authorization: Bearer TOKEN`) or bind 127.0.0.1"
    )]
    NoToken(SocketAddr),
    #[error("-metrics-token {0}: {1}: check the path")]
    Read(PathBuf, std::io::Error),
    #[error("-metrics-token {0} is {1}: put a random token in it (e.g. `dtun genkey > {0}`)")]
    Bad(PathBuf, &'static str),
    #[error("-metrics-token is given without -metrics: add -metrics ADDR or drop the token")]
    Unused,
}

/// The bearer token scrapes must present: the file's content less one trailing newline.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Whether an `Authorization` header value carries this token (constant time in the
    /// token's bytes).
    fn admits(&self, header: Option<&hyper::header::HeaderValue>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(got) = header.and_then(|h| h.as_bytes().strip_prefix(b"Bearer ")) else {
            return false;
        };
        bool::from(got.ct_eq(&self.0))
    }
}

/// What `-metrics` and `-metrics-token` allow, checked at start and by `-check`: the token
/// (if any) to demand; refused: a non-loopback address without a token, an unreadable, empty
/// or non-printable token file, a token without `-metrics`.
pub fn access(
    addr: Option<SocketAddr>,
    token_file: Option<&Path>,
) -> Result<Option<Token>, AccessError> {
    let Some(addr) = addr else {
        return match token_file {
            Some(_) => Err(AccessError::Unused),
            None => Ok(None),
        };
    };
    let Some(path) = token_file else {
        return if addr.ip().is_loopback() {
            Ok(None)
        } else {
            Err(AccessError::NoToken(addr))
        };
    };
    let mut t = std::fs::read(path).map_err(|e| AccessError::Read(path.to_path_buf(), e))?;
    if t.last() == Some(&b'\n') {
        t.pop();
    }
    if t.is_empty() {
        return Err(AccessError::Bad(path.to_path_buf(), "empty"));
    }
    // A header value carries visible ASCII: anything else could never be sent.
    if !t.iter().all(|b| b.is_ascii_graphic()) {
        return Err(AccessError::Bad(
            path.to_path_buf(),
            "not one line of visible ASCII (no spaces)",
        ));
    }
    Ok(Some(Token(t.into())))
}

/// Binds the `-metrics` address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr).await.map_err(|source| {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => ": the port is taken; choose another -metrics port",
            std::io::ErrorKind::AddrNotAvailable => {
                ": -metrics must name an address of this machine (e.g. 127.0.0.1:9586)"
            }
            std::io::ErrorKind::PermissionDenied => {
                ": ports below 1024 need CAP_NET_BIND_SERVICE; choose a higher port"
            }
            _ => "",
        };
        MetricsError {
            addr,
            error: source,
            hint,
        }
    })
}

/// Connections held per source address; a [`SourceSlot`] gives its one back when dropped.
#[derive(Default, Clone)]
struct PerSource(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct SourceSlot(PerSource, IpAddr);

impl PerSource {
    /// A slot for one more connection from `ip`, or None if it holds [`MAX_PER_SOURCE`].
    fn take(&self, ip: IpAddr) -> Option<SourceSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= MAX_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot(self.clone(), ip))
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = (self.0).0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Serves scrapes for ever (until the task is aborted); with a token, only scrapes that
/// present it.
pub async fn serve(listener: TcpListener, source: Source, token: Option<Token>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_source = PerSource::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("-metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(from_source) = per_source.take(peer.ip()) else {
            tracing::debug!(
                "-metrics: {} holds {MAX_PER_SOURCE} connections: closed",
                peer.ip()
            );
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let (source, token) = (source.clone(), token.clone());
        tokio::spawn(async move {
            let _permit = (permit, from_source);
            let svc =
                hyper::service::service_fn(move |req| answer(req, source.clone(), token.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                tracing::debug!("-metrics: {e}");
            }
        });
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    source: Source,
    token: Option<Token>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        Ok(r)
    };
    if let Some(t) = &token
        && !t.admits(req.headers().get(hyper::header::AUTHORIZATION))
    {
        let mut r = Response::new(Full::new(Bytes::from(
            "dtun -metrics needs `Authorization: Bearer TOKEN` (the -metrics-token file)\n",
        )));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return Ok(r);
    }
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "dtun serves only /metrics\n".into(),
        );
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        );
    }
    match source.snapshot().await {
        Some(s) => reply(StatusCode::OK, CONTENT_TYPE, text(&s)),
        None => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "dtun is too busy to answer: try again\n".into(),
        ),
    }
}

type Labels = Vec<(&'static str, String)>;

/// A counter family registered under `name`.
fn counters(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// Traffic counters, once per label set (`id` or none).
struct TrafficFamilies([Family<Labels, Counter>; 5]);

impl TrafficFamilies {
    fn register(reg: &mut Registry, prefix: &str, whose: &str) -> Self {
        let mut f =
            |n: &str, h: &str| counters(reg, &format!("{prefix}{n}"), &format!("{h}{whose}"));
        TrafficFamilies([
            f("rx_bytes", "Bytes of packets received through the tunnel"),
            f("rx_packets", "Packets received through the tunnel"),
            f("tx_bytes", "Bytes of packets sent through the tunnel"),
            f("tx_packets", "Packets sent through the tunnel"),
            f("drops", "Records and packets dropped, by reason"),
        ])
    }

    fn record(&self, labels: &Labels, t: &Traffic) {
        let [rxb, rxp, txb, txp, drops] = &self.0;
        for (f, v) in [
            (rxb, t.rx_bytes),
            (rxp, t.rx_packets),
            (txb, t.tx_bytes),
            (txp, t.tx_packets),
        ] {
            f.get_or_create(labels).inc_by(v);
        }
        for (reason, v) in &t.drops {
            let mut l = labels.clone();
            l.push(("reason", reason.to_string()));
            drops.get_or_create(&l).inc_by(*v);
        }
    }
}

/// The OpenMetrics text of a snapshot.
pub fn text(s: &Status) -> String {
    let mut reg = Registry::with_prefix("dtun");
    match s {
        Status::Server(v) => server(&mut reg, v),
        Status::Client(v) => client(&mut reg, v),
    }
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

fn server(reg: &mut Registry, v: &ServerView) {
    gauge(
        reg,
        "sessions",
        "Live client sessions",
        v.clients.len() as i64,
    );
    gauge(
        reg,
        "devices",
        "TUN devices, lingering ones included",
        (v.clients.len() + v.lingering.len()) as i64,
    );
    let a = &v.admission;
    for (name, help, value) in [
        ("handshake_cookies", "Stateless cookies sent", a.cookies),
        (
            "handshakes",
            "Handshakes started from a proven address",
            a.handshakes,
        ),
        (
            "handshake_failures",
            "Handshakes that failed",
            a.handshake_failed,
        ),
        (
            "handshake_evictions",
            "Handshakes dropped for a newcomer, over budget or stalled",
            a.handshake_evicted,
        ),
        (
            "handshake_limit",
            "ClientHellos refused: every handshake slot was busy",
            a.handshake_limit,
        ),
        (
            "unknown_peer_datagrams",
            "Datagrams from addresses without a session that started no handshake",
            a.unknown_peer,
        ),
        (
            "events_dropped",
            "Session events lost to a full queue",
            a.events_dropped,
        ),
        (
            "refused_max_clients",
            "New ids turned away at -max-clients",
            a.refused_max_clients,
        ),
    ] {
        counter(reg, name, help, value);
    }
    TrafficFamilies::register(reg, "", ", all sessions").record(&Vec::new(), &v.traffic);
    let per =
        TrafficFamilies::register(reg, "client_", ", per client id, since its device was made");
    let connected = Family::<Labels, Gauge>::default();
    reg.register(
        "client_connected",
        "1 while the id has a session, 0 while its device lingers",
        connected.clone(),
    );
    for c in &v.clients {
        let l = vec![("id", c.id.clone())];
        per.record(&l, &c.traffic);
        connected.get_or_create(&l).set(1);
    }
    for d in &v.lingering {
        let l = vec![("id", d.id.clone())];
        per.record(&l, &d.traffic);
        connected.get_or_create(&l).set(0);
    }
}

fn client(reg: &mut Registry, v: &ClientView) {
    gauge(
        reg,
        "up",
        "1 while the tunnel is up",
        i64::from(v.state == "up"),
    );
    gauge(
        reg,
        "backing_off",
        "1 while waiting before the next try",
        i64::from(v.state == "backing_off"),
    );
    counter(
        reg,
        "sessions_started",
        "Sessions that came up",
        v.sessions_started,
    );
    TrafficFamilies::register(reg, "", ", all sessions").record(&Vec::new(), &v.traffic);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::Clock;

    #[test]
    fn client_text_has_totals_and_reasons() {
        let board = crate::ops::ClientBoard::new("dtun", "laptop", "vpn.example.com");
        let t = text(&Status::Client(Box::new(board.view(Clock::now()))));
        for want in [
            "dtun_up 0",
            "dtun_rx_bytes_total 0",
            "dtun_drops_total{reason=\"replay\"} 0",
            "dtun_sessions_started_total 0",
            "# EOF",
        ] {
            assert!(t.contains(want), "{want} missing:\n{t}");
        }
    }
}
