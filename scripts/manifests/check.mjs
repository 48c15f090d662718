// Checks every Kubernetes manifest shipped under envoy/ against its schema,
// offline: no cluster runs here. The schemas come from npm packages pinned
// in package.json / package-lock.json, each a set of validators generated
// from the upstream definitions:
//   @kubernetes-models/istio        Istio 1.29.2's CRDs (crd-all.gen.yaml)
//   @kubernetes-models/gateway-api  the Gateway API CRDs
//   kubernetes-models               the Kubernetes OpenAPI definitions
// They check types, enums, patterns, formats and required fields. They do
// not report unknown fields (the API server prunes those from custom
// resources, or refuses them with `kubectl apply --validate=strict`), nor
// CEL rules (x-kubernetes-validations).
//
// Usage: node check.mjs FILE...   (scripts/validate-manifests.sh names them)
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

// apiVersion group -> package whose models cover it.
function modulePath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group.endsWith(".istio.io")) return `@kubernetes-models/istio/${group}/${version}/${kind}`;
  if (group === "gateway.networking.k8s.io") {
    return `@kubernetes-models/gateway-api/${group}/${version}/${kind}`;
  }
  return group === "" ? `kubernetes-models/${version}/${kind}` : `kubernetes-models/${group}/${version}/${kind}`;
}

async function model(apiVersion, kind) {
  const path = modulePath(apiVersion, kind);
  let mod;
  try {
    mod = await import(path);
  } catch (err) {
    throw new Error(`no schema for ${apiVersion} ${kind} (${path}): ${err.message}`);
  }
  return mod[kind];
}

// A strategic-merge patch of a Deployment (no apiVersion/kind; it is not a
// whole object): its pod template is checked as a PodTemplateSpec, which
// needs only what the patch has (containers with names).
async function checkDocument(doc) {
  if (!doc.apiVersion && !doc.kind && doc.spec?.template) {
    const { PodTemplateSpec } = await import("kubernetes-models/v1/PodTemplateSpec");
    new PodTemplateSpec(doc.spec.template).validate();
    return "Deployment patch (spec.template as v1 PodTemplateSpec)";
  }
  if (!doc.apiVersion || !doc.kind) throw new Error("no apiVersion/kind");
  const Model = await model(doc.apiVersion, doc.kind);
  new Model(doc).validate();
  if (!doc.metadata?.name) throw new Error("no metadata.name");
  return `${doc.apiVersion} ${doc.kind} ${doc.metadata.name}`;
}

// The check must be able to fail: a copy of a known-good document with one
// wrong value must be refused, or the validator is not looking.
async function selfTest() {
  const broken = {
    apiVersion: "extensions.istio.io/v1alpha1",
    kind: "WasmPlugin",
    metadata: { name: "self-test" },
    spec: { url: "oci://example/x:1", failStrategy: "FAIL_CLOSED" },
  };
  try {
    await checkDocument(broken);
  } catch {
    return;
  }
  throw new Error("self-test: failStrategy FAIL_CLOSED (not an Istio value) was accepted");
}

let failed = 0;
let checked = 0;
await selfTest();
for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const [i, parsed] of docs.entries()) {
    const where = `${file}#${i + 1}`;
    if (parsed.errors.length) {
      console.error(`INVALID: ${where}: YAML: ${parsed.errors[0].message}`);
      failed++;
      continue;
    }
    const doc = parsed.toJS();
    if (doc === null) continue;
    try {
      console.log(`valid: ${where}: ${await checkDocument(doc)}`);
      checked++;
    } catch (err) {
      console.error(`INVALID: ${where}: ${err.message}`);
      failed++;
    }
  }
}
if (checked === 0 && failed === 0) {
  console.error("no manifest checked");
  process.exit(1);
}
console.log(`${checked} manifests valid, ${failed} invalid`);
process.exit(failed ? 1 : 0);
