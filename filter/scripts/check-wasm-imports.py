#!/usr/bin/env python3
"""Lists a wasm module's imports (and exports with -e); exits 1 if an import is
outside env.proxy_* and wasi_snapshot_preview1.* (what Envoy provides).
Usage: filter/scripts/check-wasm-imports.py dist/cell_router.wasm [-e]"""
import sys

def leb(data, i):
    result = shift = 0
    while True:
        b = data[i]; i += 1
        result |= (b & 0x7f) << shift
        shift += 7
        if b < 0x80:
            return result, i

def name(data, i):
    n, i = leb(data, i)
    return data[i:i+n].decode(), i + n

data = open(sys.argv[1], 'rb').read()
assert data[:4] == b'\0asm', 'not wasm'
i = 8
imports, exports = [], []
while i < len(data):
    sid = data[i]; i += 1
    size, i = leb(data, i)
    end = i + size
    if sid == 2:
        count, j = leb(data, i)
        for _ in range(count):
            mod, j = name(data, j); fld, j = name(data, j)
            kind = data[j]; j += 1
            if kind == 0: _, j = leb(data, j)
            elif kind == 1: j += 1; flags, j = leb(data, j); _, j = leb(data, j); j = (leb(data, j)[1] if flags & 1 else j)
            elif kind == 2: flags, j = leb(data, j); _, j = leb(data, j); j = (leb(data, j)[1] if flags & 1 else j)
            elif kind == 3: j += 2
            imports.append((mod, fld))
    elif sid == 7:
        count, j = leb(data, i)
        for _ in range(count):
            fld, j = name(data, j); kind = data[j]; j += 1; _, j = leb(data, j)
            exports.append(fld)
    i = end
bad = [f"{m}.{f}" for m, f in imports if not ((m == 'env' and f.startswith('proxy_')) or m == 'wasi_snapshot_preview1')]
print(f"{len(data)} bytes; {len(imports)} imports, {len(exports)} exports")
for m, f in imports: print(f"  import {m}.{f}")
if '-e' in sys.argv:
    for e in exports: print(f"  export {e}")
if bad:
    print("NOT ALLOWED:", ", ".join(bad)); sys.exit(1)
print("imports OK: only env.proxy_* and wasi_snapshot_preview1.*")
