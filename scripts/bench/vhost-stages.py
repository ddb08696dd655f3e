#!/usr/bin/env python3
"""vhost-stages.sh's helper: JSON-RPC look-ups, sample attribution, the per-stage table.

  rpc SOCK reads|threads       the target's bdev reads so far / thread busy and idle ticks
  iops < bdevperf-output       the IOPS of bdevperf's Total line
  attribute WHO PID DIR        DIR/script.txt (perf script --inline) -> stage counts (JSON)
  monitor TSOCK CSOCK TPID CPID SECS OUT   the window: figures at its start and end (JSON)
  stolen DIR MAX               exit 1 if other tasks took more than MAX % of either core
  table SECS FREQ DIR...       the per-stage table of the cases in DIR...

Attribution: each sample's call chain (inlined frames included) is walked from the leaf out;
the first frame that one of the target's rules below matches gives the stage. Frames no rule
matches (libc's memcpy, core::/alloc:: helpers, the kernel below a system call) are passed
over, so a copy is charged to whoever asked for it. Interrupts and faults taken on the
reactor are their own row; samples of other threads and processes on core 0 too.
"""
import collections
import json
import os
import re
import socket
import statistics
import sys
import time

STAGES = [
    "ring pop",
    "translation",
    "request parsing",
    "SCSI layer",
    "bdev submit",
    "bdev work",
    "completion",
    "used-ring update",
    "notification",
    "poll loop",
    "unattributed",
    "kernel (irq, faults)",
    "other threads/tasks",
    "perf itself",
]

# Ferry: Rust paths (demangled, inlined frames included). Per frame, the first matching rule
# wins; frames are tried from the leaf out.
FERRY = [
    ("notification", r"vhost::ring::Vring::(signal|send_signal|flush_signal|notifications_on|notifications_off)"
                     r"|vhost::split::SplitRing::(needs_notification|notifications_on|notifications_off)"
                     r"|vhost::packed::\w+::(needs_notification|notifications_)|Notifier.*::notify|EventFd.*::write"),
    ("used-ring update", r"vhost::ring::Vring::complete|vhost::split::SplitRing::add_used|vhost::packed::\w+::complete"
                         r"|vhost::inflight\w*::.*(before_used|after_used)|vhost::dirty_log::"),
    ("ring pop", r"vhost::ring::Vring::(pop|pop_unchecked)|vhost::split::SplitRing::(pop|walk|avail_u16|avail_idx)"
                 r"|vhost::packed::\w+::(pop|resume)|vhost::inflight\w*::.*fetched|vhost::ring::Chain::"),
    ("translation", r"vhost::memory::GuestMemory::|vhost::guest_buf::(translate|pieces)|vhost::blk::add_iovs"
                    r"|BdevIo::push_iov|ScsiTask::push_iov|vhost::split::resolve"),
    ("completion", r"BdevIo::(complete|run_callback|fail)\b|bdev::io::drain_completions|ensure_completion_poller"
                   r"|ChannelInner::account|bdev::stats::|ChannelLocks::uncount"
                   r"|vhost::blk::BlkQueue::(on_complete|finish_now)|vhost::blk::BlkQueue::new::\{\{closure\}\}"
                   r"|vhost::scsi::request::\w+::on_task_done|vhost::scsi::request::\w+::start::\{\{closure\}\}"
                   r"|ScsiTask::(complete|finish|done)"),
    ("bdev submit", r"Backend>::supports|vhost::blk::BlkQueue::submit|qos::\w+::Gate.*::admit|qos::gate::"
                    r"|bdev::channel::|bdev::qos::|ChannelLocks::(blocks|count|enqueue)|bdev::device::Bdev::"),
    ("bdev work", r"bdev::modules::|bdev::buf::|BdevIo::(zero_iovs|copy_to_iovs|copy_from_iovs)"),
    ("request parsing", r"vhost::blk::BlkQueue::(handle_chain|range|take_io)|vhost::guest_buf::copy_from_guest"
                        r"|BdevIo::(prepare|clear_iovs|new)|vhost::scsi::request::\w+::handle_chain|vhost::scsi::decode_lun"),
    ("SCSI layer", r"ferry::scsi::|vhost::scsi::"),
    ("poll loop", r"ferry::framework::|vhost::device::QueueHandle|ServedQueue>::poll|vhost::blk::BlkQueue::poll"
                  r"|std::sync::mpmc::|crossbeam"),
]

