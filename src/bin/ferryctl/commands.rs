//! The command table: one entry per RPC method, with rpc.py's positional arguments and
//! options, plus the few transforms rpc.py applies (sizes in MiB become `num_blocks`).

use serde_json::{Map, Value};

/// How a value on the command line becomes JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Str,
    /// An unsigned integer.
    Uint,
    /// A signed integer (e.g. -1 for "pick one").
    Int,
    /// A number (MiB sizes may be fractional in rpc.py).
    Float,
    /// A flag: present means `true`.
    Flag,
}

/// One argument of a command.
pub struct Arg {
    /// The JSON parameter name.
    pub key: &'static str,
    /// `None` for a positional argument; else (short, long) option names ("" for no short).
    pub flag: Option<(&'static str, &'static str)>,
    /// Its type.
    pub kind: Kind,
    /// Whether it must be given (positionals: required unless marked optional here).
    pub required: bool,
    /// Help text.
    pub help: &'static str,
}

/// A fix-up of the params before they are sent.
pub type Transform = fn(&mut Map<String, Value>) -> Result<(), String>;

/// One command: an RPC method and how its arguments map to params.
pub struct Command {
    /// The method (and subcommand) name.
    pub method: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Its arguments.
    pub args: &'static [Arg],
    /// A fix-up applied to the params before sending.
    pub transform: Option<Transform>,
}

const fn pos(key: &'static str, kind: Kind, help: &'static str) -> Arg {
    Arg { key, flag: None, kind, required: true, help }
}

const fn pos_opt(key: &'static str, kind: Kind, help: &'static str) -> Arg {
    Arg { key, flag: None, kind, required: false, help }
}

const fn opt(short: &'static str, long: &'static str, key: &'static str, kind: Kind, help: &'static str) -> Arg {
    Arg { key, flag: Some((short, long)), kind, required: false, help }
}

const fn req(short: &'static str, long: &'static str, key: &'static str, kind: Kind, help: &'static str) -> Arg {
    Arg { key, flag: Some((short, long)), kind, required: true, help }
}

/// The arguments of a QoS method: `$first` (what it limits), then SPDK's four limits (`spdk`),
/// or those and Ferry's bursts, burst length and metering (`full`: the group and controller
/// methods).
macro_rules! qos_args {
    (spdk, $first:expr) => {
        &[
            $first,
            opt("", "rw-ios-per-sec", "rw_ios_per_sec", Uint, "Read/write I/Os per second (0: none)"),
            opt("", "rw-mbytes-per-sec", "rw_mbytes_per_sec", Uint, "Read/write MiB per second (0: none)"),
            opt("", "r-mbytes-per-sec", "r_mbytes_per_sec", Uint, "Read MiB per second (0: none)"),
            opt("", "w-mbytes-per-sec", "w_mbytes_per_sec", Uint, "Write MiB per second (0: none)"),
        ]
    };
    (full, $first:expr) => {
        &[
            $first,
            opt("", "rw-ios-per-sec", "rw_ios_per_sec", Uint, "Read/write I/Os per second (0: none)"),
            opt("", "rw-mbytes-per-sec", "rw_mbytes_per_sec", Uint, "Read/write MiB per second (0: none)"),
            opt("", "r-mbytes-per-sec", "r_mbytes_per_sec", Uint, "Read MiB per second (0: none)"),
            opt("", "w-mbytes-per-sec", "w_mbytes_per_sec", Uint, "Write MiB per second (0: none)"),
            opt("", "rw-ios-burst-per-sec", "rw_ios_burst_per_sec", Uint, "Burst I/Os per second"),
            opt("", "rw-mbytes-burst-per-sec", "rw_mbytes_burst_per_sec", Uint, "Burst MiB per second"),
            opt("", "r-mbytes-burst-per-sec", "r_mbytes_burst_per_sec", Uint, "Burst read MiB per second"),
            opt("", "w-mbytes-burst-per-sec", "w_mbytes_burst_per_sec", Uint, "Burst write MiB per second"),
            opt("", "burst-length-ms", "burst_length_ms", Uint, "How long a burst may last"),
            opt("", "meter-unmap", "meter_unmap", Flag, "Count unmap and write-zeroes too"),
        ]
    };
}

const fn cmd(method: &'static str, help: &'static str, args: &'static [Arg]) -> Command {
    Command { method, help, args, transform: None }
}

/// rpc.py takes malloc and null sizes as `total_size` in MiB and sends `num_blocks`.
fn mib_to_blocks(p: &mut Map<String, Value>) -> Result<(), String> {
    let total = p.remove("total_size").and_then(|v| v.as_f64()).ok_or("total_size is required")?;
    let bs = p.get("block_size").and_then(Value::as_u64).ok_or("block_size is required")?;
    if total.is_nan() || total <= 0.0 || bs == 0 {
        return Err("total_size and block_size must be greater than zero".into());
    }
    let bytes = total * 1024.0 * 1024.0;
    if bytes % bs as f64 != 0.0 {
        return Err(format!("total_size {total} MiB is not a multiple of block_size {bs}"));
    }
    p.insert("num_blocks".into(), Value::from((bytes / bs as f64) as u64));
    Ok(())
}

/// `bdev_null_create`: sizes as rpc.py takes them, and Ferry's `--no-read-zeroes`.
fn null_create(p: &mut Map<String, Value>) -> Result<(), String> {
    mib_to_blocks(p)?;
    if p.remove("no_read_zeroes") == Some(Value::Bool(true)) {
        p.insert("read_zeroes".into(), Value::Bool(false));
    }
    Ok(())
}

/// rpc.py's space-separated list arguments: the words of `key` (a string) as an array, each
/// turned into JSON by `item`.
fn words(p: &mut Map<String, Value>, key: &str, item: fn(&str) -> Result<Value, String>) -> Result<(), String> {
    let Some(v) = p.remove(key) else { return Ok(()) };
    let text = v.as_str().ok_or_else(|| format!("{key} must be a string"))?;
    let list = text.split_whitespace().map(item).collect::<Result<Vec<_>, _>>()?;
    p.insert(key.into(), Value::Array(list));
    Ok(())
}

fn word(w: &str) -> Result<Value, String> {
    Ok(Value::from(w))
}

/// `A:B` split at its last colon (so `[::1]:3260` keeps its host).
fn pair<'a>(w: &'a str, what: &str) -> Result<(&'a str, &'a str), String> {
    w.rsplit_once(':').ok_or_else(|| format!("{what} {w:?} is not of the form A:B"))
}

fn int(s: &str, what: &str) -> Result<i64, String> {
    s.parse().map_err(|_| format!("{what} {s:?} is not an integer"))
}

fn portal(w: &str) -> Result<Value, String> {
    let (host, port) = pair(w, "portal")?;
    Ok(serde_json::json!({"host": host, "port": port}))
}

fn lun(w: &str) -> Result<Value, String> {
    let (bdev, id) = pair(w, "LUN")?;
    Ok(serde_json::json!({"bdev_name": bdev, "lun_id": int(id, "LUN id")?}))
}

fn pg_ig_map(w: &str) -> Result<Value, String> {
    let (pg, ig) = pair(w, "map")?;
    Ok(serde_json::json!({"pg_tag": int(pg, "portal group tag")?, "ig_tag": int(ig, "initiator group tag")?}))
}

fn iscsi_portals(p: &mut Map<String, Value>) -> Result<(), String> {
    words(p, "portals", portal)
}

