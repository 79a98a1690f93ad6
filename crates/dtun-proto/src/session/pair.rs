//! A client session and a server in memory (quinn's `Pair`): our [`ClientSession`] against our
//! admission, server handshake and server session ([`super::server`]: the inlet and the
//! control logic, driven as the server's demultiplexer and manager drive them), over a
//! simulated link (per-datagram fate: loss, duplication, delay hence reordering; latency; MTU)
//! with a simulated clock. What the server's manager adds (a device, the address pair, the
//! IPv6 pair and DNS servers, a refusal) comes from a [`ServerScript`]. No sockets, no
//! runtime, no root.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;

use super::server::{self, ControlVerdict, Inlet, Record, ServerSession};
use super::{ClientSession, Config, End, Event};
use crate::admission::is_session_record;
use crate::admission::{Admission, Outcome};
use crate::consts::{
    ALERT_CLOSE_NOTIFY, ALERT_LEVEL_WARNING, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
    FIRST_APP_SEQUENCE,
};
use crate::handshake::Completed;
use crate::proto::{Addr6, AddressMessage, CloseReason, Control, HINT_MARKER, HINT_REKEY};
use crate::record::{self, Opener, Sealer, Suite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    ToServer,
    ToClient,
}

/// The link's verdict on one datagram (direction, its number in that direction, its bytes):
/// one delay per copy delivered on top of the latency; none: lost.
pub type Fate = Box<dyn FnMut(Dir, usize, &[u8]) -> Vec<Duration>>;

/// What the server's host side decides (the manager's part: keys, devices, pools, DNS).
pub struct ServerScript {
    pub key: Vec<u8>,
    pub suites: Vec<Suite>,
    /// A dtun server (control messages) or one that speaks as the original does (`-compat`).
    pub dtun: bool,
    pub address: AddressMessage,
    pub addr6: Option<Addr6>,
    pub dns: Vec<IpAddr>,
    /// Instead of the address message: a Close with this reason, then close_notify.
    pub refuse: Option<CloseReason>,
    /// The Pongs the inlet asks for go out (false: they are lost).
    pub pongs: bool,
    /// The server rekeys with a client that offers it.
    pub rekey: bool,
    /// The session's connection ID (roaming, with a client that offers it).
    pub cid: Option<[u8; 8]>,
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
            rekey: true,
            cid: None,
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
    /// Records the server took for packets.
    pub packets: u32,
    /// Control records it dropped (malformed, unknown, past the budget).
    pub drops: u32,
    /// How the server's session ended: what it told the client, and why.
    pub ended: Option<(Option<CloseReason>, String)>,
    /// Epochs the server switched its sending to (the client's first record of each came).
    pub send_epochs: Vec<u16>,
    /// Records of an epoch the server no longer (or not yet) reads.
    pub bad_epoch: u32,
    /// Path responses that came (roaming).
    pub path_responses: u32,
    /// Records that carried the session's connection ID (RFC 9146 format), and the epoch of
    /// the first.
    pub cid_records: u32,
    pub first_cid_epoch: Option<u16>,
}

struct Server {
    script: ServerScript,
    adm: Admission,
    keys: Option<(Sealer, Opener)>,
    inlet: Option<Inlet>,
    session: Option<ServerSession>,
    saw: ServerSaw,
    /// The next epoch's keys, to send with once the client's first record of it came.
    pending_send: Option<(u16, crate::kdf::KeyBlock)>,
    /// An ended session's read key: what the client still says (its close_notify) is seen,
    /// as on the wire, though the real server has forgotten the session.
    ended_opener: Option<Opener>,
    /// When the previous epoch's read key goes (as the demultiplexer's sweep does).
    retire_at: Option<Instant>,
}

/// The server's keepalive period (what its Hello answer says).
pub const SERVER_KEEPALIVE: Duration = Duration::from_secs(10);

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
    /// Traffic: the client's data path sends a packet this often once it holds the keys,
    /// and the server echoes each back.
    pub data_every: Option<Duration>,
    next_data: Option<Instant>,
    /// Packets the client sent, and echoes that came back.
    pub data_sent: u64,
    pub data_echoed: u64,
    /// Every datagram put on the link, in order (a capture).
    pub wire: Vec<(Dir, Vec<u8>)>,
}