# SPDK v26.05: C functions of lib/vhost, lib/bdev, lib/scsi, module/bdev/{malloc,null},
# lib/accel, lib/thread, lib/event and DPDK's rte_vhost (linked in statically).
SPDK = [
    ("notification", r"^vhost_session_vq_used_signal$|^vhost_vq_used_signal$|^rte_vhost_vring_call"
                     r"|^vhost_vq_event_is_suppressed$|^eventfd_write|^check_session_vq_io_stats$"
                     r"|^session_vq_io_stats_update$|^vhost_session_used_signal$"),
    ("used-ring update", r"^vhost_vq_used_ring_enqueue$|^rte_vhost_set_last_inflight_io_split$"
                         r"|^rte_vhost_clr_inflight_desc_split$|^vhost_log_|^vhost_vq_packed_ring_enqueue$"),
    ("ring pop", r"^vhost_vq_avail_ring_get$|^vhost_vq_get_desc|^rte_vhost_set_inflight_desc_split$"
                 r"|^vhost_vring_desc_get_next$|^vhost_vq_packed_ring_is_avail$|^process_vq$|^process_packed_vq$"
                 r"|^submit_inflight_desc$|^process_requestq$"),
    ("translation", r"^vhost_vring_desc_to_iov$|^vhost_vring_desc_payload_to_iov$|^vhost_gpa_to_vva$"
                    r"|^rte_vhost_va_from_guest_pa$|^blk_iovs_split_queue_setup$|^blk_iovs_packed_queue_setup$"
                    r"|^vhost_vring_packed_desc_to_iov$|^task_data_setup$|^rte_vhost_gpa_to_vva$|^gpa_to_vva$"),
    ("completion", r"^spdk_bdev_io_complete$|^bdev_io_complete|^_bdev_io_complete|^spdk_bdev_free_io$"
                   r"|^blk_request_complete_cb$|^blk_request_finish$|^vhost_user_blk_request_finish$"
                   r"|^vhost_scsi_task_cpl$|^vhost_scsi_task_put$|^submit_completion$|^bdev_io_put"
                   r"|^msg_queue_run_batch$|^spdk_ring_dequeue$|^spdk_thread_send_msg$|^bdev_io_decrement_outstanding"
                   r"|^bdev_io_update_io_stat$|^bdev_io_stat_add|^spdk_scsi_lun_complete_task$|^scsi_lun_complete_task$"
                   r"|^bdev_scsi_task_complete_cmd$|^spdk_scsi_task_put$|^scsi_task_put$|^_bdev_io_handle_no_mem"
                   r"|^malloc_done$|^_bdev_malloc_submit.*done|^bdev_malloc_done|^accel_.*complete|^spdk_accel_task_complete$"
                   r"|^_accel_.*complete|^accel_sequence_complete|^accel_process_sequence"),
    ("bdev submit", r"^spdk_bdev_readv|^spdk_bdev_writev|^spdk_bdev_read|^spdk_bdev_write|^bdev_readv_blocks"
                    r"|^bdev_writev_blocks|^bdev_io_submit|^_bdev_io_submit|^bdev_io_do_submit|^bdev_io_init$"
                    r"|^bdev_channel_get_io$|^bdev_io_should_split$|^bdev_bytes_to_blocks$|^spdk_bdev_desc_get_bdev$"
                    r"|^bdev_io_valid|^bdev_submit_request$|^_bdev_io_submit_ext$|^bdev_io_increment_outstanding"
                    r"|^spdk_bdev_io_type_supported$|^bdev_.*_io_type_supported$|^bdev_io_type_supported"),
    ("bdev work", r"^bdev_null_|^null_io_poll$|^bdev_malloc_|^malloc_|^_sw_accel|^sw_accel|^spdk_accel_submit"
                  r"|^accel_|^_accel_|^spdk_accel_|^spdk_ioviter|^spdk_copy_iovs"),
    ("request parsing", r"^virtio_blk_process_request$|^process_blk_task$|^blk_task_init$|^vhost_user_blk_"
                        r"|^process_request$|^process_scsi_task$|^task_submit$|^vhost_scsi_task_init$"
                        r"|^spdk_scsi_task_construct$|^scsi_task_construct|^get_scsi_task|^vhost_scsi_"),
    ("SCSI layer", r"^spdk_scsi_|^scsi_|^bdev_scsi_|^_scsi_"),
    ("poll loop", r"^reactor_|^_reactor_run$|^spdk_thread_poll$|^thread_poll$|^thread_execute_poller$"
                  r"|^thread_execute_timed_poller$|^_vdev_vq_worker$|^vdev_worker$|^vdev_vq_worker$|^vdev_mgmt_worker$"
                  r"|^spdk_thread_|^event_queue_run_batch$|^spdk_interrupt_mode_is_enabled$"
                  r"|^thread_update_stats$|^thread_run_pp_handlers$|^spdk_poller_|^poller_"),
]

