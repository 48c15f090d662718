#!/usr/bin/env python3
"""Independent decoder and router for the binary snapshot form.

Decodes mapping/tests/binary_vectors.json's `binary` from the layout in
mapping/SPEC.md ("Binary form") alone: header, checksum, contiguous
sections, the tenant arena walked bucket by bucket (each record must hash to
its bucket and set its Bloom bits; no tenant twice), looks every vector's
tenant up through the bucket directory by its full bytes, and routes every
vector with vectors_check.py's routing function over the decoded snapshot. Also refuses a copy with one flipped byte (the checksum). Then the same
for `layout2` (a format-2 snapshot in binary layout 2): decoded section by
section and routed by vectors_check.py's format-2 routing function. Both
snapshots are also given keyed by hash (`binary_hashed`, header flag 1:
10-byte records of hash and kind|value); they must route the same vectors.
Uses the from-scratch SipHash-1-3 of vectors_check.py.
Usage: binary_check.py [binary_vectors.json]   (exit 0 = all vectors agree)
"""
import base64
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vectors_check import PooledRouting, Routing, siphash13  # noqa: E402

MAGIC = b"CELLMAPB"
HEADER_LEN = 48 + 6 * 16
SECTIONS = ["generated_at", "cells", "slot_table", "moves", "tenant_arena", "tenant_buckets"]
KINDS = {0: "override", 1: "pin", 2: "move"}


class Refused(Exception):
    pass


def need(cond, why):
    if not cond:
        raise Refused(why)


def flags_of(data: bytes) -> bool:
    """The header's flags word: 0, or 1 (tenant tables keyed by hash)."""
    (flags,) = struct.unpack_from("<I", data, 12)
    need(flags in (0, 1), "flags")
    return flags == 1


def decode(data: bytes) -> dict:
    need(data[:8] == MAGIC, "magic")
    need(len(data) >= HEADER_LEN + 8, "short")
    fmt, _, version = struct.unpack_from("<IIQ", data, 8)
    need(fmt == 1, "format")
    hashed = flags_of(data)
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
    table = list(struct.unpack(f"<{slots}H", sec["slot_table"]))
    need(all(t < len(cells) for t in table), "slot index")
    moves = json.loads(sec["moves"])
    arena = sec["tenant_arena"]
    tenants, dirs = read_table(key, arena, sec["tenant_buckets"],
                               lambda kind: len(moves) if kind == 2 else len(cells), hashed)
    need(len(tenants) == entries, "entries")
    for i, m in enumerate(moves):
        need(tenants.get(table_key(key, m["tenant"].encode("utf-8"), hashed)) == ("move", i),
             "move in table")
    return {"version": version, "key": key, "cells": cells, "table": table, "hashed": hashed,
            "moves": moves, "tenants": tenants, "dirs": dirs, "arena": arena}


def table_key(key: bytes, tenant: bytes, hashed: bool):
    """How a table names a tenant: its bytes, or its 64-bit hash."""
    return siphash13(key, tenant) if hashed else tenant


