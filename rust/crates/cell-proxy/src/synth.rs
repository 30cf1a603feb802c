//! The synthetic address table: allowed name ↔ address from the private pool.
//!
//! DNS writes it, the transparent proxy reads it (original destination →
//! name). An address is derived from a hash of the name, so a name usually
//! gets the same address across daemon restarts; collisions probe linearly.
//! The table is bounded: when it is full the least recently used name is
//! evicted, so an agent that asks for endless names under an allowed
//! wildcard cannot grow the daemon's memory.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

struct Slot {
    name: String,
    last_used: u64,
}

pub struct SyntheticTable {
    pool: Ipv4Net,
    /// First usable host offset within the pool and number of usable addresses.
    first: u32,
    size: u32,
    capacity: usize,
    by_name: HashMap<String, u32>,
    by_offset: HashMap<u32, Slot>,
    clock: u64,
}

impl SyntheticTable {
    /// `capacity` is clamped to the number of usable addresses in `pool`.
    pub fn new(pool: Ipv4Net, capacity: usize) -> Self {
        // Skip the network address and the last address of the range.
        let total = 1u64 << (32 - pool.prefix_len());
        let size = (total.saturating_sub(2)).max(1) as u32;
        SyntheticTable {
            pool,
            first: 1,
            size,
            capacity: capacity.min(size as usize).max(1),
            by_name: HashMap::new(),
            by_offset: HashMap::new(),
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    fn addr(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pool.network()) + self.first + offset)
    }

    /// FNV-1a: tiny, stable across Rust versions and platforms.
    fn hash(name: &str) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in name.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h
    }

    /// The address for a (normalized, allowed) name, assigning one if needed.
    pub fn assign(&mut self, name: &str) -> Ipv4Addr {
        self.clock += 1;
        if let Some(&off) = self.by_name.get(name) {
            if let Some(slot) = self.by_offset.get_mut(&off) {
                slot.last_used = self.clock;
            }
            return self.addr(off);
        }
        if self.by_name.len() >= self.capacity {
            self.evict_oldest();
        }
        let start = Self::hash(name) % self.size;
        let mut off = start;
        while self.by_offset.contains_key(&off) {
            off = (off + 1) % self.size;
            debug_assert_ne!(off, start, "table full after eviction");
        }
        self.by_offset.insert(
            off,
            Slot {
                name: name.to_string(),
                last_used: self.clock,
            },
        );
        self.by_name.insert(name.to_string(), off);
        self.addr(off)
    }

    fn evict_oldest(&mut self) {
        if let Some((&off, _)) = self.by_offset.iter().min_by_key(|(_, s)| s.last_used)
            && let Some(slot) = self.by_offset.remove(&off)
        {
            self.by_name.remove(&slot.name);
        }
    }

    /// The name behind a synthetic address, if it is assigned.
    pub fn name_of(&self, addr: Ipv4Addr) -> Option<&str> {
        if !self.pool.contains(&addr) {
            return None;
        }
        let raw = u32::from(addr) - u32::from(self.pool.network());
        let off = raw.checked_sub(self.first)?;
        self.by_offset.get(&off).map(|s| s.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Ipv4Net {
        "198.18.0.0/24".parse().unwrap()
    }

    #[test]
    fn stable_and_reversible() {
        let mut t = SyntheticTable::new(pool(), 100);
        let a = t.assign("a.example");
        let b = t.assign("b.example");
        assert_ne!(a, b);
        assert_eq!(t.assign("a.example"), a);
        assert!(pool().contains(&a));
        assert_ne!(a, pool().network());
        assert_ne!(a, pool().broadcast());
        assert_eq!(t.name_of(a), Some("a.example"));
        assert_eq!(t.name_of("198.18.0.0".parse().unwrap()), None);
        assert_eq!(t.name_of("10.0.0.1".parse().unwrap()), None);
        // A fresh table (a restart) gives the same first address.
        assert_eq!(SyntheticTable::new(pool(), 100).assign("a.example"), a);
    }

    #[test]
    fn bounded_with_lru_eviction() {
        let mut t = SyntheticTable::new(pool(), 16);
        let keep = t.assign("keep.example");
        for i in 0..1000 {
            t.assign(&format!("n{i}.example"));
            t.assign("keep.example");
            assert!(t.len() <= 16);
        }
        assert_eq!(
            t.assign("keep.example"),
            keep,
            "recently used name kept its address"
        );
        assert_eq!(t.name_of(keep), Some("keep.example"));
        let again = t.assign("n0.example");
        assert_eq!(
            t.name_of(again),
            Some("n0.example"),
            "an evicted name gets an address again"
        );
    }

    #[test]
    fn capacity_clamped_to_pool() {
        let mut t = SyntheticTable::new("198.18.0.0/30".parse().unwrap(), 1000);
        let addrs: Vec<_> = (0..10).map(|i| t.assign(&format!("h{i}"))).collect();
        assert!(t.len() <= 2);
        for a in addrs {
            assert!(
                a == "198.18.0.1".parse::<Ipv4Addr>().unwrap()
                    || a == "198.18.0.2".parse::<Ipv4Addr>().unwrap()
            );
        }
    }
}
