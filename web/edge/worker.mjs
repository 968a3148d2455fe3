// The edge worker: classifies chat requests where they enter (in WebAssembly, in
// microseconds), signs the classification with HMAC-SHA256 through WebCrypto and forwards
// the request to the gateway, whose trust mode `signed` then routes on the hint
// (`routing.hint_source` = `signed_edge`). Any `route_hint` the client sent is replaced:
// only the edge's own classification is signed.
//
// Standard fetch-handler module (Cloudflare Workers, Deno, Bun, or node via serve.mjs):
//   export default { async fetch(request, env) }
//
// env:
//   GATEWAY_URL         the gateway's base URL (required)
//   EDGE_KEY_ID         the `gateway.edge_keys` entry to sign with
//   EDGE_SECRET         its shared secret (no signature, and no hint, without both)
//   CLASSIFIER_WASM     the compiled classifier (a WebAssembly.Module, as a wasm binding
//                       gives it, or the bytes of pkg/classifier_bg.wasm); when absent the
//                       package fetches classifier_bg.wasm next to its own URL
//   CLASSIFIER_RULES    rule tables in JSON (default: the tables built into the package)
//   CHECKPOINT_META, CHECKPOINT_WEIGHTS
//                       bytes of a learned checkpoint (classifier.json, model.safetensors);
//                       when given, the learned classifier is used instead of rules
//
// The signed string is the gateway's (gateway/src/hint.rs):
//   category|confidence|classifier_version|timestamp|sha256_hex(canonical_json(messages))

import * as wasm from '../pkg/classifier.js';

const encoder = new TextEncoder();
let loaded = null; // Promise<QueryClassifier>, one per isolate
const keys = new Map(); // secret -> CryptoKey

function loadClassifier(env) {
  if (!loaded) {
    loaded = (async () => {
      if (env.CLASSIFIER_WASM) wasm.initSync({ module: env.CLASSIFIER_WASM });
      else await wasm.default();
      if (env.CHECKPOINT_META && env.CHECKPOINT_WEIGHTS) {
        return wasm.QueryClassifier.fromCheckpoint(
          new Uint8Array(env.CHECKPOINT_META),
          new Uint8Array(env.CHECKPOINT_WEIGHTS),
        );
      }
      if (env.CLASSIFIER_RULES) return wasm.QueryClassifier.fromRules(env.CLASSIFIER_RULES);
      return wasm.QueryClassifier.defaultRules();
    })();
    loaded.catch(() => {
      loaded = null; // let a later request try again
    });
  }
  return loaded;
}

const hex = (buf) =>
  Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');

/** `sha256_hex` of the messages' canonical JSON (keys sorted, no whitespace). */
export async function messagesDigest(messages) {
  const canonical = JSON.stringify(messages.map((m) => ({ content: m.content, role: m.role })));
  return hex(await crypto.subtle.digest('SHA-256', encoder.encode(canonical)));
}

/** The gateway's signing payload. `String(confidence)` is Rust's `{}` of the same f64. */
export async function signingPayload(category, confidence, version, timestamp, messages) {
  return `${category}|${String(confidence)}|${version}|${timestamp}|${await messagesDigest(messages)}`;
}

/** Lower-case hex HMAC-SHA256 of the payload. */
export async function sign(secret, payload) {
  let key = keys.get(secret);
  if (!key) {
    key = await crypto.subtle.importKey(
      'raw',
      encoder.encode(secret),
      { name: 'HMAC', hash: 'SHA-256' },
      false,
      ['sign'],
    );
    keys.set(secret, key);
  }
  return hex(await crypto.subtle.sign('HMAC', key, encoder.encode(payload)));
}

function errorResponse(status, message, code) {
  return new Response(
    JSON.stringify({ error: { message, type: 'invalid_request_error', code } }),
    { status, headers: { 'content-type': 'application/json' } },
  );
}

const HOP_BY_HOP = ['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'host', 'content-encoding'];

function forwardHeaders(headers) {
  const out = new Headers(headers);
  for (const h of HOP_BY_HOP) out.delete(h);
  return out;
}

async function forward(request, env, url, body) {
  const target = new URL(url.pathname + url.search, env.GATEWAY_URL);
  const init = {
    method: request.method,
    headers: forwardHeaders(request.headers),
    redirect: 'manual',
  };
  if (body !== undefined) {
    init.body = body;
    init.headers.set('content-type', 'application/json');
  } else if (!['GET', 'HEAD'].includes(request.method)) {
    init.body = await request.arrayBuffer();
  }
  let upstream;
  try {
    upstream = await fetch(target, init);
  } catch (e) {
    return errorResponse(502, `the gateway is unreachable: ${e.message}`, 'bad_gateway');
  }
  return { upstream, headers: forwardHeaders(upstream.headers) };
}

export default {
  async fetch(request, env) {
    if (!env.GATEWAY_URL) return errorResponse(500, 'GATEWAY_URL is not set', 'config');
    const url = new URL(request.url);
    if (request.method !== 'POST' || url.pathname !== '/v1/chat/completions') {
      const r = await forward(request, env, url);
      if (r instanceof Response) return r;
      return new Response(r.upstream.body, { status: r.upstream.status, headers: r.headers });
    }

    let chat;
    try {
      chat = await request.json();
    } catch (e) {
      return errorResponse(400, `the body is not JSON: ${e.message}`, 'invalid_json');
    }
    if (!chat || typeof chat !== 'object' || !Array.isArray(chat.messages)) {
      return errorResponse(400, '`messages` must be an array', 'invalid_request');
    }
    delete chat.route_hint;
    const last = [...chat.messages].reverse().find((m) => m && m.role === 'user');
    let classification = null;
    if (last && typeof last.content === 'string' && last.content.trim()) {
      let classifier;
      try {
        classifier = await loadClassifier(env);
      } catch (e) {
        return errorResponse(500, `the edge classifier did not load: ${e.message}`, 'classifier');
      }
      const t0 = performance.now();
      const c = classifier.classify(last.content);
      classification = { ...c, micros: (performance.now() - t0) * 1000 };
      if (env.EDGE_KEY_ID && env.EDGE_SECRET) {
        const timestamp = Math.floor(Date.now() / 1000);
        const payload = await signingPayload(c.label, c.confidence, c.version, timestamp, chat.messages);
        chat.route_hint = {
          category: c.label,
          confidence: c.confidence,
          classifier_version: c.version,
          signature: await sign(env.EDGE_SECRET, payload),
          key_id: env.EDGE_KEY_ID,
          timestamp,
        };
      }
    }
    const r = await forward(request, env, url, JSON.stringify(chat));
    if (r instanceof Response) return r;
    if (classification) {
      r.headers.set(
        'x-edge-classification',
        `${classification.label};${classification.confidence.toFixed(4)};${classification.micros.toFixed(1)}us`,
      );
    }
    return new Response(r.upstream.body, { status: r.upstream.status, headers: r.headers });
  },
};
