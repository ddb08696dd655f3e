//! A pool of threads for control-path jobs that may wait (a queue draining, a reactor
//! answering, a management call waiting for initialisation).
//!
//! Threads start on demand up to a fixed maximum and, beyond a minimum, leave after being idle
//! for a while. A job never waits in the queue while the pool is below its maximum: a new
//! thread starts whenever the queued jobs outnumber the threads waiting for work. So a caller
//! that has at most `max` jobs outstanding at once (the RPC server has one per connection and
//! at most `max` connections) can never deadlock on the pool, even when every job waits for a
//! later one.
//!
//! Hand-written rather than taken from a crate: the pools in the registry (rayon, threadpool)
//! are fixed-size, so a job that waits for another would hold a thread the other needs.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A job, and what to run once the thread is back in the pool (see
/// [`WorkerPool::spawn_notifying`]).
struct Task {
    work: Box<dyn FnOnce() + Send>,
    then: Option<Box<dyn FnOnce() + Send>>,
}

/// Why a job could not be queued.
#[derive(Debug, thiserror::Error)]
#[error("worker pool {pool}: no thread to run the job ({source})")]
pub struct PoolError {
    /// The pool's name.
    pub pool: &'static str,
    /// Why no thread could be started.
    pub source: std::io::Error,
}

/// A pool of named worker threads; see the module documentation.
pub struct WorkerPool {
    shared: Arc<Shared>,
}

struct Shared {
    name: &'static str,
    min: usize,
    max: usize,
    idle_timeout: Duration,
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Task>,
    /// Threads alive.
    threads: usize,
    /// Threads blocked waiting for a job, or started and not yet running.
    waiting: usize,
    /// Suffix for the next thread's name.
    next_index: usize,
}

impl WorkerPool {
    /// A pool whose threads are called `name<N>`, starting `min` threads now and growing to
    /// `max` (at least 1). Threads above `min` leave after `idle_timeout` without work.
    pub fn new(name: &'static str, min: usize, max: usize, idle_timeout: Duration) -> Result<WorkerPool, PoolError> {
        let max = max.max(1);
        let pool = WorkerPool {
            shared: Arc::new(Shared {
                name,
                min: min.min(max),
                max,
                idle_timeout,
                state: Mutex::new(State::default()),
                work: Condvar::new(),
            }),
        };
        {
            let mut state = pool.shared.lock();
            while state.threads < pool.shared.min {
                pool.start_thread(&mut state).map_err(|source| PoolError { pool: name, source })?;
            }
        }
        Ok(pool)
    }

