//! Caps on the connections open at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The cap a refused connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// The connections open in all.
    Total,
    /// The connections open from one peer address.
    PerPeer,
}

impl Cap {
    /// The flag that sets it: `max-connections` or `max-connections-per-peer`.
    pub fn name(self) -> &'static str {
        match self {
            Cap::Total => "max-connections",
            Cap::PerPeer => "max-connections-per-peer",
        }
    }
}

/// What the caps count, for metrics.
#[derive(Debug, Default)]
pub struct CapCounters {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections refused at the total cap.
    pub refused_total: AtomicU64,
    /// Connections refused at the per-peer cap.
    pub refused_per_peer: AtomicU64,
}

/// The connections open now, in all and per peer address, under two caps. A connection
/// past either is to be closed at once (never queued): [`Caps::admit`] says which.
#[derive(Debug)]
pub struct Caps {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    total: usize,
    per_peer: usize,
    counters: Arc<CapCounters>,
}

/// A connection's place under the caps, given back when dropped: hold it for the
/// connection's life.
#[derive(Debug)]
pub struct Slot {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Caps {
    /// At most `total` connections in all and `per_peer` from one address, counted in
    /// `counters`.
    pub fn new(total: usize, per_peer: usize, counters: Arc<CapCounters>) -> Arc<Self> {
        Arc::new(Caps {
            open: Mutex::new((0, HashMap::new())),
            total,
            per_peer,
            counters,
        })
    }

    fn lock(&self) -> MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection from `ip` (IPv4-mapped addresses count as IPv4), or the
    /// cap it would pass (counted as refused).
    ///
    /// # Errors
    /// The [`Cap`] that is full.
    pub fn admit(this: &Arc<Self>, ip: IpAddr) -> Result<Slot, Cap> {
        let ip = ip.to_canonical();
        let mut open = this.lock();
        let from_peer = open.1.get(&ip).copied().unwrap_or(0);
        let refused = if open.0 >= this.total {
            Some((Cap::Total, &this.counters.refused_total))
        } else if from_peer >= this.per_peer {
            Some((Cap::PerPeer, &this.counters.refused_per_peer))
        } else {
            None
        };
        if let Some((cap, counter)) = refused {
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(cap);
        }
        open.0 += 1;
        *open.1.entry(ip).or_default() += 1;
        this.counters.open.store(open.0 as u64, Ordering::Relaxed);
        Ok(Slot {
            caps: Arc::clone(this),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.caps.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
        self.caps
            .counters
            .open
            .store(open.0 as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_past_either_cap_are_refused_and_a_closed_one_frees_its_place() {
        let counters = Arc::new(CapCounters::default());
        let c = Caps::new(3, 2, Arc::clone(&counters));
        let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 2].into(), [127, 0, 0, 1].into());
        let a1 = Caps::admit(&c, a).expect("first from a");
        let _a2 = Caps::admit(&c, a).expect("second from a");
        assert_eq!(Caps::admit(&c, a).err(), Some(Cap::PerPeer));
        let _b1 = Caps::admit(&c, b).expect("another peer is still served");
        assert_eq!(Caps::admit(&c, b).err(), Some(Cap::Total));
        assert_eq!(counters.refused_per_peer.load(Ordering::Relaxed), 1);
        assert_eq!(counters.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(counters.open.load(Ordering::Relaxed), 3);
        drop(a1);
        assert_eq!(counters.open.load(Ordering::Relaxed), 2);
        let _a3 = Caps::admit(&c, a).expect("a closed connection frees its place");
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_same_peer_as_its_ipv4_form() {
        let c = Caps::new(10, 1, Arc::default());
        let v4: IpAddr = [127, 0, 0, 1].into();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("address");
        let _one = Caps::admit(&c, v4).expect("first");
        assert_eq!(Caps::admit(&c, mapped).err(), Some(Cap::PerPeer));
    }
}
