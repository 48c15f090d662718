// Runs the wasm32-wasip1 build of binary_apply.rs under Node's WASI, with
// DIR preopened as /data: node binary_apply_wasi.mjs FILE.wasm DIR
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";

const [wasmPath, dir] = process.argv.slice(2);
const wasi = new WASI({
  version: "preview1",
  args: ["binary_apply", "apply", "/data/snap.bin"],
  preopens: { "/data": dir },
});
const module = await WebAssembly.compile(await readFile(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
wasi.start(instance);
