// The page: classifies as the user types (in a Web Worker running the wasm classifier),
// sends the query with its route hint to the gateway, streams the answer and shows how it
// was routed. Plain ES module, no framework.

import { readChatStream } from './sse.js';

const $ = (id) => document.getElementById(id);
const DEBOUNCE_MS = 120;

// Anything that goes wrong is said in the page, never a blank screen.
function showError(message) {
  const box = $('error');
  box.hidden = false;
  box.textContent = message;
  $('status').textContent = 'error';
  $('status').dataset.state = 'error';
}
window.addEventListener('error', (e) => showError(`page error: ${e.message}`));
window.addEventListener('unhandledrejection', (e) =>
  showError(`page error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`),
);

// Measurements the benchmark and tests read.
const metrics = { firstClassificationMs: null, loadMs: null, bytes: null };
window.hybrid = { metrics, last: null };

const settings = {
  kind: localStorage.getItem('hybrid.kind') || 'rule_based',
  threshold: Number(localStorage.getItem('hybrid.threshold') || 0.85),
};

let worker = null;
let ready = false;
let version = null;
let seq = 0;
let latest = null; // {id, text, result, micros}
const waiting = new Map(); // id -> resolve
let benchResolve = null;
let controller = null;

function startWorker() {
  try {
    worker = new Worker('classifier-worker.js', { type: 'module' });
  } catch (e) {
    showError(`the classifier worker could not start: ${e.message}`);
    return;
  }
  worker.onerror = (e) => {
    e.preventDefault();
    showError(`the classifier worker failed: ${e.message || 'could not load classifier-worker.js'}`);
  };
  worker.onmessage = (ev) => onWorkerMessage(ev.data);
  loadClassifier(settings.kind);
}

function loadClassifier(kind) {
  ready = false;
  $('status').textContent = `loading the ${kind === 'learned' ? 'learned' : 'rule-based'} classifier…`;
  $('status').dataset.state = 'loading';
  worker.postMessage({ type: 'load', kind });
}

function onWorkerMessage(m) {
  if (m.type === 'ready') {
    ready = true;
    version = m.version;
    settings.kind = m.kind;
    document.querySelector(`input[name="kind"][value="${m.kind}"]`).checked = true;
    $('version').textContent = m.version;
    $('categories').textContent = m.categories.join(', ');
    $('status').textContent = `classifier ready (${m.kind}, ${m.loadMs.toFixed(0)} ms)`;
    $('status').dataset.state = 'ready';
    $('settings-note').textContent = '';
    if (metrics.loadMs === null) {
      metrics.readyMs = performance.now();
      metrics.loadMs = m.loadMs;
      metrics.bytes = m.bytes;
    }
    classifyNow();
  } else if (m.type === 'result') {
    if (metrics.firstClassificationMs === null) metrics.firstClassificationMs = performance.now();
    const resolve = waiting.get(m.id);
    waiting.delete(m.id);
    if (latest && latest.id === m.id) {
      latest.result = m.result;
      latest.micros = m.micros;
      render();
    }
    if (resolve) resolve(m);
  } else if (m.type === 'bench') {
    if (benchResolve) benchResolve(m);
    benchResolve = null;
  } else if (m.type === 'error') {
    if (m.during === 'load') {
      if (version) {
        // A classifier is still loaded: keep it and say why the switch failed.
        ready = true;
        $('settings-note').textContent = `could not switch: ${m.message}`;
        $('status').textContent = `classifier ready (${settings.kind})`;
        $('status').dataset.state = 'ready';
        document.querySelector(`input[name="kind"][value="${settings.kind}"]`).checked = true;
      } else if (settings.kind === 'learned') {
        // No learned checkpoint here: start with the rules and say so.
        $('settings-note').textContent = `learned classifier unavailable: ${m.message}`;
        settings.kind = 'rule_based';
        loadClassifier('rule_based');
      } else {
        showError(`the classifier did not load: ${m.message}`);
      }
    } else if (m.during === 'classify') {
      for (const [id, resolve] of waiting) resolve({ id, error: m.message });
      waiting.clear();
      $('category').textContent = `(${m.message})`;
    } else {
      showError(`classifier worker: ${m.message}`);
    }
  }
}

