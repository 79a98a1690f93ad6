//! Tunnel address allocation: each client id gets a point-to-point pair (server, client) from
//! the pool. The pair is derived from a hash of the id, so an id gets the same addresses across
//! reconnects and, unless two ids collide, across server restarts.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use ring::digest;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("address pool {0} is too small: it needs room for at least one pair (a /30)")]
    TooSmall(Ipv4Net),
    #[error("address pool {0} is exhausted ({1} clients): use a larger -pool")]
    Exhausted(Ipv4Net, usize),
    #[error("fixed address {0} is not a client address of pool {1} (the even addresses .2, .4, …)")]
    NotAClientAddress(Ipv4Addr, Ipv4Net),
    #[error("fixed address {0} is held by client {1}")]
    Taken(Ipv4Addr, String),
}

/// One id's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub server: Ipv4Addr,
    pub client: Ipv4Addr,
}

#[derive(Debug)]
pub struct Pool {
    net: Ipv4Net,
    /// Slot i is the pair (network + 2i + 1, network + 2i + 2).
    slots: Slots,
}

/// Which id holds which pair slot: the bookkeeping of both pools (IPv4 here, IPv6 in
/// `crate::pool6`). Slot i is the pair at offsets 2i + 1 (server) and 2i + 2 (client) from the
/// network address.
#[derive(Debug)]
pub(crate) struct Slots {
    count: u128,
    by_slot: HashMap<u128, String>,
    by_id: HashMap<String, u128>,
}

/// Why [`Slots`] refused; each pool words it with its own addresses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SlotError {
    Exhausted,
    NotAClientAddress,
    Taken(String),
}

impl Slots {
    pub(crate) fn new(count: u128) -> Slots {
        Slots {
            count,
            by_slot: HashMap::new(),
            by_id: HashMap::new(),
        }
    }

    /// The slot the id holds, else `home` or the next free one after it.
    pub(crate) fn assign(&mut self, id: &str, home: u128) -> Result<u128, SlotError> {
        if let Some(&slot) = self.by_id.get(id) {
            return Ok(slot);
        }
        let held = self.by_id.len() as u128;
        if held >= self.count {
            return Err(SlotError::Exhausted);
        }
        // At most `held` slots are taken: one of `held + 1` in a row is free.
        let slot = (0..=held)
            .map(|i| (home + i) % self.count)
            .find(|s| !self.by_slot.contains_key(s))
            .ok_or(SlotError::Exhausted)?;
        self.by_slot.insert(slot, id.to_string());
        self.by_id.insert(id.to_string(), slot);
        Ok(slot)
    }

    /// The slot whose client address is `offset` past the network address (a fixed address
    /// from the credentials file); the id gives up any other slot it held.
    pub(crate) fn assign_fixed(&mut self, id: &str, offset: u128) -> Result<u128, SlotError> {
        if offset < 2 || !offset.is_multiple_of(2) || (offset - 2) / 2 >= self.count {
            return Err(SlotError::NotAClientAddress);
        }
        let slot = (offset - 2) / 2;
        match self.by_slot.get(&slot) {
            Some(holder) if holder != id => return Err(SlotError::Taken(holder.clone())),
            _ => {}
        }
        if let Some(old) = self.by_id.insert(id.to_string(), slot)
            && old != slot
        {
            self.by_slot.remove(&old);
        }
        self.by_slot.insert(slot, id.to_string());
        Ok(slot)
    }

