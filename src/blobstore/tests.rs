//! The blobstore on real reactors over malloc bdevs: data through snapshots and clones,
//! reopening clean and dirty, space, and damaged metadata.

use super::format::{Parent, FLAG_READ_ONLY, FLAG_THIN};
use super::store::{CreateOpts, Store};
use super::write_targets::WriteTargets;
use crate::bdev::buf::DmaBuf;
use crate::bdev::modules::malloc;
use crate::bdev::{self, test_gate, BdevIo, IoType};
use crate::framework::task::{block_on, Slot};
use crate::framework::testing;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{mpsc, Arc};

const MIB: u64 = 1 << 20;

fn opts(cluster: u64) -> CreateOpts {
    CreateOpts { cluster_size: cluster, bstype: *b"TEST\0\0\0\0\0\0\0\0\0\0\0\0", unmap_device: true, growth: 2 }
}

fn open_desc(name: &str) -> bdev::BdevDesc {
    bdev::open(name, true, Box::new(|_, _| {})).expect("open base")
}

/// Runs one I/O on `blob`; returns the buffer after it (reads) or the errno.
async fn io(store: &Rc<Store>, blob: u64, t: IoType, off: u64, data: &[u8]) -> Result<Vec<u8>, i32> {
    io_via(store, blob, None, t, off, data).await
}

/// An I/O of type `t` at byte `off` in 512-byte blocks, on a buffer holding `data` (none if
/// it is empty or the type moves no data), and the slot its completion fills with (success,
/// errno). The buffer must outlive the I/O.
fn prepared(t: IoType, off: u64, data: &[u8]) -> (Box<BdevIo>, DmaBuf, Slot<(bool, i32)>) {
    let mut buf = DmaBuf::new(data.len(), 4096).unwrap();
    buf.as_mut_slice().copy_from_slice(data);
    let slot: Slot<(bool, i32)> = Slot::new();
    let s = slot.clone();
    let mut bio = BdevIo::new(Rc::new(move |io: Box<BdevIo>| s.fill((io.succeeded(), io.errno()))));
    bio.prepare(t, off / 512, data.len().max(512) as u64 / 512);
    bio.set_block_size(512);
    if !data.is_empty() && t.has_data() {
        // SAFETY: the caller keeps `buf` (returned with it) until the I/O completes.
        unsafe { bio.push_iov(buf.as_ptr(), data.len()) };
    }
    (bio, buf, slot)
}

/// [`io`], through remembered write targets when given (as an lvol channel submits).
async fn io_via(
    store: &Rc<Store>,
    blob: u64,
    targets: Option<&WriteTargets>,
    t: IoType,
    off: u64,
    data: &[u8],
) -> Result<Vec<u8>, i32> {
    let (bio, buf, slot) = prepared(t, off, data);
    match targets {
        // As an lvol channel: the remembered target first, then the store.
        Some(targets) => {
            let tried = if t == IoType::Read { targets.try_read(bio) } else { targets.try_write(bio) };
            if let Err(bio) = tried {
                store.submit_remembering(blob, targets, bio)
            }
        }
        None => store.submit(blob, bio),
    }
    match slot.await {
        (true, _) => Ok(buf.as_slice().to_vec()),
        (false, e) => Err(e),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1).collect()
}

async fn read(store: &Rc<Store>, blob: u64, off: u64, len: usize) -> Vec<u8> {
    io(store, blob, IoType::Read, off, &vec![0xee; len]).await.expect("read")
}

