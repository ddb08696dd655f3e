//! One gathering at a time, shared by every scrape waiting for it.
//!
//! A scrape registers its slot and, if no gathering runs, starts one on the metrics worker.
//! A gathering answers every slot registered before it began; slots registered while it runs
//! get the next one (so an answer never predates its request). However many scrapers connect,
//! at most one worker gathers, and if a reactor stopped answering, scrapes wait (each closed
//! by its connection's time budget) instead of piling up threads.

use super::collect;
use crate::framework::worker_pool::WorkerPool;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What a gathering produced: the exposition text, or why there is none.
pub type Answer = Arc<Result<String, String>>;

/// Where one scrape's answer arrives; `done` is signalled when it does.
pub struct Slot {
    answer: Mutex<Option<Answer>>,
    /// Readable once the answer is in (watched by the connection on the event loop).
    pub done: EventFd,
}

impl Slot {
    /// A new, empty slot.
    pub fn new() -> std::io::Result<Arc<Slot>> {
        Ok(Arc::new(Slot { answer: Mutex::new(None), done: EventFd::new(EFD_NONBLOCK)? }))
    }

    /// Takes the answer, if it has come.
    pub fn take(&self) -> Option<Answer> {
        let _ = self.done.read();
        self.answer.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[derive(Default)]
struct State {
    running: bool,
    /// Dropped connections leave dead entries, cleared at the next gathering.
    waiting: Vec<Weak<Slot>>,
}

/// The gatherer of one endpoint.
pub struct Gatherer {
    state: Mutex<State>,
    pool: WorkerPool,
}

impl Gatherer {
    /// A gatherer with its own worker (started on demand, gone after 10 s idle).
    pub fn new() -> Result<Arc<Gatherer>, crate::framework::worker_pool::PoolError> {
        Ok(Arc::new(Gatherer {
            state: Mutex::new(State::default()),
            pool: WorkerPool::new("metrics_worker", 0, 1, Duration::from_secs(10))?,
        }))
    }

    /// Asks for a fresh answer in `slot`.
    pub fn request(self: &Arc<Self>, slot: &Arc<Slot>) {
        let mut state = self.lock();
        // Slots of connections gone (closed at their time budget while a reactor did not
        // answer, say) would otherwise pile up.
        state.waiting.retain(|w| w.strong_count() > 0);
        state.waiting.push(Arc::downgrade(slot));
        if state.running {
            return;
        }
        state.running = true;
        drop(state);
        let me = self.clone();
        if let Err(e) = self.pool.spawn(move || me.run()) {
            tracing::warn!(error = %e, "cannot start the metrics worker");
            let waiting = {
                let mut state = self.lock();
                state.running = false;
                std::mem::take(&mut state.waiting)
            };
            self.answer_all(Arc::new(Err(e.to_string())), waiting);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gathers for the waiting slots until none are left.
    fn run(&self) {
        loop {
            let waiting = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    state.running = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            // A panic must not leave `running` set forever (no scrape would be answered again).
            let gathered = std::panic::catch_unwind(|| collect::gather().map(|s| s.render()));
            let answer = match gathered {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => {
                    tracing::error!("gathering metrics panicked");
                    Err("gathering panicked".into())
                }
            };
            self.answer_all(Arc::new(answer), waiting);
        }
    }

    fn answer_all(&self, answer: Answer, slots: Vec<Weak<Slot>>) {
        for slot in slots.iter().filter_map(Weak::upgrade) {
            *slot.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer.clone());
            let _ = slot.done.write(1);
        }
    }
}
