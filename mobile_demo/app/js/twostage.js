// Two-stage search over table format version 2 (edge/twostage.py, edge/table_codes.py), with
// typed arrays: the same rows, in the same order, as edge/ and the native core.
//
// 1. Hamming distance (popcount of XOR) of every row's sign code to the code of (query - centre).
// 2. Keep the max(k, candidates) rows of smallest distance, the lower rows at the boundary.
// 3. Rescore them: key = float32(v . q8) * scale_r, v the 7-bit values (sign bit + 6-bit
//    magnitude), q8 the int8-quantised query: exact integer dots, so no summation-order drift.
// 4. Top-k by key, ties to the lower row; reported score key * s_q + centre . query.

const VALUE_MAX_BITS = 6;

/** Bits set in a 32-bit integer. */
function popcount32(x) {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}

/** Python's round (half to even) of a float32 value already in a double. */
function roundHalfEven(x) {
  const floor = Math.floor(x), rest = x - floor;
  if (rest !== 0.5) return rest < 0.5 ? floor : floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * A version 2 table as typed views over the downloaded bytes.
 * @param {object} entry the manifest's `table` entry (version 2).
 * @param {ArrayBuffer} values table.i7 bytes (magnitude planes).
 * @param {ArrayBuffer} scales table.scales.f32 bytes.
 * @param {ArrayBuffer} codes table.sign.u64 bytes.
 */
export function makeTwoStageTable(entry, values, scales, codes) {
  const { rows, dim, candidates } = entry;
  const words = Math.ceil(dim / 64), nibbleBytes = Math.ceil(dim / 2);
  const valueBytes = nibbleBytes + Math.ceil(dim / 4);
  const table = {
    kind: "twostage", rows, dim, candidates, words, nibbleBytes, valueBytes,
    values: new Uint8Array(values), scales: new Float32Array(scales), codes: new Uint32Array(codes),
    centre: Float32Array.from(entry.centre),
  };
  if (table.values.length !== rows * valueBytes) throw new Error(`${entry.file}: ${table.values.length} bytes, expected ${rows * valueBytes}`);
  if (table.scales.length !== rows) throw new Error(`${entry.scales_file}: ${table.scales.length} scales, expected ${rows}`);
  if (table.codes.length !== rows * words * 2) throw new Error(`${entry.codes_file}: ${table.codes.length * 4} bytes, expected ${rows * words * 8}`);
  if (table.centre.length !== dim) throw new Error(`table.centre: ${table.centre.length} values, expected ${dim}`);
  return table;
}

/** Rows of the `keep` smallest Hamming distances to `queryCode` (Uint32Array, 2 per word), ascending. */
function prefilter(table, queryCode, keep) {
  const { rows, codes } = table, halves = table.words * 2;
  const distances = new Uint16Array(rows), histogram = new Int32Array(halves * 32 + 1);
  for (let r = 0, base = 0; r < rows; r++, base += halves) {
    let d = 0;
    for (let h = 0; h < halves; h++) d += popcount32(codes[base + h] ^ queryCode[h]);
    distances[r] = d;
    histogram[d]++;
  }
  let below = 0, boundary = 0;
  while (below + histogram[boundary] < keep) below += histogram[boundary++];
  let atBoundary = keep - below;
  const kept = new Int32Array(keep);
  let n = 0;
  for (let r = 0; r < rows; r++) {
    const d = distances[r];
    if (d < boundary || (d === boundary && atBoundary-- > 0)) kept[n++] = r;
  }
  return kept;
}

/** v_r . query8 as an exact integer (7-bit values: sign from the code, magnitude from two planes). */
function dotRow(table, r, query8) {
  const { dim, values, codes, nibbleBytes, valueBytes, words } = table;
  const base = r * valueBytes, codeBase = r * words * 2;
  let total = 0;
  for (let d = 0; d < dim; d++) {
    const low = (values[base + (d >> 1)] >> ((d & 1) << 2)) & 15;
    const high = (values[base + nibbleBytes + (d >> 2)] >> ((d & 3) << 1)) & 3;
    const magnitude = low | (high << (VALUE_MAX_BITS - 2));
    const positive = (codes[codeBase + (d >> 5)] >>> (d & 31)) & 1;
    total += (positive ? magnitude : -magnitude) * query8[d];
  }
  return total;
}

/**
 * Two-stage top-k for one L2-normalised query.
 * @param {object} table from makeTwoStageTable.
 * @param {Float32Array} query (dim,)
 * @param {number} k
 * @param {number} [candidates] rows the prefilter keeps (default: the manifest's).
 * @returns {{rows: number[], scores: number[]}} best first, ties to the lower row.
 */
export function searchTwoStage(table, query, k = 5, candidates = table.candidates) {
  const { rows, dim, centre, scales } = table;
  if (query.length !== dim) throw new Error(`query dim ${query.length} != table dim ${dim}`);
  if (!query.every(Number.isFinite)) throw new Error("query embedding holds NaN or infinity");
  k = Math.max(0, Math.min(k, rows));
  if (k === 0) return { rows: [], scores: [] };
  const queryCode = new Uint32Array(table.words * 2);
  let peak = 0, offset = 0;
  for (let d = 0; d < dim; d++) {
    if (Math.fround(query[d] - centre[d]) > 0) queryCode[d >> 5] |= 1 << (d & 31);
    peak = Math.max(peak, Math.abs(query[d]));
    offset += centre[d] * query[d];
  }
  const scale = peak > 0 ? Math.fround(peak / 127) : 1;
  const query8 = Int32Array.from(query, (v) => roundHalfEven(Math.fround(v / scale)));
  const kept = prefilter(table, queryCode, Math.min(rows, Math.max(k, candidates)));
  const hits = Array.from(kept, (r) => ({ row: r, key: Math.fround(Math.fround(dotRow(table, r, query8)) * scales[r]) }));
  hits.sort((a, b) => {
    if (Number.isNaN(a.key) || Number.isNaN(b.key)) return Number.isNaN(a.key) - Number.isNaN(b.key) || a.row - b.row;
    return b.key - a.key || a.row - b.row;
  });
  const best = hits.slice(0, k);
  const shift = Math.fround(offset);
  return { rows: best.map((h) => h.row), scores: best.map((h) => Math.fround(Math.fround(h.key * scale) + shift)) };
}