#[test]
fn thin_blob_reads_zeroes_until_written_and_keeps_partial_granule_writes() {
    testing::reactors();
    malloc::create("bs_thin", 64 * MIB / 512, 512, None).unwrap();
    block_on(0, || async {
        let store = Store::create(open_desc("bs_thin"), opts(MIB)).await.unwrap();
        let b = store.create_blob(8, FLAG_THIN, Parent::None, vec![]).await.unwrap();
        assert!(read(&store, b, 0, 8192).await.iter().all(|&x| x == 0));
        // A 512-byte write in the middle of a granule, and one across a cluster boundary.
        let small = pattern(512, 1);
        io(&store, b, IoType::Write, 4096 + 1024, &small).await.unwrap();
        let cross = pattern(8192, 2);
        io(&store, b, IoType::Write, MIB - 4096, &cross).await.unwrap();
        let got = read(&store, b, 4096, 4096).await;
        assert!(
            got[..1024].iter().all(|&x| x == 0) && got[1024..1536] == small[..] && got[1536..].iter().all(|&x| x == 0)
        );
        assert_eq!(read(&store, b, MIB - 4096, 8192).await, cross);
        assert_eq!(store.with_state(|s| s.blobs[&b].allocated()), 2, "two clusters allocated");
        // The view other threads read (GET LBA STATUS on another reactor) agrees.
        assert_eq!(store.alloc_share.run(b, 0, 8), Some((true, 2)));
        assert_eq!(store.alloc_share.run(b, 2, 8), Some((false, 6)));
        io(&store, b, IoType::Unmap, 0, &vec![0; MIB as usize]).await.unwrap();
        assert_eq!(store.alloc_share.run(b, 0, 8), Some((false, 1)), "a whole-cluster unmap frees it");
        assert!(store.with_state(|s| s.problems()).is_empty());
    })
    .unwrap();
}

#[test]
fn snapshot_and_clone_see_the_data_of_their_moment_and_survive_reopen() {
    testing::reactors();
    malloc::create("bs_snap", 64 * MIB / 512, 512, None).unwrap();
    block_on(0, || async {
        let store = Store::create(open_desc("bs_snap"), opts(MIB)).await.unwrap();
        let a = store.create_blob(4, 0, Parent::None, vec![]).await.unwrap();
        let v1 = pattern(2 * MIB as usize, 3);
        io(&store, a, IoType::Write, 0, &v1).await.unwrap();
        let s = store.snapshot(a, vec![("name".into(), b"snap".to_vec())]).await.unwrap();
        let v2 = pattern(4096, 9);
        io(&store, a, IoType::Write, 8192, &v2).await.unwrap();
        let c = store.create_blob(4, FLAG_THIN, Parent::Blob(s), vec![]).await.unwrap();
        io(&store, c, IoType::Write, 512, &pattern(512, 4)).await.unwrap();
        assert_eq!(read(&store, s, 0, 2 * MIB as usize).await, v1, "the snapshot keeps the old data");
        let mut want_a = v1.clone();
        want_a[8192..12288].copy_from_slice(&v2);
        assert_eq!(read(&store, a, 0, 2 * MIB as usize).await, want_a);
        let mut want_c = v1.clone();
        want_c[512..1024].copy_from_slice(&pattern(512, 4));
        assert_eq!(read(&store, c, 0, 2 * MIB as usize).await, want_c, "the clone's partial granule merged");
        assert!(io(&store, s, IoType::Write, 0, &v2).await.is_err(), "snapshots are read-only");
        let before = store.with_state(|st| st.blobs.clone());
        // Dirty: no close. The log must carry everything.
        drop(store);
        let (store, loaded) = Store::open(open_desc("bs_snap")).await.unwrap();
        assert!(loaded.replayed > 0, "a dirty open replays the log");
        assert_eq!(store.with_state(|st| st.blobs.clone()), before);
        assert_eq!(read(&store, c, 0, 2 * MIB as usize).await, want_c);
        store.close().await.unwrap();
        drop(store);
        let (store, loaded) = Store::open(open_desc("bs_snap")).await.unwrap();
        assert_eq!(loaded.replayed, 0, "a clean open replays nothing");
        assert_eq!(store.with_state(|st| st.blobs.clone()), before);
        assert_eq!(read(&store, a, 0, 2 * MIB as usize).await, want_a);
        assert!(store.with_state(|st| st.problems()).is_empty());
    })
    .unwrap();
}

