#!/usr/bin/python3
"""Writes the seed corpus of each fuzz target into Fuzz/corpus/<target>/:
small valid (and a few nearly valid) inputs in each target's format, so
libFuzzer starts from the shapes the decoders expect. Rerun after a format
change; scripts/fuzz.sh only reads the folders.

usage: Fuzz/make_seeds.py
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(v):
    if v < 1 << 6:
        return bytes([v])
    if v < 1 << 14:
        return bytes([0x40 | v >> 8, v & 0xFF])
    if v < 1 << 30:
        return bytes([0x80 | v >> 24]) + (v & 0xFFFFFF).to_bytes(3, "big")
    return bytes([0xC0 | v >> 56]) + (v & ((1 << 56) - 1)).to_bytes(7, "big")


def string(s):
    b = s.encode()
    return varint(len(b)) + b


def frame(t, payload):
    return bytes([t]) + varint(len(payload)) + payload


def frames():
    chunk = bytes(range(256)) * 16
    dirty = varint(3) + varint(4) + varint(0) + varint(0) + varint(5) + varint(100)
    region_id = "0123456789abcdef0123456789abcdef"
    return {
        "hello": frame(0x01, varint(2) + string("dc-east-1") + varint(0)),
        "catalog": frame(0x02, varint(2) + string("cache") + varint(1 << 30) + varint(65536) + string(region_id) + varint(3)
                         + varint(0) + string("ü-région") + varint(4096) + varint(4096) + string(region_id) + varint(1)
                         + varint(2) + string("peer-b") + string("peer-c")),
        "subscribe-lazy": frame(0x03, string("cache") + varint(1 << 20) + varint(65536) + varint(1) + varint(16)
                                + varint(16) + bytes(range(16)) + string(region_id) + varint(2)),
        "subscribe-verify": frame(0x03, string("cache") + varint(1 << 20) + varint(65536) + varint(4) + varint(0)
                                  + varint(0) + string("") + varint(0)),
        "have": frame(0x04, varint(3) + bytes(16) + bytes(range(16))),
        "write": frame(0x10, varint(7) + varint(1 << 40) + chunk),
        "dirty": frame(0x11, dirty),
        "lanes": frame(0x15, varint(4) + bytes(range(16))),
        "lane": frame(0x16, bytes(range(16)) + varint(3)),
        "lanes-end": frame(0x17, varint(1 << 20)),
        # 16 pages: 0 and 2 present (uncompressed), 7 and 11 zero, the rest unchanged, with a check.
        "pages": frame(0x14, varint(7) + varint(9) + varint(16) + bytes([0b101, 0]) + bytes([0b10000000, 0b1000])
                       + varint(0) + varint(16) + bytes(range(16)) + bytes(8192)),
        "pages-zero-chunk": frame(0x14, varint(3) + varint(4) + varint(16) + bytes(2) + bytes([0xff, 0xff])
                                  + varint(0) + varint(0)),
        "pages-lz4": frame(0x14, varint(1) + varint(2) + varint(1) + bytes([1]) + bytes([0]) + varint(2) + varint(0)
                           + bytes([0x1f, 0x00, 0x01, 0x00, 0xea, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xd6, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00])),
        "ack": frame(0x12, varint(99)),
        "synced": frame(0x13, varint(1 << 50) + varint(0)),
        "synced-digest": frame(0x13, varint(7) + varint(32) + bytes(range(32))),
        "read": frame(0x20, varint(12) + varint(4)),
        "data": frame(0x21, varint(12) + b"\x01\x02\x03"),
        "digest-read": frame(0x22, varint(0) + varint(64) + varint(16)),
        "digests": frame(0x23, varint(0) + varint(16) + bytes(range(64))),
        "echo": frame(0x30, b"ping"),
        "error": frame(0x3F, varint(0x10) + string("no region 'x'")),
        "migrate": frame(0x40, string("cache") + varint(1 << 30) + varint(65536) + string(region_id) + varint(4) + varint(0)
                         + bytes(range(16)) + varint(0) + varint(4433)),
        "migrate-ready": frame(0x41, varint(4) + varint(1 << 33) + varint(1)),
        "migrate-ready-empty": frame(0x41, varint(4) + varint(0) + varint(0)),
        "handover": frame(0x42, varint(5) + varint(77) + varint(0) + varint(32) + bytes(range(32))),
        "handover-deferred": frame(0x42, varint(5) + varint(77) + varint(0) + varint(0)),
        "handover-postcopy": frame(0x42, varint(5) + varint(77) + varint(1) + varint(0)),
        "handover-check": frame(0x44, bytes(range(32))),
        "handed-over": frame(0x43, varint(5)),
        "stream": frame(0x01, varint(2) + string("r") + varint(0)) + frame(0x12, varint(1)) + frame(0x13, varint(2) + varint(0)),
        "partial": frame(0x10, varint(1) + varint(2) + b"abc")[:-1],
        "oversize": bytes([0x10]) + varint((1 << 20) + 65),
    }


def record(t, stream, payload):
    return bytes([t]) + varint(stream) + varint(len(payload)) + payload


def mux():
    settings = varint(1) + varint(0) + varint(16 << 20) + varint(64 << 20) + varint(256) + varint(0)
    join = varint(1) + varint(1) + varint(1 << 20) + varint(1 << 20) + varint(8) + varint(16) + bytes(range(16)) + varint(4)
    close = bytes([0]) + varint(0x10) + string("bye")
    return {
        "settings": record(0x01, 0, settings),
        "join": record(0x01, 0, join),
        "data-fin": record(0x02, 4, b"hello") + record(0x03, 4, b""),
        "windows": record(0x06, 4, varint(65536)) + record(0x07, 0, varint(1 << 20)) + record(0x08, 0, varint(16)),
        "reset": record(0x04, 8, varint(0x13)) + record(0x05, 8, varint(1)),
        "ping-pong": record(0x09, 0, bytes(8)) + record(0x0A, 0, bytes(range(8))),
        "close": record(0x0B, 0, close),
        "session": record(0x01, 0, settings) + record(0x02, 0, frame(0x01, varint(2) + string("r") + varint(0)))
                   + record(0x02, 0, b"") + record(0x03, 0, b""),
    }


def configs():
    full = {
        "listen": "0.0.0.0:4433", "name": "dc-east-1", "stateDir": "/var/lib/memreplica", "control": "c.sock",
        "tls": {"cert": "a.pem", "key": "a-key.pem", "ca": "ca.pem"},
        "exports": [{"name": "cache", "path": "/dev/shm/cache", "size": "1G", "chunk": 65536, "allow": ["peer-b"]}],
        "mirrors": [{"name": "db", "from": "10.0.0.2:4433", "path": "/dev/shm/db", "lazy": True}],
        "metrics": "127.0.0.1:9464",
    }
    return {
        "full.json": json.dumps(full, indent=2).encode(),
        "minimal.json": b"{}",
        "escapes.json": b'{"name": "a\\u00e9\\ud83d\\ude00\\n", "exports": []}',
        "numbers.json": b'[0, -1, 1.5e10, 2E-3, 123456789012345678901234567890]',
        "nested.json": b"[" * 10 + b"]" * 10,
        "bad-trailing-comma.json": b'{"name": "x",}',
    }


def control():
    lines = [
        {"command": "status"}, {"command": "stats"},
        {"command": "attach", "region": "open"},
        {"command": "attach", "region": "open", "role": "primary", "base": 0x7F0000000000, "length": 41060},
        {"command": "attach", "region": "lazy", "role": "replica", "base": 0x7F0000000000, "length": 32768},
        {"command": "attach", "region": "closed", "base": 4096, "length": 12288},
        {"command": "attach", "region": "nosuch"},
    ]
    seeds = {}
    for i, line in enumerate(lines):
        for flags in (0, 1, 2, 3):
            seeds[f"{i}-{flags}"] = bytes([flags]) + json.dumps(line).encode()
    return seeds


def routes():
    paths = ["/stats", "/regions", "/regions/open/chunks/0", "/regions/open/chunks/10", "/regions/closed/chunks/2",
             "/regions/%6Fpen/chunks/1?x=1", "/regions/lazy/chunks/0", "/nothing"]
    seeds = {}
    for i, path in enumerate(paths):
        for peer in (0, 1, 2):
            seeds[f"{i}-{peer}"] = bytes([peer]) + b"GET\n" + path.encode()
    seeds["post"] = b"\x00POST\n/stats"
    return seeds


def qpack_request(method_index, path):
    # Field section prefix (no dynamic table), then :method and :scheme
    # from the static table and :path as a literal with a static name.
    section = b"\x00\x00" + bytes([0xC0 | method_index, 0xC0 | 23])
    p = path.encode()
    section += bytes([0x51]) + (bytes([len(p)]) if len(p) < 127 else bytes([0x7F, len(p) - 127]))
    section += p
    return frame(0x01, section)


def piece(stream_selector, data, fin=False):
    out = b""
    while True:
        part, data = data[:255], data[255:]
        last = not data
        out += bytes([stream_selector | (8 if fin and last else 0), len(part)]) + part
        if last:
            return out


def http3_streams():
    settings = bytes([0x00]) + frame(0x04, varint(0x06) + varint(16384))  # control stream: type, SETTINGS
    get = qpack_request(17, "/regions/open/chunks/1")
    return {
        "get": piece(0, get, fin=True),
        "get-stats": piece(4, qpack_request(17, "/stats"), fin=True),
        "control-then-get": piece(4, settings) + piece(0, get, fin=True),
        "two-requests": piece(0, get, fin=True) + piece(1, qpack_request(17, "/regions/closed/chunks/0"), fin=True),
        "post-with-body": piece(2, qpack_request(20, "/stats") + frame(0x00, b"body"), fin=True),
        "qpack-streams": bytes([5, 1, 0x02]) + bytes([6, 1, 0x03]),
    }


def write(target, seeds):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def main():
    write("frame", frames())
    write("mux", mux())
    write("config", configs())
    write("control", control())
    write("http3-route", routes())
    write("http3-stream", http3_streams())


if __name__ == "__main__":
    main()
