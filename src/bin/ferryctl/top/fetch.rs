//! Polling ferryd: every interval, a background thread makes the five RPC calls spdk_top
//! makes and hands the answers to the screen, so a slow or absent daemon never freezes the
//! keyboard.

use crate::client;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The methods read, in the order of [`Sample::answers`].
pub const METHODS: [&str; 5] =
    ["framework_get_reactors", "thread_get_stats", "thread_get_pollers", "bdev_get_iostat", "vhost_get_controllers"];

/// One round of answers.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the round started.
    pub at: Instant,
    /// Each method's result, `None` where the call failed.
    pub answers: [Option<Value>; 5],
    /// What failed, for the status line.
    pub errors: Vec<String>,
}

impl Sample {
    /// The result of `method` (one of [`METHODS`]).
    pub fn get(&self, method: &str) -> Option<&Value> {
        METHODS.iter().position(|m| *m == method).and_then(|i| self.answers[i].as_ref())
    }
}

/// Makes the calls once.
pub fn sample(socket: &std::path::Path, timeout: Duration) -> Sample {
    let at = Instant::now();
    let mut errors = Vec::new();
    let answers =
        METHODS.map(|method| match client::call(socket, &client::request(method, &Value::Null), timeout, 0) {
            Ok(mut resp) => match resp.get("error") {
                Some(e) => {
                    errors.push(format!("{method}: {}", e["message"].as_str().unwrap_or("error")));
                    None
                }
                None => Some(resp["result"].take()),
            },
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        });
    // One unreachable daemon says so once, not five times.
    errors.dedup();
    Sample { at, answers, errors }
}

/// What the screen tells the poller.
pub enum Control {
    /// Poll at this interval from now on.
    Interval(Duration),
}

/// The polling thread; it ends when the screen drops its control channel.
pub struct Poller {
    /// New samples.
    pub samples: Receiver<Sample>,
    /// Interval changes.
    pub control: Sender<Control>,
    _thread: JoinHandle<()>,
}

impl Poller {
    /// Starts polling `socket` every `interval`.
    pub fn start(socket: PathBuf, interval: Duration, timeout: Duration) -> std::io::Result<Poller> {
        let (sample_tx, samples) = mpsc::channel();
        let (control, control_rx) = mpsc::channel();
        let thread = std::thread::Builder::new().name("top-poller".into()).spawn(move || {
            let mut interval = interval;
            loop {
                let next = Instant::now() + interval;
                if sample_tx.send(sample(&socket, timeout)).is_err() {
                    return;
                }
                // Waits for the next round, or for the screen (a new interval, or gone).
                loop {
                    match control_rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                        Ok(Control::Interval(i)) => interval = i,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
        })?;
        Ok(Poller { samples, control, _thread: thread })
    }
}