#[test]
fn a_write_remembers_the_run_of_whole_clusters_around_its_own() {
    testing::reactors();
    malloc::create("bs_runs", 64 * MIB / 512, 512, None).unwrap();
    block_on(0, || async {
        let store = Store::create(open_desc("bs_runs"), opts(MIB)).await.unwrap();
        // Thin blob x gets clusters 0 and 1 side by side, then blob y one, then x its cluster 2,
        // each written whole (a thin cluster partly written keeps validity bits: not whole).
        let x = store.create_blob(4, FLAG_THIN, Parent::None, vec![]).await.unwrap();
        let y = store.create_blob(4, FLAG_THIN, Parent::None, vec![]).await.unwrap();
        let v = pattern(MIB as usize, 3);
        for (blob, off) in [(x, 0), (x, MIB), (y, 0), (x, 2 * MIB)] {
            io_via(&store, blob, None, IoType::Write, off, &v).await.unwrap();
        }
        let v = &v[..4096];
        let map = store.with_state(|st| st.blobs[&x].map.clone());
        assert_eq!(map[1], map[0] + 1);
        assert_ne!(map[2], map[1] + 1, "y's cluster lies between");
        let blk = MIB / 512;
        let t = store.write_targets();
        io_via(&store, x, Some(&t), IoType::Write, MIB + 8192, v).await.unwrap();
        assert_eq!(t.lookup(0, 8), Some(map[0] * blk), "the cluster before, never written through t");
        assert_eq!(t.lookup(blk - 4, 8), Some(map[0] * blk + blk - 4), "a write across the two");
        assert_eq!(t.lookup(2 * blk, 8), None, "not next to them on the base");
        assert_eq!(t.lookup(3 * blk, 8), None, "not allocated");
        // Writes the run covers go straight to the base and read back.
        let w = pattern(8192, 4);
        io_via(&store, x, Some(&t), IoType::Write, MIB - 4096, &w).await.unwrap();
        assert!(read(&store, x, MIB - 4096, 8192).await == w);
        // A snapshot makes the run stale, and the write after it goes to a new cluster.
        let s = store.snapshot(x, vec![]).await.unwrap();
        assert_eq!(t.lookup(0, 8), None, "stale after the snapshot");
        let z = pattern(4096, 5);
        io_via(&store, x, Some(&t), IoType::Write, 0, &z).await.unwrap();
        assert!(read(&store, s, 0, 4096).await == v, "the snapshot's cluster was not written");
        assert!(read(&store, x, 0, 4096).await == z);
        assert!(store.with_state(|st| st.problems()).is_empty());
    })
    .unwrap();
}

#[test]
fn remembered_write_targets_go_stale_with_any_change_to_the_store() {
    testing::reactors();
    malloc::create("bs_targets", 64 * MIB / 512, 512, None).unwrap();
    block_on(0, || async {
        let store = Store::create(open_desc("bs_targets"), opts(MIB)).await.unwrap();
        let a = store.create_blob(4, 0, Parent::None, vec![]).await.unwrap();
        let t = store.write_targets();
        let v1 = pattern(4096, 1);
        io_via(&store, a, Some(&t), IoType::Write, 8192, &v1).await.unwrap();
        // Blocks of 512 bytes: the write's 16th to 23rd.
        let remembered = t.lookup(16, 8);
        assert!(remembered.is_some(), "a write of a thick blob's cluster remembers where it went");
        // The remembered target serves the next write; the snapshot then takes the cluster.
        io_via(&store, a, Some(&t), IoType::Write, 8192, &v1).await.unwrap();
        let s = store.snapshot(a, vec![]).await.unwrap();
        assert_eq!(t.lookup(16, 8), None, "stale after the snapshot");
        let v2 = pattern(4096, 2);
        io_via(&store, a, Some(&t), IoType::Write, 8192, &v2).await.unwrap();
        assert!(read(&store, s, 8192, 4096).await == v1, "the snapshot's cluster was not written");
        assert!(read(&store, a, 8192, 4096).await == v2);
        assert_ne!(store.with_state(|st| (st.blobs[&a].map[0] * MIB + 8192) / 512), remembered.unwrap());
        // A blob made read-only refuses a write whose target it remembered a moment before.
        let b = store.create_blob(2, 0, Parent::None, vec![]).await.unwrap();
        io_via(&store, b, Some(&t), IoType::Write, 0, &v1).await.unwrap();
        store.set_flags(b, FLAG_READ_ONLY).await.unwrap();
        assert_eq!(io_via(&store, b, Some(&t), IoType::Write, 0, &v2).await, Err(libc::EPERM));
        assert!(read(&store, b, 0, 4096).await == v1);
        assert!(store.with_state(|st| st.problems()).is_empty());
    })
    .unwrap();
}

