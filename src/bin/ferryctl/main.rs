//! `ferryctl`: Ferry's command-line client, shaped like SPDK's `rpc.py`
//! (`ferryctl [-s SOCKET] METHOD ARGS...`), plus `ferryctl call METHOD [JSON]` for raw calls
//! and `ferryctl top`, a live view in the terminal (as SPDK's spdk_top).

mod client;
mod commands;
mod top;

use clap::{Arg as ClapArg, ArgAction, ArgMatches, Command as ClapCommand};
use commands::{Kind, COMMANDS};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_SOCKET: &str = "/var/tmp/ferry.sock";

fn cli() -> ClapCommand {
    let mut app = ClapCommand::new("ferryctl")
        .about("Ferry's JSON-RPC client (rpc.py-compatible command line)")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .arg(
            ClapArg::new("socket")
                .short('s')
                .long("server")
                .env("FERRY_RPC_SOCKET")
                .default_value(DEFAULT_SOCKET)
                .help("RPC socket path"),
        )
        .arg(
            ClapArg::new("timeout")
                .short('t')
                .long("timeout")
                .value_parser(clap::value_parser!(f64))
                .default_value("60")
                .help("Seconds to wait for an answer"),
        )
        .arg(
            ClapArg::new("conn_retries")
                .short('r')
                .long("conn-retries")
                .value_parser(clap::value_parser!(u32))
                .default_value("0")
                .help("Retry connecting N times, 0.2 s apart, while ferryd is starting (as rpc.py)"),
        )
        .arg(ClapArg::new("verbose").short('v').long("verbose").action(ArgAction::SetTrue).help("Print the request"))
        .subcommand(
            ClapCommand::new("call")
                .about("Call any method with raw JSON params")
                .arg(ClapArg::new("method").required(true))
                .arg(ClapArg::new("params").help("A JSON object")),
        )
        .subcommand(
            ClapCommand::new("top")
                .about("Live view of reactors, threads, pollers, bdevs and vhost controllers (as spdk_top)")
                .arg(
                    ClapArg::new("interval")
                        .short('i')
                        .long("interval")
                        .value_parser(clap::value_parser!(f64))
                        .default_value("1")
                        .help("Seconds between refreshes"),
                )
                .arg(
                    ClapArg::new("view")
                        .long("view")
                        .value_parser(clap::value_parser!(u8).range(1..=5))
                        .default_value("1")
                        .help("View shown first: 1 reactors, 2 threads, 3 pollers, 4 bdevs, 5 controllers"),
                ),
        )
        .subcommand(
            ClapCommand::new("load_config")
                .about("Replay a configuration (from -j FILE, or standard input)")
                .arg(ClapArg::new("json_conf").short('j').long("json-conf").help("Configuration file")),
        );
    for c in COMMANDS {
        let mut sub = ClapCommand::new(c.method).about(c.help);
        for a in c.args {
            let mut arg = ClapArg::new(a.key).help(a.help);
            if let Some((short, long)) = a.flag {
                if let Some(ch) = short.chars().next() {
                    arg = arg.short(ch);
                }
                if !long.is_empty() {
                    arg = arg.long(long);
                }
                arg = arg.required(a.required);
            } else {
                arg = arg.required(a.required);
            }
            arg = match a.kind {
                Kind::Flag => arg.action(ArgAction::SetTrue),
                Kind::Uint => arg.value_parser(clap::value_parser!(u64)),
                Kind::Int => arg.value_parser(clap::value_parser!(i64)).allow_negative_numbers(true),
                Kind::Float => arg.value_parser(clap::value_parser!(f64)),
                Kind::Str => arg,
            };
            sub = sub.arg(arg);
        }
        app = app.subcommand(sub);
    }
    app
}