/** Classifies the text box now; resolves with the worker's answer. */
function classifyNow() {
  const text = $('query').value;
  if (!ready) return Promise.resolve(null);
  if (!text.trim()) {
    latest = null;
    render();
    return Promise.resolve(null);
  }
  if (latest && latest.text === text && latest.result) return Promise.resolve(latest);
  seq += 1;
  const id = seq;
  latest = { id, text, result: null, micros: null };
  return new Promise((resolve) => {
    waiting.set(id, () => resolve(latest && latest.id === id ? latest : null));
    worker.postMessage({ type: 'classify', id, text });
  });
}

let timer = null;
function classifySoon() {
  clearTimeout(timer);
  timer = setTimeout(classifyNow, DEBOUNCE_MS);
}

function routeFor(c) {
  return c.confidence >= settings.threshold
    ? { decision: 'single', text: `single expert for “${c.label}” · 1× cost` }
    : { decision: 'fusion', text: 'BTM fusion of two experts · 2× cost' };
}

function render() {
  const mark = $('threshold-mark');
  mark.style.left = `${settings.threshold * 100}%`;
  if (!latest || !latest.result) {
    if (!latest) {
      for (const id of ['category', 'confidence', 'route', 'class-time']) $(id).textContent = '–';
      $('confidence-bar').style.width = '0';
    }
    return;
  }
  const c = latest.result;
  const route = routeFor(c);
  $('category').textContent = c.label;
  $('category').dataset.category = c.label;
  $('confidence').textContent = c.confidence.toFixed(3);
  const bar = $('confidence-bar');
  bar.style.width = `${(c.confidence * 100).toFixed(1)}%`;
  bar.classList.toggle('below', route.decision === 'fusion');
  $('route').textContent = route.text;
  $('route').dataset.decision = route.decision;
  $('class-time').textContent = `${latest.micros.toFixed(1)} µs`;
  window.hybrid.last = { ...c, text: latest.text, micros: latest.micros, route: route.decision };
}

// ---- sending -------------------------------------------------------------------------

const EXPERT_HUES = [214, 28, 130, 290];

function tokenStyle(weights) {
  // Colour by the weight of each expert: hue of the heaviest, saturation by its share.
  let best = 0;
  for (let i = 1; i < weights.length; i += 1) if (weights[i] > weights[best]) best = i;
  const share = weights[best];
  const light = 92 - Math.round(share * 30);
  return `background: hsl(${EXPERT_HUES[best % EXPERT_HUES.length]} 80% ${light}%)`;
}

function tokenWeights(chunk) {
  const ch = chunk.choices && chunk.choices[0];
  const w = (ch && ch.delta && ch.delta.weights) || (ch && ch.weights) || chunk.routing_weights;
  return Array.isArray(w) ? w : null;
}

