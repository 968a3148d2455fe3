// The Web Worker that runs the wasm classifier off the main thread.
//
// Messages in:  {type: 'load', kind: 'rule_based' | 'learned'}
//               {type: 'classify', id, text}
//               {type: 'bench', queries, n}
// Messages out: {type: 'ready', kind, version, categories, loadMs, bytes}
//               {type: 'result', id, result, micros, runs}
//               {type: 'bench', n, p50, p90, mean, resolution}
//               {type: 'error', message, during}
//
// The wasm package is imported dynamically so that a missing or broken package becomes an
// error message for the page, not a silently dead worker.

let wasm = null;
let classifier = null;

const post = (m) => self.postMessage(m);
const fail = (during, e) =>
  post({ type: 'error', during, message: String(e && e.message ? e.message : e) });

async function fetchBytes(path, what) {
  let r;
  try {
    r = await fetch(path);
  } catch (e) {
    throw new Error(`could not fetch ${what} (${path}): ${e.message}`);
  }
  if (!r.ok) throw new Error(`could not fetch ${what} (${path}): HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function loadWasm() {
  if (wasm) return;
  let mod;
  try {
    mod = await import('./pkg/classifier.js');
  } catch (e) {
    throw new Error(
      `the wasm package pkg/classifier.js did not load (${e.message}); build it with scripts/build-wasm.sh`,
    );
  }
  const bytes = await fetchBytes('pkg/classifier_bg.wasm', 'the classifier wasm');
  try {
    mod.initSync({ module: bytes });
  } catch (e) {
    throw new Error(`pkg/classifier_bg.wasm is not a valid classifier module: ${e.message}`);
  }
  wasm = mod;
}

/** Transfer sizes of what this worker fetched (Resource Timing; 0 when served from a cache). */
function transferred() {
  const out = {};
  for (const e of performance.getEntriesByType('resource')) {
    const name = new URL(e.name).pathname.split('/').slice(-2).join('/');
    out[name] = { transfer: e.transferSize, body: e.encodedBodySize, decoded: e.decodedBodySize };
  }
  return out;
}

async function load(kind) {
  const t0 = performance.now();
  await loadWasm();
  let next;
  if (kind === 'learned') {
    const [meta, weights] = await Promise.all([
      fetchBytes('checkpoint/classifier.json', 'the learned checkpoint'),
      fetchBytes('checkpoint/model.safetensors', 'the learned checkpoint'),
    ]);
    next = wasm.QueryClassifier.fromCheckpoint(meta, weights);
  } else {
    // The rule tables of configs/rules.json, built into the package.
    next = wasm.QueryClassifier.defaultRules();
  }
  if (classifier) classifier.free();
  classifier = next;
  post({
    type: 'ready',
    kind: classifier.kind,
    version: classifier.version,
    categories: classifier.categories,
    loadMs: performance.now() - t0,
    bytes: transferred(),
  });
}

// Browsers coarsen performance.now() (100 µs without cross-origin isolation), so one call
// is timed by repeating it until at least 2 ms have passed (at most 200 runs): the mean.
function timed(text) {
  const result = classifier.classify(text);
  let runs = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < 2 && runs < 200) {
    classifier.classify(text);
    runs += 1;
    t = performance.now();
  }
  return { result, micros: ((t - t0) * 1000) / runs, runs };
}

function bench(queries, n) {
  for (let i = 0; i < 200; i += 1) classifier.classify(queries[i % queries.length]); // warm-up
  const times = new Float64Array(n);
  for (let i = 0; i < n; i += 1) {
    const q = queries[i % queries.length];
    const t0 = performance.now();
    classifier.classify(q);
    times[i] = (performance.now() - t0) * 1000;
  }
  // The timer's resolution, seen as the smallest non-zero step between two readings.
  let resolution = Infinity;
  for (let i = 0; i < 200; i += 1) {
    const a = performance.now();
    let b = performance.now();
    while (b === a) b = performance.now();
    resolution = Math.min(resolution, (b - a) * 1000);
  }
  const sorted = Array.from(times).sort((a, b) => a - b);
  const pick = (p) => sorted[Math.min(n - 1, Math.floor(p * n))];
  post({
    type: 'bench',
    n,
    p50: pick(0.5),
    p90: pick(0.9),
    mean: sorted.reduce((s, x) => s + x, 0) / n,
    resolution,
    crossOriginIsolated: self.crossOriginIsolated === true,
  });
}

self.onmessage = async (ev) => {
  const m = ev.data;
  try {
    if (m.type === 'load') {
      await load(m.kind);
    } else if (m.type === 'classify') {
      if (!classifier) throw new Error('the classifier is not loaded');
      const { result, micros, runs } = timed(m.text);
      post({ type: 'result', id: m.id, result, micros, runs });
    } else if (m.type === 'bench') {
      if (!classifier) throw new Error('the classifier is not loaded');
      bench(m.queries, m.n);
    }
  } catch (e) {
    fail(m.type, e);
  }
};
