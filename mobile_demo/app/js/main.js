// The demo page: check the browser, load the bundle (progress), then photo -> top-5 recipes and a
// word search over the catalog. Everything runs on the device; the service worker (sw.js) keeps
// the app and the bundle for offline use.
//
// State for tests and benchmarks is in the DOM: body[data-state] = loading | ready | searching |
// error | unsupported; each result <li> carries data-rank, data-id, data-row, data-score;
// #results[data-search-count] counts finished photo searches; #timing carries data-*-ms.
import { chooseEncoder, downloadBundle, fetchSignedManifest } from "./bundle.js";
import { decodePhoto, preprocessPixels } from "./preprocess.js";
import { makeTable, searchTopK } from "./topk.js";

const $ = (id) => document.getElementById(id);
const TOP_K = 5;
const app = { manifest: null, encoder: null, table: null, catalog: null, normalized: true };

// A 1-function module using a v128 instruction (wasm-feature-detect's SIMD probe).
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0,
  65, 0, 253, 15, 253, 98, 11]);

/** What the browser lacks to run the demo at all ([] when nothing). */
function missingFeatures() {
  const missing = [];
  if (typeof WebAssembly !== "object") missing.push("WebAssembly");
  else if (!WebAssembly.validate(SIMD_PROBE)) missing.push("WebAssembly SIMD (update the browser)");
  if (typeof createImageBitmap !== "function") missing.push("createImageBitmap");
  if (typeof OffscreenCanvas !== "function") missing.push("OffscreenCanvas (iOS 16.4+ / a recent browser)");
  if (typeof fetch !== "function" || typeof ReadableStream !== "function") missing.push("fetch streams");
  return missing;
}

/** Things that work in a reduced way here. */
function warnings() {
  const notes = [];
  if (!globalThis.isSecureContext) notes.push("Not a secure context (use https:// or localhost): no offline mode, no checksums.");
  else if (!("serviceWorker" in navigator)) notes.push("No service worker: the app will not work offline.");
  if (!globalThis.crossOriginIsolated) notes.push("Not cross-origin isolated: the model runs on 1 thread.");
  return notes;
}

function setState(state) {
  document.body.dataset.state = state;
}

