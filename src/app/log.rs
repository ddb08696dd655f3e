//! Logging to stderr through `tracing`, with SPDK's run-time controls: `log_set_level`
//! changes the level and `log_set_flag` turns on debug output for one component.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// The components `log_set_flag` knows, each the Rust module it turns debug output on for.
pub const FLAGS: &[(&str, &str)] = &[
    ("app", "ferry::app"),
    ("bdev", "ferry::bdev"),
    ("bdev_malloc", "ferry::bdev::modules::malloc"),
    ("bdev_null", "ferry::bdev::modules::null"),
    ("bdev_uring", "ferry::bdev::modules::uring"),
    ("bdev_virtio", "ferry::bdev::modules::virtio"),
    ("vhost", "ferry::vhost"),
    ("reactor", "ferry::framework"),
    ("rpc", "ferry::rpc"),
];

/// SPDK's level names, lowest first.
pub const LEVELS: &[&str] = &["ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"];

struct State {
    level: String,
    flags: BTreeSet<String>,
    handle: Option<reload::Handle<Targets, tracing_subscriber::Registry>>,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| Mutex::new(State { level: "NOTICE".into(), flags: BTreeSet::new(), handle: None }))
}

fn level_filter(level: &str) -> Option<LevelFilter> {
    Some(match level.to_ascii_uppercase().as_str() {
        "DISABLED" => LevelFilter::OFF,
        "ERROR" => LevelFilter::ERROR,
        "WARN" | "WARNING" => LevelFilter::WARN,
        "NOTICE" | "INFO" => LevelFilter::INFO,
        "DEBUG" => LevelFilter::DEBUG,
        "TRACE" => LevelFilter::TRACE,
        _ => return None,
    })
}

fn targets(s: &State) -> Targets {
    let base = level_filter(&s.level).unwrap_or(LevelFilter::INFO);
    let mut t = Targets::new().with_default(base);
    for flag in &s.flags {
        if let Some((_, target)) = FLAGS.iter().find(|(f, _)| f == flag) {
            t = t.with_target(*target, LevelFilter::DEBUG.max(base));
        }
    }
    t
}

/// Installs the subscriber (once per process) at `level`.
pub fn init(level: &str) {
    let mut s = state().lock().unwrap_or_else(|e| e.into_inner());
    if s.handle.is_some() {
        return;
    }
    if level_filter(level).is_some() {
        s.level = level.to_ascii_uppercase();
    }
    let (filter, handle) = reload::Layer::new(targets(&s));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        s.handle = Some(handle);
    }
}

fn apply(s: &State) {
    if let Some(h) = &s.handle {
        let _ = h.reload(targets(s));
    }
}

/// Sets the level; returns false for an unknown level name.
pub fn set_level(level: &str) -> bool {
    if level_filter(level).is_none() {
        return false;
    }
    let mut s = state().lock().unwrap_or_else(|e| e.into_inner());
    s.level = level.to_ascii_uppercase();
    apply(&s);
    true
}

/// The current level name.
pub fn level() -> String {
    state().lock().unwrap_or_else(|e| e.into_inner()).level.clone()
}

/// Turns a component's debug output on or off; returns false for an unknown flag.
pub fn set_flag(flag: &str, on: bool) -> bool {
    if !FLAGS.iter().any(|(f, _)| *f == flag) {
        return false;
    }
    let mut s = state().lock().unwrap_or_else(|e| e.into_inner());
    if on {
        s.flags.insert(flag.to_string());
    } else {
        s.flags.remove(flag);
    }
    apply(&s);
    true
}

/// Every flag and whether it is on.
pub fn flags() -> Vec<(&'static str, bool)> {
    let s = state().lock().unwrap_or_else(|e| e.into_inner());
    FLAGS.iter().map(|(f, _)| (*f, s.flags.contains(*f))).collect()
}
