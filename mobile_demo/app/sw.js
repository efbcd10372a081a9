// Service worker: after the first visit the app and its bundle work with the network off.
//
// - App shell (this folder: html, js, css, vendored onnxruntime-web and sqlite-wasm): precached at
//   install, then served from the cache and refreshed in the background (stale-while-revalidate),
//   so a new app version is picked up on the next visit.
// - Bundle files (bundle/<file>?v=<sha256 prefix>): immutable URLs, cache first. The page stores
//   them in the "malm-edge-bundle" cache as it downloads them (see js/bundle.js).
// - bundle/manifest.json, and its signature and trusted key (js/signature.js): network first, the
//   cached copy when offline (a cached signature must never pair with a newer manifest).
// Only same-origin GET requests are handled; the app never asks any other host for anything.
const SHELL_CACHE = "malm-edge-shell-v5";
const BUNDLE_CACHE = "malm-edge-bundle";
const SHELL = [
  "./",
  "index.html",
  "app.css",
  "app.webmanifest",
  "icon.svg",
  "js/main.js",
  "js/bundle.js",
  "js/signature.js",
  "js/preprocess.js",
  "js/topk.js",
  "js/twostage.js",
  "js/encoder.js",
  "js/catalog.js",
  "js/nomodule.js",
  "vendor/ort/ort.wasm.min.mjs",
  "vendor/ort/ort-wasm-simd-threaded.mjs",
  "vendor/ort/ort-wasm-simd-threaded.wasm",
  "vendor/sqlite/sqlite3.mjs",
  "vendor/sqlite/sqlite3.wasm",
];

const NETWORK_FIRST = new Set(["bundle/manifest.json", "bundle/manifest.sig", "bundle/trusted-key.json"]);

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL_CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("malm-edge-shell-") && name !== SHELL_CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

async function networkFirst(request) {
  const cache = await caches.open(BUNDLE_CACHE);
  try {
    const response = await fetch(request);
    if (response.ok) await cache.put(request, response.clone());
    return response;
  } catch (err) {
    const cached = await cache.match(request, { ignoreSearch: true });
    if (cached) return cached;
    throw err;
  }
}

async function cacheFirst(request) {
  const cache = await caches.open(BUNDLE_CACHE);
  const cached = await cache.match(request);
  if (cached) return cached;
  const response = await fetch(request);
  if (response.ok) await cache.put(request, response.clone());
  return response;
}

async function staleWhileRevalidate(event) {
  const { request } = event;
  const cache = await caches.open(SHELL_CACHE);
  const cached = await cache.match(request, { ignoreSearch: request.mode === "navigate" });
  const refresh = fetch(request).then(async (response) => {
    if (response.ok && response.type === "basic") await cache.put(request, response.clone());
    return response;
  });
  if (cached) {
    event.waitUntil(refresh.catch(() => undefined)); // offline: keep the cached copy
    return cached;
  }
  return refresh;
}

self.addEventListener("fetch", (event) => {
  const { request } = event;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  const scope = new URL(self.registration.scope);
  const path = url.pathname.slice(scope.pathname.length);
  if (NETWORK_FIRST.has(path)) event.respondWith(networkFirst(request));
  else if (path.startsWith("bundle/")) event.respondWith(cacheFirst(request));
  else event.respondWith(staleWhileRevalidate(event));
});
