#!/usr/bin/env python3
"""Independent check of mapping/tests/vectors.json, in another language.

A from-scratch SipHash-1-3 (c=1 compression round, d=3 finalisation rounds),
written from the SipHash paper, recomputes every vector: hash, slot and cell.
If this and the Rust engine agree, the routing function is reproducible.
Usage: vectors_check.py [vectors.json]   (exit 0 = all vectors agree)
"""
import base64
import json
import struct
import sys

MASK = (1 << 64) - 1


def rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & MASK


def sipround(v0, v1, v2, v3):
    v0 = (v0 + v1) & MASK; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
    v2 = (v2 + v3) & MASK; v3 = rotl(v3, 16); v3 ^= v2
    v0 = (v0 + v3) & MASK; v3 = rotl(v3, 21); v3 ^= v0
    v2 = (v2 + v1) & MASK; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(key16: bytes, msg: bytes) -> int:
    k0, k1 = struct.unpack("<QQ", key16)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    tail_len = len(msg) % 8
    for i in range(0, len(msg) - tail_len, 8):
        m = struct.unpack("<Q", msg[i:i + 8])[0]
        v3 ^= m
        v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
        v0 ^= m
    last = (len(msg) & 0xFF) << 56
    for i, byte in enumerate(msg[len(msg) - tail_len:]):
        last |= byte << (8 * i)
    v3 ^= last
    v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "mapping/tests/vectors.json"
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    failures = 0
    checked = 0
    for snap in doc["snapshots"]:
        key = bytes.fromhex(snap["hash"]["key"])
        slots = snap["hash"]["slots"]
        table = base64.b64decode(snap["slot_table"], validate=True)
        assert len(table) == 2 * slots, "slot table length"
        cells = snap["cells"]
        for v in snap["vectors"]:
            tenant = v["tenant"].encode("utf-8")
            h = siphash13(key, tenant)
            slot = h % slots
            (idx,) = struct.unpack_from("<H", table, 2 * slot)
            cell = cells[idx]
            checked += 1
            if (str(h), slot, cell) != (v["hash"], v["slot"], v["cell"]):
                failures += 1
                print(f"MISMATCH {v!r}: python says hash={h} slot={slot} cell={cell}")
        for d in snap.get("draws", []):
            msg = d["domain"].encode() + d["request_key"].encode("utf-8")
            draw = siphash13(key, msg) % 10000
            checked += 1
            if draw != d["draw"]:
                failures += 1
                print(f"MISMATCH draw {d!r}: python says {draw}")
    print(f"vectors: {checked - failures} passed, {failures} failed")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