/// A read of `len` bytes at `off` that `targets` take, if they do: its data.
async fn read_by_target(targets: &WriteTargets, off: u64, len: usize) -> Option<Vec<u8>> {
    let (bio, buf, slot) = prepared(IoType::Read, off, &vec![0; len]);
    targets.try_read(bio).ok()?;
    assert!(slot.await.0, "a read by a target succeeds");
    Some(buf.as_slice().to_vec())
}

#[test]
fn reads_remember_targets_and_take_them_only_while_current() {
    testing::reactors();
    malloc::create("bs_read_targets", 64 * MIB / 512, 512, None).unwrap();
    block_on(0, || async {
        let store = Store::create(open_desc("bs_read_targets"), opts(MIB)).await.unwrap();
        let a = store.create_blob(4, 0, Parent::None, vec![]).await.unwrap();
        let v1 = pattern(8192, 1);
        io_via(&store, a, None, IoType::Write, MIB + 4096, &v1).await.unwrap();
        let t = store.write_targets();
        assert!(read_by_target(&t, MIB + 4096, 8192).await.is_none(), "nothing remembered yet");
        // A read through the store remembers its cluster (the thick blob's run), and the
        // next read anywhere in it is taken by the target and reads the blob's data.
        assert!(io_via(&store, a, Some(&t), IoType::Read, 0, &[0; 4096]).await.is_ok());
        assert!(t.lookup(0, 8).is_some(), "a read of a thick blob's cluster remembers where it is");
        assert!(read_by_target(&t, MIB + 4096, 8192).await == Some(v1.clone()));
        // A snapshot makes it stale: the write after it goes to a new cluster, and reads
        // take the store's path and see it.
        let s = store.snapshot(a, vec![]).await.unwrap();
        assert!(read_by_target(&t, MIB + 4096, 8192).await.is_none(), "stale after the snapshot");
        let v2 = pattern(8192, 2);
        io_via(&store, a, None, IoType::Write, MIB + 4096, &v2).await.unwrap();
        assert!(io_via(&store, a, Some(&t), IoType::Read, MIB + 4096, &v1).await.unwrap() == v2);
        assert!(read(&store, s, MIB + 4096, 8192).await == v1, "the snapshot keeps the old data");
        // A read of the read-only snapshot remembers nothing, so writes to it still fail.
        let ts = store.write_targets();
        assert!(io_via(&store, s, Some(&ts), IoType::Read, MIB + 4096, &v1).await.unwrap() == v1);
        assert!(ts.lookup(MIB / 512 + 8, 16).is_none(), "nothing remembered for a read-only blob");
        assert_eq!(io_via(&store, s, Some(&ts), IoType::Write, MIB + 4096, &v2).await, Err(libc::EPERM));
        assert!(read(&store, s, MIB + 4096, 8192).await == v1, "the snapshot is unchanged");
        // The clone's own cluster, written whole, is remembered again by a read; the cluster
        // it shares with the snapshot is not.
        assert!(t.lookup(MIB / 512 + 8, 16).is_none(), "a cluster written in part is not whole");
        let w = pattern(MIB as usize, 3);
        io_via(&store, a, None, IoType::Write, 2 * MIB, &w).await.unwrap();
        assert!(io_via(&store, a, Some(&t), IoType::Read, 2 * MIB, &[0; 4096]).await.unwrap() == w[..4096]);
        assert!(read_by_target(&t, 3 * MIB - 8192, 8192).await.as_deref() == Some(&w[w.len() - 8192..]));
        assert!(read_by_target(&t, 0, 4096).await.is_none(), "the snapshot's cluster is not the blob's");
        assert!(store.with_state(|st| st.problems()).is_empty());
    })
    .unwrap();
}

