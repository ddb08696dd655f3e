//! Reactor-local async tasks: multi-step control operations (loading a blobstore, taking a
//! snapshot) written as `async fn`s that await bdev I/O, run on one reactor without blocking it.
//!
//! A task lives in its reactor's thread-local table. Its waker is `Send` (a reactor index and
//! a task key): waking sends a message to that reactor, which polls the task there. A wake from
//! the reactor itself (a bdev completion callback) queues the task on a local ready list drained
//! by a poller instead, so no message is needed. No crate executor fits this shape (tokio and
//! async-executor want their own threads or `Send` futures), and the whole thing is ~100 lines.

use super::reactor::{self, FrameworkError, PollStatus, Poller};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

#[derive(Default)]
struct Tasks {
    next_key: u64,
    /// Each task's future with its waker (made once: a poll allocates nothing).
    live: super::id_hash::IdMap<u64, (LocalFuture, Waker)>,
    ready: VecDeque<u64>,
    poller: Option<Poller>,
}

thread_local! {
    static TASKS: RefCell<Tasks> = RefCell::new(Tasks::default());
}

struct TaskWaker {
    reactor: usize,
    key: u64,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let key = self.key;
        if reactor::current_index() == Some(self.reactor) {
            TASKS.with(|t| t.borrow_mut().ready.push_back(key));
        } else if reactor::send(self.reactor, move || poll_task(key)).is_err() {
            tracing::debug!(key, "task woken after its reactor stopped");
        }
    }
}

/// Starts `future` on this reactor; it runs until done (first poll at once).
///
/// # Panics
/// Off a reactor thread (a task needs a reactor to be woken on).
pub fn spawn_local(future: impl Future<Output = ()> + 'static) {
    assert!(reactor::current_index().is_some(), "spawn_local needs a reactor thread");
    let key = TASKS.with(|t| {
        let mut t = t.borrow_mut();
        let key = t.next_key;
        t.next_key += 1;
        let reactor = reactor::current_index().expect("checked above");
        let waker = Waker::from(Arc::new(TaskWaker { reactor, key }));
        t.live.insert(key, (Box::pin(future), waker));
        if t.poller.is_none() {
            t.poller = Some(reactor::poller_register("tasks", Duration::ZERO, run_ready));
        }
        key
    });
    poll_task(key);
}

/// Runs `make()`'s future on reactor `index` and waits for its output. For control-path
/// threads (RPC workers, tests); never call it from a reactor.
pub fn block_on<T, F>(index: usize, make: impl FnOnce() -> F + Send + 'static) -> Result<T, FrameworkError>
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
{
    if reactor::current_index().is_some() {
        return Err(FrameworkError::SelfCall(index));
    }
    let (tx, rx) = mpsc::sync_channel(1);
    reactor::send(index, move || {
        let future = make();
        spawn_local(async move {
            let _ = tx.send(future.await);
        });
    })?;
    rx.recv().map_err(|_| FrameworkError::CallPanicked(index))
}

fn run_ready() -> PollStatus {
    let mut ran = false;
    while let Some(key) = TASKS.with(|t| t.borrow_mut().ready.pop_front()) {
        poll_task(key);
        ran = true;
    }
    PollStatus::from(ran)
}

fn poll_task(key: u64) {
    // Take the future out while polling: it may spawn or wake other tasks.
    let Some((mut future, waker)) = TASKS.with(|t| t.borrow_mut().live.remove(&key)) else { return };
    if future.as_mut().poll(&mut Context::from_waker(&waker)).is_pending() {
        TASKS.with(|t| t.borrow_mut().live.insert(key, (future, waker)));
    }
}

/// A one-shot value filled by a callback and awaited by a task (on the same reactor).
pub struct Slot<T>(Rc<RefCell<(Option<T>, Option<Waker>)>>);

use std::rc::Rc;

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(Rc::new(RefCell::new((None, None))))
    }
}

impl<T> Slot<T> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills the slot and wakes its waiter.
    pub fn fill(&self, value: T) {
        let waker = {
            let mut s = self.0.borrow_mut();
            s.0 = Some(value);
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether `a` and `b` are the same slot (clones of one another).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        Rc::ptr_eq(&a.0, &b.0)
    }
}

impl<T> Future for Slot<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.0.borrow_mut();
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A mutex for tasks of one reactor: `lock().await` waits (FIFO) without blocking the
/// reactor. It serialises multi-step operations on one object (an lvstore's RPCs).
#[derive(Default)]
pub struct LocalMutex {
    locked: std::cell::Cell<bool>,
    waiters: RefCell<VecDeque<Slot<()>>>,
}