    pub(crate) fn release(&mut self, id: &str) {
        if let Some(slot) = self.by_id.remove(id) {
            self.by_slot.remove(&slot);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn count(&self) -> u128 {
        self.count
    }
}

impl Pool {
    pub fn new(net: Ipv4Net) -> Result<Self, PoolError> {
        let net = net.trunc();
        let hosts: u64 = 1u64 << (32 - u32::from(net.prefix_len()));
        // Leave out the network and broadcast addresses.
        let slots = (hosts.saturating_sub(2) / 2) as u32;
        if slots == 0 {
            return Err(PoolError::TooSmall(net));
        }
        Ok(Pool {
            net,
            slots: Slots::new(u128::from(slots)),
        })
    }

    fn pair(&self, slot: u128) -> Pair {
        // Slots fit the pool, so this is below 2^32.
        let slot = slot as u32;
        let base = u32::from(self.net.network());
        Pair {
            server: Ipv4Addr::from(base + 2 * slot + 1),
            client: Ipv4Addr::from(base + 2 * slot + 2),
        }
    }

    fn home_slot(&self, id: &str) -> u128 {
        let h = digest::digest(&digest::SHA256, id.as_bytes());
        let b = h.as_ref();
        u128::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])) % self.slots.count()
    }

    /// The id's pair: the one it holds, else its hash slot or the next free one after it.
    pub fn assign(&mut self, id: &str) -> Result<Pair, PoolError> {
        let home = self.home_slot(id);
        match self.slots.assign(id, home) {
            Ok(slot) => Ok(self.pair(slot)),
            Err(_) => Err(PoolError::Exhausted(self.net, self.slots.len())),
        }
    }

    /// The pair whose client address is `client` (a fixed address from the credentials file).
    pub fn assign_fixed(&mut self, id: &str, client: Ipv4Addr) -> Result<Pair, PoolError> {
        if !self.net.contains(&client) {
            return Err(PoolError::NotAClientAddress(client, self.net));
        }
        let offset = u32::from(client) - u32::from(self.net.network());
        match self.slots.assign_fixed(id, u128::from(offset)) {
            Ok(slot) => Ok(self.pair(slot)),
            Err(SlotError::Taken(holder)) => Err(PoolError::Taken(client, holder)),
            Err(_) => Err(PoolError::NotAClientAddress(client, self.net)),
        }
    }

    /// Returns the id's pair to the pool.
    pub fn release(&mut self, id: &str) {
        self.slots.release(id);
    }

    pub fn in_use(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_per_id_and_distinct() {
        let net: Ipv4Net = "10.86.0.0/16".parse().unwrap();
        let mut p = Pool::new(net).unwrap();
        let a = p.assign("demo").unwrap();
        let b = p.assign("other").unwrap();
        assert_ne!(a, b);
        assert_eq!(p.assign("demo").unwrap(), a);
        assert!(net.contains(&a.server) && net.contains(&a.client));
        assert_eq!(u32::from(a.client), u32::from(a.server) + 1);
        // A fresh pool (a restarted server) gives the same pair.
        let mut q = Pool::new(net).unwrap();
        assert_eq!(q.assign("demo").unwrap(), a);
        p.release("demo");
        assert_eq!(p.in_use(), 1);
        assert_eq!(p.assign("demo").unwrap(), a);
    }

    #[test]
    fn fixed_addresses() {
        let mut p = Pool::new("10.86.0.0/16".parse().unwrap()).unwrap();
        let pair = p.assign_fixed("a", Ipv4Addr::new(10, 86, 0, 10)).unwrap();
        assert_eq!(pair.server, Ipv4Addr::new(10, 86, 0, 9));
        assert_eq!(p.assign("a").unwrap(), pair);
        assert!(matches!(
            p.assign_fixed("b", Ipv4Addr::new(10, 86, 0, 10)),
            Err(PoolError::Taken(..))
        ));
        assert!(matches!(
            p.assign_fixed("b", Ipv4Addr::new(10, 86, 0, 9)),
            Err(PoolError::NotAClientAddress(..))
        ));
        assert!(matches!(
            p.assign_fixed("b", Ipv4Addr::new(10, 87, 0, 2)),
            Err(PoolError::NotAClientAddress(..))
        ));
    }

    #[test]
    fn small_pools_fill_and_refuse() {
        let net: Ipv4Net = "10.0.0.0/29".parse().unwrap(); // 8 addresses: 3 pairs
        let mut p = Pool::new(net).unwrap();
        let mut seen = std::collections::HashSet::new();
        for id in ["a", "b", "c"] {
            let pair = p.assign(id).unwrap();
            assert!(seen.insert(pair.server));
            assert_ne!(
                pair.client,
                Ipv4Addr::new(10, 0, 0, 7),
                "broadcast never handed out"
            );
            assert_ne!(
                pair.server,
                Ipv4Addr::new(10, 0, 0, 0),
                "network never handed out"
            );
        }
        assert!(matches!(p.assign("d"), Err(PoolError::Exhausted(..))));
        p.release("b");
        assert!(p.assign("d").is_ok());
        assert!(matches!(
            Pool::new("10.0.0.0/31".parse().unwrap()),
            Err(PoolError::TooSmall(_))
        ));
        assert!(Pool::new("10.0.0.0/30".parse().unwrap()).is_ok());
    }
}
