//! What came so far in one Hello exchange, and what is still missing.

use crate::proto::{Addr6, HelloFlags};

#[derive(Debug, Default)]
pub struct Heard {
    answer: Option<(u8, HelloFlags)>,
    answers: u32,
    addr6: Option<Option<Addr6>>,
    dns: bool,
    cid: Option<[u8; 8]>,
}

impl Heard {
    /// The Hello answer came.
    pub fn answer(&mut self, version: u8, flags: HelloFlags) {
        self.answer = Some((version, flags));
        self.answers += 1;
    }

    /// An Addr6 came: the pair if usable, `None` if not.
    pub fn addr6(&mut self, a: Option<Addr6>) {
        self.addr6 = Some(a);
    }

    /// A Dns came.
    pub fn dns(&mut self) {
        self.dns = true;
    }

    /// A Cid came.
    pub fn cid(&mut self, cid: [u8; 8]) {
        self.cid = Some(cid);
    }

    /// The connection ID, when the answer offers roaming and the Cid came.
    pub fn roaming(&self) -> Option<[u8; 8]> {
        self.cid.filter(|_| self.offers(HelloFlags::ROAM))
    }

    /// Answers so far.
    pub fn answers(&self) -> u32 {
        self.answers
    }

    /// Whether the answer came and its flags have `bit`.
    pub fn offers(&self, bit: u8) -> bool {
        self.flags().is_some_and(|f| f.has(bit))
    }

    /// The answer's flags, when its version has them.
    fn flags(&self) -> Option<HelloFlags> {
        self.answer.filter(|(v, _)| *v >= 2).map(|(_, f)| f)
    }

    /// Whether the server still lacks our Lans, as far as we know.
    pub fn lans_missing(&self) -> bool {
        match (self.answer, self.flags()) {
            (Some(_), None) => false, // a version-1 server does not say: assume it has them
            (_, Some(f)) => !f.has(HelloFlags::LANS_HEARD),
            (None, None) => true,
        }
    }

    /// Whether nothing we wait for is missing.
    pub fn complete(&self, sent_lans: bool) -> bool {
        match (self.answer, self.flags()) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(_), Some(f)) => {
                (!f.has(HelloFlags::ADDR6_SENT) || self.addr6.is_some())
                    && (!f.has(HelloFlags::DNS_SENT) || self.dns)
                    && (!f.has(HelloFlags::ROAM) || self.cid.is_some())
                    && !(sent_lans && self.lans_missing())
            }
        }
    }

    /// The IPv6 pair for the session: `Some(pair or None)` once we know, `None` when we do
    /// not (no answer, or an answer that says an Addr6 came that we never got).
    pub fn outcome(&self) -> Option<Option<Addr6>> {
        match (self.addr6, self.answer, self.flags()) {
            (Some(a), _, _) => Some(a),
            (None, Some(_), Some(f)) if f.has(HelloFlags::ADDR6_SENT) => None,
            (None, Some(_), _) => Some(None),
            (None, None, _) => None,
        }
    }

    /// What is still missing, for the log.
    pub fn missing(&self, sent_lans: bool) -> String {
        let mut m = vec![];
        if self.answer.is_none() {
            m.push("the Hello answer");
        }
        if let Some(f) = self.flags() {
            if f.has(HelloFlags::ADDR6_SENT) && self.addr6.is_none() {
                m.push("the IPv6 addresses");
            }
            if f.has(HelloFlags::DNS_SENT) && !self.dns {
                m.push("the DNS servers");
            }
            if f.has(HelloFlags::ROAM) && self.cid.is_none() {
                m.push("the connection ID");
            }
        }
        if sent_lans && self.lans_missing() {
            m.push("the server's receipt of our LANs");
        }
        m.join(", ")
    }
}
