#!/usr/bin/env python3
"""Independent check of mapping/tests/vectors.json, in another language.

A from-scratch SipHash-1-3 (c=1 compression round, d=3 finalisation rounds),
written from the SipHash paper, recomputes every vector: hash, slot and cell,
the move and ramp draws, ramp shares (RFC 3339 parsing, the integer linear
curve, the slow-start curve), and whole requests through a snapshot with
every cell state, ramps, overrides, pins and moves (the routing function of
mapping/SPEC.md, written again here from the SPEC), and format-2 snapshots:
pool selection by authority and path, home regions, and requests at gateways
in every region (forward, wrong_region, failover within the region).
If this and the Rust engine agree, the routing function is reproducible.
Usage: vectors_check.py [vectors.json]   (exit 0 = all vectors agree)
"""
import base64
from decimal import ROUND_HALF_UP, Decimal
import json
import math
import re
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


def draw(key16: bytes, domain: str, key: bytes) -> int:
    """draw(domain, key) = SipHash-1-3(domain byte ++ key) mod 10000."""
    return siphash13(key16, domain.encode("ascii") + key) % 10000


RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 (proleptic Gregorian), Hinnant's algorithm."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def start_ms(start) -> int:
    if isinstance(start, int):
        return start * 1000
    m = RFC3339.match(start)
    assert m, f"bad start {start!r}"
    y, mo, d, hh, mi, ss = (int(x) for x in m.groups()[:6])
    frac = (m.group(7) or "")[:3].ljust(3, "0")
    offset = 0
    if m.group(9):
        offset = (int(m.group(10)) * 3600 + int(m.group(11)) * 60) * (-1 if m.group(9) == "-" else 1)
    unix = days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss - offset
    return unix * 1000 + int(frac)