# Clock reads are charged to whoever reads the clock (a poller's timing, an I/O's submit tick).
PASS_OVER = r"framework::ticks::|^spdk_get_ticks$|^rte_rdtsc|^rte_get_tsc_cycles$|^rte_get_timer_cycles$"

RULES = {
    "ferry": [(None, re.compile(PASS_OVER))] + [(s, re.compile(r)) for s, r in FERRY],
    "spdk": [(None, re.compile(PASS_OVER))] + [(s, re.compile(r)) for s, r in SPDK],
}
KERNEL_INTERRUPT = re.compile(r"asm_sysvec|asm_common_interrupt|irqentry|sysvec_|__irq_exit|handle_softirqs|asm_exc_")
FRAME = re.compile(r"^\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")


def rpc_call(path, method, params=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        req["params"] = params
    s.sendall(json.dumps(req).encode())
    buf, dec = b"", json.JSONDecoder()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise SystemExit(f"{method}: connection closed before a whole reply")
        buf += chunk
        try:
            obj, _ = dec.raw_decode(buf.decode())
            break
        except ValueError:
            continue
    s.close()
    if "error" in obj:
        raise SystemExit(f"{method}: {obj['error']}")
    return obj["result"]


def cmd_rpc(sock, what):
    if what == "reads":
        r = rpc_call(sock, "bdev_get_iostat")
        print(sum(b["num_read_ops"] for b in r["bdevs"] if b["name"] == "Bdev0"))
    elif what == "threads":
        r = rpc_call(sock, "thread_get_stats")
        print(json.dumps({"tick_rate": r["tick_rate"],
                          "threads": [{"name": t["name"], "busy": t["busy"], "idle": t["idle"]} for t in r["threads"]]},
                         separators=(",", ":")))
    else:
        raise SystemExit(f"unknown rpc look-up {what}")


def oncpu(pid, thread):
    """Nanoseconds thread `thread` of `pid` has run so far (its schedstat)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != thread:
                    continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                return int(f.read().split()[0])
        except FileNotFoundError:
            continue
    raise SystemExit(f"no thread {thread} in process {pid}")


def syscw(pid):
    """write(2)-family system calls the process made so far: eventfd kicks and interrupts."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("syscw:"))


def figures(tsock, csock, tpid, cpid):
    reads = sum(b["num_read_ops"] for b in rpc_call(tsock, "bdev_get_iostat")["bdevs"] if b["name"] == "Bdev0")
    out = {"ns": time.monotonic_ns(), "reads": reads,
           "target_oncpu": oncpu(tpid, "reactor_0"), "client_oncpu": oncpu(cpid, "reactor_1"),
           "target_syscw": syscw(tpid), "client_syscw": syscw(cpid)}
    for who, sock in (("target_threads", tsock), ("client_threads", csock)):
        r = rpc_call(sock, "thread_get_stats")
        out[who] = {"tick_rate": r["tick_rate"],
                    "threads": [{"name": t["name"], "busy": t["busy"], "idle": t["idle"]} for t in r["threads"]]}
    return out


def cmd_monitor(tsock, csock, tpid, cpid, secs, out):
    """One process for the whole window, so no interpreter starts inside it."""
    before = figures(tsock, csock, tpid, cpid)
    time.sleep(float(secs))
    after = figures(tsock, csock, tpid, cpid)
    with open(out, "w") as f:
        json.dump({"before": before, "after": after}, f)


def cmd_iops():
    for line in sys.stdin:
        m = re.match(r"\s*Total\s*:\s*([0-9.]+)", line.replace("\r", ""))
        if m:
            print(int(float(m.group(1))))
            return
    raise SystemExit("no Total line in bdevperf output")


def samples(path):
    """Yields (comm, pid, frames) with frames [(name, dso)] from the leaf out."""
    comm = pid = None
    frames = []
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if comm is not None:
                    yield comm, pid, frames
                comm, frames = None, []
                continue
            if not line[0].isspace():
                if comm is not None:
                    yield comm, pid, frames
                head = line.split()
                # comm may contain spaces: pid/tid is the last field
                comm = " ".join(head[:-1])
                pid = int(head[-1].split("/")[0])
                frames = []
                continue
            m = FRAME.match(line)
            if m:
                name, dso = m.group(2), m.group(3)
                frames.append((re.sub(r"\+0x[0-9a-f]+$", "", name), dso))
    if comm is not None:
        yield comm, pid, frames


def classify(who, frames):
    rules = RULES[who]
    for name, dso in frames:
        if dso == "[kernel.kallsyms]":
            if KERNEL_INTERRUPT.search(name):
                return "kernel (irq, faults)", name
            continue
        for stage, rx in rules:
            if rx.search(name):
                if stage is None:
                    break
                return stage, name
    leaf = next((n for n, d in frames if d != "[kernel.kallsyms]"), frames[0][0] if frames else "?")
    return "unattributed", leaf


def read_window(d):
    with open(os.path.join(d, "window.json")) as f:
        w = json.load(f)
    return w["before"], w["after"]


def oncpu_shares(d):
    """The share of the window the target's and the client's reactor threads were on a CPU."""
    before, after = read_window(d)
    window = after["ns"] - before["ns"]
    return ((after["target_oncpu"] - before["target_oncpu"]) / window,
            (after["client_oncpu"] - before["client_oncpu"]) / window)


def cmd_stolen(d, max_pct):
    target, client = oncpu_shares(d)
    print(f"==> on a CPU during the window: target {100 * target:.1f}%, client {100 * client:.1f}%", file=sys.stderr)
    if min(target, client) < 1 - float(max_pct) / 100:
        sys.exit(1)


def idle_share(before, after):
    """Idle ticks / all ticks over the window, summed over the threads (one core's)."""
    b = {t["name"]: t for t in before["threads"]}
    busy = idle = 0
    for t in after["threads"]:
        p = b.get(t["name"], {"busy": 0, "idle": 0})
        busy += t["busy"] - p["busy"]
        idle += t["idle"] - p["idle"]
    return idle / max(1, busy + idle)


def cmd_attribute(who, pid, d):
    pid = int(pid)
    counts = collections.Counter()
    by_frame = collections.defaultdict(collections.Counter)
    total = 0
    with open(os.path.join(d, "comms.txt"), errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 2 or int(fields[-1]) == pid:
                continue
            comm = " ".join(fields[:-1])
            stage = "perf itself" if comm == "perf" else "other threads/tasks"
            total += 1
            counts[stage] += 1
            by_frame[stage][comm] += 1
    for comm, spid, frames in samples(os.path.join(d, "script.txt")):
        total += 1
        if comm != "reactor_0":
            stage, name = "other threads/tasks", f"{os.path.basename(d).split('-')[0]}:{comm}"
        else:
            stage, name = classify(who, frames)
        counts[stage] += 1
        by_frame[stage][name] += 1
    before, after = read_window(d)
    stat = {}
    with open(os.path.join(d, "stat.csv")) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[2]:
                stat[parts[2]] = parts[0]
    result = {
        "case": os.path.basename(d),
        "samples": total,
        "counts": dict(counts),
        "top": {s: c.most_common(8) for s, c in by_frame.items()},
        "window_ns": after["ns"] - before["ns"],
        "ios": after["reads"] - before["reads"],
        "target_idle": idle_share(before["target_threads"], after["target_threads"]),
        "client_idle": idle_share(before["client_threads"], after["client_threads"]),
        "client_iops": int(open(os.path.join(d, "client_iops")).read()),
        "oncpu": oncpu_shares(d),
        "target_writes_per_io": (after["target_syscw"] - before["target_syscw"]) / max(1, after["reads"] - before["reads"]),
        "client_writes_per_io": (after["client_syscw"] - before["client_syscw"]) / max(1, after["reads"] - before["reads"]),
        "stat": stat,
    }
    print(json.dumps(result))


def cmd_table(secs, freq, dirs):
    res = [json.load(open(os.path.join(d, "result.json"))) for d in dirs]
    md = os.environ.get("FERRY_STAGES_MD") == "1"

    def label(r):
        who, dev, bdev, qd = r["case"].split("-")
        return f"{who} {dev} {bdev} QD{qd}"

    rows = []
    for r in res:
        per_io = r["window_ns"] / max(1, r["ios"])
        ns = {s: r["counts"].get(s, 0) / max(1, r["samples"]) * per_io for s in STAGES}
        rows.append((label(r), per_io, ns, r))
    heads = [x[0] for x in rows]
    print(f"4 KiB randread, target core 0 (profiled {secs} s at {freq} Hz), SPDK bdevperf client on core 1")
    print("ns per I/O by stage = share of core-0 samples x window ns / I/Os in the window")
    lines = [["stage (ns per I/O)"] + heads]
    for s in STAGES:
        if all(x[2][s] < 0.5 for x in rows):
            continue
        lines.append([s] + [f"{x[2][s]:.0f}" for x in rows])
    lines.append(["total (core-0 ns per I/O)"] + [f"{x[1]:.0f}" for x in rows])
    lines.append(["IOPS in the window (target's count)"] + [f"{x[3]['ios'] * 1e9 / x[3]['window_ns']:,.0f}" for x in rows])
    lines.append(["IOPS, bdevperf (whole run)"] + [f"{x[3]['client_iops']:,}" for x in rows])
    lines.append(["target idle (empty polls) %"] + [f"{100 * x[3]['target_idle']:.1f}" for x in rows])
    lines.append(["client idle (empty polls) %"] + [f"{100 * x[3]['client_idle']:.1f}" for x in rows])
    lines.append(["target busy ns per I/O (total x non-idle)"] + [f"{x[1] * (1 - x[3]['target_idle']):.0f}" for x in rows])
    lines.append(["client busy ns per I/O (its core)"]
                 + [f"{x[3]['window_ns'] * (1 - x[3]['client_idle']) / max(1, x[3]['ios']):.0f}" for x in rows])
    lines.append(["target writes (call eventfd) per I/O"] + [f"{x[3]['target_writes_per_io']:.2f}" for x in rows])
    lines.append(["client writes (kick eventfd) per I/O"] + [f"{x[3]['client_writes_per_io']:.2f}" for x in rows])
    lines.append(["target / client reactor on a CPU %"]
                 + [f"{100 * x[3]['oncpu'][0]:.0f} / {100 * x[3]['oncpu'][1]:.0f}" for x in rows])
    lines.append(["core-0 samples"] + [str(x[3]["samples"]) for x in rows])
    lines.append(["core-0 context switches"] + [x[3]["stat"].get("context-switches", "?") for x in rows])
    lines.append(["cycles (perf stat)"] + [x[3]["stat"].get("cycles", "?") for x in rows])
    if md:
        print("| " + " | ".join(lines[0]) + " |")
        print("|---" + "|---:" * len(heads) + "|")
        for ln in lines[1:]:
            print("| " + " | ".join(ln) + " |")
    else:
        w0 = max(len(ln[0]) for ln in lines)
        ws = [max(len(ln[i + 1]) for ln in lines) for i in range(len(heads))]
        for ln in lines:
            print(ln[0].ljust(w0) + "".join(v.rjust(w + 2) for v, w in zip(ln[1:], ws)))
    if os.environ.get("FERRY_STAGES_TOP") == "1":
        for lab, _, _, r in rows:
            print(f"\n{lab}: top frames per stage (samples)")
            for s in STAGES:
                if s in r["top"]:
                    print(f"  {s}: " + "; ".join(f"{n} {c}" for n, c in r["top"][s]))


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "rpc":
        cmd_rpc(*args)
    elif cmd == "iops":
        cmd_iops()
    elif cmd == "attribute":
        cmd_attribute(*args)
    elif cmd == "monitor":
        cmd_monitor(*args)
    elif cmd == "stolen":
        cmd_stolen(*args)
    elif cmd == "table":
        cmd_table(args[0], args[1], args[2:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