#[test]
fn deleting_a_snapshot_merges_it_into_its_clone_and_inflate_keeps_data() {
    testing::reactors();
    malloc::create("bs_del", 64 * MIB / 512, 512, None).unwrap();
    block_on(0, || async {
        let store = Store::create(open_desc("bs_del"), opts(MIB)).await.unwrap();
        let a = store.create_blob(3, FLAG_THIN, Parent::None, vec![]).await.unwrap();
        let v1 = pattern(3 * MIB as usize, 5);
        io(&store, a, IoType::Write, 0, &v1).await.unwrap();
        let s1 = store.snapshot(a, vec![]).await.unwrap();
        io(&store, a, IoType::Write, 4096, &pattern(4096, 6)).await.unwrap();
        let s2 = store.snapshot(a, vec![]).await.unwrap();
        io(&store, a, IoType::Write, MIB + 512, &pattern(512, 7)).await.unwrap();
        let want = read(&store, a, 0, 3 * MIB as usize).await;
        assert!(store.delete_blob(s1, true).await.is_ok(), "s1 has one clone (s2)");
        assert_eq!(read(&store, a, 0, 3 * MIB as usize).await, want);
        store.decouple_parent(a, None).await.unwrap();
        assert_eq!(read(&store, a, 0, 3 * MIB as usize).await, want);
        assert_eq!(store.with_state(|s| s.blobs[&a].parent), Parent::None, "s2's parent was none");
        let s3 = store.snapshot(a, vec![]).await.unwrap();
        store.inflate(a, None).await.unwrap();
        assert_eq!(read(&store, a, 0, 3 * MIB as usize).await, want);
        assert_eq!(store.with_state(|s| s.blobs[&a].allocated()), 3);
        store.delete_blob(s3, true).await.unwrap();
        store.delete_blob(s2, true).await.unwrap();
        assert_eq!(read(&store, a, 0, 3 * MIB as usize).await, want);
        assert!(store.with_state(|s| s.problems()).is_empty());
    })
    .unwrap();
}

#[test]
fn a_full_store_fails_allocating_writes_with_enospc_only() {
    testing::reactors();
    malloc::create("bs_full", 16 * MIB / 512, 512, None).unwrap();
    block_on(0, || async {
        let store = Store::create(open_desc("bs_full"), opts(MIB)).await.unwrap();
        let free = store.with_state(|s| s.free_clusters());
        let a = store.create_blob(free + 4, FLAG_THIN, Parent::None, vec![]).await.unwrap();
        for c in 0..free {
            io(&store, a, IoType::Write, c * MIB, &pattern(4096, c as u8)).await.unwrap();
        }
        assert_eq!(io(&store, a, IoType::Write, free * MIB, &pattern(4096, 1)).await, Err(libc::ENOSPC));
        for c in 0..free {
            assert_eq!(read(&store, a, c * MIB, 4096).await, pattern(4096, c as u8));
        }
        // An unmap of a whole cluster gives it back.
        io(&store, a, IoType::Unmap, 0, &vec![0; MIB as usize]).await.unwrap();
        store.flush().await.unwrap();
        io(&store, a, IoType::Write, free * MIB, &pattern(4096, 1)).await.unwrap();
        assert!(read(&store, a, 0, 4096).await.iter().all(|&x| x == 0));
        assert!(store.with_state(|s| s.problems()).is_empty());
    })
    .unwrap();
}

thread_local! {
    /// Stores kept on reactor 0 between a test's steps, by gate name: the tests run in parallel
    /// on the same reactors, so each keeps its own (one shared slot let a test's writes go to
    /// another test's store).
    static KEPT: std::cell::RefCell<HashMap<&'static str, (Rc<Store>, u64)>> = std::cell::RefCell::new(HashMap::new());
}

/// A store with 1 MiB clusters on a new gated bdev and one blob of 4 clusters, kept on reactor 0
/// for one test; dropped with it.
struct Kept {
    name: &'static str,
    gate: Arc<test_gate::Gate>,
}

impl Kept {
    /// The store on gate `name` with a blob of `flags`; `first_write`: a 4 KiB write of that
    /// pattern at offset 0 first.
    fn new(name: &'static str, flags: u32, first_write: Option<u8>) -> Kept {
        testing::reactors();
        let gate = test_gate::create_with(name, 32 * MIB / 512, 512, false);
        block_on(0, move || async move {
            let store = Store::create(open_desc(name), opts(MIB)).await.unwrap();
            let b = store.create_blob(4, flags, Parent::None, vec![]).await.unwrap();
            if let Some(seed) = first_write {
                io(&store, b, IoType::Write, 0, &pattern(4096, seed)).await.unwrap();
            }
            KEPT.with(|k| k.borrow_mut().insert(name, (store, b)));
        })
        .unwrap();
        Kept { name, gate }
    }