impl Pair {
    pub fn new(cfg: Config, script: ServerScript, fate: Fate) -> Pair {
        let start = Instant::now();
        let mut hint = b"dtun".to_vec();
        if script.dtun {
            if script.rekey {
                hint.extend_from_slice(HINT_REKEY.as_bytes());
            }
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
                inlet: None,
                session: None,
                pending_send: None,
                ended_opener: None,
                retire_at: None,
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
            data_every: None,
            next_data: None,
            data_sent: 0,
            data_echoed: 0,
            wire: vec![],
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
            rekey: None,
            roam: false,
        }
    }

    pub fn saw(&self) -> &ServerSaw {
        &self.server.saw
    }

    fn send(&mut self, dir: Dir, dg: Vec<u8>) {
        self.wire.push((dir, dg.clone()));
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
            let rec = super::seal_record(sealer, content, &payload).unwrap();
            self.send(Dir::ToServer, rec);
        }
        let (mut ready, mut up) = (false, false);
        for e in step.events {
            ready |= matches!(e, Event::Address(_));
            up |= matches!(e, Event::Up { .. });
            if let (Event::Rekeyed { epoch, keys, cid }, Some((sealer, opener))) =
                (&e, self.data_path.as_mut())
            {
                record::rekey_sealer(sealer, keys, true, *epoch);
                record::rekey_opener(opener, keys, true, *epoch);
                if cid.is_some() {
                    sealer.set_cid(*cid);
                }
            }
            if let (Event::RetirePrevious, Some((_, opener))) = (&e, self.data_path.as_mut()) {
                opener.retire_previous();
            }
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
            self.next_data = self.data_every.map(|_| self.now);
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
                self.data_echoed += 1;
                continue;
            };
            self.client_step(step);
        }
        if heard {
            self.client.heard(self.now);
        }
    }

    /// The client's data path sends one packet (an IPv4 header and a counter).
    fn send_data(&mut self) {
        let (Some(every), Some((sealer, _))) = (self.data_every, self.data_path.as_mut()) else {
            return;
        };
        self.next_data = Some(self.now + every);
        let mut packet = [0u8; 28];
        packet[0] = 0x45;
        packet[3] = 28;
        packet[20..28].copy_from_slice(&self.data_sent.to_be_bytes());
        let Ok(rec) = super::seal_record(sealer, CONTENT_APPLICATION_DATA, &packet) else {
            return;
        };
        self.data_sent += 1;
        self.client.traffic(self.now);
        self.send(Dir::ToServer, rec);
    }

    /// An ICMP port unreachable reaches the client (anyone could have sent it).
    pub fn icmp_unreachable(&mut self) {
        let step = self.client.unreachable(self.now);
        self.client_step(step);
    }

    /// A datagram on the link now, past the fate (an attacker's, or a copy from the capture).
    pub fn inject(&mut self, dir: Dir, dg: Vec<u8>) {
        self.queue.push((self.now + self.latency, dir, dg));
    }

    /// The client closes the session now with `reason`; what it says goes out.
    pub fn close_now(&mut self, reason: CloseReason) {
        let step = self.client.close(self.now, Some(reason));
        self.client_step(step);
    }

    /// The server sends one record now (a Close, an alert, a garbage control message).
    pub fn server_says(&mut self, content: u8, payload: &[u8]) {
        // What the server's manager does when it ends a session for a reason of its own.
        if content == CONTENT_APPLICATION_DATA
            && let Ok(Control::Close { reason, detail }) = Control::parse(payload)
            && let Some(s) = self.server.session.as_mut()
        {
            let _ = s.farewell(reason, &detail);
        }
        self.server_send(content, payload);
    }

    /// Runs until the client's session ended or `until` (simulated time from the start).
    pub fn run(&mut self, until: Duration) {
        let end = self.start + until;
        loop {
            self.queue.sort_by_key(|(t, _, _)| *t);
            let server_timer = self.server.session.as_ref().and_then(|s| s.next_timeout());
            let data_timer = self.next_data.filter(|_| self.data_path.is_some());
            let timer = [self.client.next_timeout(), server_timer, data_timer]
                .into_iter()
                .flatten()
                .min();
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
            } else if data_timer.is_some_and(|t| t <= next) {
                self.send_data();
            } else if server_timer.is_some_and(|t| t <= next) {
                let step = self.server.session.as_mut().map(|s| s.timeout(next));
                if let Some(step) = step {
                    self.server_step(step);
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

    fn server_datagram(&mut self, mut dg: Vec<u8>) {
        if self.server.keys.is_some() && is_session_record(&dg) {
            self.server_records(&mut dg);
            return;
        }
        if let Some(opener) = self.server.ended_opener.as_mut()
            && is_session_record(&dg)
        {
            let mut at = 0;
            while let Ok(r) = record::record_at(&dg, at) {
                at = r.end;
                if let Ok((CONTENT_ALERT, p)) = opener.open(&mut dg[r.clone()]) {
                    let alert = &dg[r.start + p.start..r.start + p.end];
                    self.server.saw.close_notify |=
                        alert == [ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY];
                }
            }
            return;
        }
        let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let key = self.server.script.key.clone();
        let now = self.now;
        match self.server.adm.datagram(&dg, from, now, |_| key) {
            Outcome::Reply => {
                let r = self.server.adm.reply.clone();
                self.send(Dir::ToClient, r);
            }
            Outcome::Completed(c) => self.server_start(*c),
            Outcome::Failed { alert, .. } => {
                if alert {
                    let r = self.server.adm.reply.clone();
                    self.send(Dir::ToClient, r);
                }
            }
            Outcome::NotOurs => {
                let again = self
                    .server
                    .inlet
                    .as_mut()
                    .and_then(|i| i.final_flight_again(now, &dg))
                    .map(<[u8]>::to_vec);
                if let Some(flight) = again {
                    self.send(Dir::ToClient, flight);
                }
            }
            Outcome::Quiet | Outcome::Refused => {}
        }
    }

    /// A completed handshake: the final flight, then the address message and a session (what
    /// the server's manager does), or a Close and close_notify (turned away).
    fn server_start(&mut self, c: Completed) {
        self.server.saw.established = true;
        self.send(Dir::ToClient, c.final_flight.clone());
        self.server.keys = Some(record::session_pair(
            c.suite,
            &c.keys,
            false,
            1,
            FIRST_APP_SEQUENCE,
        ));
        if let Some(reason) = self.server.script.refuse {
            let close = Control::Close {
                reason,
                detail: "full".into(),
            };
            self.server_send(CONTENT_APPLICATION_DATA, &close.to_bytes());
            self.server_send(CONTENT_ALERT, &[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY]);
            self.server.keys = None;
            return;
        }
        let address = self.server.script.address.to_bytes();
        self.server_send(CONTENT_APPLICATION_DATA, &address);
        let dtun = self.server.script.dtun;
        self.server.inlet = Some(Inlet::new(dtun, c.final_flight, self.now));
        let cfg = server::Config {
            keepalive: SERVER_KEEPALIVE,
            compat: !dtun,
            rekey: self.server.script.rekey,
            cid: self.server.script.cid,
        };
        if let Some((_, opener)) = self.server.keys.as_mut() {
            opener.set_cid(self.server.script.cid);
        }
        self.server.session = Some(ServerSession::new(cfg, Some(c.epoch1), self.now));
    }

    fn server_send(&mut self, content: u8, payload: &[u8]) {
        let Some((sealer, _)) = self.server.keys.as_mut() else {
            return;
        };
        let rec = super::seal_record(sealer, content, payload).unwrap();
        self.send(Dir::ToClient, rec);
    }

    /// A session's records at the server, through its inlet (the demultiplexer's half) and
    /// its session (the manager's half).
    fn server_records(&mut self, dg: &mut [u8]) {
        if self.server.retire_at.is_some_and(|t| self.now >= t)
            && let Some((_, opener)) = self.server.keys.as_mut()
        {
            self.server.retire_at = None;
            opener.retire_previous();
        }
        let mut at = 0;
        let mut heard = false;
        while at < dg.len() {
            let Ok(r) = record::record_at(dg, at) else {
                break;
            };
            at = r.end;
            let Some((_, opener)) = self.server.keys.as_mut() else {
                return;
            };
            let (content, plain) = match opener.open(&mut dg[r.clone()]) {
                Ok(o) => o,
                Err(crate::record::DropReason::BadEpoch) => {
                    self.server.saw.bad_epoch += 1;
                    continue;
                }
                Err(_) => continue,
            };
            heard = true;
            // The client's first record of the next epoch: it has the keys, send with them.
            let epoch = u16::from_be_bytes([dg[r.start + 3], dg[r.start + 4]]);
            if dg[r.start] == crate::consts::CONTENT_TLS12_CID {
                self.server.saw.cid_records += 1;
                self.server.saw.first_cid_epoch.get_or_insert(epoch);
            }
            if let Some((e, keys)) = self.server.pending_send.take_if(|(e, _)| *e == epoch)
                && let Some((sealer, _)) = self.server.keys.as_mut()
            {
                record::rekey_sealer(sealer, &keys, false, e);
                self.server.saw.send_epochs.push(e);
                self.server.retire_at = Some(self.now + crate::rekey::exchange::EPOCH_OVERLAP);
            }
            let (Some(inlet), Some(session)) =
                (self.server.inlet.as_mut(), self.server.session.as_mut())
            else {
                return;
            };
            let data = &dg[r.start + plain.start..r.start + plain.end];
            let saw = &mut self.server.saw;
            let step = if content == CONTENT_ALERT {
                saw.close_notify |= data == [ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY];
                match data {
                    [level, desc] => session.alert(*level, *desc),
                    _ => continue,
                }
            } else {
                match inlet.record(data) {
                    Record::Peernet(p) => {
                        saw.peernet = Some(String::from_utf8_lossy(data).into_owned());
                        session.peernet(p)
                    }
                    Record::SetupLost => session.setup_lost(),
                    Record::Packet => {
                        saw.packets += 1;
                        let echo = data.to_vec();
                        self.server_send(CONTENT_APPLICATION_DATA, &echo);
                        continue;
                    }
                    Record::Control => match inlet.control(self.now, data) {
                        ControlVerdict::Pong { first } => {
                            saw.pings += 1;
                            saw.ping_times.push(self.now - self.start);
                            let pong = self.server.script.pongs;
                            let step = if first {
                                session.control(Control::Ping)
                            } else {
                                server::Step::default()
                            };
                            if pong {
                                self.server_send(
                                    CONTENT_APPLICATION_DATA,
                                    &Control::Pong.to_bytes(),
                                );
                            }
                            step
                        }
                        ControlVerdict::PathResponse(_) => {
                            saw.path_responses += 1;
                            continue;
                        }
                        ControlVerdict::Pass(msg) => {
                            match &msg {
                                Control::Hello { .. } => saw.hellos += 1,
                                Control::Lans(_) => saw.lans = true,
                                Control::Close { reason, .. } => saw.close = Some(*reason),
                                _ => {}
                            }
                            session.control(msg)
                        }
                        ControlVerdict::Drop(_) => {
                            saw.drops += 1;
                            continue;
                        }
                    },
                }
            };
            self.server_step(step);
        }
        if heard && let Some(s) = self.server.session.as_mut() {
            s.heard(self.now);
        }
    }

    /// Does what the server session's step says (what the manager does with its events).
    fn server_step(&mut self, step: server::Step) {
        for msg in step.send {
            self.server_send(CONTENT_APPLICATION_DATA, &msg);
        }
        for e in step.events {
            match e {
                server::Event::Hello { .. } => {
                    let (addr6, dns) = (self.server.script.addr6, self.server.script.dns.clone());
                    let Some(s) = self.server.session.as_mut() else {
                        return;
                    };
                    let answer = s.answer_hello(addr6, &dns);
                    self.server_step(answer);
                }
                server::Event::NextKeys { epoch, keys } => {
                    if let Some((_, opener)) = self.server.keys.as_mut() {
                        record::rekey_opener(opener, &keys, false, epoch);
                    }
                    self.server.pending_send = Some((epoch, keys));
                }
                server::Event::Dropped => self.server.saw.drops += 1,
                server::Event::Ended { reason, why } => {
                    let farewell = reason
                        .and_then(|r| self.server.session.as_mut().and_then(|s| s.farewell(r, "")));
                    if let Some(msg) = farewell {
                        self.server_send(CONTENT_APPLICATION_DATA, &msg);
                    }
                    if reason.is_some() {
                        self.server_send(CONTENT_ALERT, &[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY]);
                    }
                    self.server.saw.ended = Some((reason, why));
                    self.server.ended_opener = self.server.keys.take().map(|(_, o)| o);
                    self.server.inlet = None;
                    self.server.session = None;
                    return;
                }
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
