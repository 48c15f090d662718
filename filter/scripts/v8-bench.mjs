// Per-request cost of the filter inside V8 (the engine Envoy runs it on),
// without Envoy: a minimal proxy-wasm host, just enough to configure the
// plugin and run request headers through it. Not a test; numbers depend on
// the machine. CPU time is measured, so other load matters less than for
// wall time.
//
//   node filter/scripts/v8-bench.mjs [dist/cell_router.wasm] [requests per case]
//
// Tokens are minted here with node's crypto from the throwaway keys in
// tests/keys, each unique (new tenant and jti), so every request verifies a
// signature when the token cache is off. "host verify" rows offer the filter
// a verify_signature foreign function (node's OpenSSL standing in for
// Envoy's BoringSSL); the others run without it, all in the VM.

import { readFileSync } from "node:fs";
import { createPrivateKey, createPublicKey, sign, verify, createHmac, randomFillSync } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const wasmPath = process.argv[2] ?? join(root, "dist/cell_router.wasm");
const perCase = Number(process.argv[3] ?? 200);
const key = (name) => readFileSync(join(root, "tests/keys", name), "utf8");
const b64url = (buf) => Buffer.from(buf).toString("base64url");
const NOW = Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------- tokens
const keys = {
  RS256: { kid: "rsa-1", priv: createPrivateKey(key("rsa2048.pem")) },
  ES256: { kid: "ec256-1", priv: createPrivateKey(key("ec256.pem")) },
  EdDSA: { kid: "ed-1", priv: createPrivateKey(key("ed25519.pem")) },
  HS256: { kid: "hs-1", secret: Buffer.from(key("hs256.secret.b64").trim(), "base64") },
};
function mint(alg, tenant, jti) {
  const header = b64url(JSON.stringify({ alg, kid: keys[alg].kid, typ: "JWT" }));
  const claims = b64url(JSON.stringify({
    iss: "https://issuer.test", aud: "cell-router", iat: NOW, exp: NOW + 3600, tenant_id: tenant, jti,
  }));
  const input = Buffer.from(`${header}.${claims}`);
  let sig;
  if (alg === "HS256") sig = createHmac("sha256", keys.HS256.secret).update(input).digest();
  else if (alg === "RS256") sig = sign("sha256", input, keys.RS256.priv);
  else if (alg === "ES256") sig = sign("sha256", input, { key: keys.ES256.priv, dsaEncoding: "ieee-p1363" });
  else sig = sign(null, input, keys.EdDSA.priv);
  return `${header}.${claims}.${b64url(sig)}`;
}
function jwk(alg) {
  if (alg === "HS256") return { kty: "oct", kid: "hs-1", k: b64url(keys.HS256.secret) };
  const pub = createPublicKey(keys[alg].priv).export({ format: "jwk" });
  return { ...pub, kid: keys[alg].kid, alg };
}