function showFatal(message) {
  const box = $("unsupported");
  box.textContent = message;
  box.hidden = false;
  $("loading").hidden = true;
  setState(box.dataset.kind || "error");
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

async function registerServiceWorker() {
  if (!globalThis.isSecureContext || !("serviceWorker" in navigator)) return;
  try {
    await navigator.serviceWorker.register("sw.js", { scope: "./" });
  } catch (err) {
    console.warn("service worker registration failed:", err);
  }
}

async function loadBundle() {
  const started = performance.now();
  $("status").textContent = "Reading the bundle manifest…";
  const { manifest, signature } = await fetchSignedManifest();
  document.body.dataset.signature = signature.state;
  if (signature.state === "unsupported") {
    $("warnings").textContent = [$("warnings").textContent, "This browser cannot check Ed25519 signatures " +
      "(no WebCrypto Ed25519): the bundle's checksums are checked, its signature is not. Use a recent Chrome, " +
      "Safari or Firefox."].filter(Boolean).join(" ");
  }
  const wanted = new URLSearchParams(location.search).get("encoder");
  const entry = chooseEncoder(manifest, wanted);
  const { bytes, verified, totalBytes } = await downloadBundle(manifest, entry, (done, total, what) => {
    $("progress").max = total || 1;
    $("progress").value = done;
    $("status").textContent = `Downloading ${what}: ${megabytes(done)} of ${megabytes(total)}`;
  });
  $("status").textContent = "Starting the model…";
  const [{ loadEncoder, wasmThreads, ortVersion }, { openCatalog }] = await Promise.all([
    import("./encoder.js"),
    import("./catalog.js"),
  ]);
  app.table = makeTable(manifest.table, bytes.table.buffer, bytes.scales ? bytes.scales.buffer : null,
    bytes.codes ? bytes.codes.buffer : null);
  [app.encoder, app.catalog] = await Promise.all([
    loadEncoder(bytes.encoder, entry, manifest.preprocessing.input_size),
    openCatalog(bytes.catalog, manifest.table.rows),
  ]);
  app.manifest = manifest;
  app.normalized = (entry.pixel_input ?? "normalized") === "normalized";
  const sqlite = app.catalog.info();
  const loadMs = performance.now() - started;
  document.body.dataset.loadMs = loadMs.toFixed(1);
  document.body.dataset.bundleBytes = String(totalBytes);
  document.body.dataset.threads = String(wasmThreads());
  $("env").textContent = `${manifest.table.rows} recipes · encoder ${entry.name} (${megabytes(entry.size_bytes)}) · ` +
    `onnxruntime-web ${ortVersion}, ${wasmThreads()} thread(s) · SQLite ${sqlite.version}${sqlite.fts5 ? " + FTS5" : ""} · ` +
    `bundle ${megabytes(totalBytes)}${verified ? ", sha256 checked" : ""}` +
    `${signature.state === "verified" ? `, signature verified (key ${signature.keyId})` : ""} · ready in ${(loadMs / 1000).toFixed(1)} s`;
}

function element(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function recipeItem(recipe, rank, score) {
  const item = element("li", { "data-rank": rank, "data-id": recipe.id, "data-row": recipe.row, "data-score": score.toFixed(6) });
  item.append(element("span", { class: "score" }, score.toFixed(3)), element("strong", {}, recipe.title),
    element("span", { class: "rid" }, recipe.id));
  const details = element("details");
  details.append(element("summary", {}, "Ingredients and steps"));
  for (const lines of [recipe.ingredients, recipe.instructions]) {
    const list = element("ul");
    for (const line of lines) list.append(element("li", {}, line));
    details.append(list);
  }
  item.append(details);
  return item;
}

function showPreview(file) {
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
}

/** Photo -> top-k, timing each step; results and times go into the DOM. */
async function searchPhoto(file) {
  setState("searching");
  const results = $("results");
  const t0 = performance.now();
  const { pixels, width, height } = await decodePhoto(file);
  const t1 = performance.now();
  const input = preprocessPixels(pixels, width, height, 4, app.manifest.preprocessing, app.normalized);
  const t2 = performance.now();
  const embedding = await app.encoder.embed(input);
  const t3 = performance.now();
  const { rows, scores } = searchTopK(app.table, embedding, TOP_K);
  const t4 = performance.now();
  const recipes = app.catalog.lookup(rows);
  const t5 = performance.now();
  results.replaceChildren(...recipes.map((recipe, i) => recipeItem(recipe, i + 1, scores[i])));
  const times = { decode: t1 - t0, preprocess: t2 - t1, encode: t3 - t2, topk: t4 - t3, catalog: t5 - t4, total: t5 - t0 };
  const timing = $("timing");
  for (const [step, ms] of Object.entries(times)) timing.dataset[`${step}Ms`] = ms.toFixed(2);
  timing.textContent = `Looked up in ${times.total.toFixed(0)} ms (decode ${times.decode.toFixed(0)}, ` +
    `resize ${times.preprocess.toFixed(0)}, model ${times.encode.toFixed(0)}, table ${times.topk.toFixed(0)}, ` +
    `catalog ${times.catalog.toFixed(0)}) · ${width}×${height} photo`;
  results.dataset.searchCount = String(Number(results.dataset.searchCount) + 1);
  setState("ready");
}

function searchText(query) {
  const list = $("text-results");
  const started = performance.now();
  const hits = app.catalog.textSearch(query, 10);
  const ms = performance.now() - started;
  const items = hits.map((hit, i) => {
    const item = element("li", { "data-rank": i + 1, "data-id": hit.id, "data-row": hit.row }, hit.title);
    item.append(element("span", { class: "rid" }, hit.id));
    return item;
  });
  if (!items.length) items.push(element("li", { class: "meta", "data-empty": "" }, "No recipe holds all these words."));
  list.replaceChildren(...items);
  list.dataset.ms = ms.toFixed(2);
  list.dataset.searchCount = String(Number(list.dataset.searchCount) + 1);
}

async function onPhotoChosen(event) {
  const file = event.target.files?.[0];
  if (!file) return;
  showPreview(file);
  try {
    await searchPhoto(file);
  } catch (err) {
    $("timing").textContent = `Could not search this photo: ${err.message || err}`;
    setState("ready");
  }
  event.target.value = ""; // picking the same photo again fires "change" again
}

function wireUi() {
  // Two inputs: "capture" opens the camera directly on phones; the other opens the gallery.
  $("photo").addEventListener("change", onPhotoChosen);
  $("photo-pick").addEventListener("change", onPhotoChosen);
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchText($("text-query").value);
  });
}

async function main() {
  const missing = missingFeatures();
  if (missing.length) {
    $("unsupported").dataset.kind = "unsupported";
    showFatal(`This browser lacks what the demo needs: ${missing.join(", ")}. ` +
      "Try a recent Chrome, Safari (iOS 16.4+) or Firefox.");
    return;
  }
  $("warnings").textContent = warnings().join(" ");
  wireUi();
  try {
    await loadBundle();
  } catch (err) {
    console.error(err);
    showFatal(`Could not load the recipe bundle: ${err.message || err}` +
      (navigator.onLine ? "" : " (offline, and the bundle is not cached yet: open the page once online)"));
    return;
  }
  $("loading").hidden = true;
  $("photo-panel").hidden = false;
  $("text-panel").hidden = false;
  document.body.dataset.readyMs = performance.now().toFixed(1); // since navigation start
  setState("ready");
  // Registered once the app runs: the worker's precache then revalidates what the page just
  // downloaded (304s from the HTTP cache) instead of racing it for a second copy.
  registerServiceWorker();
}

main();
