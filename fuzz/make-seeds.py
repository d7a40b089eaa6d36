#!/usr/bin/env python3
"""Writes the committed seed corpus: fuzz/corpus/<target>/seed-<what>.

A few valid inputs per fuzz target, built from the formats' specifications
(docs/engine-formats.md, docs/peer-protocol.md, RFC 7143, SPC-4/SBC-3), so
the smoke run in CI starts from inputs that reach deep into each parser.
Each file starts with the target's control byte(s) where the target has
them (see the target's doc comment). Run it again after changing a format:

    python3 fuzz/make-seeds.py
"""

import base64
import json
import os
import shutil
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), reflected, as the crc32c crate computes it."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


SEEDS = {}


def seed(target: str, name: str, data: bytes) -> None:
    SEEDS.setdefault(target, []).append((name, data))


# --- cdb: even first byte = decode only; odd = execute on a 512 B x 256 LU:
# cdb length, cdb, expected data-in length (u16 BE), data-out.
def command(cdb: bytes, expected: int, data_out: bytes = b"") -> bytes:
    return bytes([1, len(cdb)]) + cdb + struct.pack(">H", expected) + data_out


seed("cdb", "parse-read10", bytes([0]) + bytes.fromhex("28000000000000000100"))
seed("cdb", "parse-write16", bytes([0]) + bytes.fromhex("8a000000000000000010000000080000"))
seed("cdb", "inquiry", command(bytes.fromhex("120000006000"), 0x60))
seed("cdb", "inquiry-vpd83", command(bytes.fromhex("12018300ff00"), 0xFF))
seed("cdb", "read-capacity16", command(bytes.fromhex("9e100000000000000000000000200000"), 32))
seed("cdb", "mode-sense6", command(bytes.fromhex("1a003f00ff00"), 0xFF))
seed("cdb", "report-luns", command(bytes.fromhex("a00000000000000001000000"), 256))
seed("cdb", "write10", command(bytes.fromhex("2a000000000800000100"), 0, bytes(range(256)) * 2))
seed("cdb", "read10", command(bytes.fromhex("28000000000800000100"), 512))
seed("cdb", "unmap", command(bytes.fromhex("420000000000000018" "00"), 0,
                             bytes.fromhex("0016001000000000") + struct.pack(">QI4x", 16, 8)))
seed("cdb", "pr-out-register", command(bytes.fromhex("5f000000000000001800"), 0,
                                       struct.pack(">QQ", 0, 0x1122334455667788) + bytes(8)))
seed("cdb", "pr-in-read-keys", command(bytes.fromhex("5e000000000000010000"), 256))
seed("cdb", "sync-cache10", command(bytes.fromhex("35000000000000000000"), 0))


