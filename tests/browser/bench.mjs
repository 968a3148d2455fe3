// Browser benchmark of the web page (headless chromium, scripts/bench_browser.sh):
// - classifier latency per query in the Web Worker: p50/p90 over N single timed calls,
//   the page cross-origin isolated so that performance.now() is fine-grained;
// - page load to first classification (navigation start → first result shown), cold
//   (fresh profile, empty caches) and warm (reload: service worker cache);
// - bytes transferred for the wasm and the learned checkpoint (Resource Timing).
//
//   node tests/browser/bench.mjs WEB_DIR QUERIES_JSONL [--calls 1000] [--runs 5] [--json]
//
// Serves WEB_DIR with a static server (the page needs no gateway to classify).
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { serveStatic } from './static.mjs';
import { launch } from './launch.mjs';

const argv = process.argv.slice(2);
const flag = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? Number(argv[i + 1]) : dflt;
};
const [webDir, queriesFile] = argv;
const calls = flag('--calls', 1000);
const runs = flag('--runs', 5);
const asJson = argv.includes('--json');
const queries = readFileSync(queriesFile, 'utf8')
  .split('\n')
  .filter((l) => l.trim())
  .map((l) => JSON.parse(l).query);
const hasCheckpoint = existsSync(join(webDir, 'checkpoint/model.safetensors'));
const kinds = hasCheckpoint ? ['rule_based', 'learned'] : ['rule_based'];

const { server, url } = await serveStatic(webDir, { isolated: true });
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const q = queries[0];
const pageUrl = `${url}?q=${encodeURIComponent(q)}`;

async function firstClassification(page) {
  await page.waitForFunction(() => window.hybrid && window.hybrid.metrics.firstClassificationMs !== null, null, {
    timeout: 30000,
  });
  return page.evaluate(() => ({ ms: window.hybrid.metrics.firstClassificationMs, bytes: window.hybrid.metrics.bytes }));
}

const results = {};
try {
  for (const kind of kinds) {
    const cold = [];
    const warm = [];
    let bytes = null;
    let latency = null;
    for (let r = 0; r < runs; r += 1) {
      const { context } = await launch();
      try {
        await context.addInitScript((k) => localStorage.setItem('hybrid.kind', k), kind);
        const page = context.pages()[0] || (await context.newPage());
        await page.goto(pageUrl);
        const c = await firstClassification(page);
        cold.push(c.ms);
        if (!bytes) bytes = c.bytes;
        // Let the service worker finish caching, then reload warm.
        await page.evaluate(() => navigator.serviceWorker.ready);
        await page.reload();
        warm.push((await firstClassification(page)).ms);
        if (r === 0) {
          latency = await page.evaluate(([qs, n]) => window.hybridBench(qs, n), [queries, calls]);
        }
      } finally {
        await context.close();
      }
    }
    const size = (suffix, field) =>
      Object.entries(bytes || {})
        .filter(([name]) => name.endsWith(suffix))
        .reduce((s, [, v]) => s + v[field], 0);
    results[kind] = {
      p50_us: latency.p50,
      p90_us: latency.p90,
      mean_us: latency.mean,
      calls: latency.n,
      timer_resolution_us: latency.resolution,
      cross_origin_isolated: latency.crossOriginIsolated,
      cold_first_classification_ms: median(cold),
      warm_first_classification_ms: median(warm),
      runs,
      wasm_transfer_bytes: size('classifier_bg.wasm', 'transfer'),
      wasm_body_bytes: size('classifier_bg.wasm', 'body'),
      checkpoint_transfer_bytes: size('classifier.json', 'transfer') + size('model.safetensors', 'transfer'),
      checkpoint_body_bytes: size('classifier.json', 'body') + size('model.safetensors', 'body'),
    };
  }
} finally {
  server.close();
}

const rows = [
  ['classifier', 'p50 µs', 'p90 µs', 'cold load→1st ms', 'warm load→1st ms', 'wasm bytes', 'checkpoint bytes'],
  ...Object.entries(results).map(([k, r]) => [
    k,
    r.p50_us.toFixed(1),
    r.p90_us.toFixed(1),
    r.cold_first_classification_ms.toFixed(0),
    r.warm_first_classification_ms.toFixed(0),
    String(r.wasm_transfer_bytes),
    String(r.checkpoint_transfer_bytes),
  ]),
];
const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i])).join('  '));
const any = Object.values(results)[0];
console.log(
  `(${calls} calls in the worker, timer resolution ${any.timer_resolution_us.toFixed(1)} µs, ` +
    `cross-origin isolated: ${any.cross_origin_isolated}; load times: median of ${runs} runs; ` +
    `bytes: on the wire, first visit${hasCheckpoint ? '' : '; no web/checkpoint: learned not measured'})`,
);
if (asJson) console.log(JSON.stringify({ browser: results, chromium: 'headless' }));
