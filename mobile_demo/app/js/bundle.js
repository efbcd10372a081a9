// Download the bundle the demo server publishes under ./bundle/ (manifest.json + the files it names),
// with byte progress and sha256 checks, and keep a copy in the Cache API for offline use.
// File URLs carry the file's sha256 (?v=...), so a cached file is never stale: a new bundle has
// new URLs, and files no longer named by the manifest are dropped from the cache.

export const BUNDLE_CACHE = "malm-edge-bundle";
const MANIFEST_URL = "bundle/manifest.json";

/** The bundle's ONNX encoder the page uses: ?encoder=NAME, else the first ONNX one in the manifest. */
export function chooseEncoder(manifest, wanted = null) {
  const onnx = manifest.encoders.filter((e) => e.target === "onnx");
  const entry = wanted ? onnx.find((e) => e.name === wanted) : onnx[0];
  if (!entry) {
    const names = onnx.map((e) => e.name).join(", ") || "none";
    throw new Error(`the bundle has no ONNX encoder${wanted ? ` named ${wanted}` : ""} (ONNX encoders: ${names})`);
  }
  return entry;
}

/** (what, file, sha256, expected size or null) of every file the page downloads. */
export function bundleFiles(manifest, encoder) {
  const { table, catalog } = manifest;
  const bytesPer = { int8: 1, float16: 2, float32: 4 }[table.dtype];
  const files = [
    { key: "encoder", file: encoder.file, sha256: encoder.sha256, size: encoder.size_bytes },
    { key: "table", file: table.file, sha256: table.sha256, size: table.rows * table.dim * bytesPer },
  ];
  if (table.scales_file) files.push({ key: "scales", file: table.scales_file, sha256: table.scales_sha256, size: table.rows * 4 });
  files.push({ key: "catalog", file: catalog.file, sha256: catalog.sha256, size: null });
  return files.map((f) => ({ ...f, url: `bundle/${f.file.split("/").map(encodeURIComponent).join("/")}?v=${f.sha256.slice(0, 16)}` }));
}

/** manifest.json from the server (kept in the cache), or the cached copy when offline. */
export async function fetchManifest() {
  const cache = await openCache();
  let response;
  try {
    response = await fetch(MANIFEST_URL, { cache: "no-cache" });
    if (!response.ok) throw new Error(`${MANIFEST_URL}: HTTP ${response.status}`);
    if (cache) await cache.put(MANIFEST_URL, response.clone());
  } catch (err) {
    response = cache ? await cache.match(MANIFEST_URL) : undefined;
    if (!response) throw err;
  }
  const manifest = await response.json();
  if (manifest.format !== "malm-edge-bundle" || manifest.version !== 1) {
    throw new Error(`${MANIFEST_URL}: not a malm-edge bundle v1 (format ${manifest.format}, version ${manifest.version})`);
  }
  return manifest;
}

async function readWithProgress(response, onBytes) {
  if (!response.body) {
    const buffer = await response.arrayBuffer();
    onBytes(buffer.byteLength);
    return new Uint8Array(buffer);
  }
  const reader = response.body.getReader();
  const chunks = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    total += value.byteLength;
    onBytes(value.byteLength);
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function checkSha256(bytes, file) {
  if (!globalThis.crypto?.subtle) return false; // insecure context: no WebCrypto, skip the check
  const digest = hex(await crypto.subtle.digest("SHA-256", bytes));
  if (digest !== file.sha256) throw new Error(`bundle/${file.file}: sha256 ${digest.slice(0, 12)}... does not match the manifest`);
  return true;
}

async function openCache() {
  try {
    return globalThis.caches ? await caches.open(BUNDLE_CACHE) : null;
  } catch {
    return null; // e.g. storage disabled
  }
}

/**
 * Download every file the page needs.
 * @param {(done: number, total: number, what: string) => void} onProgress
 * @returns {Promise<{bytes: Object<string, Uint8Array>, verified: boolean, totalBytes: number}>}
 */
export async function downloadBundle(manifest, encoder, onProgress) {
  const files = bundleFiles(manifest, encoder);
  const cache = await openCache();
  const responses = await Promise.all(files.map(async (f) => {
    const cached = cache ? await cache.match(f.url) : undefined;
    const response = cached ?? (await fetch(f.url));
    if (!response.ok) throw new Error(`${f.url}: HTTP ${response.status}`);
    return { f, response, cached: Boolean(cached) };
  }));
  const sizes = responses.map(({ f, response }) => f.size ?? Number(response.headers.get("Content-Length") || 0));
  const total = sizes.reduce((a, b) => a + b, 0);
  let done = 0;
  const bytes = {};
  let verified = true;
  await Promise.all(responses.map(async ({ f, response, cached }) => {
    bytes[f.key] = await readWithProgress(response, (n) => onProgress((done += n), total, f.file));
    verified = (await checkSha256(bytes[f.key], f)) && verified;
    if (cache && !cached) {
      const headers = { "Content-Type": "application/octet-stream", "Content-Length": String(bytes[f.key].byteLength) };
      await cache.put(f.url, new Response(bytes[f.key], { headers }));
    }
  }));
  if (cache) await pruneCache(cache, files);
  return { bytes, verified, totalBytes: done };
}

/** Keep the manifest (for offline reloads) and only the current files in the bundle cache. */
async function pruneCache(cache, files) {
  const keep = new Set(files.map((f) => new URL(f.url, location.href).href));
  keep.add(new URL(MANIFEST_URL, location.href).href);
  for (const request of await cache.keys()) {
    if (!keep.has(request.url)) await cache.delete(request);
  }
}
