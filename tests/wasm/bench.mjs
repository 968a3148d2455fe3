// Per-call latency of the wasm classifier under node.
//
//   node tests/wasm/bench.mjs PKG_DIR CHECKPOINT_DIR QUERIES_JSON CALLS
//
// Prints one JSON object: {p50_ns, p90_ns, mean_ns, calls}.
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [pkgDir, ckptDir, queriesFile, callsArg] = process.argv.slice(2);
const calls = Number(callsArg ?? 10000);
const wasm = await import(pathToFileURL(resolve(pkgDir, 'classifier.js')).href);
wasm.initSync({ module: readFileSync(join(pkgDir, 'classifier_bg.wasm')) });
const clf = wasm.QueryClassifier.fromCheckpoint(
  readFileSync(join(ckptDir, 'classifier.json')),
  readFileSync(join(ckptDir, 'model.safetensors')),
);
const queries = JSON.parse(readFileSync(queriesFile, 'utf8'));

for (let i = 0; i < 1000; i++) clf.classify(queries[i % queries.length]); // warm-up
const times = new Float64Array(calls);
let sink = 0;
for (let i = 0; i < calls; i++) {
  const q = queries[i % queries.length];
  const t0 = process.hrtime.bigint();
  const r = clf.classify(q);
  times[i] = Number(process.hrtime.bigint() - t0);
  sink += r.category;
}
times.sort();
const mean = times.reduce((a, b) => a + b, 0) / calls;
console.log(JSON.stringify({
  p50_ns: times[Math.floor(calls * 0.5)],
  p90_ns: times[Math.floor(calls * 0.9)],
  mean_ns: mean,
  calls,
  sink,
}));
