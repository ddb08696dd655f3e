#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets to fuzz/corpus/<target>/ (committed; rerun
after changing an input format in src/fuzz_api/). Each seed is a small, meaningful input:
valid rings, real CDBs, JSON-RPC requests, a vhost-user handshake that starts a queue."""
import json, os, struct, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fuzz", "corpus")
NEXT, WRITE, INDIRECT, AVAIL, USED = 1, 2, 4, 1 << 7, 1 << 15


def put(img, at, data):
    if len(img) < at + len(data):
        img.extend(b"\0" * (at + len(data) - len(img)))
    img[at:at + len(data)] = data


def seed(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))


# Ring images start at guest address 0x1000 (offset 0 here).
def split_seed(name, exp, next_avail, heads, chains, published=None, indirect=None):
    size = 1 << exp
    avail = 16 * size
    img = bytearray()
    for i, (addr, ln, flags, nxt) in chains.items():
        put(img, 16 * i, struct.pack("<QIHH", addr, ln, flags, nxt))
    for j, h in enumerate(heads):
        put(img, avail + 4 + 2 * ((next_avail + j) % size), struct.pack("<H", h))
    idx = (next_avail + (len(heads) if published is None else published)) & 0xFFFF
    put(img, avail + 2, struct.pack("<H", idx))
    used = (avail + 0x1000 + 6 + 2 * size + 3) & ~3
    put(img, used - 0x1000 + 8 * size + 6, b"\0")
    if indirect:
        at, entries = indirect
        for k, (addr, ln, flags, nxt) in enumerate(entries):
            put(img, at - 0x1000 + 16 * k, struct.pack("<QIHH", addr, ln, flags, nxt))
    head = struct.pack("<BBHH", exp, 0, next_avail, 0) + b"\0" * 12 + struct.pack("<IIII", 0, 1, 513, 4096)
    seed("split_ring", name, head + img)


split_seed("blk-and-indirect", 3, 0, [0, 2],
           {0: (0x4000, 16, NEXT, 1), 1: (0x5000, 1, WRITE, 0), 2: (0x1400, 48, INDIRECT, 0)},
           indirect=(0x1400, [(0x4000, 16, NEXT, 1), (0x6000, 512, NEXT | WRITE, 2), (0x5000, 1, WRITE, 0)]))
split_seed("wrapped-index", 2, 0xFFFE, [1, 0, 3],
           {0: (0x4000, 8, 0, 0), 1: (0x4100, 8, WRITE, 0), 3: (0x4200, 8, NEXT, 2), 2: (0x4300, 8, WRITE, 0)})
split_seed("loop", 3, 0, [0], {0: (0x4000, 16, NEXT, 1), 1: (0x5000, 16, NEXT, 0)})
split_seed("broken-index", 3, 5, [0], {0: (0x4000, 16, 0, 0)}, published=40)


def packed_seed(name, size, descs, indirect=None):
    img = bytearray()
    for i, (addr, ln, ident, flags) in enumerate(descs):
        put(img, 16 * i, struct.pack("<QIHH", addr, ln, ident, flags))
    if indirect:
        at, entries = indirect
        for k, (addr, ln, ident, flags) in enumerate(entries):
            put(img, at - 0x1000 + 16 * k, struct.pack("<QIHH", addr, ln, ident, flags))
    put(img, 16 * size, b"\0")
    head = struct.pack("<HIB", size, 0, 0) + struct.pack("<IIII", 1, 0, 512, 7) + bytes(range(16))
    seed("packed_ring", name, head + img)


packed_seed("blk-and-indirect", 4, [
    (0x4000, 16, 9, NEXT | AVAIL), (0x5000, 1, 0, WRITE | AVAIL), (0x1400, 32, 2, INDIRECT | AVAIL)],
    indirect=(0x1400, [(0x4000, 16, 0, 0), (0x5000, 1, 0, WRITE)]))
packed_seed("wrap", 2, [(0x4000, 16, 1, AVAIL), (0x4100, 16, 0, AVAIL)])


def cmd(cdb, flags=0, buf=0, data=b""):
    return struct.pack("<BBH", len(cdb) - 1, flags, buf) + bytes(cdb) + data


NONE, OUT, IN = 0, 1, 2
scsi = {
    "inquiry-and-capacity": cmd([0x00] * 6) + cmd([0x12, 0, 0, 0, 96, 0], IN, 96)
    + cmd([0x12, 1, 0x83, 0, 255, 0], IN, 255) + cmd([0x25] + [0] * 9, IN, 8)
    + cmd([0x9E, 0x10] + [0] * 11 + [32, 0, 0], IN, 32) + cmd([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], IN, 64),
    "read-write": cmd([0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], OUT, 512, bytes(range(256)) * 2)
    + cmd([0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], IN | 8, 512) + cmd([0x88] + [0] * 8 + [0, 0, 0, 2, 0, 0], IN, 1024)
    + cmd([0x35] + [0] * 9) + cmd([0x89] + [0] * 12 + [1, 0, 0], OUT, 1024, b"\0" * 1024),
    "mode-and-sense": cmd([0x1A, 0, 0x3F, 0, 255, 0], IN, 255) + cmd([0x5A, 0, 0x08, 0, 0, 0, 0, 0, 255, 0], IN, 255)
    + cmd([0x03, 0, 0, 0, 18, 0], IN, 18) + cmd([0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0], IN, 512)
    + cmd([0x1B, 0, 0, 0, 1, 0]) + cmd([0x01, 2, 3]),
    "reservations": cmd([0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0], OUT, 24, b"\0" * 8 + b"\x11" * 8 + b"\0" * 8)
    + cmd([0x5F, 1, 0x03, 0, 0, 0, 0, 0, 24, 0], OUT, 24, b"\x11" * 8 + b"\0" * 16)
    + cmd([0x5E, 0, 0, 0, 0, 0, 0, 0, 255, 0], IN | 4, 255) + cmd([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], OUT | 4, 512, b"x")
    + cmd([0x16, 0, 0, 0, 0, 0]) + cmd([0x17, 0, 0, 0, 0, 0]),
    "unmap-and-write-same": cmd([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], OUT, 24,
                                struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 0, 8))
    + cmd([0x93, 0x08] + [0] * 8 + [0, 0, 0, 4, 0, 0], OUT, 512, b"\xab" * 512),
}
for name, data in scsi.items():
    seed("scsi", name, data)


def rpc(name, seedbyte, *requests):
    seed("rpc", name, bytes([seedbyte]) + b"".join(r.encode() if isinstance(r, str) else json.dumps(r).encode() for r in requests))


rpc("version", 3, {"jsonrpc": "2.0", "id": 1, "method": "spdk_get_version"})
rpc("batch", 7, [{"jsonrpc": "2.0", "id": 1, "method": "rpc_get_methods"},
                 {"jsonrpc": "2.0", "method": "spdk_get_version"}, {"jsonrpc": "2.0", "id": "x", "method": "nope"}])
rpc("params", 1, {"jsonrpc": "2.0", "id": 2, "method": "bdev_get_bdevs", "params": {"name": "Malloc0"}},
    "\n", {"jsonrpc": "2.0", "id": 3, "method": "vhost_get_controllers", "params": {"name": "vhost.0"}})
rpc("garbage", 0, {"jsonrpc": "2.0", "id": 4, "method": "log_get_flags"}, "{\"jsonrpc\": ]")


# vhost-user: a QEMU-like handshake that starts queue 0 on a ring with one virtio-blk read.
def msg(req, payload=b"", flags=1):
    return struct.pack("<III", req, flags, len(payload)) + payload


def vhost_seed(name, packed=False, add_mem_reg=False):
    va = 0x7F0000000000
    desc, avail, used = 0x100, 0x180, 0x1C0
    img = bytearray()
    if packed:
        put(img, desc, struct.pack("<QIHH", 0x300, 16, 0, NEXT | AVAIL))
        put(img, desc + 16, struct.pack("<QIHH", 0x400, 512, 0, NEXT | WRITE | AVAIL))
        put(img, desc + 32, struct.pack("<QIHH", 0x600, 1, 5, WRITE | AVAIL))
    else:
        put(img, desc, struct.pack("<QIHH", 0x300, 16, NEXT, 1))
        put(img, desc + 16, struct.pack("<QIHH", 0x400, 512, NEXT | WRITE, 2))
        put(img, desc + 32, struct.pack("<QIHH", 0x600, 1, WRITE, 0))
        put(img, avail, struct.pack("<HHH", 0, 1, 0))
    put(img, 0x300, struct.pack("<IIQ", 0, 0, 0))  # VIRTIO_BLK_T_IN, sector 0
    put(img, 0x600, b"\xff")
    features = (1 << 32) | (1 << 30) | ((1 << 34) if packed else 0)
    protocol = 0x1 | 0x8 | ((1 << 15) if add_mem_reg else 0)
    region = struct.pack("<QQQQ", 0, 1 << 20, va, 0)
    s = msg(1) + msg(2, struct.pack("<Q", features)) + msg(15) + msg(16, struct.pack("<Q", protocol)) + msg(17) + msg(3)
    s += msg(24, struct.pack("<III", 0, 60, 0) + b"\0" * 60)
    if add_mem_reg:
        s += msg(36) + msg(37, struct.pack("<Q", 0) + region)
    else:
        s += msg(5, struct.pack("<II", 1, 0) + region)
    s += msg(8, struct.pack("<II", 0, 8)) + msg(9, struct.pack("<IIQQQQ", 0, 0, va + desc, va + used, va + avail, 0))
    s += msg(10, struct.pack("<II", 0, 0)) + msg(13, struct.pack("<Q", 0)) + msg(12, struct.pack("<Q", 0))
    # The stream ends with the queue running: the harness lets it poll, then tears down.
    s += msg(18, struct.pack("<II", 0, 1), flags=1 | 8)
    seed("vhost_user", name, bytes([1 if packed else 0]) + struct.pack("<H", len(img)) + img + s)


vhost_seed("blk-split-handshake")
vhost_seed("blk-packed-handshake", packed=True)
vhost_seed("blk-add-mem-reg", add_mem_reg=True)
# The metrics endpoint: one byte choosing the read sizes, then a connection's bytes.
def http(name, seedbyte, text):
    seed("http", name, bytes([seedbyte]) + text)


http("prometheus", 5, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nUser-Agent: Prometheus/2.42.0\r\n"
     b"Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n"
     b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n")
http("curl-head", 1, b"HEAD /metrics?x=1 HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n")
http("absolute-form-lf", 9, b"GET http://h:1/metrics HTTP/1.0\n\n")
http("refused", 3, b"POST / HTTP/2.0\r\nHost: a\r\nHost : b\r\n folded\r\nContent-Length: 3\r\n\r\nabc")
http("pipelined", 0, b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\nGET /metrics HTTP/1.1\r\nHost: h\r\n\r\n")
# iSCSI login and text: records of [flags, version-min, options, ITT, length (u16 LE), data],
# login requests until the login ends, then text requests (src/fuzz_api/iscsi.rs). Options:
# 1 wrong opcode, 2 flip the ISID (login) / reuse the last TTT (text), 4 answer the CHAP
# challenge, 8 ask for mutual CHAP.
def kv(*pairs):
    return b"".join(k.encode() + b"=" + v.encode() + b"\0" for k, v in pairs)


def rec(flags, data=b"", opts=0, itt=1, vmin=0):
    return bytes([flags, vmin, opts, itt & 0xff]) + struct.pack("<H", len(data)) + data


INI = ("InitiatorName", "iqn.1993-08.org.debian:01:fuzz")
OPS = kv(("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "262144"),
         ("MaxBurstLength", "1048576"), ("FirstBurstLength", "65536"), ("ImmediateData", "Yes"),
         ("InitialR2T", "No"), ("ErrorRecoveryLevel", "0"), ("IFMarker", "No"), ("X-com.example", "1"))
SEND_ALL = rec(0x80, kv(("SendTargets", "All")), itt=9)
MORE = rec(0x80, opts=2, itt=9)


def node(n):
    return ("TargetName", "iqn.2016-06.io.spdk:fuzz-" + n)


seed("iscsi_login", "none-013-sendtargets", rec(0x81, kv(INI, ("SessionType", "Normal"), node("none"),
     ("AuthMethod", "None"))) + rec(0x87, OPS, itt=2) + SEND_ALL + MORE + MORE + MORE + MORE)
seed("iscsi_login", "chap-md5", rec(0x00, kv(INI, node("chap"), ("AuthMethod", "CHAP,None")))
     + rec(0x00, kv(("CHAP_A", "5")), itt=2) + rec(0x81, opts=4, itt=3) + rec(0x87, OPS, itt=4)
     + rec(0x80, kv(("SendTargets", "")), itt=5))
seed("iscsi_login", "chap-mutual-sha256", rec(0x00, kv(INI, node("mutual"), ("AuthMethod", "CHAP")))
     + rec(0x00, kv(("CHAP_A", "7,5")), itt=2) + rec(0x83, opts=12, itt=3) + SEND_ALL)
seed("iscsi_login", "discovery-13", rec(0x87, kv(INI, ("SessionType", "Discovery"),
     ("MaxRecvDataSegmentLength", "512"))) + SEND_ALL + MORE + MORE
     + rec(0x40, b"SendTar", itt=10) + rec(0x80, b"gets=All\0", opts=2, itt=10) + MORE)
seed("iscsi_login", "digest-crc32c", rec(0x87, kv(INI, node("digest"), ("HeaderDigest", "CRC32C,None"),
     ("DataDigest", "CRC32C"))) + rec(0x80, kv(("SendTargets", "Alle"), ("MaxBurstLength", "1")), itt=3))
seed("iscsi_login", "continued-login", rec(0x44, kv(INI, node("none"))[:20])
     + rec(0x87, kv(INI, node("none"))[20:], itt=1) + rec(0xc0, kv(("SendTargets", "All"))))
seed("iscsi_login", "refusals", rec(0x87, kv(INI, node("none")) + b"".join(
     kv(("X-flood%d" % i, "1")) for i in range(70))) + rec(0x87, kv(INI), vmin=1))

print("seeds written under", os.path.normpath(ROOT), file=sys.stderr)

# iSCSI PDU framing: one flags byte (1 header digest, 2 data digest), a u16 LE segment limit
# in units of 16 bytes, then the stream (src/fuzz_api/iscsi_pdu.rs).
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return (crc ^ 0xFFFFFFFF).to_bytes(4, "little")


def pdu(opcode, data=b"", ahs=b"", hd=False, dd=False, cdb=b""):
    bhs = bytearray(48)
    bhs[0] = opcode
    bhs[1] = 0x80
    bhs[4] = len(ahs) // 4
    bhs[5:8] = len(data).to_bytes(3, "big")
    bhs[32:32 + len(cdb)] = cdb
    head = bytes(bhs) + ahs
    out = head + (crc32c(head) if hd else b"")
    body = data + bytes((4 - len(data) % 4) % 4)
    return out + body + (crc32c(body) if dd and data else b"")


EXT_CDB = struct.pack(">HBB", 17, 1, 0) + bytes(range(16))
seed("iscsi_pdu", "plain", bytes([0]) + struct.pack("<H", 512)
     + pdu(0x43, kv(INI)) + pdu(0x01, cdb=bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])) + pdu(0x05, bytes(512)))
seed("iscsi_pdu", "digests-extended-cdb", bytes([3]) + struct.pack("<H", 4096)
     + pdu(0x01, ahs=EXT_CDB, hd=True, dd=True, cdb=bytes([0x7f])) + pdu(0x00, b"ping", hd=True, dd=True))


# NVMe/TCP PDUs as a host sends them: a u16 LE in-capsule limit and a u16 LE MAXH2CDATA (both
# in units of 16 bytes), then the stream (src/fuzz_api/nvmf_tcp_pdu.rs).
def nvme_pdu(ptype, specific, data=b"", hd=False, dd=False, flags=0):
    hlen = 8 + len(specific)
    hend = hlen + (4 if hd else 0)
    flags |= (1 if hd else 0) | (2 if dd and data else 0)
    pdo = hend if data else 0
    plen = hend + len(data) + (4 if dd and data else 0)
    head = bytes([ptype, flags, hlen, pdo]) + struct.pack("<I", plen) + specific
    return head + (crc32c(head) if hd else b"") + data + (crc32c(data) if dd and data else b"")


def icreq(dgst):
    return nvme_pdu(0x00, struct.pack("<HBBI", 0, 0, dgst, 0) + bytes(112))


def nvme_cmd(opcode, cid, sgl_len, sgl_type, fctype=0, nsid=0):
    c = bytearray(64)
    c[0], c[1] = opcode, 0x40
    c[2:4] = struct.pack("<H", cid)
    c[4] = fctype
    if opcode != 0x7f:
        c[4:8] = struct.pack("<I", nsid)
    c[24:40] = struct.pack("<QI3xB", 0, sgl_len, sgl_type)
    return bytes(c)


def h2c(cid, ttag, off, data, last, **kw):
    return nvme_pdu(0x06, struct.pack("<HHII4x", cid, ttag, off, len(data)), data, flags=4 if last else 0, **kw)


CONNECT_DATA = bytes(256) + b"nqn.2016-06.io.spdk:cnode1".ljust(256, b"\0") + bytes(512)
seed("nvmf_tcp_pdu", "plain", struct.pack("<HH", 256, 512) + icreq(0)
     + nvme_pdu(0x04, nvme_cmd(0x7f, 1, 1024, 0x01, fctype=1), CONNECT_DATA)
     + nvme_pdu(0x04, nvme_cmd(0x01, 5, 8192, 0x5A, nsid=1))
     + h2c(5, 0, 0, bytes(4096), False) + h2c(5, 0, 4096, bytes(4096), True)
     + nvme_pdu(0x02, struct.pack("<HI10x", 1, 0), bytes(24)))
seed("nvmf_tcp_pdu", "digests", struct.pack("<HH", 256, 512) + icreq(3)
     + nvme_pdu(0x04, nvme_cmd(0x7f, 1, 1024, 0x01, fctype=1), CONNECT_DATA, hd=True, dd=True)
     + nvme_pdu(0x04, nvme_cmd(0x01, 2, 512, 0x01, nsid=1), bytes(range(256)) * 2, hd=True, dd=True)
     + nvme_pdu(0x04, nvme_cmd(0x01, 3, 1024, 0x5A, nsid=1), hd=True)
     + h2c(3, 0, 0, bytes(1024), True, hd=True, dd=True))



# NVMe commands on a connected controller: records of [flags (1 I/O queue, 2 two iovecs),
# buffer length u16 LE, 64-byte command (its CID replaced by the record's number), data for
# commands moving data to the controller] (src/fuzz_api/nvme_cmd.rs).
def sqe(opcode, nsid=0, cdw10=0, cdw11=0, cdw12=0, slba=None, fuse_=0, fctype=None):
    c = bytearray(64)
    c[0], c[1] = opcode, 0x40 | fuse_
    if fctype is not None:
        c[4] = fctype
    else:
        c[4:8] = struct.pack("<I", nsid)
    if slba is not None:
        c[40:48] = struct.pack("<Q", slba)
    else:
        c[40:48] = struct.pack("<II", cdw10, cdw11)
    c[48:52] = struct.pack("<I", cdw12)
    return bytes(c)


def nrec(command, buf=0, data=b"", io=False, split=False):
    return struct.pack("<BH", (1 if io else 0) | (2 if split else 0), buf) + command + data


def rw(opcode, lba, blocks, data=None, fuse_=0, split=False):
    c = sqe(opcode, 1, slba=lba, cdw12=blocks - 1, fuse_=fuse_)
    return nrec(c, blocks * 512, data if data is not None else b"", io=True, split=split)


def log_page(lid, length, nsid=0):
    numd = length // 4 - 1
    return nrec(sqe(0x02, nsid, cdw10=lid | (numd & 0xffff) << 16, cdw11=numd >> 16), length)


PATTERN = bytes(i * 7 % 251 for i in range(4096))
seed("nvme_cmd", "admin", nrec(sqe(0x06, cdw10=1), 4096) + nrec(sqe(0x06, 1, cdw10=0), 4096)
     + nrec(sqe(0x06, 0, cdw10=2), 4096) + nrec(sqe(0x06, 1, cdw10=3), 4096, split=True)
     + nrec(sqe(0x06, 0, cdw10=6), 4096)
     + log_page(0x01, 64) + log_page(0x02, 512, 0xffffffff) + log_page(0x04, 4096) + log_page(0x05, 4096)
     + nrec(sqe(0x0a, cdw10=0x07), 16) + nrec(sqe(0x09, cdw10=0x07, cdw11=3 | 3 << 16))
     + nrec(sqe(0x09, cdw10=0x0f, cdw11=60000)) + nrec(sqe(0x0a, cdw10=0x0f), 16)
     + nrec(sqe(0x09, cdw10=0x0b, cdw11=0x100)) + nrec(sqe(0x0a, cdw10=0x0b), 16)
     + nrec(sqe(0x18)) + nrec(sqe(0x0c)) + nrec(sqe(0x08, cdw10=0 | 17 << 16))
     + nrec(sqe(0x7f, fctype=0x04)[:44] + struct.pack("<I", 0x1c) + bytes(16)))  # Property Get CSTS
seed("nvme_cmd", "io", rw(0x01, 0, 8, PATTERN, split=True) + rw(0x02, 0, 8, split=True) + rw(0x05, 0, 8, PATTERN)
     + nrec(sqe(0x00, 1), io=True) + nrec(sqe(0x08, 1, slba=16, cdw12=15), io=True)
     + nrec(sqe(0x09, 1, cdw10=0, cdw11=4), 16, struct.pack("<IIQ", 0, 8, 32), io=True)
     + rw(0x02, 16, 1) + rw(0x02, 255, 1) + nrec(sqe(0x0c, 1, slba=0, cdw12=7), io=True))
seed("nvme_cmd", "fused", rw(0x01, 4, 1, PATTERN[:512]) + rw(0x05, 4, 1, PATTERN[:512], fuse_=1)
     + rw(0x01, 4, 1, PATTERN[512:1024], fuse_=2) + rw(0x02, 4, 1)
     + rw(0x05, 4, 1, PATTERN[:512], fuse_=1) + rw(0x01, 4, 1, PATTERN[:512], fuse_=2)
     + rw(0x05, 4, 1, PATTERN[512:1024], fuse_=1))
KEY = struct.pack("<Q", 0x1111111111111111)
seed("nvme_cmd", "reservations", nrec(sqe(0x0d, 1, cdw10=0), 16, bytes(8) + KEY, io=True)
     + nrec(sqe(0x11, 1, cdw10=1 << 8), 16, KEY + bytes(8), io=True)
     + nrec(sqe(0x0e, 1, cdw10=1023, cdw11=1), 4096, io=True) + rw(0x01, 0, 1, PATTERN[:512])
     + nrec(sqe(0x15, 1, cdw10=1 << 8), 8, KEY, io=True) + nrec(sqe(0x0d, 1, cdw10=1), 16, KEY + bytes(8), io=True))


# vfio-user: a client's message stream (src/fuzz_api/vfio_user.rs); DMA_MAPs get a 64 KiB
# memfd with them.
def vmsg(mid, command, payload=b"", flags=0):
    return struct.pack("<HHIII", mid, command, 16 + len(payload), flags, 0) + payload


def vversion(mid):
    caps = b'{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535}}'
    return vmsg(mid, 1, struct.pack("<HH", 0, 1) + caps + b"\0")


def vregion(mid, command, region, offset, data=b"", count=None, flags=0):
    n = len(data) if count is None else count
    return vmsg(mid, command, struct.pack("<QII", offset, region, n) + data, flags)


seed("vfio_user", "handshake",
     vversion(1) + vmsg(2, 4, struct.pack("<IIII", 16, 0, 0, 0))
     + vmsg(3, 5, struct.pack("<IIIIQQ", 32, 0, 7, 0, 0, 0)) + vmsg(4, 5, struct.pack("<IIIIQQ", 64, 0, 0, 0, 0, 0))
     + vmsg(5, 7, struct.pack("<IIII", 16, 0, 2, 0)) + vregion(6, 9, 7, 0, count=64)
     + vregion(7, 10, 7, 4, b"\x06\x04") + vmsg(8, 2, struct.pack("<IIQQQ", 32, 3, 0, 0, 0x10000))
     + vregion(9, 10, 0, 0x1000, struct.pack("<I", 5), flags=1 << 4) + vregion(10, 9, 0, 0x14, count=4)
     + vmsg(11, 3, struct.pack("<IIQQ", 24, 0, 0, 0x10000)) + vmsg(12, 13))
seed("vfio_user", "refusals",
     vmsg(1, 4, struct.pack("<IIII", 16, 0, 0, 0)) + vmsg(2, 1, struct.pack("<HH", 1, 0)) + vversion(3)
     + vmsg(4, 2, struct.pack("<IIQQQ", 32, 3, 0, 0x1001, 0x1000)) + vregion(5, 9, 42, 0, count=4)
     + vregion(6, 9, 7, 4094, count=4) + vmsg(7, 99) + vmsg(8, 8, struct.pack("<IIIII", 20, 0x24, 2, 7, 4))
     + vmsg(9, 3, struct.pack("<IIQQ", 24, 0, 0x5000, 0x1000)) + vversion(10))


# nvme_prp: PRP1/PRP2 as (page number, offset) u16 pairs, a u32 length, a write flag, then
# the memory image at guest address 0x10000 (src/fuzz_api/nvme_prp.rs).
def prp_seed(name, p1, p2, length, image):
    head = struct.pack("<HHHHIB", p1 >> 12, p1 & 0xfff, p2 >> 12, p2 & 0xfff, length, 1)
    seed("nvme_prp", name, head + bytes(image))


img = bytearray(0x8000)
put(img, 0x1000, struct.pack("<QQQ", 0x13000, 0x14000, 0x15000))
prp_seed("list", 0x12200, 0x11000, 0x3200, img)
prp_seed("two-pages", 0x12800, 0x13000, 0x1000, img)
chain = bytearray(0x4000)
put(chain, 0xff8, struct.pack("<Q", 0x10ff8))
prp_seed("self-chain", 0x12000, 0x10ff8, 0x3000, chain)