async function send() {
  const text = $('query').value;
  if (!text.trim()) {
    $('query').focus();
    return;
  }
  const answer = $('answer');
  answer.textContent = '';
  answer.dataset.state = 'waiting';
  $('routing').hidden = true;
  $('legend').hidden = true;
  $('send').disabled = true;
  $('stop').hidden = false;
  const body = {
    model: 'hybrid',
    messages: [{ role: 'user', content: text }],
    max_tokens: Number($('max-tokens').value) || 48,
    temperature: Number($('temperature').value),
    stream: true,
    // Per-token mixing weights for fusion routes (colours the answer's tokens).
    stream_options: { include_routing_weights: true },
  };
  const c = await classifyNow();
  if (c && c.result) {
    body.route_hint = {
      category: c.result.label,
      confidence: c.result.confidence,
      classifier_version: version,
    };
  }
  controller = new AbortController();
  let sawWeights = false;
  try {
    let r;
    try {
      r = await fetch('v1/chat/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      setGateway(false);
      throw new Error(`the gateway is unreachable (${e.message}); classification still works offline`);
    }
    setGateway(true);
    if (!r.ok) {
      let message = `HTTP ${r.status}`;
      try {
        const j = await r.json();
        if (j.error && j.error.message) message += `: ${j.error.message}`;
      } catch {
        /* not JSON */
      }
      throw new Error(message);
    }
    answer.dataset.state = 'streaming';
    await readChatStream(r.body, (chunk) => {
      const ch = chunk.choices && chunk.choices[0];
      const piece = ch && ch.delta && ch.delta.content;
      if (piece) {
        const span = document.createElement('span');
        span.className = 'tok';
        span.textContent = piece;
        const w = tokenWeights(chunk);
        if (w) {
          sawWeights = true;
          span.setAttribute('style', tokenStyle(w));
          span.title = w.map((x) => x.toFixed(2)).join(' / ');
        }
        answer.append(span);
      }
      if (chunk.routing) showRouting(chunk.routing, chunk.usage, sawWeights);
    });
    answer.dataset.state = 'done';
  } catch (e) {
    answer.dataset.state = 'error';
    if (e.name === 'AbortError') {
      answer.append(document.createTextNode(' [stopped]'));
    } else {
      const p = document.createElement('div');
      p.className = 'answer-error';
      p.textContent = e.message;
      answer.append(p);
    }
  } finally {
    controller = null;
    $('send').disabled = false;
    $('stop').hidden = true;
  }
}

function showRouting(routing, usage, sawWeights) {
  $('routing').hidden = false;
  $('routing').dataset.decision = routing.decision;
  $('routing-decision').textContent = routing.decision;
  $('routing-mode').textContent = routing.mode;
  $('routing-experts').textContent = routing.experts.join(' + ');
  $('routing-cost').textContent = `${routing.cost}× (model forwards per token)`;
  $('routing-category').textContent = `${routing.category} (${Number(routing.confidence).toFixed(3)})`;
  $('routing-source').textContent = routing.hint_source;
  $('routing-threshold').textContent = String(routing.threshold);
  $('routing-usage').textContent = usage
    ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion`
    : '–';
  const fused = routing.experts.length > 1;
  const note = $('weights-note');
  if (fused && sawWeights) {
    const legend = $('legend');
    legend.hidden = false;
    legend.replaceChildren(
      'token colour = heaviest expert: ',
      ...routing.experts.map((name, i) => {
        const s = document.createElement('span');
        s.setAttribute('style', tokenStyle(routing.experts.map((_, j) => (j === i ? 1 : 0))));
        s.textContent = name;
        return s;
      }),
    );
    note.textContent = '';
  } else if (fused) {
    note.textContent = 'per-token mixing weights: not in this gateway’s stream';
  } else {
    note.textContent = '';
  }
}

// ---- gateway and offline status -------------------------------------------------------

function setGateway(up) {
  $('gateway-status').textContent = up ? 'reachable' : 'unreachable (offline mode)';
  $('gateway-status').dataset.up = String(up);
}

async function probeGateway() {
  try {
    const r = await fetch('health', { cache: 'no-store' });
    setGateway(r.ok);
  } catch {
    setGateway(false);
  }
}

async function registerServiceWorker() {
  if (!('serviceWorker' in navigator)) {
    $('sw-status').textContent = 'not supported here';
    return;
  }
  try {
    const reg = await navigator.serviceWorker.register('sw.js');
    await navigator.serviceWorker.ready;
    $('sw-status').textContent = navigator.serviceWorker.controller ? 'active (page served from cache when offline)' : 'installed';
    $('sw-status').dataset.state = reg.active ? 'active' : 'installing';
  } catch (e) {
    $('sw-status').textContent = `unavailable: ${e.message}`;
  }
}

// ---- wiring ---------------------------------------------------------------------------

/** For the benchmark: classify `n` queries in the worker, timed one by one. */
window.hybridBench = (queries, n) =>
  new Promise((resolve) => {
    benchResolve = resolve;
    worker.postMessage({ type: 'bench', queries, n });
  });

function init() {
  const th = $('threshold');
  th.value = String(settings.threshold);
  $('threshold-value').textContent = settings.threshold.toFixed(2);
  th.addEventListener('input', () => {
    settings.threshold = Number(th.value);
    localStorage.setItem('hybrid.threshold', th.value);
    $('threshold-value').textContent = settings.threshold.toFixed(2);
    render();
  });
  for (const radio of document.querySelectorAll('input[name="kind"]')) {
    radio.checked = radio.value === settings.kind;
    radio.addEventListener('change', () => {
      if (!radio.checked) return;
      localStorage.setItem('hybrid.kind', radio.value);
      latest = null;
      loadClassifier(radio.value);
    });
  }
  const q = new URLSearchParams(location.search).get('q');
  if (q) $('query').value = q;
  $('query').addEventListener('input', classifySoon);
  $('send').addEventListener('click', send);
  $('stop').addEventListener('click', () => controller && controller.abort());
  $('query').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) send();
  });
  render();
  startWorker();
  probeGateway();
  registerServiceWorker();
}

init();