    /// Queues `job`; a waiting thread takes it, or a new one starts to run it.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) -> Result<(), PoolError> {
        self.queue(Task { work: Box::new(job), then: None })
    }

    /// As [`WorkerPool::spawn`], and runs `notify` (which must not block) once the thread is
    /// back in the pool: a caller that queues its next job when notified finds the thread
    /// free, instead of starting another because the first had not yet come back.
    pub fn spawn_notifying(
        &self,
        job: impl FnOnce() + Send + 'static,
        notify: impl FnOnce() + Send + 'static,
    ) -> Result<(), PoolError> {
        self.queue(Task { work: Box::new(job), then: Some(Box::new(notify)) })
    }

    fn queue(&self, task: Task) -> Result<(), PoolError> {
        let mut state = self.shared.lock();
        state.queue.push_back(task);
        // A thread signalled for an earlier job still counts as waiting until it wakes, and
        // that job is still queued: so compare the two counts, not "is anyone waiting".
        if state.queue.len() > state.waiting && state.threads < self.shared.max {
            if let Err(source) = self.start_thread(&mut state) {
                if state.threads == 0 {
                    state.queue.pop_back();
                    return Err(PoolError { pool: self.shared.name, source });
                }
                tracing::warn!(pool = self.shared.name, error = %source, "cannot start another worker; the job waits");
            }
        }
        drop(state);
        self.shared.work.notify_one();
        Ok(())
    }

    /// Threads alive now (for diagnostics and tests).
    pub fn threads(&self) -> usize {
        self.shared.lock().threads
    }

    fn start_thread(&self, state: &mut State) -> std::io::Result<()> {
        let shared = self.shared.clone();
        let index = state.next_index;
        std::thread::Builder::new().name(format!("{}{index}", self.shared.name)).spawn(move || shared.run())?;
        state.next_index += 1;
        state.threads += 1;
        // Counted as waiting from birth: it takes the first queued job as soon as it runs.
        state.waiting += 1;
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn guarded(&self, f: Box<dyn FnOnce() + Send>) {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            tracing::error!(pool = self.name, "a job panicked; the worker goes on");
        }
    }

    fn run(&self) {
        let mut state = self.lock();
        state.waiting -= 1;
        loop {
            if let Some(task) = state.queue.pop_front() {
                drop(state);
                self.guarded(task.work);
                state = self.lock();
                // Under the lock, so whoever is notified and queues more work sees this
                // thread as free (it takes the work at the top of the loop or waits for it).
                if let Some(then) = task.then {
                    self.guarded(then);
                }
                continue;
            }
            state.waiting += 1;
            let (guard, wait) = self.work.wait_timeout(state, self.idle_timeout).unwrap_or_else(|e| e.into_inner());
            state = guard;
            state.waiting -= 1;
            if wait.timed_out() && state.queue.is_empty() && state.threads > self.min {
                state.threads -= 1;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Instant;

    /// Every job waits for the last one: with one job per thread the pool can hold, all of
    /// them finish (a fixed pool smaller than the job count would deadlock here).
    #[test]
    fn jobs_that_wait_for_each_other_all_run() {
        const JOBS: usize = 8;
        let pool = WorkerPool::new("test_pool", 1, JOBS, Duration::from_millis(50)).unwrap();
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (tx, rx) = channel();
        for i in 0..JOBS {
            let (gate, tx) = (gate.clone(), tx.clone());
            pool.spawn(move || {
                let (open, cv) = &*gate;
                let mut open = open.lock().unwrap();
                if i == JOBS - 1 {
                    *open = true;
                    cv.notify_all();
                }
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                tx.send(i).unwrap();
            })
            .unwrap();
        }
        let mut done: Vec<usize> = (0..JOBS).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        done.sort();
        assert_eq!(done, (0..JOBS).collect::<Vec<_>>());
        assert_eq!(pool.threads(), JOBS, "one thread per waiting job");
        // Idle threads beyond the minimum leave.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.threads() > 1 {
            assert!(Instant::now() < deadline, "idle threads never left: {}", pool.threads());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A caller that queues its next job only when notified of the last never needs a
    /// second thread.
    #[test]
    fn a_notified_caller_keeps_to_one_thread() {
        let pool = WorkerPool::new("test_chain", 1, 8, Duration::from_secs(60)).unwrap();
        let (tx, rx) = channel();
        for _ in 0..200 {
            let tx = tx.clone();
            pool.spawn_notifying(|| {}, move || tx.send(()).unwrap()).unwrap();
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(pool.threads(), 1);
    }

    /// Jobs run one after another on a single thread when they do not overlap, and a
    /// panicking job does not take its thread down.
    #[test]
    fn sequential_jobs_reuse_a_thread_and_survive_panics() {
        let pool = WorkerPool::new("test_seq", 1, 4, Duration::from_secs(60)).unwrap();
        let (tx, rx) = channel();
        pool.spawn(|| panic!("a job that fails")).unwrap();
        for i in 0..20 {
            let tx = tx.clone();
            pool.spawn(move || tx.send((i, std::thread::current().name().unwrap().to_string())).unwrap()).unwrap();
            let (got, name) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got, i);
            assert!(name.starts_with("test_seq"), "{name}");
        }
        // Two threads usually; a third may start in the moment a woken thread finds its job
        // taken. Twenty would mean no reuse at all.
        assert!(pool.threads() < 10, "sequential jobs needed {} threads", pool.threads());
    }
}