    /// The store and blob of gate `name`; on reactor 0 only.
    fn get(name: &'static str) -> (Rc<Store>, u64) {
        KEPT.with(|k| k.borrow().get(name).cloned().expect("a store kept on this reactor"))
    }

    /// Runs `f` with the store and blob on reactor 0 and returns its result.
    fn call<T: Send + 'static>(&self, f: impl FnOnce(Rc<Store>, u64) -> T + Send + 'static) -> T {
        let name = self.name;
        crate::framework::call(0, move || {
            let (store, b) = Kept::get(name);
            f(store, b)
        })
        .unwrap()
    }

    /// Runs `op` as a task on reactor 0; the receiver gets its result.
    fn spawn<T, F>(&self, op: impl FnOnce(Rc<Store>, u64) -> F + Send + 'static) -> mpsc::Receiver<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let name = self.name;
        crate::framework::send(0, move || {
            let (store, b) = Kept::get(name);
            crate::framework::task::spawn_local(async move {
                let _ = tx.send(op(store, b).await);
            });
        })
        .unwrap();
        rx
    }

    /// A 4 KiB write of pattern `seed` at offset 0 of the blob, running on reactor 0.
    fn spawn_write(&self, seed: u8) -> mpsc::Receiver<Result<(), i32>> {
        self.spawn(
            move |store, b| async move { io(&store, b, IoType::Write, 0, &pattern(4096, seed)).await.map(|_| ()) },
        )
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let name = self.name;
        let _ = crate::framework::call(0, move || drop(KEPT.with(|k| k.borrow_mut().remove(name))));
    }
}

/// Lets every reactor handle what was sent to it, twice round (a range lock's messages).
fn reactors_go_round() {
    for _ in 0..2 {
        for r in 0..2 {
            crate::framework::call(r, || ()).unwrap();
        }
    }
}

const TEN_S: std::time::Duration = std::time::Duration::from_secs(10);

/// spdk#3682's class: a cluster freed by an unmap while a write to it is still in flight could
/// be reused by another blob and then receive that stale write. The free waits (bdev range
/// lock on the base) until the write is done.
#[test]
fn freeing_a_cluster_waits_for_io_still_in_flight_to_it() {
    let kept = Kept::new("bs_gate", FLAG_THIN, Some(1));
    let gate = &kept.gate;
    gate.hold(IoType::Write, true);
    // Granule 0 is the blob's own: a fast-path write, which takes no cluster lock.
    let write = kept.spawn_write(2);
    test_gate::wait_until("the write is held at the base", || gate.parked() == 1);
    let unmap =
        kept.spawn(|store, b| async move { io(&store, b, IoType::Unmap, 0, &vec![0; MIB as usize]).await.map(|_| ()) });
    reactors_go_round();
    let mapped = || kept.call(|store, b| store.with_state(|s| s.blobs[&b].map[0]));
    assert_ne!(mapped(), 0, "the cluster is not freed while a write to it is in flight");
    assert!(unmap.try_recv().is_err());
    gate.hold(IoType::Write, false);
    gate.release(0);
    assert_eq!(write.recv_timeout(TEN_S).unwrap(), Ok(()));
    assert_eq!(unmap.recv_timeout(TEN_S).unwrap(), Ok(()));
    assert_eq!(mapped(), 0, "then the unmap frees it");
}