// ---------------------------------------------------------------- host
let memory, exports;
let pluginConfig = Buffer.alloc(0);
let requestHeaders = [];
let localReplies = 0;
const metrics = [];
const u8 = () => new Uint8Array(memory.buffer);
const dv = () => new DataView(memory.buffer);
const str = (ptr, len) => Buffer.from(u8().subarray(ptr, ptr + len)).toString();
function give(bytes, ptrPtr, sizePtr) {
  const ptr = exports.proxy_on_memory_allocate(bytes.length);
  u8().set(bytes, ptr);
  dv().setUint32(ptrPtr, ptr, true);
  dv().setUint32(sizePtr, bytes.length, true);
}
function serialize(pairs) {
  const parts = pairs.map(([k, v]) => [Buffer.from(k), Buffer.from(v)]);
  const size = 4 + parts.length * 8 + parts.reduce((n, [k, v]) => n + k.length + v.length + 2, 0);
  const out = Buffer.alloc(size);
  out.writeUInt32LE(parts.length, 0);
  let at = 4 + parts.length * 8;
  parts.forEach(([k, v], i) => {
    out.writeUInt32LE(k.length, 4 + i * 8);
    out.writeUInt32LE(v.length, 8 + i * 8);
    k.copy(out, at); at += k.length + 1;
    v.copy(out, at); at += v.length + 1;
  });
  return out;
}
const env = {
  proxy_log: (level, ptr, len) => { if (level >= 3) console.error(`[wasm ${level}] ${str(ptr, len)}`); return 0; },
  proxy_get_buffer_bytes: (type, start, max, ptrPtr, sizePtr) => {
    if (type !== 7) return 1;
    give(pluginConfig, ptrPtr, sizePtr);
    return 0;
  },
  proxy_get_header_map_pairs: (map, ptrPtr, sizePtr) => {
    give(serialize(map === 0 ? requestHeaders : []), ptrPtr, sizePtr);
    return 0;
  },
  proxy_replace_header_map_value: () => 0,
  proxy_remove_header_map_value: () => 0,
  proxy_send_local_response: () => { localReplies++; return 0; },
  proxy_get_current_time_nanoseconds: (ptr) => { dv().setBigUint64(ptr, BigInt(Date.now()) * 1000000n, true); return 0; },
  proxy_set_tick_period_milliseconds: () => 0,
  proxy_define_metric: (type, ptr, len, idPtr) => { metrics.push(str(ptr, len)); dv().setUint32(idPtr, metrics.length - 1, true); return 0; },
  proxy_increment_metric: () => 0,
  proxy_record_metric: () => 0,
  proxy_call_foreign_function: (namePtr, nameLen, argPtr, argLen, retPtrPtr, retSizePtr) => {
    if (!hostVerify || str(namePtr, nameLen) !== "verify_signature") return 1; // NotFound
    // Envoy's verify_signature, with node's OpenSSL in place of BoringSSL.
    const args = parseFields(Buffer.from(u8().subarray(argPtr, argPtr + argLen)));
    const ok = verify(args[1].toString(), args[4],
      { key: args[2], format: "der", type: "spki", dsaEncoding: "der" }, args[3]);
    give(Buffer.from([0x08, ok ? 1 : 0]), retPtrPtr, retSizePtr);
    return 0;
  },
};
// Length-delimited protobuf fields by number (all VerifySignatureArguments has).
function parseFields(buf) {
  const fields = {};
  let at = 0;
  const varint = () => { let v = 0, shift = 0, b; do { b = buf[at++]; v += (b & 0x7f) * 2 ** shift; shift += 7; } while (b & 0x80); return v; };
  while (at < buf.length) {
    const key = varint(), len = varint();
    fields[key >> 3] = buf.subarray(at, at + len);
    at += len;
  }
  return fields;
}
let hostVerify = false;
const wasi = {
  random_get: (ptr, len) => { randomFillSync(u8().subarray(ptr, ptr + len)); return 0; },
  clock_time_get: (id, precision, ptr) => { dv().setBigUint64(ptr, BigInt(Date.now()) * 1000000n, true); return 0; },
  fd_write: (fd, iovs, count, nPtr) => {
    let n = 0;
    for (let i = 0; i < count; i++) {
      const p = dv().getUint32(iovs + i * 8, true), l = dv().getUint32(iovs + i * 8 + 4, true);
      process.stderr.write(Buffer.from(u8().subarray(p, p + l))); n += l;
    }
    dv().setUint32(nPtr, n, true);
    return 0;
  },
  environ_sizes_get: (countPtr, sizePtr) => { dv().setUint32(countPtr, 0, true); dv().setUint32(sizePtr, 0, true); return 0; },
  environ_get: () => 0,
  proc_exit: (code) => { throw new Error(`proc_exit(${code})`); },
};
const module = await WebAssembly.compile(readFileSync(wasmPath));
const imports = { env: {}, wasi_snapshot_preview1: {} };
for (const imp of WebAssembly.Module.imports(module)) {
  const table = imp.module === "env" ? env : wasi;
  imports[imp.module][imp.name] = table[imp.name] ?? (() => 2);
}