def basis_points(ratio: float) -> int:
    """round(clamp(ratio, 0, 1) * 10000), halves away from zero."""
    x = min(max(ratio, 0.0), 1.0) * 10000.0
    return int(Decimal(x).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def ramp_share(ramp: dict, now_ms: int):
    """(share in basis points, distance of the pow product from an integer or None)."""
    start = start_ms(ramp["start"])
    duration = ramp["duration_s"] * 1000
    frm = basis_points(ramp.get("from_percent", 0) / 100.0)
    if now_ms < start:
        return frm, None
    e = now_ms - start
    if e >= duration:
        return 10000, None
    rest = 10000 - frm
    curve = ramp.get("curve", "linear")
    if curve == "linear" or float(curve["aggression"]) == 1.0:
        return frm + rest * e // duration, None
    x = float(rest) * math.pow(e / duration, 1.0 / float(curve["aggression"])) + 1e-6
    return frm + min(int(math.floor(x)), rest), x


class Routing:
    """The routing function of mapping/SPEC.md over one snapshot document."""

    def __init__(self, doc: dict):
        self.key = bytes.fromhex(doc["hash"]["key"])
        self.slots = doc["hash"]["slots"]
        raw = base64.b64decode(doc["slot_table"], validate=True)
        self.table = [struct.unpack_from("<H", raw, 2 * i)[0] for i in range(self.slots)]
        self.cells = doc["cells"]
        self.index = {c["id"]: i for i, c in enumerate(self.cells)}
        self.homes = {}
        for tenant, cell in doc.get("overrides", {}).items():
            self.homes[tenant] = ("override", cell)
        for tenant, cell in doc.get("pins", {}).items():
            self.homes[tenant] = ("pin", cell)
        for m in doc.get("moves", []):
            self.homes[m["tenant"]] = ("move", m)

    def resolve(self, tenant: str, split_key: bytes, shed: int, now_ms: int) -> dict:
        h = siphash13(self.key, tenant.encode("utf-8"))
        slot = h % self.slots
        entry = self.homes.get(tenant)
        if entry is None:
            reason, home = "slot", self.cells[self.table[slot]]["id"]
        elif entry[0] == "move":
            m = entry[1]
            share = basis_points(m["percent"] / 100.0)
            moved = draw(self.key, "m", split_key) < share
            reason, home = "split", m["to"] if moved else m["from"]
        else:
            reason, home = entry
        cell, failed_over, ramp, diverted = home, False, None, False
        for _ in range(len(self.cells) + 1):
            c = self.cells[self.index[cell]]
            state = c.get("state", "active")
            if state == "active":
                if "ramp" not in c:
                    outcome = "route"
                    break
                share, _ = ramp_share(c["ramp"], now_ms)
                if share >= 10000:
                    outcome = "route"
                    break
                kept = draw(self.key, "r", split_key) < share
                if ramp is None:
                    ramp = {"cell": cell, "share_bp": share, "kept": kept}
                if kept:
                    outcome = "route"
                    break
                diverted = True
                cell = c["failover"]
            elif state == "draining":
                outcome = "shed" if shed < basis_points(c.get("shed_ratio", 0)) else "route"
                break
            else:
                if "failover" not in c:
                    outcome = "unavailable"
                    break
                failed_over = True
                cell = c["failover"]
        if diverted:
            reason = "ramp"
        elif failed_over:
            reason = "failover"
        return {"home": home, "cell": cell, "outcome": outcome, "reason": reason, "ramp": ramp}


def host_of(authority: bytes) -> bytes:
    """The authority without a trailing :port (a colon and digits only), ASCII-lowercased."""
    colon = authority.rfind(b":")
    if colon >= 0 and all(0x30 <= c <= 0x39 for c in authority[colon + 1:]):
        authority = authority[:colon]
    return authority.lower()  # bytes.lower() folds ASCII only


def prefix_matches(prefix: str, path: bytes) -> bool:
    """A prefix of k segments matches when the path's first k segments equal
    them: the path is cut at the first ? or #, split on /, each segment cut at
    its first ; and compared ASCII-case-insensitively. The root / matches all."""
    if prefix == "/":
        return True
    if not path.startswith(b"/"):
        return False
    for stop in (b"?", b"#"):
        path = path.split(stop, 1)[0]
    got = path[1:].split(b"/")
    want = prefix.encode("ascii")[1:].split(b"/")
    if len(got) < len(want):
        return False
    return all(g.split(b";", 1)[0].lower() == w for g, w in zip(got, want))


class PooledRouting:
    """Pool selection, region homing and the routing function of a format-2
    snapshot (mapping/SPEC.md), written from the SPEC."""

    def __init__(self, doc: dict):
        assert doc["format"] == 2
        self.doc = doc
        self.key = bytes.fromhex(doc["hash"]["key"])
        self.slots = doc["hash"]["slots"]
        self.regions = [r["id"] for r in doc["regions"]]
        raw = base64.b64decode(doc["region_table"], validate=True)
        self.region_table = [struct.unpack_from("<H", raw, 2 * i)[0] for i in range(self.slots)]
        self.region_overrides = doc.get("region_overrides", {})
        self.pools = {p["id"]: p for p in doc["pools"]}
        self.cells = {c["id"]: c for c in doc["cells"]}
        # One format-1 router per pool and region: that pool's slot table for
        # the region and the pool's overrides, pins and moves.
        self.routers = {}
        for p in doc["pools"]:
            for region, table in p["slot_tables"].items():
                self.routers[(p["id"], region)] = Routing({
                    "hash": doc["hash"],
                    "slot_table": table,
                    "cells": doc["cells"],
                    "overrides": p.get("overrides", {}),
                    "pins": p.get("pins", {}),
                    "moves": p.get("moves", []),
                })

    def select(self, authority: bytes, path: bytes):
        host = host_of(authority)
        for p in self.doc["pools"]:
            m = p.get("match")
            if m is None:
                return p["id"]
            hosts = [a.encode("ascii") for a in m.get("authorities", [])]
            prefixes = m.get("path_prefixes", [])
            if (not hosts or host in hosts) and (not prefixes or any(prefix_matches(x, path) for x in prefixes)):
                return p["id"]
        return None

    def home_region(self, tenant: str) -> str:
        if tenant in self.region_overrides:
            return self.region_overrides[tenant]
        h = siphash13(self.key, tenant.encode("utf-8"))
        return self.regions[self.region_table[h % self.slots]]

    def resolve(self, tenant: str, pool: str, gateway, forwarded: bool, split_key: bytes, shed: int, now_ms: int) -> dict:
        home_region = self.home_region(tenant)
        got = self.routers[(pool, home_region)].resolve(tenant, split_key, shed, now_ms)
        got["home_region"] = home_region
        if gateway is not None and gateway != home_region:
            outcome = "wrong_region" if forwarded else "forward"
            got.update({"cell": None, "outcome": outcome, "reason": outcome, "ramp": None})
        else:
            # Failover and ramps never leave the pool and the home region.
            for cell in (got["home"], got["cell"]):
                c = self.cells[cell]
                assert (c["pool"], c["region"]) == (pool, home_region), f"{tenant}: {cell} left {pool}/{home_region}"
        return got


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "mapping/tests/vectors.json"
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    failures = 0
    checked = {"tenants": 0, "draws": 0, "ramps": 0, "requests": 0,
               "pool selections": 0, "home regions": 0, "pool requests": 0}

    def fail(message: str):
        nonlocal failures
        failures += 1
        print("MISMATCH " + message)

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
            checked["tenants"] += 1
            if (str(h), slot, cell) != (v["hash"], v["slot"], v["cell"]):
                fail(f"{v!r}: python says hash={h} slot={slot} cell={cell}")
        for d in snap["draws"]:
            got = draw(key, d["domain"], d["key"].encode("utf-8"))
            checked["draws"] += 1
            if got != d["draw"]:
                fail(f"draw {d!r}: python says {got}")

    # The slow-start curve uses pow, which IEEE-754 does not pin to the last
    # bit. A share could differ between two pows only if the rounded value
    # lay within ~1e-12 of an integer; refuse vectors that come that close.
    nearest = None
    for v in doc["ramps"]:
        share, x = ramp_share(v["ramp"], int(v["now_ms"]))
        if x is not None:
            distance = abs(x - round(x))
            nearest = distance if nearest is None else min(nearest, distance)
            if distance < 1e-9:
                fail(f"ramp {v!r}: (10000 - from) * pow + 1e-6 = {x!r} is too near an integer to check")
        checked["ramps"] += 1
        if share != v["share_bp"]:
            fail(f"ramp {v!r}: python says {share}")

    routing = Routing(doc["routing"]["snapshot"])
    for v in doc["routing"]["requests"]:
        got = routing.resolve(v["tenant"], v["split_key"].encode("utf-8"), v["shed"], int(v["now_ms"]))
        checked["requests"] += 1
        want = {k: v[k] for k in ("home", "cell", "outcome", "reason", "ramp")}
        if got != want:
            fail(f"request {v!r}: python says {got}")

    for scenario in doc["pools"]:
        pooled = PooledRouting(scenario["snapshot"])
        for v in scenario["selection"]:
            got = pooled.select(v["authority"].encode("utf-8"), v["path"].encode("utf-8"))
            checked["pool selections"] += 1
            if got != v["pool"]:
                fail(f"selection {v!r}: python says {got!r}")
        for v in scenario["homes"]:
            h = siphash13(pooled.key, v["tenant"].encode("utf-8"))
            got = (str(h), h % pooled.slots, pooled.home_region(v["tenant"]))
            checked["home regions"] += 1
            if got != (v["hash"], v["slot"], v["region"]):
                fail(f"home {v!r}: python says {got}")
        for v in scenario["requests"]:
            got = pooled.resolve(v["tenant"], v["pool"], v["gateway_region"], v["forwarded"],
                                 v["split_key"].encode("utf-8"), v["shed"], int(v["now_ms"]))
            checked["pool requests"] += 1
            want = {k: v[k] for k in ("home_region", "home", "cell", "outcome", "reason", "ramp")}
            if got != want:
                fail(f"pool request {v!r}: python says {got}")

    total = sum(checked.values())
    detail = ", ".join(f"{n} {k}" for k, n in checked.items())
    print(f"vectors: {total - failures} passed, {failures} failed ({detail})")
    if nearest is not None:
        print(f"slow-start curve: every value at least {nearest:.3g} from an integer (pow's last bit cannot flip a share)")
    return 1 if failures or not all(checked.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