/// A cluster's lock is released once its new validity record is applied, before the log has
/// it; a write that then takes the fast path to those granules must still not complete before
/// the record is in the log (a crash would lose a write already acknowledged).
#[test]
fn a_write_to_granules_whose_record_is_not_logged_yet_waits_for_the_log() {
    let kept = Kept::new("bs_undurable", FLAG_THIN, None);
    let gate = &kept.gate;
    gate.hold(IoType::Write, true);
    // The first write allocates: its data is held, then released; its record's log write is held.
    let first = kept.spawn_write(1);
    test_gate::wait_until("the first data write is held", || gate.parked() == 1);
    let (_, data_lba, _) = *gate.arrivals().last().unwrap();
    gate.release_at(0, Some(data_lba));
    test_gate::wait_until("its record's log write is held", || gate.parked() == 1);
    // The second write finds the granule valid: fast path, its data lands at the same place.
    let second = kept.spawn_write(2);
    test_gate::wait_until("the second data write is held", || gate.parked() == 2);
    assert_eq!(gate.arrivals().last().unwrap().1, data_lba, "the fast path wrote the same cluster");
    gate.release_at(0, Some(data_lba));
    test_gate::wait_until("only the log write is held", || gate.parked() == 1);
    reactors_go_round();
    assert!(second.try_recv().is_err(), "the second write waits for the first one's record");
    assert!(first.try_recv().is_err());
    gate.hold(IoType::Write, false);
    gate.release(0);
    assert_eq!(first.recv_timeout(TEN_S).unwrap(), Ok(()));
    assert_eq!(second.recv_timeout(TEN_S).unwrap(), Ok(()));
}

thread_local! {
    /// The write targets of `a_run_stops_at_a_cluster_whose_record_is_not_logged_yet`.
    static RUN_TARGETS: std::cell::RefCell<Option<Rc<WriteTargets>>> = const { std::cell::RefCell::new(None) };
}

/// A write to a cluster whose allocation record is not in the log yet must wait for it (else
/// a crash could lose a write already acknowledged), so the run of whole clusters a channel
/// remembers stops short of such a cluster, though it lies next to the others on the base.
#[test]
fn a_run_stops_at_a_cluster_whose_record_is_not_logged_yet() {
    let kept = Kept::new("bs_run_log", FLAG_THIN, None);
    let gate = &kept.gate;
    let whole = |c: u64, seed: u8| {
        kept.spawn(move |store, b| async move {
            io(&store, b, IoType::Write, c * MIB, &pattern(MIB as usize, seed)).await.map(|_| ())
        })
    };
    for c in 0..2 {
        assert_eq!(whole(c, 1).recv_timeout(TEN_S).unwrap(), Ok(()));
    }
    // Cluster 2's first write: its data goes through, its record's log write is held.
    gate.hold(IoType::Write, true);
    let third = whole(2, 2);
    test_gate::wait_until("the cluster's data write is held", || gate.parked() == 1);
    let (_, data_lba, _) = *gate.arrivals().last().unwrap();
    gate.release_at(0, Some(data_lba));
    test_gate::wait_until("its record's log write is held", || gate.parked() == 1);
    let map = kept.call(|store, b| store.with_state(|st| st.blobs[&b].map.clone()));
    assert_eq!((map[1], map[2]), (map[0] + 1, map[0] + 2), "three clusters side by side on the base");
    // A write through a channel's targets finds the run around cluster 0 (and is held too).
    let write = kept.spawn(|store, b| async move {
        let t = Rc::new(store.write_targets());
        RUN_TARGETS.with(|r| *r.borrow_mut() = Some(t.clone()));
        io_via(&store, b, Some(&t), IoType::Write, 0, &pattern(4096, 3)).await.map(|_| ())
    });
    test_gate::wait_until("the write through the targets is held", || gate.parked() == 2);
    let blk = MIB / 512;
    let lookup = move |c: u64| {
        crate::framework::call(0, move || RUN_TARGETS.with(|r| r.borrow().as_ref().unwrap().lookup(c * blk + 8, 8)))
            .unwrap()
    };
    assert_eq!(lookup(1), Some(map[1] * blk + 8), "the run covers the logged cluster next to it");
    assert_eq!(lookup(2), None, "and stops before the one whose record is on its way");
    gate.hold(IoType::Write, false);
    gate.release(0);
    assert_eq!(third.recv_timeout(TEN_S).unwrap(), Ok(()));
    assert_eq!(write.recv_timeout(TEN_S).unwrap(), Ok(()));
    // Once the record is in the log, the next run takes that cluster in.
    let again = kept.spawn(|store, b| async move {
        let t = RUN_TARGETS.with(|r| r.borrow().clone()).unwrap();
        io_via(&store, b, Some(&t), IoType::Write, 4096, &pattern(4096, 4)).await.map(|_| ())
    });
    assert_eq!(again.recv_timeout(TEN_S).unwrap(), Ok(()));
    assert_eq!(lookup(2), Some(map[2] * blk + 8));
    crate::framework::call(0, || drop(RUN_TARGETS.with(|r| r.borrow_mut().take()))).unwrap();
}