# --- pdu: flags byte (bit 0-1: receive limit, 0x10 header digest, 0x20 data
# digest), then PDUs.
def bhs(opcode, flags, ahs=b"", data=b"", rest=b"") -> bytes:
    rest = rest.ljust(40, b"\0")
    return (bytes([opcode, flags, 0, 0, len(ahs) // 4]) + struct.pack(">I", len(data))[1:]
            + rest[:40])


def pdu(opcode, flags, data=b"", ahs=b"", rest=b"", hd=False, dd=False) -> bytes:
    head = bhs(opcode, flags, ahs, data, rest) + ahs
    out = head
    if hd:
        out += struct.pack("<I", crc32c(head))
    padded = data + bytes((4 - len(data) % 4) % 4)
    out += padded
    if dd and data:
        out += struct.pack("<I", crc32c(padded))
    return out


LOGIN_TEXT = (b"InitiatorName=iqn.1994-05.com.example:host1\0SessionType=Normal\0"
              b"TargetName=iqn.2026-11.io.depot:vm1\0AuthMethod=None\0")
isid = bytes.fromhex("80000000000100000000000100000000")  # ISID, TSIH, ITT 1
read10 = bytes.fromhex("28000000000800000100000000000000")
scsi_rest = bytes(8) + struct.pack(">III", 2, 512, 1) + struct.pack(">I", 0) + read10
seed("pdu", "login", bytes([1]) + pdu(0x43, 0x87, LOGIN_TEXT, rest=isid))
seed("pdu", "text-sendtargets", bytes([1]) + pdu(0x04 | 0x40, 0x80, b"SendTargets=All\0",
                                                   rest=bytes(8) + struct.pack(">II", 3, 0xFFFFFFFF)))
seed("pdu", "scsi-read-nop-logout", bytes([2])
     + pdu(0x01, 0xC1, rest=scsi_rest)
     + pdu(0x00 | 0x40, 0x80, b"ping", rest=bytes(8) + struct.pack(">II", 4, 0xFFFFFFFF))
     + pdu(0x06 | 0x40, 0x80, rest=bytes(8) + struct.pack(">I", 5)))
seed("pdu", "scsi-write-dataout-digests", bytes([0x32])
     + pdu(0x01, 0xA1, rest=bytes(8) + struct.pack(">III", 6, 1024, 2) + bytes(4)
           + bytes.fromhex("2a000000000800000200000000000000"), hd=True, dd=True)
     + pdu(0x05, 0x80, bytes(range(256)) * 4,
           rest=bytes(8) + struct.pack(">II", 6, 0xFFFFFFFF) + bytes(8) + struct.pack(">II", 0, 0),
           hd=True, dd=True))
ext_cdb = bytes.fromhex("7f0000000000001800") + bytes(23)  # a 32-byte variable-length CDB, tail
seed("pdu", "scsi-extended-cdb", bytes([1]) + pdu(
    0x01, 0xC1, ahs=struct.pack(">HB", len(ext_cdb[16:]) + 1, 1) + b"\0" + ext_cdb[16:],
    rest=bytes(8) + struct.pack(">III", 7, 0, 3) + bytes(4) + ext_cdb[:16]))

# --- login_text: a text data segment.
seed("login_text", "security", LOGIN_TEXT + b"AuthMethod=CHAP,None\0")
seed("login_text", "operational",
     b"HeaderDigest=CRC32C,None\0DataDigest=None\0MaxRecvDataSegmentLength=262144\0"
     b"MaxBurstLength=1048576\0FirstBurstLength=65536\0InitialR2T=No\0ImmediateData=Yes\0"
     b"MaxConnections=1\0DefaultTime2Wait=2\0DefaultTime2Retain=0\0MaxOutstandingR2T=1\0"
     b"DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0ErrorRecoveryLevel=0\0")
seed("login_text", "chap", b"CHAP_A=5\0CHAP_N=u\0CHAP_R=0x00112233445566778899aabbccddeeff\0"
     b"CHAP_I=3\0CHAP_C=0x0102030405060708\0")
seed("login_text", "sendtargets", b"SendTargets=All\0\0\0")

# --- chap: control byte (bit 0: answer correctly, bit 1: mutual credentials,
# bits 2-3: answer encoding), then the initiator's text.
seed("chap", "md5-one-way", b"\x01CHAP_A=5\0CHAP_N=alice\0")
seed("chap", "sha256-mutual", b"\x03CHAP_A=7\0CHAP_N=alice\0CHAP_I=3\0CHAP_C=0x0102030405060708\0")
seed("chap", "sha1-mutual-base64", b"\x0bCHAP_A=6\0CHAP_N=alice\0CHAP_I=9\0CHAP_C=0b"
     + base64.b64encode(bytes(range(1, 17))) + b"\0")
seed("chap", "wrong-response", b"\x00CHAP_A=5\0CHAP_N=alice\0CHAP_R=0x" + b"00" * 16 + b"\0")
seed("chap", "reflected", b"\x03CHAP_A=5\0CHAP_N=alice\0CHAP_I=7\0CHAP_C=0x" + b"5a" * 32 + b"\0")
seed("chap", "no-algorithm", b"\x01CHAP_A=99,1\0")


# --- peer_frame: split byte, then frames (u32 BE header length, u32 BE body
# length, JSON header, body).
def frame(head: dict, body: bytes = b"") -> bytes:
    h = json.dumps(head, separators=(",", ":")).encode()
    return struct.pack(">II", len(h), len(body)) + h + body


seed("peer_frame", "hello-welcome", b"\x00" + frame({"t": "hello", "router": "r1"})
     + frame({"t": "welcome", "router": "r2"}))
seed("peer_frame", "request-response", b"\x05" + frame(
    {"t": "request", "id": 1, "op": "handover.take", "msg": {"vdisk": "d1", "generation": 7}},
    bytes(range(64))) + frame({"t": "response", "id": 1, "msg": {"n": 1, "ok": True}}))
seed("peer_frame", "error", b"\x0f" + frame({"t": "error", "id": 2, "message": "refused"}))
seed("peer_frame", "partial", b"\x03" + frame({"t": "request", "id": 3, "op": "x"})[:-3])

# --- engine_formats: mode byte, then the bytes.
VOL, SEQ = 0x0123456789ABCDEF, 0x2A


def container_header(vol, seq) -> bytes:
    b = b"DEPOTSCO" + struct.pack("<HHIQQ", 1, 0, 4096, vol, seq)
    return b + struct.pack("<I", crc32c(b)) + bytes(28)


def tlog_header(vol, seq, gen) -> bytes:
    b = b"DEPOTTLG" + struct.pack("<HH4xQQI24x", 1, 0, vol, seq, gen)
    return b + struct.pack("<I", crc32c(b))


def tlog_record(cluster, loc=None) -> bytes:
    if loc is None:
        b = bytes([2, 0, 0, 0, 0, 0, 0, 0]) + struct.pack("<Q", cluster) + bytes(44)
    else:
        container, slot, crc, h = loc
        b = (bytes([1, 0, 0, 0]) + struct.pack("<IQQII", crc, cluster, container, slot, 4096)
             + h.to_bytes(16, "little") + bytes(12))
    return b + struct.pack("<I", crc32c(b))


def index_value(loc=None) -> bytes:
    if loc is None:
        return bytes([2]) + bytes(37)
    container, slot, crc, h = loc
    return bytes([1, 0]) + struct.pack("<IQII", crc, container, slot, 4096) + h.to_bytes(16, "little")


def checkpoint(vol, cut, entries) -> bytes:
    b = b"DEPOTCKP" + struct.pack("<H6xQQQ24x", 1, vol, cut, len(entries))
    for cluster, gen, loc in entries:
        b += struct.pack("<QI", cluster, gen) + index_value(loc)
    return b + struct.pack("<I", crc32c(b))


LOC = (3, 17, 0xDEADBEEF, 0x0123456789ABCDEF0011223344556677)
seed("engine_formats", "container-header", b"\x00" + container_header(VOL, SEQ))
seed("engine_formats", "tlog-header", b"\x01" + tlog_header(VOL, SEQ, 2))
seed("engine_formats", "tlog-record-map", b"\x02" + tlog_record(42, LOC))
seed("engine_formats", "tlog-record-unmap", b"\x02" + tlog_record(43))
seed("engine_formats", "index-value-map", b"\x03" + index_value(LOC))
seed("engine_formats", "index-value-unmap", b"\x03" + index_value())
seed("engine_formats", "checkpoint", b"\x04\x08" + checkpoint(VOL, 12, [
    (1, 1, LOC), (1, 2, None), (9, 1, (4, 0, 7, 1 << 100))]))
seed("engine_formats", "checkpoint-empty", b"\x04\x00" + checkpoint(VOL, 0, []))
seed("engine_formats", "tlog-file-torn", b"\x05" + tlog_header(VOL, SEQ, 1) + tlog_record(1, LOC)
     + tlog_record(2) + tlog_record(3, (4, 1, 9, 5)) + tlog_record(4)[:40])
seed("engine_formats", "index-key", b"\x06I" + struct.pack(">QQI", VOL, 77, 3))
seed("engine_formats", "object-key-tlog", b"\x07vol/0123456789abcdef/tlog/000000000000002a")
seed("engine_formats", "object-key-sco", b"\x07vol/0123456789ABCDEF/sco/0000000000000003")
seed("engine_formats", "object-key-ckpt", b"\x07vol/0000000000000001/ckpt/0000000000000003")
seed("engine_formats", "object-key-manifest", b"\x07vol/0000000000000001/manifest")
seed("engine_formats", "object-key-catalog", b"\x07catalog/web-01.disk")

# --- engine_manifest: JSON, as the engine writes it.
manifest = {
    "version": 1, "id": 7, "name": "web1-root", "size_bytes": 1 << 30, "block_size": 512,
    "created_unix": 1767225600, "template": False,
    "parent": {"id": 3, "name": "golden", "snapshot": "s1", "generation": 2},
    "children": [{"id": 9, "name": "web1-clone", "snapshot": "snap1"}],
    "head_gen": 5, "next_gen": 6,
    "snapshots": [{"name": "snap1", "generation": 2, "created_unix": 1767225601},
                  {"name": "snap2", "generation": 4, "created_unix": 1767225602}],
    "discarded_gens": [[3, 3]], "next_container": 12, "next_tlog": 30,
    "shipped": {"checkpoint": [2, 20], "tlogs": [{"seq": 20, "generation": 2},
                                                 {"seq": 21, "generation": 5}], "next_tlog": 22},
}
seed("engine_manifest", "manifest", json.dumps(manifest).encode())
fresh = dict(manifest, parent=None, children=[], head_gen=1, next_gen=2, snapshots=[],
             discarded_gens=[], shipped={"checkpoint": None, "tlogs": [], "next_tlog": 0})
seed("engine_manifest", "manifest-fresh", json.dumps(fresh, separators=(",", ":")).encode())
seed("engine_manifest", "catalog-entry", b'{"name":"web1-root","id":7}')

# --- cluster_records: revision byte, then prefix \n key \n value.
CERT = b"""-----BEGIN CERTIFICATE-----
MIIBvzCCAWWgAwIBAgIUVbwyXAnD9JvzP4+OGkJzhEUXbQ0wCgYIKoZIzj0EAwIw
IjEgMB4GA1UEAwwXcjEucm91dGVyLmRlcG90LmludmFsaWQwIBcNMjYxMjA3MTYy
NzMwWhgPMjEyNjExMTMxNjI3MzBaMCIxIDAeBgNVBAMMF3IxLnJvdXRlci5kZXBv
dC5pbnZhbGlkMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE5zCU2VM3Ltn4lr+P
wOnaZUgUHhxoDubib5L93ld4NPJ1LsH8cW95DVmMk4BCClfLhf+arTL4MrLnFTOk
vkqoUqN3MHUwHQYDVR0OBBYEFDP2oOCwLBBa3xq3v1LLEs/Wl9N+MB8GA1UdIwQY
MBaAFDP2oOCwLBBa3xq3v1LLEs/Wl9N+MA8GA1UdEwEB/wQFMAMBAf8wIgYDVR0R
BBswGYIXcjEucm91dGVyLmRlcG90LmludmFsaWQwCgYIKoZIzj0EAwIDSAAwRQIg
RHtNU3BMF8aNLftl5BxFv0i1dUMO0884o1/NsPqw7EcCIQDz3khOIFaDpXqxvQNp
5TPWIYGTsXgxJbeF6/gAfsMwTg==
-----END CERTIFICATE-----
"""


def record(rev: int, prefix: str, key: str, value) -> bytes:
    v = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return bytes([rev]) + f"{prefix}\n{key}\n".encode() + v


seed("cluster_records", "router", record(4, "/depot", "/depot/routers/r1", {
    "name": "r1", "portal": "127.0.0.1:3260", "api": "https://127.0.0.1:8443",
    "peer": "127.0.0.1:7443", "failure_domain": "rack1",
    "node_id": "5f3c2a9e-0d7e-4c4a-9d51-2b1f0c8e7a11", "tpgt": 1, "joined_unix": 1767225600}))
seed("cluster_records", "router-old", record(8, "/depot/", "/depot/routers/r2", {
    "name": "r2", "portal": "127.0.0.2:3260", "api": "http://127.0.0.2:8080",
    "node_id": "n2", "tpgt": 2, "joined_unix": 1}))
seed("cluster_records", "alive", record(12, "/depot", "/depot/alive/r1", {
    "node_id": "5f3c2a9e-0d7e-4c4a-9d51-2b1f0c8e7a11", "lease": 7587862083127, "started_unix": 1767225600}))
seed("cluster_records", "owner", record(40, "/depot", "/depot/owners/web1-root", {"router": "r2"}))
seed("cluster_records", "owner-negative-revision", record(5, "/x", "/x/owners/d", {"router": "r1"}))
seed("cluster_records", "ca", record(16, "/depot", "/depot/ca/root", {
    "name": "Depot cluster test", "cert_pem": CERT.decode(), "key_pem": "(not a key)"}))

# --- pr_state: the state's JSON, NUL, then nexus selector (0: unregistered,
# n: registration n-1), cdb length, cdb, expected length (u16 BE), data-out.
def nexus(host: str, isid_last: int) -> dict:
    return {"initiator_name": f"iqn.1994-05.com.example:{host}", "isid": [0x80, 0, 0, 0, 0, isid_last],
            "target_name": "iqn.2026-11.io.depot:vm1", "tpgt": 1}


K1, K2 = 0x1122334455667788, 0xAABBCCDDEEFF0011
PR = {"generation": 3, "registrations": [
    {"nexus": nexus("host1", 1), "key": K1, "relative_port_id": 1},
    {"nexus": nexus("host2", 2), "key": K2, "relative_port_id": 2}],
    "reservation": {"holder": nexus("host1", 1), "pr_type": "WriteExclusiveRegistrantsOnly"},
    "aptpl": False}
PR_EMPTY = {"generation": 0, "registrations": [], "reservation": None, "aptpl": False}


def pr(state: dict, who: int, cdb: bytes, expected: int = 0, data: bytes = b"") -> bytes:
    return (json.dumps(state, separators=(",", ":")).encode() + b"\0" + bytes([who, len(cdb)])
            + cdb + struct.pack(">H", expected) + data)


seed("pr_state", "read-full-status", pr(PR, 1, bytes.fromhex("5e030000000000100000"), 4096))
seed("pr_state", "read-keys-unregistered", pr(PR, 0, bytes.fromhex("5e000000000000010000"), 256))
seed("pr_state", "preempt", pr(PR, 2, bytes.fromhex("5f040500000000001800"), 0,
                               struct.pack(">QQ", K2, K1) + bytes(8)))
seed("pr_state", "release", pr(PR, 1, bytes.fromhex("5f020500000000001800"), 0,
                               struct.pack(">QQ", K1, 0) + bytes(8)))
seed("pr_state", "write-conflict", pr(PR, 0, bytes.fromhex("2a000000000000000100"), 0, bytes(512)))
seed("pr_state", "read-holder", pr(PR, 1, bytes.fromhex("28000000000000000100"), 512))
seed("pr_state", "register-empty", pr(PR_EMPTY, 0, bytes.fromhex("5f000000000000001800"), 0,
                                      struct.pack(">QQ", 0, 0x42) + bytes(8)))

if __name__ == "__main__":
    for target, seeds in SEEDS.items():
        d = os.path.join(ROOT, target)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, data in seeds:
            with open(os.path.join(d, "seed-" + name), "wb") as f:
                f.write(data)
    total = sum(len(d) for s in SEEDS.values() for _, d in s)
    print(f"{sum(len(s) for s in SEEDS.values())} seeds, {total} bytes, in {ROOT}")