/// The params a command line asks for, as rpc.py would send them.
fn params_for(method: &str, m: &ArgMatches) -> Result<Value, String> {
    let c = COMMANDS.iter().find(|c| c.method == method).ok_or_else(|| format!("unknown command {method}"))?;
    let mut p = Map::new();
    for a in c.args {
        let v = match a.kind {
            Kind::Flag => m.get_flag(a.key).then_some(Value::Bool(true)),
            Kind::Uint => m.get_one::<u64>(a.key).map(|v| Value::from(*v)),
            Kind::Int => m.get_one::<i64>(a.key).map(|v| Value::from(*v)),
            Kind::Float => m.get_one::<f64>(a.key).map(|v| Value::from(*v)),
            Kind::Str => m.get_one::<String>(a.key).map(|v| Value::from(v.as_str())),
        };
        if let Some(v) = v {
            p.insert(a.key.into(), v);
        }
    }
    if let Some(t) = c.transform {
        t(&mut p)?;
    }
    Ok(Value::Object(p))
}

fn raw_params(m: &ArgMatches) -> Result<Value, String> {
    match m.get_one::<String>("params") {
        None => Ok(Value::Object(Map::new())),
        Some(text) => {
            let v: Value = serde_json::from_str(text).map_err(|e| format!("params are not JSON: {e}"))?;
            if v.is_object() {
                Ok(v)
            } else {
                Err("params must be a JSON object".into())
            }
        }
    }
}

fn config_params(m: &ArgMatches) -> Result<Value, String> {
    let text = match m.get_one::<String>("json_conf") {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?,
        None => std::io::read_to_string(std::io::stdin()).map_err(|e| format!("reading standard input: {e}"))?,
    };
    serde_json::from_str(&text).map_err(|e| format!("the configuration is not JSON: {e}"))
}

/// Prints a result as rpc.py does: strings bare, everything else as indented JSON.
fn print_result(v: &Value) {
    match v {
        Value::String(s) => println!("{s}"),
        Value::Null => {}
        other => println!("{}", serde_json::to_string_pretty(other).expect("a Value serialises")),
    }
}

fn main() -> ExitCode {
    // A reader that goes away (`ferryctl ... | head`) ends the output quietly, as for any
    // Unix tool, instead of a panic on EPIPE in println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let matches = cli().get_matches();
    let socket = PathBuf::from(matches.get_one::<String>("socket").expect("has a default"));
    let timeout =
        Duration::from_secs_f64(matches.get_one::<f64>("timeout").copied().unwrap_or(60.0).clamp(0.001, 86400.0));
    let (method, sub) = matches.subcommand().expect("a subcommand is required");
    if method == "top" {
        return run_top(socket, timeout, sub);
    }
    let built = match method {
        "call" => raw_params(sub).map(|p| (sub.get_one::<String>("method").cloned().unwrap_or_default(), p)),
        "load_config" => config_params(sub).map(|p| (method.to_string(), p)),
        _ => params_for(method, sub).map(|p| (method.to_string(), p)),
    };
    let (method, params) = match built {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ferryctl: {e}");
            return ExitCode::from(2);
        }
    };
    let req = client::request(&method, &params);
    if matches.get_flag("verbose") {
        eprintln!("request:\n{}", serde_json::to_string_pretty(&req).unwrap_or_default());
    }
    let retries = matches.get_one::<u32>("conn_retries").copied().unwrap_or(0);
    let resp = match client::call(&socket, &req, timeout, retries) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferryctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(err) = resp.get("error") {
        eprintln!("request:\n{}", serde_json::to_string_pretty(&req).unwrap_or_default());
        eprintln!("Got JSON-RPC error response");
        eprintln!("response:\n{}", serde_json::to_string_pretty(err).unwrap_or_default());
        return ExitCode::FAILURE;
    }
    print_result(resp.get("result").unwrap_or(&Value::Null));
    ExitCode::SUCCESS
}