def read_table(key: bytes, arena: bytes, words: bytes, limit, hashed: bool) -> tuple:
    """A tenant table (arena + bucket directory) walked bucket by bucket:
    each record must hash to its bucket, set its Bloom bits, appear once
    (keyed by hash: in strictly increasing hash order) and have a value below
    limit(kind). Returns ({tenant bytes or hash: (kind, value)}, dirs)."""
    need(len(words) % 8 == 0, "buckets")
    dirs = [struct.unpack_from("<Q", words, 8 * i)[0] for i in range(len(words) // 8)]
    count = len(dirs) - 1
    need(count >= 1 and dirs[0] & 0xFFFFFFFF == 0, "directory start")
    need(dirs[-1] == len(arena), "directory end")
    tenants = {}
    for b in range(count):
        off, end, bloom = dirs[b] & 0xFFFFFFFF, dirs[b + 1] & 0xFFFFFFFF, dirs[b] >> 32
        previous = None
        while off < end:
            if hashed:
                need(off + 10 <= end, "record")
                h, kind_value = struct.unpack_from("<QH", arena, off)
                kind, value = kind_value >> 14, kind_value & 0x3FFF
                need(previous is None or previous < h, "hash order")
                previous, name, off = h, h, off + 10
            else:
                len_kind, value = struct.unpack_from("<HH", arena, off)
                length, kind = len_kind & 0x3FFF, len_kind >> 14
                need(1 <= length <= 1024 and off + 4 + length <= end, "record")
                name = bytes(arena[off + 4:off + 4 + length])
                h, off = siphash13(key, name), off + 4 + length
            need(kind in KINDS, "kind")
            need((((h & 0xFFFFFFFF) * count) >> 32) == b, "record bucket")
            bits = (1 << ((h >> 32) & 31)) | (1 << ((h >> 40) & 31))
            need(bloom & bits == bits, "bloom")
            need(name not in tenants, "duplicate tenant")
            need(value < limit(kind), "value")
            tenants[name] = (KINDS[kind], value)
    need(count == max(1, -(-len(tenants) // 4)), "bucket count")
    return tenants, dirs


def named(key: bytes, tenants: dict, hashed: bool, probes) -> dict:
    """{tenant bytes: entry}. Keyed by hash, a table has no ids: its entries
    are named by the probes whose hash they carry (routing a probe reads only
    its own entries, so the others can be left out)."""
    if not hashed:
        return tenants
    out = {}
    for p in probes:
        entry = tenants.get(siphash13(key, p))
        if entry is not None:
            out[p] = entry
    return out


def decode_layout2(data: bytes, probes=()) -> dict:
    """Layout 2 (a format-2 snapshot) back to its JSON document (keyed by
    hash: with the entries of `probes` only, see named())."""
    need(data[:8] == MAGIC and len(data) >= 64, "short")
    fmt, _, version = struct.unpack_from("<IIQ", data, 8)
    need(fmt == 2, "format")
    hashed = flags_of(data)
    body, (stored,) = data[:-8], struct.unpack("<Q", data[-8:])
    need(siphash13(bytes(16), body) == stored, "checksum")
    key = data[24:40]
    slots, entries, pools, regions = struct.unpack_from("<IIII", data, 40)
    need(1 <= slots <= 1 << 20 and 1 <= pools <= 64 and 1 <= regions <= 255, "counts")
    count = 7 + 4 * pools
    sec, expected = [], 56 + 16 * count
    for i in range(count):
        off, length = struct.unpack_from("<QQ", data, 56 + 16 * i)
        need(off == expected and off + length <= len(body), f"section {i}")
        sec.append(body[off:off + length])
        expected = off + length
    need(expected == len(body), "sections end")
    cells = json.loads(sec[1])
    region_ids = [r["id"] for r in json.loads(sec[2])]
    need(len(region_ids) == regions, "regions")
    region_table = list(struct.unpack(f"<{slots}H", sec[3]))
    need(all(r < regions for r in region_table), "region index")
    region_overrides, _ = read_table(key, sec[4], sec[5], lambda kind: regions if kind == 0 else 0,
                                     hashed)
    region_overrides = named(key, region_overrides, hashed, probes)
    heads = json.loads(sec[6])
    need(len(heads) == pools, "pools")
    ids = [c["id"] for c in cells]
    doc = {
        "format": 2,
        "version": version,
        "hash": {"algorithm": "siphash-1-3", "key": key.hex(), "slots": slots},
        "regions": [{"id": r} for r in region_ids],
        "region_table": base64.b64encode(sec[3]).decode(),
        "region_overrides": {t.decode("utf-8"): region_ids[v] for t, (_, v) in region_overrides.items()},
        "cells": cells,
        "pools": [],
    }
    total = 0
    for i, head in enumerate(heads):
        tables, moves_json, arena, words = sec[7 + 4 * i: 11 + 4 * i]
        need(len(tables) == regions * 2 * slots, "slot tables")
        moves = json.loads(moves_json)
        tenants, _ = read_table(key, arena, words, lambda kind: len(moves) if kind == 2 else len(cells),
                                hashed)
        total += len(tenants)
        for j, m in enumerate(moves):
            need(tenants.get(table_key(key, m["tenant"].encode("utf-8"), hashed)) == ("move", j),
                 "move in table")
        tenants = named(key, tenants, hashed, probes)
        pool = dict(head)
        pool["slot_tables"] = {
            region_ids[r]: base64.b64encode(tables[r * 2 * slots:(r + 1) * 2 * slots]).decode()
            for r in range(regions)
        }
        pool["overrides"], pool["pins"], pool["moves"] = {}, {}, moves
        for tenant, (kind, value) in tenants.items():
            if kind != "move":
                pool["overrides" if kind == "override" else "pins"][tenant.decode("utf-8")] = ids[value]
        doc["pools"].append(pool)
    need(total == entries, "entries")
    return doc


def lookup(snap: dict, tenant: bytes):
    """The SPEC's lookup through the bucket directory: Bloom word, then the
    bucket's records compared by their full bytes (or, keyed by hash, by
    their 64-bit hash)."""
    dirs, arena = snap["dirs"], snap["arena"]
    count = len(dirs) - 1
    h = siphash13(snap["key"], tenant)
    b = ((h & 0xFFFFFFFF) * count) >> 32
    bits = (1 << ((h >> 32) & 31)) | (1 << ((h >> 40) & 31))
    if (dirs[b] >> 32) & bits != bits:
        return None
    off, end = dirs[b] & 0xFFFFFFFF, dirs[b + 1] & 0xFFFFFFFF
    while off < end:
        if snap["hashed"]:
            stored, kind_value = struct.unpack_from("<QH", arena, off)
            if stored == h:
                return (KINDS[kind_value >> 14], kind_value & 0x3FFF)
            off += 10
            continue
        len_kind, value = struct.unpack_from("<HH", arena, off)
        length = len_kind & 0x3FFF
        if bytes(arena[off + 4:off + 4 + length]) == tenant:
            return (KINDS[len_kind >> 14], value)
        off += 4 + length
    return None


def as_document(snap: dict, probes=()) -> dict:
    """The decoded binary snapshot as the JSON document it stands for (keyed
    by hash: with the entries of `probes` only, see named())."""
    ids = [c["id"] for c in snap["cells"]]
    doc = {
        "hash": {"algorithm": "siphash-1-3", "key": snap["key"].hex(), "slots": len(snap["table"])},
        "cells": snap["cells"],
        "slot_table": base64.b64encode(struct.pack(f"<{len(snap['table'])}H", *snap["table"])).decode(),
        "overrides": {},
        "pins": {},
        "moves": snap["moves"],
    }
    for tenant, (kind, value) in named(snap["key"], snap["tenants"], snap["hashed"], probes).items():
        if kind != "move":
            doc["overrides" if kind == "override" else "pins"][tenant.decode("utf-8")] = ids[value]
    return doc


def check_layout1(data: bytes, routes, what: str) -> tuple:
    """Decodes `data` on its own and routes every vector over it."""
    snap = decode(data)
    failures = checked = 0
    probes = [v["tenant"].encode("utf-8") for v in routes]
    routing = Routing(as_document(snap, probes))
    for v in routes:
        tenant = v["tenant"].encode("utf-8")
        got = routing.resolve(v["tenant"], v["split_key"].encode("utf-8"), v["shed"], int(v["now_ms"]))
        got["slot"] = siphash13(snap["key"], tenant) % len(snap["table"])
        want = {k: v[k] for k in ("slot", "home", "cell", "outcome", "reason", "ramp")}
        checked += 1
        if got != want:
            failures += 1
            print(f"{what} MISMATCH {v!r}: python says {got}")
        # The bucket walk finds exactly the tenants of the table.
        checked += 1
        if lookup(snap, tenant) != snap["tenants"].get(table_key(snap["key"], tenant, snap["hashed"])):
            failures += 1
            print(f"{what} LOOKUP MISMATCH {v['tenant']!r}")
    f, c = flipped(data, decode, what)
    return failures + f, checked + c


def flipped(data: bytes, decoder, what: str) -> tuple:
    """The checksum catches a flipped byte anywhere (sampled positions)."""
    failures = checked = 0
    for i in range(0, len(data), max(1, len(data) // 64)):
        bad = bytearray(data)
        bad[i] ^= 0x40
        checked += 1
        try:
            decoder(bytes(bad))
            failures += 1
            print(f"{what}: ACCEPTED a copy with byte {i} flipped")
        except (Refused, ValueError, KeyError, IndexError, struct.error):
            pass
    return failures, checked


def check_layout2(data: bytes, routes, what: str) -> tuple:
    """Layout 2: decoded on its own, then routed by vectors_check.py's
    format-2 routing function (pool, home region, forward / wrong_region)."""
    failures = checked = 0
    probes = [v["tenant"].encode("utf-8") for v in routes]
    pooled = PooledRouting(decode_layout2(data, probes))
    for v in routes:
        got = pooled.resolve(v["tenant"], v["pool"], v["gateway_region"], v["forwarded"],
                             v["split_key"].encode("utf-8"), v["shed"], int(v["now_ms"]))
        got["slot"] = siphash13(pooled.key, v["tenant"].encode("utf-8")) % pooled.slots
        want = {k: v[k] for k in ("slot", "home_region", "home", "cell", "outcome", "reason", "ramp")}
        checked += 1
        if got != want:
            failures += 1
            print(f"{what} MISMATCH {v!r}: python says {got}")
    f, c = flipped(data, decode_layout2, what)
    return failures + f, checked + c


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "mapping/tests/binary_vectors.json"
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    failures = checked = 0
    # The same snapshot keyed by id and keyed by hash routes the same vectors.
    for field, what in (("binary", "layout 1"), ("binary_hashed", "layout 1 keyed by hash")):
        f, c = check_layout1(base64.b64decode(doc[field], validate=True), doc["routes"], what)
        failures, checked = failures + f, checked + c
    for field, what in (("binary", "layout 2"), ("binary_hashed", "layout 2 keyed by hash")):
        data = base64.b64decode(doc["layout2"][field], validate=True)
        f, c = check_layout2(data, doc["layout2"]["routes"], what)
        failures, checked = failures + f, checked + c
    print(f"binary vectors: {checked - failures} passed, {failures} failed")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