fn iscsi_initiator_lists(p: &mut Map<String, Value>) -> Result<(), String> {
    words(p, "initiators", word)?;
    words(p, "netmasks", word)
}

fn iscsi_target_node(p: &mut Map<String, Value>) -> Result<(), String> {
    words(p, "luns", lun)?;
    words(p, "pg_ig_maps", pg_ig_map)
}

fn iscsi_maps(p: &mut Map<String, Value>) -> Result<(), String> {
    words(p, "pg_ig_maps", pg_ig_map)
}

/// rpc.py's repeated `--config-param key=value`: here the words of one string, as an object.
fn key_values(p: &mut Map<String, Value>, key: &str) -> Result<(), String> {
    let Some(v) = p.remove(key) else { return Ok(()) };
    let text = v.as_str().ok_or_else(|| format!("{key} must be a string"))?;
    let mut map = Map::new();
    for kv in text.split_whitespace() {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("{key} item {kv:?} is not of the form key=value"))?;
        map.insert(k.into(), Value::from(v));
    }
    p.insert(key.into(), Value::Object(map));
    Ok(())
}

/// rpc.py's `-c 'user:u1 secret:s1 muser:mu1 msecret:ms1,user:u2 secret:s2'`.
fn iscsi_secrets(p: &mut Map<String, Value>) -> Result<(), String> {
    let Some(v) = p.remove("secrets") else { return Ok(()) };
    let text = v.as_str().ok_or("secrets must be a string")?;
    let mut list = Vec::new();
    for one in text.split(',').filter(|s| !s.trim().is_empty()) {
        let mut secret = Map::new();
        for kv in one.split_whitespace() {
            let (k, v) =
                kv.split_once(':').ok_or_else(|| format!("secret field {kv:?} is not of the form key:value"))?;
            secret.insert(k.into(), Value::from(v));
        }
        list.push(Value::Object(secret));
    }
    p.insert("secrets".into(), Value::Array(list));
    Ok(())
}

/// rpc.py's `group_as`: the given `keys` of the params moved into one object `name`.
fn group_as(p: &mut Map<String, Value>, name: &str, keys: &[&str]) {
    let mut group = Map::new();
    for k in keys {
        if let Some(v) = p.remove(*k) {
            group.insert((*k).into(), v);
        }
    }
    if !group.is_empty() {
        p.insert(name.into(), Value::Object(group));
    }
}

/// rpc.py's `discovery` shortcut for the discovery subsystem's NQN.
fn discovery_nqn(p: &mut Map<String, Value>) {
    if p.get("nqn").and_then(Value::as_str) == Some("discovery") {
        p.insert("nqn".into(), Value::from("nqn.2014-08.org.nvmexpress.discovery"));
    }
}

fn nvmf_listener(p: &mut Map<String, Value>) -> Result<(), String> {
    group_as(p, "listen_address", &["trtype", "traddr", "trsvcid", "adrfam"]);
    discovery_nqn(p);
    Ok(())
}

fn nvmf_namespace(p: &mut Map<String, Value>) -> Result<(), String> {
    group_as(
        p,
        "namespace",
        &["bdev_name", "ptpl_file", "nsid", "nguid", "eui64", "uuid", "anagrpid", "no_auto_visible"],
    );
    Ok(())
}

