// Validates rendered Kubernetes manifests (the output of `helm template`) offline against the
// Kubernetes 1.27 API schemas (npm kubernetes-models, whose validators are compiled from the
// API's OpenAPI schemas) and the Prometheus Operator's (ServiceMonitor), strictly: besides types,
// formats and required fields, every field must be one the schema names (as kubeconform -strict
// checks; the schemas alone let unknown fields through, and an unknown field is a typo that the
// API server drops or refuses).
//
//   node validate_manifests.mjs MODULES_DIR [--json OUT.json] RENDERED.yaml
//
// MODULES_DIR: the node_modules folder that tools/install-kube-schemas.sh fills. With --json, the
// documents are also written as a JSON array (for checks in Python, whose own YAML reader does
// not handle block scalars). Exit 1 naming every problem; 0 with a summary line.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
if (args.length < 2) {
  console.error("usage: validate_manifests.mjs MODULES_DIR [--json OUT.json] RENDERED.yaml");
  process.exit(2);
}
const modules = args.shift();
let jsonOut = null;
if (args[0] === "--json") {
  args.shift();
  jsonOut = args.shift();
}
const rendered = args.shift();

const load = (path) => import(pathToFileURL(join(modules, path)).href);
const YAML = await load("yaml/dist/index.js");

// apiVersion -> the module holding its kinds.
function moduleOf(apiVersion) {
  if (apiVersion === "monitoring.coreos.com/v1") {
    return "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js";
  }
  return `kubernetes-models/${apiVersion}/index.js`;
}

// JSON Pointer of a path (RFC 6901), as ajv reports instancePath.
const pointer = (path) => path.map((p) => "/" + String(p).replace(/~/g, "~0").replace(/\//g, "~1")).join("");

// A value of another JSON type than `value`, which no field typed like `value` accepts
// (int-or-string fields take numbers and strings, so neither stands in for the other).
function otherType(value) {
  if (Array.isArray(value)) return 7;
  if (value !== null && typeof value === "object") return 7;
  return [true];
}

// The schema's errors for `doc` ([] if valid).
function errorsOf(Model, doc) {
  try {
    new Model(doc).validate();
    return [];
  } catch (e) {
    return e.errors || [{ instancePath: "", message: e.message }];
  }
}

// Fields of `doc` that its schema does not name: a field is known when giving it a value of the
// wrong type makes the schema complain at exactly that field.
function unknownFields(Model, doc) {
  const unknown = [];
  const walk = (value, path) => {
    if (value === null || typeof value !== "object") return;
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    for (const [key, child] of entries) {
      const childPath = [...path, key];
      if (!Array.isArray(value)) {
        const probe = structuredClone(doc);
        let at = probe;
        for (const p of path) at = at[p];
        at[key] = otherType(child);
        const where = pointer(childPath);
        if (!errorsOf(Model, probe).some((e) => e.instancePath === where)) {
          unknown.push(where);
          continue;  // nothing below an unknown field is checked
        }
      }
      walk(child, childPath);
    }
  };
  walk(doc, []);
  return unknown;
}

const text = readFileSync(rendered, "utf8");
const docs = YAML.parseAllDocuments(text)
  .map((d) => {
    if (d.errors.length) throw new Error(`${rendered}: ${d.errors[0].message}`);
    return d.toJSON();
  })
  .filter((d) => d !== null && d !== undefined);

const problems = [];
const kinds = [];
let fields = 0;
for (const doc of docs) {
  const name = `${doc.kind}/${doc.metadata?.name}`;
  let Model;
  try {
    Model = (await load(moduleOf(doc.apiVersion)))[doc.kind];
  } catch {
    Model = undefined;
  }
  if (!Model) {
    problems.push(`${name}: no schema for apiVersion ${doc.apiVersion} kind ${doc.kind}`);
    continue;
  }
  kinds.push(doc.kind);
  for (const e of errorsOf(Model, doc)) {
    problems.push(`${name}: ${e.instancePath || "/"} ${e.message}`);
  }
  for (const where of unknownFields(Model, doc)) {
    problems.push(`${name}: ${where} is not a field of ${doc.apiVersion} ${doc.kind}`);
  }
  fields += JSON.stringify(doc).split('":').length - 1;
}
if (jsonOut) writeFileSync(jsonOut, JSON.stringify(docs, null, 1));
if (problems.length || docs.length === 0) {
  for (const p of problems) console.error(`schema: ${p}`);
  if (docs.length === 0) console.error(`schema: ${rendered} holds no documents`);
  process.exit(1);
}
console.log(`schema: ${docs.length} documents (${kinds.join(", ")}) valid against the Kubernetes ` +
  `1.27 schemas, strictly (${fields} fields)`);
