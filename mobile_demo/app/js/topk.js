// Exact top-k over the bundle's embedding table with typed arrays (edge/table.py search_topk).
// int8 rows: score_r = (q_r . query) * scale_r; float16 rows: q_r . query. Best first, ties broken
// towards the lower row (rows are scanned in order and an equal score never displaces a kept one).
// A table version 2 or 3 (sign-bit prefilter + 7- or 8-bit rescoring) is made and searched by js/twostage.js.

import { TWOSTAGE_VERSIONS, makeTwoStageTable, searchTwoStage } from "./twostage.js";

let float16Lookup = null;

/** float32 value of every float16 bit pattern (built once, 256 KiB). */
function float16Table() {
  if (float16Lookup) return float16Lookup;
  float16Lookup = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    if (exp === 0) float16Lookup[h] = sign * frac * 2 ** -24;
    else if (exp === 31) float16Lookup[h] = frac ? NaN : sign * Infinity;
    else float16Lookup[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return float16Lookup;
}

/**
 * The table as typed views over the downloaded bytes.
 * @param {object} entry the manifest's `table` entry.
 * @param {ArrayBuffer} values table.i8 / table.f16 / table.f32 bytes (v1), table.i7 (v2), table.i8n (v3).
 * @param {ArrayBuffer|null} scales table.scales.f32 bytes (int8 and version 2).
 * @param {ArrayBuffer|null} codes table.sign.u64 bytes (versions 2 and 3 only).
 */
export function makeTable(entry, values, scales, codes = null) {
  if (TWOSTAGE_VERSIONS.includes(entry.version ?? 1)) return makeTwoStageTable(entry, values, scales, codes);
  const { rows, dim, dtype } = entry;
  const views = { int8: Int8Array, float16: Uint16Array, float32: Float32Array };
  if (!views[dtype]) throw new Error(`table.dtype ${dtype} is not supported`);
  const data = new views[dtype](values);
  if (data.length !== rows * dim) throw new Error(`${entry.file}: ${data.length} values, expected ${rows} x ${dim}`);
  const scaleView = dtype === "int8" ? new Float32Array(scales) : null;
  if (scaleView && scaleView.length !== rows) throw new Error(`${entry.scales_file}: ${scaleView.length} scales, expected ${rows}`);
  return { rows, dim, dtype, data, scales: scaleView };
}

/** data[base : base + dim] . query with four independent partial sums (shorter dependency chains). */
function dotRow(data, base, query, dim) {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0, d = 0;
  for (; d + 3 < dim; d += 4) {
    s0 += data[base + d] * query[d];
    s1 += data[base + d + 1] * query[d + 1];
    s2 += data[base + d + 2] * query[d + 2];
    s3 += data[base + d + 3] * query[d + 3];
  }
  for (; d < dim; d++) s0 += data[base + d] * query[d];
  return s0 + s1 + (s2 + s3);
}

function dotFloat16(lookup, data, base, query, dim) {
  let sum = 0;
  for (let d = 0; d < dim; d++) sum += lookup[data[base + d]] * query[d];
  return sum;
}

/**
 * Top-k rows for one L2-normalised query.
 * @param {{rows:number, dim:number, dtype:string, data:ArrayLike<number>, scales:Float32Array|null}} table
 * @param {Float32Array} query (dim,)
 * @returns {{rows: number[], scores: number[]}} best first.
 */
export function searchTopK(table, query, k = 5) {
  if (table.kind === "twostage") return searchTwoStage(table, query, k);
  const { rows, dim, dtype, data, scales } = table;
  if (query.length !== dim) throw new Error(`query dim ${query.length} != table dim ${dim}`);
  if (!query.every(Number.isFinite)) throw new Error("query embedding holds NaN or infinity");
  k = Math.max(0, Math.min(k, rows));
  const bestRows = [], bestScores = [];
  const lookup = dtype === "float16" ? float16Table() : null;
  for (let r = 0, base = 0; r < rows; r++, base += dim) {
    const dot = lookup ? dotFloat16(lookup, data, base, query, dim) : dotRow(data, base, query, dim);
    const score = scales ? Math.fround(Math.fround(dot) * scales[r]) : Math.fround(dot);
    if (bestScores.length === k && !(score > bestScores[k - 1])) continue;
    let at = bestScores.length;
    while (at > 0 && score > bestScores[at - 1]) at--;
    bestRows.splice(at, 0, r);
    bestScores.splice(at, 0, score);
    if (bestScores.length > k) {
      bestRows.pop();
      bestScores.pop();
    }
  }
  return { rows: bestRows, scores: bestScores };
}

/** L2-normalise a float32 vector (edge/backends.py l2_normalize, eps 1e-12). */
export function l2Normalize(vector) {
  let sum = 0;
  for (const v of vector) sum += v * v;
  const norm = Math.max(Math.fround(Math.sqrt(sum)), 1e-12);
  return Float32Array.from(vector, (v) => v / norm);
}
