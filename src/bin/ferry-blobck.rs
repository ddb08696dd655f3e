//! `ferry-blobck PATH [--json]`: checks the blobstore (lvstore) on a file or block device
//! offline, with the daemon's own loader: every cluster owned once, free + allocated +
//! metadata + quarantined = total, parent chains complete and acyclic, every checksum valid.
//! Exit status: 0 clean, 1 problems found, 2 the store cannot be loaded (or the path opened).
//! Never writes to the device.

use clap::Parser;
use ferry::blobstore::{check, load};
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::process::ExitCode;

/// Offline checker of a Ferry blobstore.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The file or block device holding the store.
    path: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let report = match open(&args.path) {
        Ok((file, bytes)) => check::check(&load::FileReader(file), bytes),
        Err(e) => check::Report {
            load_error: Some(format!("cannot open {}: {e}", args.path.display())),
            ..Default::default()
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json()).expect("JSON"));
    } else {
        print!("{report}");
    }
    ExitCode::from(report.exit_code() as u8)
}

/// Opens read-only; the size by seeking to the end (a block device's metadata says 0).
fn open(path: &PathBuf) -> std::io::Result<(std::fs::File, u64)> {
    let mut file = std::fs::File::open(path)?;
    let bytes = file.seek(SeekFrom::End(0))?;
    Ok((file, bytes))
}
