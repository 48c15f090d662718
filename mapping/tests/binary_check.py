#!/usr/bin/env python3
"""Independent decoder and router for the binary snapshot form.

Decodes mapping/tests/binary_vectors.json's `binary` from the layout in
mapping/SPEC.md ("Binary form") alone: header, checksum, contiguous
sections, the tenant arena walked bucket by bucket (each record must hash to
its bucket and set its Bloom bits; no tenant twice), and routes every vector
with the routing function of the SPEC, looking tenants up by their full
bytes. Also refuses a copy with one flipped byte (the checksum).
Uses the from-scratch SipHash-1-3 of vectors_check.py.
Usage: binary_check.py [binary_vectors.json]   (exit 0 = all vectors agree)
"""
import base64
from decimal import ROUND_HALF_UP, Decimal
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vectors_check import siphash13  # noqa: E402

MAGIC = b"CELLMAPB"
HEADER_LEN = 48 + 6 * 16
SECTIONS = ["generated_at", "cells", "slot_table", "moves", "tenant_arena", "tenant_buckets"]
KINDS = {0: "override", 1: "pin", 2: "move"}


class Refused(Exception):
    pass


def need(cond, why):
    if not cond:
        raise Refused(why)


def basis_points(ratio: float) -> int:
    x = min(max(ratio, 0.0), 1.0) * 10000.0
    return int(Decimal(x).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def decode(data: bytes) -> dict:
    need(data[:8] == MAGIC, "magic")
    need(len(data) >= HEADER_LEN + 8, "short")
    fmt, reserved, version = struct.unpack_from("<IIQ", data, 8)
    need(fmt == 1 and reserved == 0, "format")
    body, (stored,) = data[:-8], struct.unpack("<Q", data[-8:])
    need(siphash13(bytes(16), body) == stored, "checksum")
    key = data[24:40]
    slots, entries = struct.unpack_from("<II", data, 40)
    need(1 <= slots <= 1 << 20, "slots")
    sec, expected = {}, HEADER_LEN
    for i, name in enumerate(SECTIONS):
        off, length = struct.unpack_from("<QQ", data, 48 + 16 * i)
        need(off == expected and off + length <= len(body), name)
        sec[name] = body[off:off + length]
        expected = off + length
    need(expected == len(body), "sections end")
    cells = json.loads(sec["cells"])
    ids = [c["id"] for c in cells]
    index = {cid: i for i, cid in enumerate(ids)}
    table = list(struct.unpack(f"<{slots}H", sec["slot_table"]))
    need(all(t < len(cells) for t in table), "slot index")
    moves = json.loads(sec["moves"])
    arena, words = sec["tenant_arena"], sec["tenant_buckets"]
    need(len(words) % 8 == 0, "buckets")
    dirs = [struct.unpack_from("<Q", words, 8 * i)[0] for i in range(len(words) // 8)]
    count = len(dirs) - 1
    need(count >= 1 and dirs[0] & 0xFFFFFFFF == 0, "directory start")
    need(dirs[-1] == len(arena), "directory end")
    tenants = {}
    for b in range(count):
        off, end, bloom = dirs[b] & 0xFFFFFFFF, dirs[b + 1] & 0xFFFFFFFF, dirs[b] >> 32
        while off < end:
            len_kind, value = struct.unpack_from("<HH", arena, off)
            length, kind = len_kind & 0x3FFF, len_kind >> 14
            need(kind in KINDS and 1 <= length <= 1024 and off + 4 + length <= end, "record")
            tenant = bytes(arena[off + 4:off + 4 + length])
            h = siphash13(key, tenant)
            need((((h & 0xFFFFFFFF) * count) >> 32) == b, "record bucket")
            bits = (1 << ((h >> 32) & 31)) | (1 << ((h >> 40) & 31))
            need(bloom & bits == bits, "bloom")
            need(tenant not in tenants, "duplicate tenant")
            limit = len(moves) if kind == 2 else len(cells)
            need(value < limit, "value")
            tenants[tenant] = (KINDS[kind], value)
            off += 4 + length
    need(len(tenants) == entries and count == max(1, -(-entries // 4)), "entries")
    for i, m in enumerate(moves):
        need(tenants.get(m["tenant"].encode("utf-8")) == ("move", i), "move in table")
    return {"version": version, "key": key, "cells": cells, "index": index, "table": table,
            "moves": moves, "tenants": tenants}


def route(snap: dict, tenant: bytes, request_key: bytes) -> dict:
    key, cells, index = snap["key"], snap["cells"], snap["index"]
    h = siphash13(key, tenant)
    slot = h % len(snap["table"])
    entry = snap["tenants"].get(tenant)  # full-key lookup: no collision can match
    if entry is None:
        reason, home = "slot", snap["table"][slot]
    elif entry[0] == "move":
        m = snap["moves"][entry[1]]
        share = basis_points(m["percent"] / 100.0)
        moved = siphash13(key, b"m" + request_key) % 10000 < share
        reason, home = "split", index[m["to"] if moved else m["from"]]
    else:
        reason, home = entry
    cell, failed_over = home, False
    while True:
        c = cells[cell]
        state = c.get("state", "active")
        if state == "active":
            outcome = "route"
            break
        if state == "draining":
            shed = basis_points(c.get("shed_ratio", 0))
            draw = siphash13(key, b"s" + request_key) % 10000
            outcome = "shed" if shed > 0 and draw < shed else "route"
            break
        if "failover" in c:
            cell, failed_over = index[c["failover"]], True
            continue
        outcome = "unavailable"
        break
    return {"slot": slot, "home": cells[home]["id"], "reason": "failover" if failed_over else reason,
            "outcome": outcome, "cell": cells[cell]["id"]}


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "mapping/tests/binary_vectors.json"
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    data = base64.b64decode(doc["binary"], validate=True)
    snap = decode(data)
    failures = checked = 0
    for v in doc["routes"]:
        got = route(snap, v["tenant"].encode("utf-8"), v["request_key"].encode("utf-8"))
        want = {k: v[k] for k in ("slot", "home", "reason", "outcome", "cell")}
        checked += 1
        if got != want:
            failures += 1
            print(f"MISMATCH {v['tenant']!r}/{v['request_key']!r}: python says {got}")
    # The checksum catches a flipped byte anywhere (sampled positions).
    for i in range(0, len(data), max(1, len(data) // 64)):
        bad = bytearray(data)
        bad[i] ^= 0x40
        checked += 1
        try:
            decode(bytes(bad))
            failures += 1
            print(f"ACCEPTED a copy with byte {i} flipped")
        except (Refused, ValueError, KeyError, IndexError, struct.error):
            pass
    print(f"binary vectors: {checked - failures} passed, {failures} failed")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