/// Held while it lives; dropping it hands the mutex to the next waiter.
pub struct LocalGuard<'a>(&'a LocalMutex);

impl LocalMutex {
    /// Waits for the mutex.
    pub async fn lock(&self) -> LocalGuard<'_> {
        if self.locked.replace(true) {
            let s = Slot::new();
            self.waiters.borrow_mut().push_back(s.clone());
            s.await;
        }
        LocalGuard(self)
    }
}

/// A guard that owns its mutex's `Rc` (to keep across awaits with the object it guards).
pub struct OwnedGuard(Rc<LocalMutex>);

impl LocalMutex {
    /// Waits for the mutex, returning a guard that keeps it alive.
    pub async fn lock_owned(self: Rc<Self>) -> OwnedGuard {
        std::mem::forget(self.lock().await);
        OwnedGuard(self)
    }

    fn unlock(&self) {
        // The next waiter inherits the lock (it stays set); with none, it is free.
        match self.waiters.borrow_mut().pop_front() {
            Some(next) => next.fill(()),
            None => self.locked.set(false),
        }
    }
}

impl Drop for OwnedGuard {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

impl Drop for LocalGuard<'_> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

/// Polls every future in `futures` concurrently (in this task, no spawning, so they may
/// borrow) and returns their outputs in order.
pub fn join_all<'a, T>(futures: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>) -> JoinAll<'a, T> {
    let n = futures.len();
    JoinAll { futures: futures.into_iter().map(Some).collect(), outputs: (0..n).map(|_| None).collect() }
}

/// The future of [`join_all`].
pub struct JoinAll<'a, T> {
    futures: Vec<Option<Pin<Box<dyn Future<Output = T> + 'a>>>>,
    outputs: Vec<Option<T>>,
}

impl<T> Future for JoinAll<'_, T> {
    type Output = Vec<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<T>> {
        let me = &mut *self;
        for (f, out) in me.futures.iter_mut().zip(me.outputs.iter_mut()) {
            if let Some(fut) = f {
                if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                    *out = Some(v);
                    *f = None;
                }
            }
        }
        if me.futures.iter().all(Option::is_none) {
            Poll::Ready(me.outputs.iter_mut().map(|o| o.take().expect("every future finished")).collect())
        } else {
            Poll::Pending
        }
    }
}

// JoinAll holds only boxed futures and outputs: moving it never moves a pinned future.
impl<T> Unpin for JoinAll<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::testing;

    thread_local! {
        static STASH: RefCell<Option<Slot<u32>>> = const { RefCell::new(None) };
    }

    #[test]
    fn a_task_sleeps_until_a_later_message_fills_its_slot() {
        testing::reactors();
        let (started_tx, started_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        crate::framework::send(0, move || {
            let slot: Slot<u32> = Slot::new();
            STASH.with(|s| *s.borrow_mut() = Some(slot.clone()));
            spawn_local(async move {
                let _ = tx.send(slot.await + 1);
            });
            let _ = started_tx.send(());
        })
        .unwrap();
        started_rx.recv().unwrap();
        assert!(rx.try_recv().is_err(), "the task waits for its slot");
        crate::framework::send(0, || STASH.with(|s| s.borrow_mut().take().unwrap().fill(41))).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 42);
    }

    /// A future that hands its waker to another thread, which wakes it from there.
    struct WokenElsewhere(bool);

    impl Future for WokenElsewhere {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            let waker = cx.waker().clone();
            std::thread::spawn(move || waker.wake());
            Poll::Pending
        }
    }

    #[test]
    fn a_wake_from_another_thread_polls_the_task_on_its_reactor() {
        testing::reactors();
        let on = block_on(1, || async {
            WokenElsewhere(false).await;
            reactor::current_index()
        })
        .unwrap();
        assert_eq!(on, Some(1));
    }

    #[test]
    fn join_all_returns_outputs_in_order() {
        testing::reactors();
        let got = block_on(1, || async {
            let slots: Vec<Slot<usize>> = (0..5).map(|_| Slot::new()).collect();
            let futs: Vec<Pin<Box<dyn Future<Output = usize>>>> =
                slots.iter().cloned().map(|s| Box::pin(async move { s.await * 10 }) as _).collect();
            for (i, s) in slots.iter().enumerate().rev() {
                s.fill(i);
            }
            join_all(futs).await
        })
        .unwrap();
        assert_eq!(got, vec![0, 10, 20, 30, 40]);
    }
}
