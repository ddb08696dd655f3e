//! `ferry-uring`: the driver-layer io_uring engine behind Ferry's file and
//! block-device bdev.
//!
//! It knows nothing about bdevs: a [`Ring`] queues vectored reads/writes,
//! `fsync`s and `fallocate`s against raw file descriptors, submits them, and
//! hands completions back as `(user_data, result)` pairs. [`open_file`] opens a
//! backing file or block device, preferring `O_DIRECT`, and reports its size
//! and logical block size.
//!
//! ```no_run
//! use ferry_uring::{open_file, Ring};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let f = open_file(std::path::Path::new("/var/tmp/disk.img"), false)?;
//! let mut ring = Ring::new(256)?;
//! ring.prep_fsync(std::os::unix::io::AsRawFd::as_raw_fd(&f.file), false, 7)?;
//! ring.submit_and_wait(1)?;
//! ring.reap(|user_data, res| assert_eq!((user_data, res), (7, 0)));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod error;
mod file;
mod ring;

#[cfg(test)]
mod test_loop;
#[cfg(test)]
mod tests;

pub use error::{QueueFull, UringError};
pub use file::{open_file, OpenedFile};
pub use ring::Ring;
