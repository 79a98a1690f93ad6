//! A client session and a server in memory (quinn's `Pair`): our [`ClientSession`] against our
//! admission and server handshake and a scripted server session (the address message, the
//! Hello answer with Addr6 and Dns, Pongs, a Close), over a simulated link (per-datagram fate:
//! loss, duplication, delay hence reordering; latency; MTU) with a simulated clock. No
//! sockets, no runtime, no root.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;

use super::{ClientSession, Config, End, Event};
use crate::admission::{Admission, Outcome};
use crate::consts::{
    ALERT_CLOSE_NOTIFY, ALERT_LEVEL_WARNING, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
    FINAL_FLIGHT_RESEND, FIRST_APP_SEQUENCE, PAYLOAD_OFFSET,
};
use crate::handshake::is_final_flight;
use crate::proto::{
    Addr6, AddressMessage, CONTROL_VERSION, CloseReason, Control, HINT_MARKER, HelloFlags,
};
use crate::record::{self, Opener, Sealer, Suite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    ToServer,
    ToClient,
}

/// The link's verdict on one datagram (direction, its number in that direction, its bytes):
/// one delay per copy delivered on top of the latency; none: lost.
pub type Fate = Box<dyn FnMut(Dir, usize, &[u8]) -> Vec<Duration>>;

/// What the scripted server does.
pub struct ServerScript {
    pub key: Vec<u8>,
    pub suites: Vec<Suite>,
    /// A dtun server (control messages) or an original one.
    pub dtun: bool,
    pub address: AddressMessage,
    pub addr6: Option<Addr6>,
    pub dns: Vec<IpAddr>,
    /// Instead of the address message: a Close with this reason.
    pub refuse: Option<CloseReason>,
    /// Answers Pings.
    pub pongs: bool,
}

impl Default for ServerScript {
    fn default() -> Self {
        ServerScript {
            key: b"the key".to_vec(),
            suites: vec![Suite::Aes128Gcm, Suite::Aes128Ccm8],
            dtun: true,
            address: AddressMessage {
                client: "10.86.0.2".parse().unwrap(),
                server: "10.86.0.1".parse().unwrap(),
            },
            addr6: Some(Addr6 {
                prefix_len: 64,
                client: "fd64:7475:6e00::2".parse().unwrap(),
                server: "fd64:7475:6e00::1".parse().unwrap(),
            }),
            dns: vec!["10.86.0.1".parse().unwrap()],
            refuse: None,
            pongs: true,
        }
    }
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct ServerSaw {
    pub established: bool,
    pub peernet: Option<String>,
    pub lans: bool,
    pub hellos: u32,
    pub pings: u32,
    /// When each Ping came (from the start).
    pub ping_times: Vec<Duration>,
    pub close: Option<CloseReason>,
    pub close_notify: bool,
}

struct Server {
    script: ServerScript,
    adm: Admission,
    keys: Option<(Sealer, Opener)>,
    final_flight: Vec<u8>,
    resent_at: Option<Instant>,
    saw: ServerSaw,
}

pub struct Pair {
    pub now: Instant,
    pub start: Instant,
    pub client: ClientSession,
    server: Server,
    pub latency: Duration,
    pub mtu: usize,
    fate: Fate,
    counts: [usize; 2],
    queue: Vec<(Instant, Dir, Vec<u8>)>,
    /// Every event of the client's, with when it came.
    pub events: Vec<(Duration, Event)>,
    /// Datagrams the link dropped for their size.
    pub too_big: usize,
    /// Once up, hand the keys to a data path as src/client/forward.rs does: it opens what
    /// comes, gives the session control records, alerts and news of them, and seals what
    /// the session asks for ([`super::Step::seal`]).
    pub detach: bool,
    data_path: Option<(Sealer, Opener)>,
}

impl Pair {
    pub fn new(cfg: Config, script: ServerScript, fate: Fate) -> Pair {
        let start = Instant::now();
        let mut hint = b"dtun".to_vec();
        if script.dtun {
            hint.extend_from_slice(HINT_MARKER.as_bytes());
        }
        let adm = Admission::new(script.suites.clone(), hint, start);
        let (client, step) = ClientSession::new(cfg, &SystemRandom::new(), start).unwrap();
        let mut p = Pair {
            now: start,
            start,
            client,
            server: Server {
                script,
                adm,
                keys: None,
                final_flight: vec![],
                resent_at: None,
                saw: ServerSaw::default(),
            },
            latency: Duration::from_millis(10),
            mtu: 1500,
            fate,
            counts: [0; 2],
            queue: vec![],
            events: vec![],
            too_big: 0,
            detach: false,
            data_path: None,
        };
        p.client_step(step);
        p
    }

    /// A client config for `Pair`: our key, both suites, a keepalive of 10 s.
    pub fn config() -> Config {
        Config {
            identity: b"laptop".to_vec(),
            key: zeroize::Zeroizing::new(b"the key".to_vec()),
            suites: vec![Suite::Aes128Gcm, Suite::Aes128Ccm8],
            peernet: "192.168.7.0/24".into(),
            lans: vec![],
            keepalive: Duration::from_secs(10),
            compat: false,
            first_sequence: FIRST_APP_SEQUENCE,
        }
    }

