//! Per-cluster locks of a store's write paths, by (blob, cluster).
//!
//! Two modes. *Shared*: a direct first write of whole granules to a cluster the blob already
//! has a place for; several may run at once (each writes its own granules and applies its own
//! record, in any order). *Exclusive*: everything that decides where a cluster goes or reads
//! granules it then writes back (reserving a cluster, merging a partly written granule with
//! its parent's data, copying granules in, zeroing, freeing). An exclusive request waits for
//! the shared holders to finish, and once it waits no new shared holder gets in (it takes
//! the slow path and queues behind), so a stream of first writes cannot starve it.
//!
//! Only the store's reactor touches these, so no atomics: plain counts and a FIFO of waiters.

use crate::framework::id_hash::IdMap;
use crate::framework::task::Slot;
use std::collections::VecDeque;

/// One locked cluster.
#[derive(Default)]
struct Entry {
    /// Shared holders (direct writes in flight).
    shared: u32,
    /// Someone holds it exclusively.
    exclusive: bool,
    /// Exclusive requests waiting, in arrival order.
    queue: VecDeque<Slot<()>>,
}

/// The locks of one store; a cluster nobody holds has no entry.
#[derive(Default)]
pub(crate) struct ClusterLocks {
    held: IdMap<(u64, u64), Entry>,
}

impl ClusterLocks {
    /// Whether anyone holds, or waits for, cluster `c` of `blob`.
    #[inline]
    pub fn busy(&self, blob: u64, c: u64) -> bool {
        !self.held.is_empty() && self.held.contains_key(&(blob, c))
    }

    /// Takes the lock exclusively if nobody holds it; false otherwise.
    pub fn try_exclusive(&mut self, blob: u64, c: u64) -> bool {
        if self.busy(blob, c) {
            return false;
        }
        self.held.insert((blob, c), Entry { exclusive: true, ..Entry::default() });
        true
    }

    /// Takes a share of the lock if nobody holds it exclusively or waits to; false otherwise.
    pub fn try_shared(&mut self, blob: u64, c: u64) -> bool {
        let e = self.held.entry((blob, c)).or_default();
        if e.exclusive || !e.queue.is_empty() {
            return false;
        }
        e.shared += 1;
        true
    }

    /// Asks for the lock exclusively: None if taken now, else a slot filled when it is.
    pub fn lock(&mut self, blob: u64, c: u64) -> Option<Slot<()>> {
        let e = self.held.entry((blob, c)).or_default();
        if !e.exclusive && e.shared == 0 {
            debug_assert!(e.queue.is_empty(), "a free lock has no waiters");
            e.exclusive = true;
            return None;
        }
        let s = Slot::new();
        e.queue.push_back(s.clone());
        Some(s)
    }

    /// Releases an exclusive hold; returns the waiter that holds it now, to wake.
    pub fn unlock_exclusive(&mut self, blob: u64, c: u64) -> Option<Slot<()>> {
        let e = self.held.get_mut(&(blob, c)).expect("cluster locked");
        debug_assert!(e.exclusive && e.shared == 0);
        e.exclusive = false;
        self.hand_over(blob, c)
    }

    /// Releases a share; returns the waiter that holds it now (the last share gone), to wake.
    pub fn unlock_shared(&mut self, blob: u64, c: u64) -> Option<Slot<()>> {
        let e = self.held.get_mut(&(blob, c)).expect("cluster locked");
        debug_assert!(e.shared > 0 && !e.exclusive);
        e.shared -= 1;
        if e.shared > 0 {
            return None;
        }
        self.hand_over(blob, c)
    }

    /// With no holder left: the next waiter holds it exclusively, or the entry goes.
    fn hand_over(&mut self, blob: u64, c: u64) -> Option<Slot<()>> {
        let e = self.held.get_mut(&(blob, c)).expect("cluster locked");
        match e.queue.pop_front() {
            Some(next) => {
                e.exclusive = true;
                Some(next)
            }
            None => {
                self.held.remove(&(blob, c));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_run_together_and_an_exclusive_waits_for_all_of_them() {
        let mut l = ClusterLocks::default();
        assert!(l.try_shared(1, 0) && l.try_shared(1, 0), "two direct writes at once");
        assert!(!l.try_exclusive(1, 0));
        let waiter = l.lock(1, 0).expect("the exclusive request waits");
        assert!(!l.try_shared(1, 0), "no new share once an exclusive request waits");
        assert!(l.unlock_shared(1, 0).is_none(), "one share still held");
        let woken = l.unlock_shared(1, 0).expect("the last share hands the lock over");
        assert!(Slot::ptr_eq(&woken, &waiter));
        assert!(!l.try_shared(1, 0), "held exclusively now");
        assert!(l.unlock_exclusive(1, 0).is_none());
        assert!(!l.busy(1, 0), "nobody holds it: no entry left");
    }

    #[test]
    fn exclusive_holders_take_turns_in_arrival_order_and_other_clusters_are_free() {
        let mut l = ClusterLocks::default();
        assert!(l.lock(1, 0).is_none(), "free: taken now");
        let (a, b) = (l.lock(1, 0).unwrap(), l.lock(1, 0).unwrap());
        assert!(l.try_shared(1, 1) && l.try_exclusive(2, 0), "other clusters and blobs are not held up");
        assert!(Slot::ptr_eq(&l.unlock_exclusive(1, 0).unwrap(), &a));
        assert!(Slot::ptr_eq(&l.unlock_exclusive(1, 0).unwrap(), &b));
        assert!(l.unlock_exclusive(1, 0).is_none());
        assert!(!l.busy(1, 0));
        assert!(!l.try_shared(2, 0));
    }
}