async function plugin(config) {
  const instance = await WebAssembly.instantiate(module, imports);
  // The host functions work on the instance being called.
  const use = () => { exports = instance.exports; memory = exports.memory; };
  use();
  exports._initialize();
  pluginConfig = Buffer.from(JSON.stringify(config));
  exports.proxy_on_context_create(1, 0);
  if (!exports.proxy_on_vm_start(1, 0)) throw new Error("vm start refused");
  if (!exports.proxy_on_configure(1, pluginConfig.length)) throw new Error("configuration refused");
  let next = 2;
  return (headers) => {
    use();
    const id = next++;
    requestHeaders = headers;
    exports.proxy_on_context_create(id, 1);
    const action = exports.proxy_on_request_headers(id, headers.length, 1);
    // As in Envoy: a callback the module does not export is not called.
    exports.proxy_on_done?.(id);
    exports.proxy_on_delete(id);
    return action;
  };
}

// ---------------------------------------------------------------- cases
const snapshot = JSON.parse(readFileSync(join(root, "mapping/examples/snapshot.json"), "utf8"));
const algs = ["RS256", "ES256", "EdDSA", "HS256"];
const config = (cacheEntries) => ({
  jwks: { keys: algs.map(jwk) },
  algorithms: algs,
  issuers: ["https://issuer.test"],
  audiences: ["cell-router"],
  tenant_claim: "tenant_id",
  token_cache_entries: cacheEntries,
  fallback_snapshot: snapshot,
});

// Three rounds after a warm-up (V8 tiers hot code up from Liftoff to
// TurboFan); the best round is reported.
function measure(request, headersList) {
  for (let i = 0; i < 2000; i++) request(headersList[i % headersList.length]);
  let best = { cpu: Infinity, wall: Infinity };
  for (let round = 0; round < 3; round++) {
    localReplies = 0;
    const cpu = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    for (const headers of headersList) request(headers);
    const wall = Number(process.hrtime.bigint() - t0) / 1000 / headersList.length;
    const used = process.cpuUsage(cpu);
    if (localReplies) throw new Error(`${localReplies} requests were refused`);
    const cpuPer = (used.user + used.system) / headersList.length;
    if (cpuPer < best.cpu) best = { cpu: cpuPer, wall };
  }
  return best;
}

console.log(`wasm ${wasmPath}, node ${process.version} (V8 ${process.versions.v8}), ${perCase} requests per case`);
console.log("case                      CPU µs/req   wall µs/req");
const uncached = await plugin(config(0));
for (const alg of algs) {
  const n = alg === "HS256" ? perCase * 10 : perCase;
  const unique = Array.from({ length: n }, (_, i) => [
    ["authorization", `Bearer ${mint(alg, `tenant-${i}`, `jti-${i}`)}`],
    ["x-request-id", `r-${i}`],
  ]);
  hostVerify = false;
  const u = measure(uncached, unique);
  console.log(`${alg} unique token, in VM  ${u.cpu.toFixed(1).padStart(9)}   ${u.wall.toFixed(1).padStart(9)}`);
  if (alg === "RS256" || alg === "ES256") {
    hostVerify = true;
    const h = measure(await plugin(config(0)), unique);
    console.log(`${alg} unique, host verify  ${h.cpu.toFixed(1).padStart(9)}   ${h.wall.toFixed(1).padStart(9)}`);
    hostVerify = false;
  }
}
const cached = await plugin(config(4096));
const one = [["authorization", `Bearer ${mint("RS256", "acme-corp", "one")}`], ["x-request-id", "r"]];
const c = measure(cached, Array.from({ length: 20000 }, () => one));
console.log(`cached token (any alg)    ${c.cpu.toFixed(2).padStart(9)}   ${c.wall.toFixed(2).padStart(9)}`);
const trust = await plugin({ trust_header: "x-tenant", fallback_snapshot: snapshot });
const tenants = Array.from({ length: 20000 }, (_, i) => [["x-tenant", `tenant-${i % 1000}`], ["x-request-id", `r-${i}`]]);
const t = measure(trust, tenants);
console.log(`trust_header (no token)   ${t.cpu.toFixed(2).padStart(9)}   ${t.wall.toFixed(2).padStart(9)}`);
console.log("(includes this JS host's own per-request work: context create/delete, header map serialization)");
