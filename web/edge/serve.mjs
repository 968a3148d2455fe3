// Runs the edge worker (worker.mjs) under node as an HTTP server, for tests and local use.
//
//   EDGE_SECRET=... node web/edge/serve.mjs --gateway http://127.0.0.1:8080 \
//       [--listen 127.0.0.1:8787] [--key-id edge1] [--rules FILE] [--checkpoint DIR]
//
// The secret comes from the environment (not the command line, where `ps` shows it).
// Prints `listening on http://HOST:PORT` to stderr once it serves; SIGTERM stops it.

import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Readable } from 'node:stream';
import worker from './worker.mjs';

const here = dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const opts = { listen: '127.0.0.1:8787', keyId: process.env.EDGE_KEY_ID };
  for (let i = 0; i < argv.length; i += 1) {
    const need = () => {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
      i += 1;
      return argv[i];
    };
    switch (argv[i]) {
      case '--gateway': opts.gateway = need(); break;
      case '--listen': opts.listen = need(); break;
      case '--key-id': opts.keyId = need(); break;
      case '--rules': opts.rules = need(); break;
      case '--checkpoint': opts.checkpoint = need(); break;
      case '--pkg': opts.pkg = need(); break;
      case '-h': case '--help':
        console.error('usage: EDGE_SECRET=... node serve.mjs --gateway URL [--listen HOST:PORT] [--key-id ID] [--rules FILE] [--checkpoint DIR] [--pkg DIR]');
        process.exit(0);
        break;
      default: throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (!opts.gateway) throw new Error('--gateway URL is required');
  return opts;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(`edge: ${e.message}`);
  process.exit(2);
}

const pkg = opts.pkg ?? join(here, '..', 'pkg');
const env = {
  GATEWAY_URL: opts.gateway,
  EDGE_KEY_ID: opts.keyId,
  EDGE_SECRET: process.env.EDGE_SECRET,
};
try {
  env.CLASSIFIER_WASM = await WebAssembly.compile(readFileSync(join(pkg, 'classifier_bg.wasm')));
  if (opts.rules) env.CLASSIFIER_RULES = readFileSync(opts.rules, 'utf8');
  if (opts.checkpoint) {
    env.CHECKPOINT_META = readFileSync(join(opts.checkpoint, 'classifier.json'));
    env.CHECKPOINT_WEIGHTS = readFileSync(join(opts.checkpoint, 'model.safetensors'));
  }
} catch (e) {
  console.error(`edge: ${e.message} (build the wasm package with scripts/build-wasm.sh)`);
  process.exit(1);
}
if (!env.EDGE_SECRET || !env.EDGE_KEY_ID) {
  console.error('edge: EDGE_SECRET or --key-id missing: hints are not signed (and not sent)');
}

const server = createServer(async (req, res) => {
  try {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = chunks.length ? Buffer.concat(chunks) : undefined;
    const headers = new Headers();
    for (const [k, v] of Object.entries(req.headers)) {
      if (Array.isArray(v)) v.forEach((x) => headers.append(k, x));
      else if (v !== undefined) headers.set(k, v);
    }
    const request = new Request(`http://${req.headers.host ?? opts.listen}${req.url}`, {
      method: req.method,
      headers,
      body: ['GET', 'HEAD'].includes(req.method) ? undefined : body,
    });
    const response = await worker.fetch(request, env);
    res.writeHead(response.status, Object.fromEntries(response.headers));
    if (response.body) {
      const stream = Readable.fromWeb(response.body);
      res.on('close', () => stream.destroy());
      stream.pipe(res);
    } else {
      res.end();
    }
  } catch (e) {
    console.error(`edge: ${e.stack ?? e}`);
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { message: String(e.message ?? e), type: 'edge_error' } }));
  }
});

const colon = opts.listen.lastIndexOf(':');
server.listen(Number(opts.listen.slice(colon + 1)), opts.listen.slice(0, colon), () => {
  const a = server.address();
  console.error(`listening on http://${a.address}:${a.port}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
