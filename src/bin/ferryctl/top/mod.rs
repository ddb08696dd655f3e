//! `ferryctl top`: a live view of a running ferryd in the terminal, as SPDK's spdk_top gives:
//! tabs for reactors, threads, pollers, bdevs and vhost controllers, refreshed every interval
//! from the same RPC methods spdk_top reads. Keys: 1-5 or Tab / Shift-Tab (arrows) choose a
//! view, Up / Down move the selection, + / - change the interval, q (or Esc, Ctrl-C) quits.
//!
//! - [`fetch`]: the polling thread.
//! - [`model`]: each view's rows, from the last two samples.
//! - [`screen`]: drawing them with ratatui, and the keys.

mod fetch;
mod model;
mod screen;

use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Why `top` stopped with an error.
#[derive(Debug, Error)]
pub enum TopError {
    /// The terminal could not be set up or drawn on.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// What `ferryctl top` was asked for.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// The RPC socket.
    pub socket: PathBuf,
    /// Time between refreshes.
    pub interval: Duration,
    /// How long one RPC call may take.
    pub timeout: Duration,
    /// The view shown first (an index into the tabs).
    pub view: usize,
}

/// Runs the view until the user quits.
pub fn run(opts: TopOptions) -> Result<(), TopError> {
    let poller = fetch::Poller::start(opts.socket.clone(), opts.interval, opts.timeout)?;
    let mut terminal = ratatui::try_init()?;
    let result = screen::Screen::new(&opts).run(&mut terminal, &poller);
    ratatui::try_restore()?;
    result.map_err(TopError::from)
}
