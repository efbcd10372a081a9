// Download the bundle the demo server publishes under ./bundle/ (manifest.json + the files it names),
// with byte progress and sha256 checks, and keep a copy in the Cache API for offline use.
// File URLs carry the file's sha256 (?v=...), so a cached file is never stale: a new bundle has
// new URLs, and files no longer named by the manifest are dropped from the cache.

import { SIGNATURE_URL, TRUSTED_KEY_URL, checkManifestSignature } from "./signature.js";

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

/** The name Python gives a decoded JSON value's type (edge/bundle.py's messages). */
function pythonType(value) {
  if (typeof value === "string") return "str";
  if (typeof value === "boolean") return "bool";
  if (typeof value === "number") return Number.isInteger(value) ? "int" : "float";
  return Array.isArray(value) ? "list" : "dict";
}

/** Table format versions the page reads: 1 exact rows (js/topk.js); 2 and 3 sign codes + 7- / 8-bit rows (js/twostage.js). */
const TABLE_VERSIONS = [1, 2, 3];

/**
 * The manifest checks of edge/bundle.py `_parse_table_v3` that decide which files the page downloads
 * (the same messages); the centre and the file sizes are checked by js/twostage.js.
 * @param {object} table the manifest's `table` entry.
 */
function checkTableEntry(table) {
  const version = table.version ?? 1;
  if (!TABLE_VERSIONS.includes(version)) {
    throw new Error(`${MANIFEST_URL}: unknown table format version ${version} (this reader supports table versions [${TABLE_VERSIONS.join(", ")}])`);
  }
  if (table.query_bits != null) {
    if (version !== 3) {
      throw new Error(`${MANIFEST_URL}: table.query_bits needs table version 3 (this table is version ${version})`);
    }
    if (!Number.isInteger(table.query_bits)) {
      throw new Error(`${MANIFEST_URL}: field 'table.query_bits' has type ${pythonType(table.query_bits)}, expected <class 'int'>`);
    }
  }
  if (version !== 3) return;
  const missing = ["codes_file", "codes_sha256", "centre", "centre_scale", "candidates"].filter((key) => table[key] == null);
  if (missing.length) throw new Error(`${MANIFEST_URL}: table version 3 needs ${missing.map((key) => `table.${key}`).join(", ")}`);
  if (table.dtype !== "int8n") throw new Error(`${MANIFEST_URL}: table.dtype = '${table.dtype}', expected 'int8n' for table version 3`);
  if (table.scales_file != null || table.scales_sha256 != null) {
    throw new Error(`${MANIFEST_URL}: table version 3 has no scales file (its row scales are implied)`);
  }
}

/** Bytes a row takes in the table file: dim values (v1), nibble + crumb planes (v2), + the bit-6 plane (v3). */
function tableRowBytes(table) {
  const { dim } = table;
  const version = table.version ?? 1;
  if (version === 1) return dim * { int8: 1, float16: 2, float32: 4 }[table.dtype];
  const planes = Math.ceil(dim / 2) + Math.ceil(dim / 4);
  return version === 3 ? planes + Math.ceil(dim / 8) : planes;
}

/** (what, file, sha256, expected size or null) of every file the page downloads. */
export function bundleFiles(manifest, encoder) {
  const { table, catalog } = manifest;
  checkTableEntry(table);
  const twoStage = (table.version ?? 1) !== 1; // sign codes + 7- or 8-bit rows (js/twostage.js)
  const files = [
    { key: "encoder", file: encoder.file, sha256: encoder.sha256, size: encoder.size_bytes },
    { key: "table", file: table.file, sha256: table.sha256, size: table.rows * tableRowBytes(table) },
  ];
  if (table.scales_file) files.push({ key: "scales", file: table.scales_file, sha256: table.scales_sha256, size: table.rows * 4 });
  if (twoStage) {
    files.push({ key: "codes", file: table.codes_file, sha256: table.codes_sha256, size: table.rows * Math.ceil(table.dim / 64) * 8 });
  }
  files.push({ key: "catalog", file: catalog.file, sha256: catalog.sha256, size: null });
  return files.map((f) => ({ ...f, url: `bundle/${f.file.split("/").map(encodeURIComponent).join("/")}?v=${f.sha256.slice(0, 16)}` }));
}

/**
 * A small bundle file from the server (kept in the cache), or the cached copy when offline; null on 404,
 * and null for an `optional` file that is neither reachable nor cached (offline, never published).
 */
async function fetchSmall(url, cache, optional = false) {
  let response;
  try {
    response = await fetch(url, { cache: "no-cache" });
    if (response.status === 404) {
      if (cache) await cache.delete(url);
      return null;
    }
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    if (cache) await cache.put(url, response.clone());
  } catch (err) {
    response = cache ? await cache.match(url) : undefined;
    if (!response && optional) return null;
    if (!response) throw err;
  }
  return new Uint8Array(await response.arrayBuffer());
}

/**
 * manifest.json (online, or cached when offline) and its signature state (js/signature.js).
 * @returns {Promise<{manifest: object, signature: {state: string, keyId?: string}}>}
 */
export async function fetchSignedManifest() {
  const cache = await openCache();
  const bytes = await fetchSmall(MANIFEST_URL, cache);
  if (!bytes) throw new Error(`${MANIFEST_URL}: HTTP 404`);
  const getJson = async (url) => {
    const data = await fetchSmall(url, cache, true);
    if (!data) return null;
    try {
      return JSON.parse(new TextDecoder().decode(data));
    } catch {
      throw new Error(`${url}: not valid JSON`);
    }
  };
  const signature = await checkManifestSignature(bytes, getJson);
  const manifest = JSON.parse(new TextDecoder().decode(bytes));
  if (manifest.format !== "malm-edge-bundle" || manifest.version !== 1) {
    throw new Error(`${MANIFEST_URL}: not a malm-edge bundle v1 (format ${manifest.format}, version ${manifest.version})`);
  }
  return { manifest, signature };
}

/** manifest.json from the server (kept in the cache), or the cached copy when offline (signature checked). */
export async function fetchManifest() {
  return (await fetchSignedManifest()).manifest;
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
  for (const url of [MANIFEST_URL, SIGNATURE_URL, TRUSTED_KEY_URL]) keep.add(new URL(url, location.href).href);
  for (const request of await cache.keys()) {
    if (!keep.has(request.url)) await cache.delete(request);
  }
}
