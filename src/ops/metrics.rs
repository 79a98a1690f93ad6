//! `-metrics ADDR`: the snapshot of [`super::status`] as OpenMetrics text (`prometheus-client`
//! encodes it) at `GET /metrics`, over HTTP/1.1 (`hyper`). Off unless asked for. Each scrape
//! takes a fresh snapshot and encodes it into a registry of its own, so nothing is counted
//! twice and the data path keeps its plain atomics.
//!
//! A scraper cannot tie dtun up: at most [`MAX_CONNECTIONS`] connections at once (more are
//! closed), headers within 5 s, a whole connection within [`CONNECTION_TIMEOUT`], one request
//! per connection.

use std::net::SocketAddr;
use std::sync::Arc;
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
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for -metrics on {addr}: {source}{hint}")]
pub struct MetricsError {
    addr: SocketAddr,
    source: std::io::Error,
    hint: &'static str,
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
        MetricsError { addr, source, hint }
    })
}

/// Serves scrapes for ever (until the task is aborted).
pub async fn serve(listener: TcpListener, source: Source) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!("-metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| answer(req, source.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
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
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        Ok(r)
    };
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
        let t = text(&Status::Client(board.view(Clock::now())));
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
