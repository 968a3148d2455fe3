// The service worker: keeps the page, the wasm classifier and the learned checkpoint in a
// cache so that a reload works with the gateway down (classification runs in the page).
//
// Strategy: stale-while-revalidate for the page's own files — answer from the cache at
// once, refresh the cache from the network in the background — so a warm load needs no
// round trip and an update shows on the next load. The API (/v1/..., /health, ...) is
// never cached.

const CACHE = 'hybrid-web-v1';
const SHELL = [
  './',
  'index.html',
  'style.css',
  'app.js',
  'sse.js',
  'classifier-worker.js',
  'pkg/classifier.js',
  'pkg/classifier_bg.wasm',
];
// Present only when a learned checkpoint was copied in (scripts/build-wasm.sh).
const OPTIONAL = ['checkpoint/classifier.json', 'checkpoint/model.safetensors'];
const API = /^\/(v1\/|health$|ready$|metrics$|openapi\.json$)/;

self.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      await cache.addAll(SHELL);
      await Promise.all(
        OPTIONAL.map(async (path) => {
          try {
            const r = await fetch(path);
            if (r.ok) await cache.put(path, r);
          } catch {
            /* not served: the learned kind is then unavailable offline */
          }
        }),
      );
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
      await self.clients.claim();
    })(),
  );
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== 'GET' || url.origin !== self.location.origin) return;
  const scope = new URL(self.registration.scope);
  const path = url.pathname.slice(scope.pathname.length - 1);
  if (API.test(path)) return;
  event.respondWith(
    (async () => {
      const cache = await caches.open(CACHE);
      const cached = await cache.match(req, { ignoreSearch: true });
      const refresh = fetch(req)
        .then(async (r) => {
          if (r.ok && r.type === 'basic') await cache.put(req, r.clone());
          return r;
        })
        .catch(() => null);
      if (cached) {
        event.waitUntil(refresh);
        return cached;
      }
      const fresh = await refresh;
      return fresh || new Response(`offline and not cached: ${url.pathname}`, { status: 503 });
    })(),
  );
});