    pub fn saw(&self) -> &ServerSaw {
        &self.server.saw
    }

    fn send(&mut self, dir: Dir, dg: Vec<u8>) {
        let n = self.counts[dir as usize];
        self.counts[dir as usize] += 1;
        if dg.len() > self.mtu {
            self.too_big += 1;
            return;
        }
        for delay in (self.fate)(dir, n, &dg) {
            self.queue
                .push((self.now + self.latency + delay, dir, dg.clone()));
        }
    }

    fn client_step(&mut self, step: super::Step) {
        for d in step.send {
            self.send(Dir::ToServer, d);
        }
        for (content, payload) in step.seal {
            let Some((sealer, _)) = self.data_path.as_mut() else {
                continue;
            };
            let mut rec = vec![0u8; PAYLOAD_OFFSET + payload.len() + 16];
            rec[PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload.len()].copy_from_slice(&payload);
            let n = sealer.seal(content, &mut rec, payload.len()).unwrap();
            rec.truncate(n);
            self.send(Dir::ToServer, rec);
        }
        let (mut ready, mut up) = (false, false);
        for e in step.events {
            ready |= matches!(e, Event::Address(_));
            up |= matches!(e, Event::Up { .. });
            self.events.push((self.now - self.start, e));
        }
        if ready {
            // The caller makes the TUN at once.
            let step = self.client.tunnel_ready(self.now);
            self.client_step(step);
        }
        if up && self.detach {
            self.data_path = self.client.take_keys(self.now);
            assert!(
                self.data_path.is_some(),
                "the keys go to the data path once up"
            );
        }
    }

    /// A datagram to a client whose data path holds the keys (src/client/forward.rs).
    fn data_path(&mut self, mut dg: Vec<u8>) {
        let mut at = 0;
        let mut heard = false;
        while at < dg.len() {
            let Ok(r) = record::record_at(&dg, at) else {
                break;
            };
            at = r.end;
            let Some((_, opener)) = self.data_path.as_mut() else {
                return;
            };
            let Ok((content, plain)) = opener.open(&mut dg[r.clone()]) else {
                continue;
            };
            heard = true;
            let data = dg[r.start + plain.start..r.start + plain.end].to_vec();
            let step = if content == CONTENT_ALERT && data.len() == 2 {
                self.client.alert(self.now, data[0], data[1])
            } else if Control::is_control(&data) {
                self.client.control(self.now, &data)
            } else {
                continue;
            };
            self.client_step(step);
        }
        if heard {
            self.client.heard(self.now);
        }
    }

    /// An ICMP port unreachable reaches the client (anyone could have sent it).
    pub fn icmp_unreachable(&mut self) {
        let step = self.client.unreachable(self.now);
        self.client_step(step);
    }

    /// The client closes the session now with `reason`; what it says goes out.
    pub fn close_now(&mut self, reason: CloseReason) {
        let step = self.client.close(self.now, Some(reason));
        self.client_step(step);
    }

    /// The server sends one record now (a Close, an alert, a garbage control message).
    pub fn server_says(&mut self, content: u8, payload: &[u8]) {
        self.server_send(content, payload);
    }

    /// Runs until the client's session ended or `until` (simulated time from the start).
    pub fn run(&mut self, until: Duration) {
        let end = self.start + until;
        loop {
            self.queue.sort_by_key(|(t, _, _)| *t);
            let timer = self.client.next_timeout();
            let arrival = self.queue.first().map(|(t, _, _)| *t);
            let next = match (timer, arrival) {
                (Some(t), Some(a)) => t.min(a),
                (Some(t), None) => t,
                (None, Some(a)) => a,
                (None, None) => break,
            };
            if next > end || self.client.is_closed() {
                break;
            }
            self.now = next.max(self.now);
            if arrival.is_some_and(|a| a <= next) {
                let (_, dir, dg) = self.queue.remove(0);
                match dir {
                    Dir::ToClient if self.data_path.is_some() => self.data_path(dg),
                    Dir::ToClient => {
                        let step = self.client.datagram(self.now, &dg);
                        self.client_step(step);
                    }
                    Dir::ToServer => self.server_datagram(dg),
                }
            } else {
                let step = self.client.timeout(self.now);
                self.client_step(step);
            }
        }
        // Deliver what is in flight to the server (a farewell, say).
        self.queue.sort_by_key(|(t, _, _)| *t);
        for (_, dir, dg) in std::mem::take(&mut self.queue) {
            if dir == Dir::ToServer {
                self.server_datagram(dg);
            }
        }
    }

    /// The client's events, without times.
    pub fn client_events(&self) -> Vec<&Event> {
        self.events.iter().map(|(_, e)| e).collect()
    }

    /// When the client's first event matching `f` came.
    pub fn when(&self, f: impl Fn(&Event) -> bool) -> Option<Duration> {
        self.events.iter().find(|(_, e)| f(e)).map(|(t, _)| *t)
    }

