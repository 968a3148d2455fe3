// Starts headless chromium for the tests and the benchmark: /usr/bin/chromium (or
// $CHROMIUM) through playwright-core, with a fresh user-data-dir.
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

export async function loadPlaywright() {
  try {
    return (await import('playwright-core')).chromium;
  } catch (e) {
    throw new Error(
      `playwright-core is not installed (${e.message}); run \`npm ci\` in tests/browser (scripts/setup.sh does it)`,
    );
  }
}

/** A persistent context in a fresh user-data-dir (so service workers and caches persist). */
export async function launch(options = {}) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing; install chromium (scripts/setup.sh does it)`);
  }
  const chromium = await loadPlaywright();
  const userDataDir = options.userDataDir || mkdtempSync(join(tmpdir(), 'hybrid-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1200, height: 860 },
    ...options.context,
  });
  return { context, userDataDir };
}

/** A throw-away browser for pages that must not share the persistent profile. */
export async function launchEphemeral() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing; install chromium (scripts/setup.sh does it)`);
  }
  const chromium = await loadPlaywright();
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
}

/** Resolves when the page's classifier is ready; rejects with the page's own error text. */
export async function waitReady(page, timeout = 30000) {
  await page.waitForFunction(
    () => {
      const s = document.getElementById('status');
      const e = document.getElementById('error');
      return (s && s.dataset.state === 'ready') || (e && !e.hidden);
    },
    null,
    { timeout },
  );
  const error = await page.$eval('#error', (e) => (e.hidden ? null : e.textContent));
  if (error) throw new Error(`the page shows an error: ${error}`);
}

/** Types a query as a user would and waits for its classification to be shown. */
export async function typeAndClassify(page, text) {
  await page.fill('#query', '');
  await page.type('#query', text, { delay: 5 });
  await page.waitForFunction((t) => window.hybrid.last && window.hybrid.last.text === t, text, {
    timeout: 10000,
  });
  return page.evaluate(() => ({
    shown: {
      category: document.getElementById('category').textContent,
      confidence: document.getElementById('confidence').textContent,
      route: document.getElementById('route').textContent,
      decision: document.getElementById('route').dataset.decision,
      time: document.getElementById('class-time').textContent,
      bar: document.getElementById('confidence-bar').style.width,
    },
    last: window.hybrid.last,
  }));
}
