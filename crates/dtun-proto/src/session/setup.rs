//! The setup's side of [`ClientSession`]: the end of the handshake, the records of a
//! datagram while the session holds its keys, the address message, and the Hello exchange
//! with its clock.

use std::time::Instant;

use crate::consts::{CONTENT_ALERT, CONTENT_APPLICATION_DATA, HANDSHAKE_TIMEOUT, SETUP_TIMEOUT};
use crate::handshake::{Established, Failure};
use crate::inbound::{self, Inbound};
use crate::proto::{AddressMessage, CONTROL_VERSION, Control, HINT_MARKER, HINT_REKEY, HelloFlags};
use crate::record;

use super::{ClientSession, End, Event, HELLO_RESEND, HELLO_WAIT, MAX_HELLOS, State, Step, hello};

impl ClientSession {
    pub(super) fn established(&mut self, now: Instant, e: Established, step: &mut Step) {
        let hint = e.peer_identity.clone();
        self.epoch1 = Some(e.epoch1.clone());
        self.suite = Some(e.suite);
        self.negotiated = !self.cfg.compat && hint.ends_with(HINT_MARKER.as_bytes());
        let rekeys = format!("{HINT_REKEY}{HINT_MARKER}");
        self.server_rekeys = self.negotiated && hint.ends_with(rekeys.as_bytes());
        self.keys = Some(record::session_pair(
            e.suite,
            &e.keys,
            true,
            1,
            self.cfg.first_sequence,
        ));
        self.last_rx = now;
        self.state = State::Address {
            deadline: now + SETUP_TIMEOUT.max(HANDSHAKE_TIMEOUT),
        };
        step.events.push(Event::Established {
            suite: e.suite,
            hint,
            negotiated: self.negotiated,
        });
    }

    pub(super) fn failed(&mut self, f: Failure, ignored: u64, step: &mut Step) {
        if let Some(a) = f.alert {
            step.send.push(a);
        }
        tracing::debug!("handshake failed ({ignored} datagram parts ignored)");
        self.end(step, End::Handshake(f.error));
    }

    /// The records of one datagram after the handshake (during the setup, or from a Pair).
    pub(super) fn records(&mut self, now: Instant, dg: &mut [u8], step: &mut Step) {
        let answers = match &self.state {
            State::Hello { heard, .. } => Some(heard.answers()),
            _ => None,
        };
        let mut at = 0;
        while at < dg.len() {
            let Ok(r) = record::record_at(dg, at) else {
                break;
            };
            at = r.end;
            let ct = dg[r.start];
            if ct != CONTENT_APPLICATION_DATA && ct != CONTENT_ALERT {
                continue; // late handshake retransmissions
            }
            let Some((_, opener)) = self.keys.as_mut() else {
                return;
            };
            match inbound::open(opener, &self.counters, &mut dg[r.clone()]) {
                Inbound::Data(p) => {
                    self.heard(now);
                    let data = &dg[r.start + p.start..r.start + p.end];
                    let setup = matches!(self.state, State::Address { .. });
                    self.data(now, data, step);
                    if setup {
                        // The address message is the first record: what follows it in
                        // the datagram is not read.
                        return;
                    }
                }
                Inbound::Alert(level, desc) => {
                    self.heard(now);
                    self.end(step, End::Alert(level, desc));
                    return;
                }
                Inbound::Dropped(_) => {}
            }
        }
        if let State::Hello {
            heard, resend_at, ..
        } = &mut self.state
        {
            // A new answer that shows a loss: say Hello again at once.
            let sent_lans = !self.cfg.lans.is_empty();
            if answers.is_some_and(|a| heard.answers() > a) && !heard.complete(sent_lans) {
                *resend_at = now;
            }
            self.hello_timer(now, step);
        }
    }

    /// One authenticated application record during the setup (or from a Pair).
    pub(super) fn data(&mut self, now: Instant, data: &[u8], step: &mut Step) {
        match &mut self.state {
            State::Address { .. } => match AddressMessage::parse(data) {
                Ok(a) => {
                    self.state = State::Tunnel;
                    step.events.push(Event::Address(a));
                }
                // A full server says so where the address message would be (dtun peers only).
                Err(e) => match Control::parse(data) {
                    Ok(Control::Close { reason, detail }) if self.negotiated => {
                        self.end(step, End::Closed { reason, detail });
                    }
                    _ => self.end(step, End::BadAddress(e)),
                },
            },
            State::Hello { heard, .. } => {
                if Control::is_control(data) {
                    let msg = hello::read(data, &self.counters);
                    hello::take(heard, &msg);
                    if let hello::Msg::Dns(Some(servers)) = msg {
                        step.events.push(Event::Dns(servers));
                    }
                } else if inbound::accept_packet(&self.counters, data) {
                    step.events.push(Event::Packet(data.to_vec()));
                }
            }
            State::Up => {
                if self.negotiated && Control::is_control(data) {
                    self.up_control(now, data, step);
                } else if inbound::accept_packet(&self.counters, data) {
                    step.events.push(Event::Packet(data.to_vec()));
                }
            }
            _ => {}
        }
    }

    /// The Hello exchange's clock: done when nothing is missing or [`HELLO_WAIT`] passed;
    /// otherwise Hello again every [`HELLO_RESEND`], at most [`MAX_HELLOS`] times.
    pub(super) fn hello_timer(&mut self, now: Instant, step: &mut Step) {
        let sent_lans = !self.cfg.lans.is_empty();
        let State::Hello {
            heard,
            said,
            resend_at,
            deadline,
        } = &mut self.state
        else {
            return;
        };
        let complete = heard.complete(sent_lans);
        if complete || now >= *deadline {
            if !complete {
                tracing::info!(
                    "setup incomplete after {HELLO_WAIT:?} and {said} Hellos: missing {}; going on without it",
                    heard.missing(sent_lans)
                );
            }
            let addr6 = heard.outcome();
            // The hint (authenticated by the handshake) or the answer's flag: the server
            // rekeys.
            let rekey = self.server_rekeys || heard.offers(HelloFlags::REKEY);
            let cid = heard.roaming();
            self.state = State::Up;
            if rekey {
                self.start_rekeying();
                self.start_roaming(cid);
            } else if self.cfg.rekey.is_some() && self.negotiated {
                tracing::warn!(
                    "the server does not rekey (-rekey 0 there, or a dtun from before rekeying): this session keeps the handshake's keys, without forward secrecy"
                );
            }
            self.last_ping = now;
            step.events.push(Event::Up { addr6 });
            return;
        }
        if now < *resend_at || *said >= MAX_HELLOS {
            return;
        }
        if *said > 0 {
            tracing::debug!("saying Hello again: missing {}", heard.missing(sent_lans));
        }
        let lans = sent_lans && heard.lans_missing();
        *said += 1;
        *resend_at = now + HELLO_RESEND;
        if lans {
            let msg = Control::Lans(self.cfg.lans.clone()).to_bytes();
            self.seal_into(step, CONTENT_APPLICATION_DATA, &msg);
        }
        let hello = Control::Hello {
            version: CONTROL_VERSION,
            keepalive_ms: u32::try_from(self.cfg.keepalive.as_millis()).unwrap_or(u32::MAX),
            flags: HelloFlags::default()
                .with(HelloFlags::REKEY, self.cfg.rekey.is_some())
                .with(HelloFlags::ROAM, self.offers_roaming()),
        }
        .to_bytes();
        self.seal_into(step, CONTENT_APPLICATION_DATA, &hello);
    }
}