/// `ferryctl top`: each call waits at most 5 s (or `-t`), so a hung daemon shows as an error
/// line instead of a frozen screen.
fn run_top(socket: PathBuf, timeout: Duration, m: &ArgMatches) -> ExitCode {
    let interval = m.get_one::<f64>("interval").copied().unwrap_or(1.0);
    if !(0.1..=60.0).contains(&interval) {
        eprintln!("ferryctl: --interval must be between 0.1 and 60 seconds");
        return ExitCode::from(2);
    }
    let opts = top::TopOptions {
        socket,
        interval: Duration::from_secs_f64(interval),
        timeout: timeout.min(Duration::from_secs(5)),
        view: m.get_one::<u8>("view").map_or(0, |v| *v as usize - 1),
    };
    match top::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferryctl top: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(args: &[&str]) -> Value {
        let mut full = vec!["ferryctl"];
        full.extend_from_slice(args);
        let m = cli().try_get_matches_from(full).unwrap();
        let (method, sub) = m.subcommand().unwrap();
        params_for(method, sub).unwrap()
    }

    #[test]
    fn malloc_sizes_become_num_blocks_like_rpc_py() {
        assert_eq!(
            params(&["bdev_malloc_create", "-b", "Malloc0", "64", "512"]),
            serde_json::json!({"name": "Malloc0", "num_blocks": 131072, "block_size": 512})
        );
        assert_eq!(
            params(&["bdev_null_create", "Null0", "1", "4096"]),
            serde_json::json!({"name": "Null0", "num_blocks": 256, "block_size": 4096})
        );
    }

    #[test]
    fn optional_arguments_are_sent_only_when_given() {
        assert_eq!(params(&["bdev_get_bdevs"]), serde_json::json!({}));
        assert_eq!(params(&["bdev_get_bdevs", "-b", "M", "-t", "5"]), serde_json::json!({"name": "M", "timeout": 5}));
        assert_eq!(
            params(&["bdev_aio_create", "/f", "A", "--readonly"]),
            serde_json::json!({"filename": "/f", "name": "A", "readonly": true})
        );
        assert_eq!(
            params(&["vhost_create_blk_controller", "vhost.0", "Malloc0", "--cpumask", "0x1"]),
            serde_json::json!({"ctrlr": "vhost.0", "dev_name": "Malloc0", "cpumask": "0x1"})
        );
    }

    #[test]
    fn scsi_target_numbers_may_be_minus_one_like_rpc_py() {
        assert_eq!(
            params(&["vhost_scsi_controller_add_target", "vhost.1", "-1", "Malloc0"]),
            serde_json::json!({"ctrlr": "vhost.1", "scsi_target_num": -1, "bdev_name": "Malloc0"})
        );
        assert_eq!(
            params(&["vhost_scsi_controller_remove_target", "vhost.1", "3"]),
            serde_json::json!({"ctrlr": "vhost.1", "scsi_target_num": 3})
        );
        assert_eq!(params(&["vhost_create_scsi_controller", "vhost.1"]), serde_json::json!({"ctrlr": "vhost.1"}));
        assert!(cli().try_get_matches_from(["ferryctl", "vhost_scsi_controller_add_target", "c", "x", "M"]).is_err());
    }

    #[test]
    fn iscsi_commands_take_rpc_py_s_positional_forms() {
        use serde_json::json;
        assert_eq!(
            params(&["iscsi_create_portal_group", "1", "127.0.0.1:3260 [::1]:3261"]),
            json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}, {"host": "[::1]", "port": "3261"}]})
        );
        assert_eq!(
            params(&["iscsi_create_initiator_group", "2", "ANY", "127.0.0.1/32"]),
            json!({"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]})
        );
        assert_eq!(
            params(&["iscsi_create_target_node", "disk1", "Data Disk1", "Malloc0:0 Malloc1:1", "1:2", "64", "-d"]),
            json!({"name": "disk1", "alias_name": "Data Disk1", "queue_depth": 64, "disable_chap": true,
                   "luns": [{"bdev_name": "Malloc0", "lun_id": 0}, {"bdev_name": "Malloc1", "lun_id": 1}],
                   "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}]})
        );
        assert_eq!(
            params(&[
                "iscsi_create_auth_group",
                "3",
                "-c",
                "user:u1 secret:s1 muser:mu1 msecret:ms1,user:u2 secret:s2"
            ]),
            json!({"tag": 3, "secrets": [{"user": "u1", "secret": "s1", "muser": "mu1", "msecret": "ms1"},
                                         {"user": "u2", "secret": "s2"}]})
        );
        assert_eq!(
            params(&["iscsi_initiator_group_add_initiators", "2", "-n", "iqn.a iqn.b"]),
            json!({"tag": 2, "initiators": ["iqn.a", "iqn.b"]})
        );
        assert_eq!(
            params(&["iscsi_auth_group_add_secret", "3", "-u", "u", "-s", "s"]),
            json!({"tag": 3, "user": "u", "secret": "s"})
        );
        assert_eq!(
            params(&["iscsi_target_node_add_lun", "disk1", "M2", "-i", "5"]),
            json!({"name": "disk1", "bdev_name": "M2", "lun_id": 5})
        );
        assert_eq!(
            params(&["iscsi_set_options", "-b", "iqn.2001-04.com.x", "-q", "32"]),
            json!({"node_base": "iqn.2001-04.com.x", "max_queue_depth": 32})
        );
        let m =
            cli().try_get_matches_from(["ferryctl", "iscsi_create_target_node", "d", "a", "M0:x", "1:1", "8"]).unwrap();
        let (method, sub) = m.subcommand().unwrap();
        assert!(params_for(method, sub).is_err(), "a LUN id that is not a number");
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert!(cli().try_get_matches_from(["ferryctl", "bdev_malloc_create", "64"]).is_err());
        assert!(cli().try_get_matches_from(["ferryctl", "bdev_malloc_create", "x", "512"]).is_err());
        assert!(cli().try_get_matches_from(["ferryctl", "no_such_method"]).is_err());
        let m = cli().try_get_matches_from(["ferryctl", "bdev_malloc_create", "1", "1000"]).unwrap();
        let (method, sub) = m.subcommand().unwrap();
        assert!(params_for(method, sub).is_err(), "1 MiB is not a multiple of 1000-byte blocks");
    }

    #[test]
    fn raw_calls_take_a_json_object() {
        let m = cli().try_get_matches_from(["ferryctl", "call", "x", r#"{"a":1}"#]).unwrap();
        assert_eq!(raw_params(m.subcommand().unwrap().1).unwrap(), serde_json::json!({"a": 1}));
        let m = cli().try_get_matches_from(["ferryctl", "call", "x", "[1]"]).unwrap();
        assert!(raw_params(m.subcommand().unwrap().1).is_err());
        assert_eq!(
            client::request("m", &serde_json::json!({})),
            serde_json::json!({"jsonrpc": "2.0", "method": "m", "id": 1})
        );
    }

    #[test]
    fn a_response_in_pieces_and_an_error_response_are_read() {
        let dir = std::env::temp_dir().join(format!("ferryctl-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        /// Removes the test's directory when dropped, failing or not.
        struct Scratch(std::path::PathBuf);
        impl Drop for Scratch {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _scratch = Scratch(dir.clone());
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for answer in [
                &[r#"{"jsonrpc":"2.0","#, r#""id":1,"result":"#, r#"[1,2]}"#][..],
                &[r#"{"jsonrpc":"2.0","id":1,"error":{"code":-17,"message":"exists"}}"#],
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).unwrap();
                for piece in answer {
                    s.write_all(piece.as_bytes()).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        let req = client::request("x", &Value::Null);
        let ok = client::call(&path, &req, Duration::from_secs(5), 0).unwrap();
        assert_eq!(ok["result"], serde_json::json!([1, 2]));
        let err = client::call(&path, &req, Duration::from_secs(5), 0).unwrap();
        assert_eq!(err["error"]["code"], -17);
        server.join().unwrap();
        assert!(matches!(
            client::call(&dir.join("missing"), &req, Duration::from_secs(1), 0),
            Err(client::ClientError::Connect { .. })
        ));
        // --conn-retries: a socket that appears while the client tries is reached; one that
        // never does is given up on after the retries.
        let late = dir.join("late");
        let (late_path, req2) = (late.clone(), req.clone());
        let client = std::thread::spawn(move || client::call(&late_path, &req2, Duration::from_secs(5), 150));
        let listener = std::os::unix::net::UnixListener::bind(&late).unwrap();
        {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.read(&mut [0u8; 1024]).unwrap();
            s.write_all(br#"{"jsonrpc":"2.0","id":1,"result":true}"#).unwrap();
        }
        assert_eq!(client.join().unwrap().unwrap()["result"], true);
        assert!(matches!(
            client::call(&dir.join("never"), &req, Duration::from_secs(1), 2),
            Err(client::ClientError::Connect { .. })
        ));
    }
}