/// rpc.py's `--allow-any-host` / `--no-allow-any-host` (one of them required).
fn nvmf_allow_any_host(p: &mut Map<String, Value>) -> Result<(), String> {
    let deny = p.remove("no_allow_any_host").is_some();
    match (p.contains_key("allow_any_host"), deny) {
        (true, true) => Err("--allow-any-host and --no-allow-any-host exclude each other".into()),
        (false, false) => Err("one of --allow-any-host or --no-allow-any-host is required".into()),
        (_, true) => {
            p.insert("allow_any_host".into(), Value::Bool(false));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// rpc.py sends `c2h_success` true unless `-o` turns it off.
fn nvmf_transport(p: &mut Map<String, Value>) -> Result<(), String> {
    let off = p.remove("no_c2h_success").is_some();
    p.insert("c2h_success".into(), Value::Bool(!off));
    Ok(())
}

const fn with(method: &'static str, help: &'static str, args: &'static [Arg], t: Transform) -> Command {
    Command { method, help, args, transform: Some(t) }
}

use Kind::*;

/// Every command.
pub const COMMANDS: &[Command] = &[
    // Framework
    cmd(
        "rpc_get_methods",
        "List the RPC methods",
        &[
            opt("", "current", "current", Flag, "Only methods callable now"),
            opt("", "include-aliases", "include_aliases", Flag, "Include deprecated aliases"),
        ],
    ),
    cmd("spdk_get_version", "Show the version", &[]),
    cmd("spdk_kill_instance", "Send the daemon a signal", &[pos("sig_name", Str, "SIGINT, SIGTERM, ...")]),
    cmd("framework_start_init", "Start initialisation (after --wait-for-rpc)", &[]),
    cmd("framework_wait_init", "Wait until initialised", &[]),
    cmd("framework_get_reactors", "Show reactors", &[]),
    cmd("framework_get_subsystems", "Show subsystems", &[]),
    cmd("framework_get_config", "Show one subsystem's configuration", &[pos("name", Str, "Subsystem name")]),
    cmd("thread_get_stats", "Show thread statistics", &[]),
    cmd("thread_get_pollers", "Show pollers", &[]),
    cmd("save_config", "Print the whole configuration as JSON", &[]),
    cmd("log_set_level", "Set the log level", &[pos("level", Str, "ERROR, WARNING, NOTICE, INFO or DEBUG")]),
    cmd("log_get_level", "Show the log level", &[]),
    cmd("log_set_print_level", "Set the log level", &[pos("level", Str, "ERROR, WARNING, NOTICE, INFO or DEBUG")]),
    cmd("log_get_print_level", "Show the log level", &[]),
    cmd("log_set_flag", "Turn on debug output of a component", &[pos("flag", Str, "Log flag")]),
    cmd("log_clear_flag", "Turn off debug output of a component", &[pos("flag", Str, "Log flag")]),
    cmd("log_get_flags", "Show log flags", &[]),
    // Block devices
    cmd(
        "bdev_get_bdevs",
        "List bdevs",
        &[
            opt("b", "name", "name", Str, "Name, alias or uuid of one bdev"),
            opt("t", "timeout", "timeout", Uint, "Milliseconds to wait for the bdev to appear"),
        ],
    ),
    cmd(
        "bdev_get_iostat",
        "Show I/O statistics",
        &[
            opt("b", "name", "name", Str, "One bdev"),
            opt("c", "per-channel", "per_channel", Flag, "Per channel"),
            opt("", "reset-mode", "reset_mode", Str, "Reset after reading: all, maxmin, error or none"),
        ],
    ),
    cmd("bdev_wait_for_examine", "Wait for examine to finish", &[]),
    cmd("bdev_set_qos_limit", "Set QoS rate limits on a bdev", qos_args!(spdk, pos("name", Str, "Bdev name"))),
    cmd(
        "bdev_qos_group_create",
        "Create a QoS group (Ferry extension)",
        qos_args!(full, pos("name", Str, "Group name")),
    ),
    cmd(
        "bdev_qos_group_set_limit",
        "Change a QoS group's limits (Ferry extension)",
        qos_args!(full, pos("name", Str, "Group name")),
    ),
    cmd("bdev_qos_group_delete", "Delete a QoS group (Ferry extension)", &[pos("name", Str, "Group name")]),
    cmd(
        "bdev_qos_group_add_bdev",
        "Put a bdev in a QoS group (Ferry extension)",
        &[pos("name", Str, "Group name"), pos("bdev_name", Str, "Bdev name")],
    ),
    cmd(
        "bdev_qos_group_remove_bdev",
        "Take a bdev out of its QoS group (Ferry extension)",
        &[pos("name", Str, "Group name"), pos("bdev_name", Str, "Bdev name")],
    ),
    cmd("bdev_qos_group_get", "List QoS groups (Ferry extension)", &[opt("n", "name", "name", Str, "Group name")]),
    cmd(
        "bdev_split_create",
        "Split a bdev into parts",
        &[
            pos("base_bdev", Str, "Base bdev"),
            pos("split_count", Uint, "Number of parts"),
            opt("s", "split-size-mb", "split_size_mb", Uint, "Size of each part in MiB (default: equal parts)"),
        ],
    ),
    cmd("bdev_split_delete", "Delete the parts of a split bdev", &[pos("base_bdev", Str, "Base bdev")]),
    cmd(
        "bdev_passthru_create",
        "Create a passthru bdev",
        &[
            req("b", "base-bdev-name", "base_bdev_name", Str, "Base bdev"),
            req("p", "name", "name", Str, "Name of the passthru bdev"),
            opt("u", "uuid", "uuid", Str, "UUID"),
        ],
    ),
    cmd("bdev_passthru_delete", "Delete a passthru bdev", &[pos("name", Str, "Bdev name")]),
    cmd(
        "bdev_delay_create",
        "Create a delay bdev",
        &[
            req("b", "base-bdev-name", "base_bdev_name", Str, "Base bdev"),
            req("d", "name", "name", Str, "Name of the delay bdev"),
            req("r", "avg-read-latency", "avg_read_latency", Uint, "Average read latency (us)"),
            req("t", "nine-nine-read-latency", "p99_read_latency", Uint, "p99 read latency (us)"),
            req("w", "avg-write-latency", "avg_write_latency", Uint, "Average write latency (us)"),
            req("n", "nine-nine-write-latency", "p99_write_latency", Uint, "p99 write latency (us)"),
            opt("u", "uuid", "uuid", Str, "UUID"),
        ],
    ),
    cmd(
        "bdev_delay_update_latency",
        "Change a delay bdev's latency",
        &[
            pos("delay_bdev_name", Str, "Delay bdev"),
            pos("latency_type", Str, "avg_read, p99_read, avg_write or p99_write"),
            pos("latency_us", Uint, "Latency (us)"),
        ],
    ),
    cmd("bdev_delay_delete", "Delete a delay bdev", &[pos("name", Str, "Bdev name")]),
    cmd(
        "bdev_error_create",
        "Create an error-injection bdev EE_<base>",
        &[pos("base_name", Str, "Base bdev"), opt("u", "uuid", "uuid", Str, "UUID")],
    ),
    cmd(
        "bdev_error_inject_error",
        "Inject errors into an error bdev",
        &[
            pos("name", Str, "Error bdev"),
            pos("io_type", Str, "read, write, unmap, flush, all, clear, ..."),
            pos("error_type", Str, "failure, pending, corrupt_data, nomem or nvme_failure"),
            opt("n", "num", "num", Uint, "How many I/Os (default 1)"),
            opt("q", "queue-depth", "queue_depth", Uint, "Inject only past this queue depth"),
            opt("o", "corrupt-offset", "corrupt_offset", Uint, "Byte to corrupt"),
            opt("v", "corrupt-value", "corrupt_value", Uint, "Value to XOR in"),
            opt("", "sct", "nvme_sct", Uint, "NVMe status code type"),
            opt("", "sc", "nvme_sc", Uint, "NVMe status code"),
        ],
    ),
    cmd("bdev_error_resume_pending", "Complete the I/O held as pending", &[pos("name", Str, "Error bdev")]),
    cmd("bdev_error_delete", "Delete an error bdev", &[pos("name", Str, "Bdev name")]),
    cmd(
        "bdev_raid_create",
        "Create a RAID bdev",
        &[
            req("n", "name", "name", Str, "RAID bdev name"),
            opt("z", "strip-size-kb", "strip_size_kb", Uint, "Strip size in KiB (raid0, concat)"),
            req("r", "raid-level", "raid_level", Str, "raid0, raid1 or concat"),
            req("b", "base-bdevs", "base_bdevs", Str, "Base bdevs, space-separated and quoted"),
            opt("u", "uuid", "uuid", Str, "UUID"),
            opt("s", "superblock", "superblock", Flag, "Keep a superblock on the members"),
        ],
    ),
    cmd(
        "bdev_raid_delete",
        "Delete a RAID bdev",
        &[pos("name", Str, "RAID bdev name"), opt("c", "clear-sb", "clear_sb", Flag, "Wipe the superblocks")],
    ),
    cmd("bdev_raid_get_bdevs", "List RAID bdevs", &[pos("category", Str, "all, online, configuring or offline")]),
    cmd(
        "bdev_raid_add_base_bdev",
        "Add a member to a RAID bdev (rebuilt online)",
        &[pos("raid_bdev", Str, "RAID bdev"), pos("base_bdev", Str, "Member bdev")],
    ),
    cmd("bdev_raid_remove_base_bdev", "Remove a member from its RAID bdev", &[pos("name", Str, "Member bdev")]),
    cmd(
        "bdev_raid_set_options",
        "Set the window and bandwidth limit of raid rebuilds and resyncs",
        &[
            opt("w", "process-window-size-kb", "process_window_size_kb", Uint, "KiB copied per step"),
            opt(
                "b",
                "process-max-bandwidth-mb-sec",
                "process_max_bandwidth_mb_sec",
                Uint,
                "MiB/s per process (0: none)",
            ),
        ],
    ),
    cmd(
        "accel_crypto_key_create",
        "Create an encryption key",
        &[
            req("c", "cipher", "cipher", Str, "AES_XTS"),
            req("k", "key", "key", Str, "Key, hex"),
            opt("e", "key2", "key2", Str, "Tweak key, hex"),
            opt("t", "tweak-mode", "tweak_mode", Str, "Tweak mode"),
            req("n", "name", "name", Str, "Key name"),
        ],
    ),
    cmd("accel_crypto_key_destroy", "Destroy an encryption key", &[req("n", "key-name", "key_name", Str, "Key name")]),
    cmd("accel_crypto_keys_get", "List encryption keys", &[opt("k", "key-name", "key_name", Str, "Key name")]),
    cmd(
        "bdev_crypto_create",
        "Create a crypto bdev",
        &[
            pos("base_bdev_name", Str, "Base bdev"),
            pos("name", Str, "Name of the crypto bdev"),
            opt("n", "key-name", "key_name", Str, "Key name"),
        ],
    ),
    cmd("bdev_crypto_delete", "Delete a crypto bdev", &[pos("name", Str, "Bdev name")]),
    cmd("bdev_examine", "Examine a bdev", &[req("b", "name", "name", Str, "Bdev name")]),
    Command {
        method: "bdev_malloc_create",
        help: "Create a RAM disk",
        args: &[
            pos("total_size", Float, "Size in MiB"),
            pos("block_size", Uint, "Block size in bytes"),
            opt("b", "name", "name", Str, "Bdev name (default MallocN)"),
            opt("u", "uuid", "uuid", Str, "UUID"),
        ],
        transform: Some(mib_to_blocks),
    },
    cmd("bdev_malloc_delete", "Delete a malloc bdev", &[pos("name", Str, "Bdev name")]),
    Command {
        method: "bdev_null_create",
        help: "Create a null bdev",
        args: &[
            pos("name", Str, "Bdev name"),
            pos("total_size", Float, "Size in MiB"),
            pos("block_size", Uint, "Block size in bytes"),
            opt("u", "uuid", "uuid", Str, "UUID"),
            opt("", "no-read-zeroes", "no_read_zeroes", Flag, "Reads leave buffers as they are (SPDK's null; benchmarks)"),
        ],
        transform: Some(null_create),
    },
    cmd("bdev_null_delete", "Delete a null bdev", &[pos("name", Str, "Bdev name")]),
    cmd(
        "bdev_null_resize",
        "Grow a null bdev",
        &[pos("name", Str, "Bdev name"), pos("new_size", Uint, "New size in MiB")],
    ),
    cmd(
        "bdev_aio_create",
        "Create a bdev on a file or block device",
        &[
            pos("filename", Str, "Path"),
            pos("name", Str, "Bdev name"),
            pos_opt("block_size", Uint, "Block size in bytes"),
            opt("r", "readonly", "readonly", Flag, "Read-only"),
            opt("", "fallocate", "fallocate", Flag, "Accepted for compatibility"),
            opt("u", "uuid", "uuid", Str, "UUID"),
        ],
    ),
    cmd("bdev_aio_delete", "Delete an aio bdev", &[pos("name", Str, "Bdev name")]),
    cmd("bdev_aio_rescan", "Pick up a changed file size", &[pos("name", Str, "Bdev name")]),
    cmd(
        "bdev_uring_create",
        "Create an io_uring bdev on a file or block device",
        &[
            pos("filename", Str, "Path"),
            pos("name", Str, "Bdev name"),
            pos_opt("block_size", Uint, "Block size in bytes"),
            opt("u", "uuid", "uuid", Str, "UUID"),
        ],
    ),
    cmd("bdev_uring_delete", "Delete a uring bdev", &[pos("name", Str, "Bdev name")]),
    Command {
        method: "bdev_rbd_register_cluster",
        help: "Connect to a Ceph cluster and register it by name",
        args: &[
            pos("name", Str, "Cluster name"),
            opt("", "user", "user_id", Str, "Ceph user, without client. (default admin)"),
            opt("", "config-param", "config_param", Str, "Ceph options: 'key=value key=value ...'"),
            opt("", "config-file", "config_file", Str, "A ceph.conf"),
            opt("", "key-file", "key_file", Str, "A keyring file"),
            opt("", "core-mask", "core_mask", Str, "Cores librados's threads run on"),
        ],
        transform: Some(|p| key_values(p, "config_param")),
    },
    cmd("bdev_rbd_unregister_cluster", "Unregister a Ceph cluster", &[pos("name", Str, "Cluster name")]),
    cmd(
        "bdev_rbd_get_clusters_info",
        "Show registered Ceph clusters",
        &[opt("b", "name", "name", Str, "Cluster name (default: all)")],
    ),
    Command {
        method: "bdev_rbd_create",
        help: "Create a bdev on a Ceph RBD image",
        args: &[
            pos("pool_name", Str, "Pool"),
            pos("rbd_name", Str, "Image"),
            pos("block_size", Uint, "Block size in bytes"),
            opt("b", "name", "name", Str, "Bdev name (default CephN)"),
            opt("", "user", "user_id", Str, "Ceph user, without client."),
            opt("", "config", "config", Str, "Ceph options: 'key=value key=value ...'"),
            opt("", "cluster-name", "cluster_name", Str, "A registered cluster"),
            opt("u", "uuid", "uuid", Str, "UUID"),
            opt("r", "readonly", "read_only", Flag, "Open the image read-only"),
        ],
        transform: Some(|p| key_values(p, "config")),
    },
    cmd("bdev_rbd_delete", "Delete an rbd bdev", &[pos("name", Str, "Bdev name")]),
    cmd(
        "bdev_rbd_resize",
        "Grow an rbd bdev and its image",
        &[pos("name", Str, "Bdev name"), pos("new_size", Uint, "New size in MiB")],
    ),
    cmd(
        "bdev_lvol_create_lvstore",
        "Create a logical volume store on a bdev",
        &[
            pos("bdev_name", Str, "Base bdev"),
            pos("lvs_name", Str, "Name of the lvstore"),
            opt("c", "cluster-sz", "cluster_sz", Uint, "Cluster size in bytes (default 4 MiB)"),
            opt("", "clear-method", "clear_method", Str, "unmap (default), write_zeroes or none"),
            opt(
                "m",
                "md-pages-per-cluster-ratio",
                "num_md_pages_per_cluster_ratio",
                Uint,
                "Accepted for compatibility",
            ),
            opt("s", "md-page-size", "md_page_size", Uint, "Accepted for compatibility"),
        ],
    ),
    cmd(
        "bdev_lvol_delete_lvstore",
        "Delete a logical volume store and its lvols",
        &[opt("u", "uuid", "uuid", Str, "Lvstore uuid"), opt("l", "lvs-name", "lvs_name", Str, "Lvstore name")],
    ),
    cmd(
        "bdev_lvol_get_lvstores",
        "List logical volume stores",
        &[opt("u", "uuid", "uuid", Str, "Lvstore uuid"), opt("l", "lvs-name", "lvs_name", Str, "Lvstore name")],
    ),
    cmd(
        "bdev_lvol_rename_lvstore",
        "Rename a logical volume store",
        &[pos("old_name", Str, "Current name"), pos("new_name", Str, "New name")],
    ),
    cmd(
        "bdev_lvol_grow_lvstore",
        "Grow a logical volume store into its grown base bdev",
        &[opt("u", "uuid", "uuid", Str, "Lvstore uuid"), opt("l", "lvs-name", "lvs_name", Str, "Lvstore name")],
    ),
    cmd(
        "bdev_lvol_create",
        "Create a logical volume",
        &[
            pos("lvol_name", Str, "Name of the lvol"),
            pos("size_in_mib", Uint, "Size in MiB"),
            opt("t", "thin-provision", "thin_provision", Flag, "Thin provisioned"),
            opt("u", "uuid", "uuid", Str, "Lvstore uuid"),
            opt("l", "lvs-name", "lvs_name", Str, "Lvstore name"),
            opt("c", "clear-method", "clear_method", Str, "default, none, unmap or write_zeroes"),
        ],
    ),
    cmd(
        "bdev_lvol_snapshot",
        "Take a snapshot of a logical volume",
        &[pos("lvol_name", Str, "Lvol (lvs/lvol or uuid)"), pos("snapshot_name", Str, "Name of the snapshot")],
    ),
    cmd(
        "bdev_lvol_clone",
        "Clone a snapshot",
        &[pos("snapshot_name", Str, "Snapshot (lvs/snap or uuid)"), pos("clone_name", Str, "Name of the clone")],
    ),
    cmd(
        "bdev_lvol_clone_bdev",
        "Clone any bdev as an external snapshot",
        &[
            pos("bdev", Str, "The bdev (name or uuid)"),
            pos("lvs_name", Str, "Lvstore of the clone"),
            pos("clone_name", Str, "Name of the clone"),
        ],
    ),
    cmd(
        "bdev_lvol_rename",
        "Rename a logical volume",
        &[pos("old_name", Str, "Lvol (lvs/lvol or uuid)"), pos("new_name", Str, "New lvol name")],
    ),
    cmd(
        "bdev_lvol_resize",
        "Resize a logical volume",
        &[pos("name", Str, "Lvol (lvs/lvol or uuid)"), pos("size_in_mib", Uint, "New size in MiB")],
    ),
    cmd("bdev_lvol_set_read_only", "Make a logical volume read-only", &[pos("name", Str, "Lvol (lvs/lvol or uuid)")]),
    cmd("bdev_lvol_delete", "Delete a logical volume", &[pos("name", Str, "Lvol (lvs/lvol or uuid)")]),
    cmd(
        "bdev_lvol_inflate",
        "Allocate every cluster of a logical volume and drop its parent",
        &[pos("name", Str, "Lvol (lvs/lvol or uuid)")],
    ),
    cmd(
        "bdev_lvol_decouple_parent",
        "Copy what a logical volume reads from its parent and skip that parent",
        &[pos("name", Str, "Lvol (lvs/lvol or uuid)")],
    ),
    cmd(
        "bdev_lvol_get_lvols",
        "List logical volumes",
        &[opt("u", "lvs-uuid", "lvs_uuid", Str, "Lvstore uuid"), opt("l", "lvs-name", "lvs_name", Str, "Lvstore name")],
    ),
    cmd(
        "bdev_lvol_set_parent",
        "Make a snapshot the parent of a thin logical volume",
        &[pos("lvol_name", Str, "Lvol (lvs/lvol or uuid)"), pos("parent_name", Str, "Snapshot (lvs/snap or uuid)")],
    ),
    cmd(
        "bdev_lvol_set_parent_bdev",
        "Make a bdev the external parent of a thin logical volume",
        &[pos("lvol_name", Str, "Lvol (lvs/lvol or uuid)"), pos("parent_name", Str, "Bdev (name or uuid)")],
    ),
    cmd(
        "bdev_lvol_start_shallow_copy",
        "Copy the clusters a read-only logical volume holds to a bdev",
        &[pos("src_lvol_name", Str, "Read-only lvol"), pos("dst_bdev_name", Str, "Destination bdev")],
    ),
    cmd(
        "bdev_lvol_check_shallow_copy",
        "Progress of a shallow copy",
        &[pos("operation_id", Uint, "The id start_shallow_copy returned")],
    ),
    cmd(
        "bdev_lvol_set_options",
        "Limit the bandwidth of inflate, decouple and shallow copy (Ferry extension)",
        &[opt("b", "copy-max-bandwidth-mb-sec", "copy_max_bandwidth_mb_sec", Uint, "MiB/s per copy (0: none)")],
    ),
    cmd(
        "bdev_virtio_attach_controller",
        "Attach a vhost-user-blk device as a bdev",
        &[
            pos("name", Str, "Bdev name"),
            req("t", "trtype", "trtype", Str, "Transport: user"),
            req("a", "traddr", "traddr", Str, "The device's vhost-user socket"),
            req("d", "dev-type", "dev_type", Str, "Device type: blk"),
            opt("", "vq-count", "vq_count", Uint, "Virtqueues"),
            opt("", "vq-size", "vq_size", Uint, "Virtqueue size"),
        ],
    ),
    cmd("bdev_virtio_detach_controller", "Detach a virtio bdev", &[pos("name", Str, "Bdev name")]),
    cmd(
        "bdev_nvme_attach_controller",
        "Attach an NVMe controller (NVMe/TCP, a PCI function bound to vfio-pci, or one over vfio-user): a bdev <name>n<nsid> per namespace",
        &[
            req("b", "name", "name", Str, "Controller name (bdev name prefix)"),
            req("t", "trtype", "trtype", Str, "Transport: tcp, pcie or vfiouser"),
            req("a", "traddr", "traddr", Str, "Target IP address (tcp), PCI address (pcie) or endpoint directory (vfiouser)"),
            opt("f", "adrfam", "adrfam", Str, "ipv4 or ipv6"),
            opt("s", "trsvcid", "trsvcid", Str, "Target port (4420)"),
            opt("n", "subnqn", "subnqn", Str, "Subsystem NQN"),
            opt("q", "hostnqn", "hostnqn", Str, "Host NQN"),
            opt("e", "hdgst", "hdgst", Flag, "Header digest"),
            opt("d", "ddgst", "ddgst", Flag, "Data digest"),
            opt(
                "l",
                "ctrlr-loss-timeout-sec",
                "ctrlr_loss_timeout_sec",
                Int,
                "Seconds to keep reconnecting (-1 forever)",
            ),
            opt("o", "reconnect-delay-sec", "reconnect_delay_sec", Uint, "Seconds between reconnect attempts"),
            opt(
                "u",
                "fast-io-fail-timeout-sec",
                "fast_io_fail_timeout_sec",
                Uint,
                "Seconds after which waiting I/O fails",
            ),
            opt("", "num-io-queues", "num_io_queues", Uint, "I/O queues to ask for"),
        ],
    ),
    cmd(
        "bdev_nvme_detach_controller",
        "Detach an NVMe controller and delete its bdevs",
        &[
            pos("name", Str, "Controller name"),
            opt("t", "trtype", "trtype", Str, "Transport"),
            opt("a", "traddr", "traddr", Str, "Target address"),
            opt("f", "adrfam", "adrfam", Str, "Address family"),
            opt("s", "trsvcid", "trsvcid", Str, "Target port"),
            opt("n", "subnqn", "subnqn", Str, "Subsystem NQN"),
        ],
    ),
    cmd("bdev_nvme_get_controllers", "List NVMe controllers", &[opt("n", "name", "name", Str, "Controller name")]),
    cmd(
        "bdev_nvme_reset_controller",
        "Reset an NVMe controller (I/O in flight is retried)",
        &[pos("name", Str, "Controller name"), opt("c", "cntlid", "cntlid", Uint, "Controller id of the path")],
    ),
    cmd(
        "bdev_nvme_get_controller_health_info",
        "An NVMe controller's SMART / health log",
        &[req("c", "name", "name", Str, "Controller name")],
    ),
    // vhost
    cmd(
        "vhost_create_blk_controller",
        "Create a vhost-user-blk controller",
        &[
            pos("ctrlr", Str, "Controller name (its socket is <sock dir>/<name>)"),
            pos("dev_name", Str, "Bdev name"),
            opt("", "cpumask", "cpumask", Str, "Cores its queues run on"),
            opt("r", "readonly", "readonly", Flag, "Read-only"),
            opt("p", "packed_ring", "packed_ring", Flag, "Packed ring"),
        ],
    ),
    cmd(
        "vhost_create_scsi_controller",
        "Create a vhost-user-scsi controller",
        &[
            pos("ctrlr", Str, "Controller name (its socket is <sock dir>/<name>)"),
            opt("", "cpumask", "cpumask", Str, "Cores its queues run on"),
        ],
    ),
    cmd(
        "vhost_scsi_controller_add_target",
        "Add a SCSI target (LUN 0 on a bdev) to a vhost-user-scsi controller",
        &[
            pos("ctrlr", Str, "Controller name"),
            pos("scsi_target_num", Int, "Target number 0-7, or -1 for the first free one"),
            pos("bdev_name", Str, "Bdev name"),
        ],
    ),
    cmd(
        "vhost_scsi_controller_remove_target",
        "Remove a SCSI target from a vhost-user-scsi controller",
        &[pos("ctrlr", Str, "Controller name"), pos("scsi_target_num", Uint, "Target number")],
    ),
    cmd("vhost_start_scsi_controller", "Start a vhost-user-scsi controller", &[pos("ctrlr", Str, "Controller name")]),
    cmd("vhost_get_controllers", "List vhost controllers", &[opt("n", "name", "name", Str, "One controller")]),
    cmd("vhost_delete_controller", "Delete a vhost controller", &[pos("ctrlr", Str, "Controller name")]),
    cmd(
        "vhost_controller_set_coalescing",
        "Set interrupt coalescing",
        &[
            pos("ctrlr", Str, "Controller name"),
            pos("delay_base_us", Uint, "Microseconds between interrupts when busy (0 = off)"),
            pos("iops_threshold", Uint, "IOPS above which to coalesce"),
        ],
    ),
    cmd(
        "vhost_controller_set_qos",
        "Limit everything a controller's guest sends (Ferry extension)",
        qos_args!(full, pos("ctrlr", Str, "Controller name")),
    ),
    // iSCSI target
    cmd(
        "iscsi_set_options",
        "Set the iSCSI target's global options (before framework_start_init)",
        &[
            opt("f", "auth-file", "auth_file", Str, "Path to CHAP shared secret file"),
            opt("b", "node-base", "node_base", Str, "Prefix of the name of iSCSI target node"),
            opt("o", "nop-timeout", "nop_timeout", Int, "NOP-In request timeout in seconds"),
            opt("n", "nop-in-interval", "nop_in_interval", Int, "Interval between NOP-In requests in seconds"),
            opt("d", "disable-chap", "disable_chap", Flag, "Disable CHAP for discovery session"),
            opt("r", "require-chap", "require_chap", Flag, "Require CHAP for discovery session"),
            opt("m", "mutual-chap", "mutual_chap", Flag, "Enable bidirectional CHAP for discovery session"),
            opt("g", "chap-group", "chap_group", Int, "CHAP group for discovery session"),
            opt("a", "max-sessions", "max_sessions", Uint, "Maximum number of sessions"),
            opt("q", "max-queue-depth", "max_queue_depth", Uint, "Maximum outstanding I/Os per queue"),
            opt("c", "max-connections-per-session", "max_connections_per_session", Uint, "MaxConnections"),
            opt("w", "default-time2wait", "default_time2wait", Uint, "DefaultTime2Wait in seconds"),
            opt("v", "default-time2retain", "default_time2retain", Uint, "DefaultTime2Retain in seconds"),
            opt("s", "first-burst-length", "first_burst_length", Uint, "FirstBurstLength in bytes"),
            opt("i", "immediate-data", "immediate_data", Flag, "ImmediateData"),
            opt("l", "error-recovery-level", "error_recovery_level", Uint, "ErrorRecoveryLevel"),
            opt("p", "allow-duplicated-isid", "allow_duplicated_isid", Flag, "Allow duplicated ISIDs"),
            opt("x", "max-large-datain-per-connection", "max_large_datain_per_connection", Uint, "Split reads"),
            opt("k", "max-r2t-per-connection", "max_r2t_per_connection", Uint, "Outstanding R2Ts per connection"),
            opt("u", "pdu-pool-size", "pdu_pool_size", Uint, "Number of PDUs in the pool"),
            opt("j", "immediate-data-pool-size", "immediate_data_pool_size", Uint, "Immediate data buffers"),
            opt("z", "data-out-pool-size", "data_out_pool_size", Uint, "Data-Out buffers"),
        ],
    ),
    cmd("iscsi_get_options", "Show the iSCSI target's global options", &[]),
    cmd(
        "iscsi_set_discovery_auth",
        "Set CHAP for discovery sessions",
        &[
            opt("d", "disable-chap", "disable_chap", Flag, "Disable CHAP"),
            opt("r", "require-chap", "require_chap", Flag, "Require CHAP"),
            opt("m", "mutual-chap", "mutual_chap", Flag, "Mutual CHAP"),
            opt("g", "chap-group", "chap_group", Int, "Auth group"),
        ],
    ),
    with(
        "iscsi_create_auth_group",
        "Create a CHAP auth group",
        &[
            pos("tag", Int, "Auth group tag (> 0)"),
            opt("c", "secrets", "secrets", Str, "'user:u1 secret:s1 muser:mu1 msecret:ms1,user:u2 secret:s2'"),
        ],
        iscsi_secrets,
    ),
    cmd("iscsi_delete_auth_group", "Delete an auth group", &[pos("tag", Int, "Auth group tag")]),
    cmd(
        "iscsi_auth_group_add_secret",
        "Add a CHAP secret to an auth group",
        &[
            pos("tag", Int, "Auth group tag"),
            req("u", "user", "user", Str, "CHAP user name"),
            req("s", "secret", "secret", Str, "CHAP secret"),
            opt("m", "muser", "muser", Str, "Mutual CHAP user name"),
            opt("r", "msecret", "msecret", Str, "Mutual CHAP secret"),
        ],
    ),
    cmd(
        "iscsi_auth_group_remove_secret",
        "Remove a CHAP secret from an auth group",
        &[pos("tag", Int, "Auth group tag"), req("u", "user", "user", Str, "CHAP user name")],
    ),
    cmd("iscsi_get_auth_groups", "Show auth groups", &[]),
    with(
        "iscsi_create_portal_group",
        "Create a portal group",
        &[
            pos("tag", Int, "Portal group tag (1-65535)"),
            pos("portals", Str, "'host:port host:port ...' (port 0: the kernel chooses)"),
            opt("p", "private", "private", Flag, "Not listed by discovery"),
            opt("w", "wait", "wait", Flag, "Do not listen until iscsi_start_portal_group"),
        ],
        iscsi_portals,
    ),
    cmd("iscsi_start_portal_group", "Start listening on a portal group", &[pos("tag", Int, "Portal group tag")]),
    cmd("iscsi_delete_portal_group", "Delete a portal group", &[pos("tag", Int, "Portal group tag")]),
    cmd(
        "iscsi_portal_group_set_auth",
        "Set CHAP for discovery through a portal group",
        &[
            pos("tag", Int, "Portal group tag"),
            opt("g", "chap-group", "chap_group", Int, "Auth group"),
            opt("d", "disable-chap", "disable_chap", Flag, "Disable CHAP"),
            opt("r", "require-chap", "require_chap", Flag, "Require CHAP"),
            opt("m", "mutual-chap", "mutual_chap", Flag, "Mutual CHAP"),
        ],
    ),
    cmd("iscsi_get_portal_groups", "Show portal groups", &[]),
    with(
        "iscsi_create_initiator_group",
        "Create an initiator group",
        &[
            pos("tag", Int, "Initiator group tag (> 0)"),
            pos("initiators", Str, "'ANY' or 'iqn... iqn...'"),
            pos("netmasks", Str, "'ANY' or '192.168.1.0/24 ...'"),
        ],
        iscsi_initiator_lists,
    ),
    with(
        "iscsi_initiator_group_add_initiators",
        "Add initiators or netmasks to an initiator group",
        &[
            pos("tag", Int, "Initiator group tag"),
            opt("n", "", "initiators", Str, "'iqn... iqn...'"),
            opt("m", "", "netmasks", Str, "'192.168.1.0/24 ...'"),
        ],
        iscsi_initiator_lists,
    ),
    with(
        "iscsi_initiator_group_remove_initiators",
        "Remove initiators or netmasks from an initiator group",
        &[
            pos("tag", Int, "Initiator group tag"),
            opt("n", "", "initiators", Str, "'iqn... iqn...'"),
            opt("m", "", "netmasks", Str, "'192.168.1.0/24 ...'"),
        ],
        iscsi_initiator_lists,
    ),
    cmd("iscsi_delete_initiator_group", "Delete an initiator group", &[pos("tag", Int, "Initiator group tag")]),
    cmd("iscsi_get_initiator_groups", "Show initiator groups", &[]),
    with(
        "iscsi_create_target_node",
        "Create a target node",
        &[
            pos("name", Str, "Target node name (node_base is prefixed unless it starts with iqn., eui. or naa.)"),
            pos("alias_name", Str, "Alias"),
            pos("luns", Str, "'bdev:lun_id bdev:lun_id ...' (LUN 0 required)"),
            pos("pg_ig_maps", Str, "'pg_tag:ig_tag ...'"),
            pos("queue_depth", Int, "Queue depth"),
            opt("g", "chap-group", "chap_group", Int, "Auth group"),
            opt("d", "disable-chap", "disable_chap", Flag, "Disable CHAP"),
            opt("r", "require-chap", "require_chap", Flag, "Require CHAP"),
            opt("m", "mutual-chap", "mutual_chap", Flag, "Mutual CHAP"),
            opt("H", "header-digest", "header_digest", Flag, "Require HeaderDigest"),
            opt("D", "data-digest", "data_digest", Flag, "Require DataDigest"),
        ],
        iscsi_target_node,
    ),
    cmd(
        "iscsi_target_node_add_lun",
        "Add a LUN to a target node",
        &[
            pos("name", Str, "Target node name"),
            pos("bdev_name", Str, "bdev"),
            opt("i", "", "lun_id", Int, "LUN id (-1 or omitted: the lowest free)"),
        ],
    ),
    cmd(
        "iscsi_target_node_set_auth",
        "Set CHAP for a target node",
        &[
            pos("name", Str, "Target node name"),
            opt("g", "chap-group", "chap_group", Int, "Auth group"),
            opt("d", "disable-chap", "disable_chap", Flag, "Disable CHAP"),
            opt("r", "require-chap", "require_chap", Flag, "Require CHAP"),
            opt("m", "mutual-chap", "mutual_chap", Flag, "Mutual CHAP"),
        ],
    ),
    with(
        "iscsi_target_node_add_pg_ig_maps",
        "Map portal groups to initiator groups on a target node",
        &[pos("name", Str, "Target node name"), pos("pg_ig_maps", Str, "'pg_tag:ig_tag ...'")],
        iscsi_maps,
    ),
    with(
        "iscsi_target_node_remove_pg_ig_maps",
        "Remove portal group to initiator group maps from a target node",
        &[pos("name", Str, "Target node name"), pos("pg_ig_maps", Str, "'pg_tag:ig_tag ...'")],
        iscsi_maps,
    ),
    cmd("iscsi_delete_target_node", "Delete a target node", &[pos("name", Str, "Target node name")]),
    cmd("iscsi_get_target_nodes", "Show target nodes", &[]),
    cmd("iscsi_get_connections", "Show iSCSI connections", &[]),
    cmd("iscsi_get_stats", "Show iSCSI connection counts by state", &[]),
    // NVMe-oF target
    with(
        "nvmf_create_transport",
        "Create the NVMe-oF TCP transport",
        &[
            req("t", "trtype", "trtype", Str, "Transport type (TCP)"),
            opt("g", "tgt-name", "tgt_name", Str, "Parent NVMe-oF target name"),
            opt("q", "max-queue-depth", "max_queue_depth", Uint, "Max number of outstanding I/O per queue"),
            opt(
                "m",
                "max-io-qpairs-per-ctrlr",
                "max_io_qpairs_per_ctrlr",
                Uint,
                "Max number of IO qpairs per controller",
            ),
            opt("c", "in-capsule-data-size", "in_capsule_data_size", Uint, "Max in-capsule data size"),
            opt("i", "max-io-size", "max_io_size", Uint, "Max I/O size (bytes)"),
            opt("a", "max-aq-depth", "max_aq_depth", Uint, "Max number of admin cmds per AQ"),
            opt("", "iobuf-small-cache-size", "iobuf_small_cache_size", Uint, "Small iobuf buffers per poll group"),
            opt("", "iobuf-large-cache-size", "iobuf_large_cache_size", Uint, "Large iobuf buffers per poll group"),
            opt("z", "zcopy", "zcopy", Flag, "Use zero-copy operations"),
            opt("o", "c2h-success", "no_c2h_success", Flag, "Disable C2H success optimization"),
            opt("f", "dif-insert-or-strip", "dif_insert_or_strip", Flag, "Enable DIF insert/strip"),
            opt("y", "sock-priority", "sock_priority", Uint, "Socket priority of connections"),
            opt("x", "abort-timeout-sec", "abort_timeout_sec", Uint, "Abort execution timeout, in seconds"),
            opt("e", "control-msg-num", "control_msg_num", Uint, "Control messages per poll group"),
            opt("", "ack-timeout", "ack_timeout", Uint, "ACK timeout in milliseconds"),
            opt("", "disable-command-passthru", "disable_command_passthru", Flag, "Disallow command passthrough"),
            opt("", "kas", "kas", Uint, "KATO granularity in units of 100 ms"),
            opt("", "min-kato", "min_kato", Uint, "Minimum Keep Alive Timeout in ms"),
        ],
        nvmf_transport,
    ),
    cmd(
        "nvmf_get_transports",
        "Show NVMe-oF transports",
        &[opt("", "trtype", "trtype", Str, "Transport type"), opt("t", "tgt-name", "tgt_name", Str, "Target name")],
    ),
    cmd(
        "nvmf_get_subsystems",
        "Show NVMe-oF subsystems",
        &[pos_opt("nqn", Str, "Subsystem NQN"), opt("t", "tgt-name", "tgt_name", Str, "Target name")],
    ),
    cmd(
        "nvmf_create_subsystem",
        "Create an NVMe-oF subsystem",
        &[
            pos("nqn", Str, "Subsystem NQN"),
            opt("t", "tgt-name", "tgt_name", Str, "Parent NVMe-oF target name"),
            opt("s", "serial-number", "serial_number", Str, "Serial number of the virtual NVMe controller"),
            opt("d", "model-number", "model_number", Str, "Model number of the virtual NVMe controller"),
            opt("a", "allow-any-host", "allow_any_host", Flag, "Allow any host to connect"),
            opt("m", "max-namespaces", "max_namespaces", Uint, "Maximum number of namespaces"),
            opt("r", "ana-reporting", "ana_reporting", Flag, "Enable ANA reporting"),
            opt("i", "min-cntlid", "min_cntlid", Uint, "Minimum controller ID"),
            opt("I", "max-cntlid", "max_cntlid", Uint, "Maximum controller ID"),
        ],
    ),
    cmd(
        "nvmf_delete_subsystem",
        "Delete an NVMe-oF subsystem",
        &[pos("nqn", Str, "Subsystem NQN"), opt("t", "tgt-name", "tgt_name", Str, "Target name")],
    ),
    with(
        "nvmf_subsystem_add_listener",
        "Add a listener to an NVMe-oF subsystem ('discovery' for the discovery subsystem)",
        &[
            pos("nqn", Str, "Subsystem NQN ('discovery' for the discovery NQN)"),
            req("t", "trtype", "trtype", Str, "Transport type: tcp"),
            req("a", "traddr", "traddr", Str, "Transport address: an IP address"),
            opt("p", "tgt-name", "tgt_name", Str, "Target name"),
            opt("f", "adrfam", "adrfam", Str, "Address family: ipv4, ipv6"),
            opt("s", "trsvcid", "trsvcid", Str, "Port"),
        ],
        nvmf_listener,
    ),
    with(
        "nvmf_subsystem_remove_listener",
        "Remove a listener from an NVMe-oF subsystem ('discovery' for the discovery subsystem)",
        &[
            pos("nqn", Str, "Subsystem NQN ('discovery' for the discovery NQN)"),
            req("t", "trtype", "trtype", Str, "Transport type: tcp"),
            req("a", "traddr", "traddr", Str, "Transport address: an IP address"),
            opt("p", "tgt-name", "tgt_name", Str, "Target name"),
            opt("f", "adrfam", "adrfam", Str, "Address family: ipv4, ipv6"),
            opt("s", "trsvcid", "trsvcid", Str, "Port"),
        ],
        nvmf_listener,
    ),
    with(
        "nvmf_subsystem_add_ns",
        "Add a namespace to an NVMe-oF subsystem",
        &[
            pos("nqn", Str, "Subsystem NQN"),
            pos("bdev_name", Str, "Name of the bdev to expose as a namespace"),
            opt("t", "tgt-name", "tgt_name", Str, "Target name"),
            opt("n", "nsid", "nsid", Uint, "Namespace ID"),
            opt("g", "nguid", "nguid", Str, "16-byte NGUID in hexadecimal"),
            opt("e", "eui64", "eui64", Str, "8-byte EUI-64 in hexadecimal"),
            opt("u", "uuid", "uuid", Str, "RFC 4122 UUID"),
            opt("a", "anagrpid", "anagrpid", Uint, "ANA group ID"),
        ],
        nvmf_namespace,
    ),
    cmd(
        "nvmf_subsystem_remove_ns",
        "Remove a namespace from an NVMe-oF subsystem",
        &[
            pos("nqn", Str, "Subsystem NQN"),
            pos("nsid", Uint, "Namespace ID"),
            opt("t", "tgt-name", "tgt_name", Str, "Target name"),
        ],
    ),
    cmd(
        "nvmf_subsystem_add_host",
        "Allow a host to connect to an NVMe-oF subsystem",
        &[
            pos("nqn", Str, "Subsystem NQN"),
            pos("host", Str, "Host NQN"),
            opt("t", "tgt-name", "tgt_name", Str, "Target name"),
        ],
    ),
    cmd(
        "nvmf_subsystem_remove_host",
        "Remove a host from an NVMe-oF subsystem's allowed hosts",
        &[
            pos("nqn", Str, "Subsystem NQN"),
            pos("host", Str, "Host NQN"),
            opt("t", "tgt-name", "tgt_name", Str, "Target name"),
            opt("T", "timeout-ms", "timeout_ms", Uint, "Timeout in ms to wait for I/Os to complete"),
        ],
    ),
    with(
        "nvmf_subsystem_allow_any_host",
        "Let any host connect, or only the allowed ones",
        &[
            pos("nqn", Str, "Subsystem NQN"),
            opt("", "allow-any-host", "allow_any_host", Flag, "Allow any host to connect"),
            opt("", "no-allow-any-host", "no_allow_any_host", Flag, "Enforce the allowed host list"),
            opt("t", "tgt-name", "tgt_name", Str, "Target name"),
        ],
        nvmf_allow_any_host,
    ),
    cmd(
        "nvmf_subsystem_get_controllers",
        "Show the controllers of an NVMe-oF subsystem",
        &[pos("nqn", Str, "Subsystem NQN"), opt("t", "tgt-name", "tgt_name", Str, "Target name")],
    ),
    cmd(
        "nvmf_subsystem_get_qpairs",
        "Show the queue pairs of an NVMe-oF subsystem",
        &[pos("nqn", Str, "Subsystem NQN"), opt("t", "tgt-name", "tgt_name", Str, "Target name")],
    ),
    cmd(
        "nvmf_subsystem_get_listeners",
        "Show the listeners of an NVMe-oF subsystem",
        &[pos("nqn", Str, "Subsystem NQN"), opt("t", "tgt-name", "tgt_name", Str, "Target name")],
    ),
    cmd(
        "nvmf_get_stats",
        "Show NVMe-oF poll group statistics",
        &[opt("t", "tgt-name", "tgt_name", Str, "Target name")],
    ),
    // Options of SPDK subsystems Ferry does not have: accepted and logged (`ferryctl call`
    // passes any of their parameters).
    cmd("iobuf_set_options", "Accepted for SPDK configurations", &[]),
    cmd(
        "sock_set_default_impl",
        "Accepted for SPDK configurations",
        &[req("i", "impl", "impl_name", Str, "Socket implementation")],
    ),
    cmd(
        "sock_impl_set_options",
        "Accepted for SPDK configurations",
        &[req("i", "impl", "impl_name", Str, "Socket implementation")],
    ),
    cmd("accel_set_options", "Accepted for SPDK configurations", &[]),
    cmd(
        "accel_assign_opc",
        "Accepted for SPDK configurations",
        &[req("o", "opname", "opname", Str, "Operation"), req("m", "module", "module", Str, "Module")],
    ),
    cmd("accel_set_driver", "Accepted for SPDK configurations", &[pos("name", Str, "Driver")]),
    cmd("bdev_set_options", "Accepted for SPDK configurations", &[]),
    cmd(
        "bdev_nvme_set_options",
        "NVMe bdev options: the command timeout and its action (others accepted for SPDK configurations)",
        &[
            opt("a", "action-on-timeout", "action_on_timeout", Str, "none or reset"),
            opt("t", "timeout-us", "timeout_us", Uint, "I/O command timeout (µs, 0 none)"),
            opt("", "timeout-admin-us", "timeout_admin_us", Uint, "Admin command timeout (µs, kept)"),
        ],
    ),
    cmd("bdev_nvme_set_hotplug", "Accepted for SPDK configurations", &[opt("e", "enable", "enable", Flag, "Enable")]),
    cmd("bdev_iscsi_set_options", "Accepted for SPDK configurations", &[]),
    cmd("nvmf_set_config", "Accepted for SPDK configurations", &[]),
    cmd("nvmf_set_max_subsystems", "Accepted for SPDK configurations", &[pos("max_subsystems", Uint, "Count")]),
    cmd("nvmf_set_crdt", "Accepted for SPDK configurations", &[]),
    cmd("framework_set_scheduler", "Accepted for SPDK configurations", &[pos("name", Str, "Scheduler")]),
    cmd(
        "fsdev_set_opts",
        "Accepted for SPDK configurations",
        &[pos("fsdev_io_pool_size", Uint, "Pool size"), pos("fsdev_io_cache_size", Uint, "Cache size")],
    ),
    cmd("keyring_linux_set_options", "Accepted for SPDK configurations", &[]),
];