    /// How the client's session ended, if it did.
    pub fn end(&self) -> Option<&End> {
        self.events.iter().find_map(|(_, e)| match e {
            Event::Closed(end) => Some(end),
            _ => None,
        })
    }

    fn server_datagram(&mut self, dg: Vec<u8>) {
        let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let key = self.server.script.key.clone();
        let now = self.now;
        match self.server.adm.datagram(&dg, from, now, |_| key) {
            Outcome::Reply => {
                let r = self.server.adm.reply.clone();
                self.send(Dir::ToClient, r);
            }
            Outcome::Completed(c) => {
                self.server.saw.established = true;
                self.server.final_flight = c.final_flight.clone();
                self.send(Dir::ToClient, c.final_flight.clone());
                self.server.keys = Some(record::session_pair(
                    c.suite,
                    &c.keys,
                    false,
                    1,
                    FIRST_APP_SEQUENCE,
                ));
                let first = match self.server.script.refuse {
                    Some(reason) => Control::Close {
                        reason,
                        detail: "full".into(),
                    }
                    .to_bytes(),
                    None => self.server.script.address.to_bytes().to_vec(),
                };
                self.server_send(CONTENT_APPLICATION_DATA, &first);
            }
            Outcome::Failed { alert, .. } => {
                if alert {
                    let r = self.server.adm.reply.clone();
                    self.send(Dir::ToClient, r);
                }
            }
            Outcome::NotOurs => self.server_records(dg),
            Outcome::Quiet | Outcome::Refused => {}
        }
    }

    fn server_send(&mut self, content: u8, payload: &[u8]) {
        let Some((sealer, _)) = self.server.keys.as_mut() else {
            return;
        };
        let mut rec = vec![0u8; PAYLOAD_OFFSET + payload.len() + 16];
        rec[PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload.len()].copy_from_slice(payload);
        let n = sealer.seal(content, &mut rec, payload.len()).unwrap();
        rec.truncate(n);
        self.send(Dir::ToClient, rec);
    }

    /// A session's records at the server (what server::demux and the manager do with them).
    fn server_records(&mut self, mut dg: Vec<u8>) {
        if is_final_flight(&dg) {
            if !self.server.final_flight.is_empty()
                && self
                    .server
                    .resent_at
                    .is_none_or(|t| self.now - t >= FINAL_FLIGHT_RESEND)
            {
                self.server.resent_at = Some(self.now);
                let f = self.server.final_flight.clone();
                self.send(Dir::ToClient, f);
            }
            return;
        }
        let mut at = 0;
        while at < dg.len() {
            let Ok(r) = record::record_at(&dg, at) else {
                return;
            };
            at = r.end;
            let Some((_, opener)) = self.server.keys.as_mut() else {
                return;
            };
            let Ok((content, plain)) = opener.open(&mut dg[r.clone()]) else {
                continue;
            };
            let data = dg[r.start + plain.start..r.start + plain.end].to_vec();
            if content == CONTENT_ALERT {
                self.server.saw.close_notify |= data == [ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY];
                continue;
            }
            if self.server.saw.peernet.is_none() {
                self.server.saw.peernet = Some(String::from_utf8_lossy(&data).into_owned());
                continue;
            }
            if !self.server.script.dtun {
                continue;
            }
            match Control::parse(&data) {
                Ok(Control::Lans(_)) => self.server.saw.lans = true,
                Ok(Control::Hello { .. }) => {
                    self.server.saw.hellos += 1;
                    let mut flags = 0;
                    if let Some(a) = self.server.script.addr6 {
                        flags |= HelloFlags::ADDR6_SENT;
                        self.server_send(CONTENT_APPLICATION_DATA, &Control::Addr6(a).to_bytes());
                    }
                    if !self.server.script.dns.is_empty() {
                        flags |= HelloFlags::DNS_SENT;
                        let d = Control::Dns(self.server.script.dns.clone()).to_bytes();
                        self.server_send(CONTENT_APPLICATION_DATA, &d);
                    }
                    if self.server.saw.lans {
                        flags |= HelloFlags::LANS_HEARD;
                    }
                    let answer = Control::Hello {
                        version: CONTROL_VERSION,
                        keepalive_ms: 10_000,
                        flags: HelloFlags(flags),
                    }
                    .to_bytes();
                    self.server_send(CONTENT_APPLICATION_DATA, &answer);
                }
                Ok(Control::Ping) => {
                    self.server.saw.pings += 1;
                    let t = self.now - self.start;
                    self.server.saw.ping_times.push(t);
                    if self.server.script.pongs {
                        self.server_send(CONTENT_APPLICATION_DATA, &Control::Pong.to_bytes());
                    }
                }
                Ok(Control::Close { reason, .. }) => self.server.saw.close = Some(reason),
                _ => {}
            }
        }
    }
}

/// Every datagram delivered once, at once.
pub fn clean() -> Fate {
    Box::new(|_, _, _| vec![Duration::ZERO])
}

/// Loses the `n`-th datagram of direction `dir`.
pub fn lose(dir: Dir, n: usize) -> Fate {
    Box::new(move |d, i, _| {
        if (d, i) == (dir, n) {
            vec![]
        } else {
            vec![Duration::ZERO]
        }
    })
}
