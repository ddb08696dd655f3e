//! `ferry-vhost-swarm`: many vhost-user-blk frontends at once, for measuring a backend's
//! control plane. Connects one frontend to each of `<dir>/<prefix>0 .. <prefix>N-1`, checks
//! each with one read, then (with `--reconnects`) drops them all at once and connects them
//! again, `--reconnects` times. Prints one JSON line per phase with its duration.

use clap::Parser;
use ferry_vhost_initiator::{Client, Options, Request};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Connects a swarm of vhost-user-blk frontends.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Directory holding the controllers' sockets.
    #[arg(long)]
    dir: PathBuf,
    /// Controller name prefix (sockets `<prefix>0` ... `<prefix>N-1`).
    #[arg(long, default_value = "swarm")]
    prefix: String,
    /// How many frontends.
    #[arg(short = 'n', long, default_value_t = 1000)]
    count: usize,
    /// Disconnect-all / reconnect-all rounds after the first connection.
    #[arg(long, default_value_t = 0)]
    reconnects: usize,
    /// Connecting threads.
    #[arg(long, default_value_t = 8)]
    threads: usize,
}

fn options() -> Options {
    Options { num_queues: 1, queue_size: 16, mem_size: 256 << 10, hugetlbfs: None }
}

/// Connects and does one read; Err with what failed.
fn connect_one(sock: &Path) -> Result<Client, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut c = loop {
        match Client::connect(sock, &options()) {
            Ok(c) => break c,
            // The backend may still be ending this controller's previous session.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("{}: {e}", sock.display())),
        }
    };
    let buf = c.mem().alloc(4096, 4096).ok_or("no memory")?;
    c.queue(0).submit(&Request::Read { sector: 0, bufs: &[(buf, 4096)] }, 1).map_err(|_| "queue full")?;
    c.queue(0).kick();
    let mut out = Vec::new();
    while c.queue(0).poll(&mut out) == 0 {
        if Instant::now() > deadline {
            return Err(format!("{}: no completion", sock.display()));
        }
        c.queue(0).wait(10);
    }
    Ok(c)
}

/// Connects all frontends from `threads` threads; returns them in order.
fn connect_all(args: &Args) -> Result<Vec<Client>, String> {
    let per = args.count.div_ceil(args.threads.max(1));
    let handles: Vec<_> = (0..args.threads.max(1))
        .map(|t| {
            let socks: Vec<PathBuf> = (t * per..((t + 1) * per).min(args.count))
                .map(|i| args.dir.join(format!("{}{i}", args.prefix)))
                .collect();
            std::thread::spawn(move || socks.iter().map(|s| connect_one(s)).collect::<Result<Vec<_>, _>>())
        })
        .collect();
    let mut all = Vec::with_capacity(args.count);
    for h in handles {
        all.extend(h.join().map_err(|_| "a connecting thread panicked".to_string())??);
    }
    Ok(all)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let start = Instant::now();
    let mut clients = match connect_all(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry-vhost-swarm: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(r#"{{"phase":"connect","frontends":{},"seconds":{:.3}}}"#, clients.len(), start.elapsed().as_secs_f64());
    for round in 0..args.reconnects {
        let start = Instant::now();
        drop(std::mem::take(&mut clients));
        clients = match connect_all(&args) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ferry-vhost-swarm: round {round}: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            r#"{{"phase":"reconnect","round":{round},"frontends":{},"seconds":{:.3}}}"#,
            clients.len(),
            start.elapsed().as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}