/// A write to clusters the blob owns goes to the base in the bdev layer's one pass (remapped),
/// uncounted by the store; a snapshot's freeze must still wait for it, or the snapshot would be
/// taken while the write is in flight and then change under it (the write lands in what became
/// the snapshot's cluster).
#[test]
fn a_snapshot_waits_for_an_owned_cluster_write_in_flight_on_the_base() {
    let kept = Kept::new("bs_remap", 0, Some(1));
    let gate = &kept.gate;
    gate.hold(IoType::Write, true);
    let write = kept.spawn_write(2);
    test_gate::wait_until("the write is held at the base", || gate.parked() == 1);
    let forwarded_idle = kept.call(|store, _| store.io.fwd.idle());
    assert!(forwarded_idle, "the owned-cluster write was remapped, not forwarded through the store");
    let snapshot = kept.spawn(|store, b| async move { store.snapshot(b, vec![]).await.map_err(|e| e.to_string()) });
    reactors_go_round();
    // Its metadata would go to the base too (and be held there): none has arrived.
    assert_eq!(gate.parked(), 1, "the snapshot wrote nothing before the write in flight was done");
    assert!(snapshot.try_recv().is_err(), "the snapshot waits for the write in flight");
    gate.hold(IoType::Write, false);
    gate.release(0);
    assert_eq!(write.recv_timeout(TEN_S).unwrap(), Ok(()));
    let snap = snapshot.recv_timeout(TEN_S).unwrap().expect("snapshot");
    let name = kept.name;
    let got = block_on(0, move || async move {
        let (store, b) = Kept::get(name);
        (read(&store, snap, 0, 4096).await, read(&store, b, 0, 4096).await)
    })
    .unwrap();
    assert!(got.0 == pattern(4096, 2), "the snapshot holds the write that was in flight");
    assert!(got.1 == pattern(4096, 2), "and so does the blob");
}

/// First writes to different granules of a cluster the blob already has a place for share the
/// cluster's lock: both go to the base at once (each applies its own validity record), where
/// one exclusive lock would send the second through the slow path behind the first.
#[test]
fn first_writes_to_granules_of_one_mapped_cluster_run_together() {
    let kept = Kept::new("bs_shared", FLAG_THIN, Some(1));
    let gate = &kept.gate;
    let gs = kept.call(|store, _| store.with_state(|s| s.cluster_size / s.gpc));
    gate.hold(IoType::Write, true);
    let write_at = |granule: u64, seed: u8| {
        kept.spawn(move |store, b| async move {
            io(&store, b, IoType::Write, granule * gs, &pattern(gs as usize, seed)).await.map(|_| ())
        })
    };
    let (a, b) = (write_at(1, 2), write_at(2, 3));
    test_gate::wait_until("both first writes are at the base together", || gate.parked() == 2);
    gate.hold(IoType::Write, false);
    gate.release(0);
    assert_eq!(a.recv_timeout(TEN_S).unwrap(), Ok(()));
    assert_eq!(b.recv_timeout(TEN_S).unwrap(), Ok(()));
    let name = kept.name;
    let got = block_on(0, move || async move {
        let (store, b) = Kept::get(name);
        read(&store, b, 0, 3 * gs as usize).await
    })
    .unwrap();
    let want =
        [pattern(4096, 1), vec![0; gs as usize - 4096], pattern(gs as usize, 2), pattern(gs as usize, 3)].concat();
    assert!(got == want, "each write's granule reads back, the rest of granule 0 is zero");
    let shared = kept.call(|store, b| (store.alloc_share.run(b, 0, 4), store.alloc_share.run(b, 1, 4)));
    assert_eq!(shared, (Some((true, 1)), Some((false, 3))), "the shared allocation view: cluster 0 only");
}
