// Drives the web page in headless chromium for tests/tests/browser.rs.
//
//   node tests/browser/page.mjs --url GATEWAY_URL --screenshots DIR
//
// Online phase: a failed wasm load shows a clear message; the page classifies a reasoning
// and an SOP query as they are typed (rule-based, then learned), sends queries and waits for
// the streamed answer and the routing panel; screenshots go to DIR. It prints one JSON line
// {"phase": "online", ...}, then waits for a line on stdin (the test stops the gateway),
// reloads the page and prints {"phase": "offline", ...}. The Rust test asserts on both.

import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { launch, launchEphemeral, waitReady, typeAndClassify } from './launch.mjs';

const args = process.argv.slice(2);
const arg = (name) => {
  const i = args.indexOf(name);
  if (i < 0 || i + 1 >= args.length) throw new Error(`${name} is required`);
  return args[i + 1];
};
const url = arg('--url').replace(/\/?$/, '/');
const shots = arg('--screenshots');
mkdirSync(shots, { recursive: true });

export const REASONING =
  'If a train leaves at 3pm at 60 km/h and another left at 2pm at 40 km/h, when does the first catch up? Explain step by step.';
export const SOP = 'How do I reset my password? What are the steps to follow?';
const AMBIGUOUS = 'Explain the plan';

const print = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

/** What the page shows when a part of it fails to load (no service worker, so routes apply). */
async function failureMessages() {
  const browser = await launchEphemeral();
  const out = {};
  try {
    for (const [name, pattern] of [
      ['wasm_404', '**/pkg/classifier_bg.wasm'],
      ['js_404', '**/pkg/classifier.js'],
    ]) {
      const ctx = await browser.newContext({ serviceWorkers: 'block' });
      await ctx.route(pattern, (r) => r.fulfill({ status: 404, body: 'not here' }));
      const page = await ctx.newPage();
      await page.goto(url);
      await page.waitForSelector('#error:not([hidden])', { timeout: 15000 }).catch(() => {});
      out[name] = await page.$eval('#error', (e) => (e.hidden ? null : e.textContent));
      await ctx.close();
    }
  } finally {
    await browser.close();
  }
  return out;
}

async function cacheState(page) {
  return page.evaluate(async () => {
    await navigator.serviceWorker.ready;
    const c = await caches.open('hybrid-web-v1');
    const has = async (p) => !!(await c.match(p));
    return {
      controlled: !!navigator.serviceWorker.controller,
      page: await has('./'),
      wasm: await has('pkg/classifier_bg.wasm'),
      checkpoint: await has('checkpoint/model.safetensors'),
    };
  });
}

async function switchKind(page, kind) {
  await page.check(`input[name="kind"][value="${kind}"]`);
  const prefix = kind === 'learned' ? 'learned-' : 'rules-';
  await page.waitForFunction(
    (p) => document.getElementById('version').textContent.startsWith(p) &&
      document.getElementById('status').dataset.state === 'ready',
    prefix,
    { timeout: 15000 },
  );
}

/** Clicks Send and follows the answer as it streams. */
async function send(page, shot) {
  await page.evaluate(() => {
    const answer = document.getElementById('answer');
    window.__growth = [];
    new MutationObserver(() => {
      window.__growth.push({ t: performance.now(), len: answer.textContent.length, state: answer.dataset.state });
    }).observe(answer, { childList: true, subtree: true, characterData: true, attributes: true });
  });
  await page.click('#send');
  await page.waitForFunction(
    () => ['done', 'error'].includes(document.getElementById('answer').dataset.state),
    null,
    { timeout: 180000 },
  );
  const r = await page.evaluate(() => {
    const t = (id) => document.getElementById(id).textContent;
    const answer = document.getElementById('answer');
    return {
      state: answer.dataset.state,
      text: answer.textContent,
      token_spans: answer.querySelectorAll('.tok').length,
      coloured_spans: answer.querySelectorAll('.tok[style]').length,
      updates_while_streaming: window.__growth.filter((g) => g.state === 'streaming' && g.len > 0).length,
      routing_visible: !document.getElementById('routing').hidden,
      routing: {
        decision: t('routing-decision'),
        mode: t('routing-mode'),
        experts: t('routing-experts'),
        cost: t('routing-cost'),
        category: t('routing-category'),
        hint_source: t('routing-source'),
        threshold: t('routing-threshold'),
        usage: t('routing-usage'),
      },
      weights_note: t('weights-note'),
    };
  });
  await page.screenshot({ path: join(shots, shot), fullPage: true });
  return r;
}

const pageErrors = [];
const { context } = await launch();
try {
  const online = { phase: 'online' };
  online.failures = await failureMessages();

  const page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  await page.goto(url);
  await waitReady(page);
  await page.fill('#max-tokens', '16');
  await page.fill('#temperature', '0'); // greedy: the same answer every run
  online.rules = {
    version: await page.textContent('#version'),
    reasoning: await typeAndClassify(page, REASONING),
    sop: await typeAndClassify(page, SOP),
    ambiguous: await typeAndClassify(page, AMBIGUOUS),
  };
  online.fusion_answer = await send(page, 'browser-fusion.png');

  await switchKind(page, 'learned');
  online.learned = {
    version: await page.textContent('#version'),
    reasoning: await typeAndClassify(page, REASONING),
    sop: await typeAndClassify(page, SOP),
  };
  online.single_answer = await send(page, 'browser-online.png');
  online.gateway_status = await page.textContent('#gateway-status');
  online.cache = await cacheState(page);
  online.page_errors = [...pageErrors];
  print(online);

  // The test stops the gateway, then says so.
  const rl = createInterface({ input: process.stdin });
  await new Promise((resolve) => rl.once('line', resolve));
  rl.close();

  const offline = { phase: 'offline' };
  await page.reload();
  await waitReady(page);
  offline.kind_after_reload = await page.textContent('#version');
  offline.learned_reasoning = await typeAndClassify(page, REASONING);
  await switchKind(page, 'rule_based');
  offline.rules_sop = await typeAndClassify(page, SOP);
  offline.send = await send(page, 'browser-offline.png');
  offline.gateway_status = await page.textContent('#gateway-status');
  offline.page_errors = [...pageErrors];
  print(offline);
} catch (e) {
  print({ phase: 'failed', error: String(e.stack || e), page_errors: pageErrors });
  process.exitCode = 1;
} finally {
  await context.close();
}
