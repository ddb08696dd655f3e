//! Sessions across reactors: the table of live sessions (TSIH allocation, lookups for session
//! and connection reinstatement), and what a session needs to be found and torn down. Ferry
//! offers MaxConnections=1 (no MC/S, refused cleanly in negotiation), so a session is one
//! connection and all its state lives with that connection on one reactor; this table only
//! names it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A live session as the table knows it.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    /// The session identifying handle.
    pub tsih: u16,
    /// The initiator's name.
    pub initiator: String,
    /// The initiator's session id.
    pub isid: [u8; 6],
    /// The target node (empty for discovery).
    pub target: String,
    /// The reactor of its connection.
    pub reactor: usize,
    /// Its connection's id.
    pub conn_id: u64,
    /// Its connection's CID.
    pub cid: u16,
    /// What the leading login negotiated (a reinstated connection keeps the session-wide
    /// values).
    pub params: Option<super::negotiate::SessionParams>,
}

#[derive(Default)]
struct Table {
    by_tsih: HashMap<u16, SessionEntry>,
    next: u16,
    /// Ended sessions whose nexus is still being released, by (initiator, target), names in
    /// lower case: a new login of that initiator to that target waits for these flags.
    releasing: HashMap<(String, String), Vec<Arc<AtomicBool>>>,
}

fn release_key(initiator: &str, target: &str) -> (String, String) {
    (initiator.to_ascii_lowercase(), target.to_ascii_lowercase())
}

/// Notes that the nexus of an ended session of `initiator` to `target` is being released
/// (its units forget its reservations and PREVENT, its tasks end); the returned flag is set
/// when it is.
pub fn begin_release(initiator: &str, target: &str) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let mut g = lock();
    let t = g.get_or_insert_with(Table::default);
    let list = t.releasing.entry(release_key(initiator, target)).or_default();
    list.retain(|f| !f.load(Ordering::Acquire));
    list.push(flag.clone());
    flag
}

/// The releases of `initiator`'s ended sessions to `target` still under way: a new session
/// waits for them, so that what it does comes after the old nexus is gone (an initiator that
/// drops its connection and logs in again, with a new ISID or the same, sees the loss done).
pub fn pending_releases(initiator: &str, target: &str) -> Vec<Arc<AtomicBool>> {
    let mut g = lock();
    let Some(t) = g.as_mut() else { return Vec::new() };
    let key = release_key(initiator, target);
    let Some(list) = t.releasing.get_mut(&key) else { return Vec::new() };
    list.retain(|f| !f.load(Ordering::Acquire));
    let out = list.clone();
    if list.is_empty() {
        t.releasing.remove(&key);
    }
    out
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Table>> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds a session and returns its new TSIH (never 0), or None if every TSIH is in use.
pub fn add(mut entry: SessionEntry) -> Option<u16> {
    let mut g = lock();
    let t = g.get_or_insert_with(Table::default);
    for _ in 0..=u16::MAX as u32 {
        t.next = t.next.wrapping_add(1);
        if t.next != 0 && !t.by_tsih.contains_key(&t.next) {
            entry.tsih = t.next;
            t.by_tsih.insert(t.next, entry);
            return Some(t.next);
        }
    }
    None
}

/// Removes the session `tsih` if connection `conn_id` still owns it.
pub fn remove(tsih: u16, conn_id: u64) {
    let mut g = lock();
    if let Some(t) = g.as_mut() {
        if t.by_tsih.get(&tsih).is_some_and(|e| e.conn_id == conn_id) {
            t.by_tsih.remove(&tsih);
        }
    }
}

/// The session `tsih`.
pub fn get(tsih: u16) -> Option<SessionEntry> {
    lock().as_ref()?.by_tsih.get(&tsih).cloned()
}

/// Removes and returns the sessions of `initiator` with `isid` to `target` (a leading login
/// with TSIH 0 reinstates them: RFC 7143 §6.3.5).
pub fn take_same_nexus(initiator: &str, isid: &[u8; 6], target: &str) -> Vec<SessionEntry> {
    let mut g = lock();
    let Some(t) = g.as_mut() else { return Vec::new() };
    let found: Vec<u16> = t
        .by_tsih
        .values()
        .filter(|e| {
            e.initiator.eq_ignore_ascii_case(initiator) && &e.isid == isid && e.target.eq_ignore_ascii_case(target)
        })
        .map(|e| e.tsih)
        .collect();
    found.iter().filter_map(|k| t.by_tsih.remove(k)).collect()
}

/// Moves session `tsih` to a new connection (connection reinstatement); returns the old entry.
pub fn move_to(tsih: u16, reactor: usize, conn_id: u64, cid: u16) -> Option<SessionEntry> {
    let mut g = lock();
    let e = g.as_mut()?.by_tsih.get_mut(&tsih)?;
    let old = e.clone();
    e.reactor = reactor;
    e.conn_id = conn_id;
    e.cid = cid;
    Some(old)
}

/// Every session of `target`.
pub fn of_target(target: &str) -> Vec<SessionEntry> {
    lock()
        .as_ref()
        .map(|t| t.by_tsih.values().filter(|e| e.target.eq_ignore_ascii_case(target)).cloned().collect())
        .unwrap_or_default()
}

/// Every live session of `initiator` to `target`.
pub fn of_initiator(initiator: &str, target: &str) -> Vec<SessionEntry> {
    lock()
        .as_ref()
        .map(|t| {
            t.by_tsih
                .values()
                .filter(|e| e.initiator.eq_ignore_ascii_case(initiator) && e.target.eq_ignore_ascii_case(target))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Number of sessions.
pub fn count() -> usize {
    lock().as_ref().map(|t| t.by_tsih.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(initiator: &str, conn_id: u64) -> SessionEntry {
        SessionEntry {
            tsih: 0,
            initiator: initiator.into(),
            isid: [1; 6],
            target: "iqn.t".into(),
            reactor: 0,
            conn_id,
            cid: 0,
            params: None,
        }
    }

    #[test]
    fn tsihs_are_unique_and_reinstatement_takes_the_same_nexus_only() {
        let a = add(entry("iqn.session-test-a", 1)).unwrap();
        let b = add(entry("iqn.session-test-b", 2)).unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b);
        let taken = take_same_nexus("IQN.SESSION-TEST-A", &[1; 6], "iqn.t");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].tsih, a);
        assert!(get(a).is_none());
        remove(b, 99);
        assert!(get(b).is_some(), "only the owning connection removes a session");
        remove(b, 2);
        assert!(get(b).is_none());
    }
}
