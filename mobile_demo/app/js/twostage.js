// Two-stage search over table format versions 3 and 2 (edge/twostage.py, edge/table_codes.py),
// with typed arrays: the same rows, in the same order, as edge/ and the native core.
//
// 1. Distance of every row's sign code to the code of x = query - centre: Hamming (popcount of XOR),
//    or with version 3's query_bits P >= 2 weighted by x's P-bit magnitudes w_d,
//    sum_k 2^k popcount(XOR & plane_k) (edge/table_codes.py, "Weighted prefilter").
// 2. Keep the max(k, candidates) rows of smallest distance, the lower rows at the boundary.
// 3. Rescore them with q8, the int8-quantised query, and the row's values v (sign bit + magnitude):
//    version 3, 8-bit values (7-bit magnitude), key = float64(v . q8) * s_r with s_r the implied
//    scale that puts c + s_r v on the unit sphere; version 2, 7-bit values (6-bit magnitude),
//    key = float32(v . q8) * scale_r. Exact integer dots, so no summation-order drift.
// 4. Top-k by key, ties to the lower row; reported score key * s_q + centre . query.

/** Table versions this module reads. */
export const TWOSTAGE_VERSIONS = [2, 3];

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
 * Bytes of one row's magnitude planes: nibble + crumb planes (version 2), then the bit-6 plane (version 3).
 * @param {number} version 2 or 3.
 * @param {number} dim
 */
export function magnitudeBytes(version, dim) {
  const planes = Math.ceil(dim / 2) + Math.ceil(dim / 4);
  return version === 3 ? planes + Math.ceil(dim / 8) : planes;
}

/**
 * The version 3 centre: integer codes c8, their float32 centre c = fround(c8 * centre_scale) and the
 * per-table constant K = 1 - centre_scale^2 * (c8 . c8) of the implied scales.
 * @param {object} entry the manifest's `table` entry (version 3).
 * @returns {{centre8: Int32Array, centreScale: number, centre: Float32Array, radial: number}}
 */
function centreV3(entry) {
  const { dim, centre_scale: centreScale } = entry;
  const codes = entry.centre;
  if (!Array.isArray(codes) || codes.length !== dim || !codes.every((c) => Number.isInteger(c) && c >= -127 && c <= 127)) {
    throw new Error(`table.centre must be ${dim} integers in -127..127 (table.dim)`);
  }
  if (typeof centreScale !== "number" || !Number.isFinite(centreScale) || !(centreScale > 0)) {
    throw new Error("table.centre_scale must be a finite number > 0");
  }
  const centre8 = Int32Array.from(codes);
  let squares = 0; // c8 . c8, an exact integer
  for (const c of centre8) squares += c * c;
  if (centreScale * centreScale * squares >= 1) {
    throw new Error("table.centre x table.centre_scale must be shorter than 1 (the mean of unit rows)");
  }
  const centre = Float32Array.from(centre8, (c) => Math.fround(c * centreScale));
  const queryBits = entry.query_bits ?? 1;
  if (!Number.isInteger(queryBits) || queryBits < 1 || queryBits > 4) {
    throw new Error(`table.query_bits must be one of (1, 2, 3, 4), got ${queryBits}`);
  }
  if (((1 << queryBits) - 1) * dim > 65535) {
    throw new Error(`table.query_bits ${queryBits} is too wide for a ${dim}-d table: distances must stay <= 65535`);
  }
  return { centre8, centreScale, centre, radial: 1.0 - (centreScale * centreScale) * squares, queryBits };
}

/**
 * A version 2 or 3 table as typed views over the downloaded bytes.
 * @param {object} entry the manifest's `table` entry (version 2 or 3).
 * @param {ArrayBuffer} values table.i7 (v2) / table.i8n (v3) bytes (magnitude planes).
 * @param {ArrayBuffer|null} scales table.scales.f32 bytes (version 2; unused in version 3, whose scales are implied).
 * @param {ArrayBuffer} codes table.sign.u64 bytes.
 */
export function makeTwoStageTable(entry, values, scales, codes) {
  const { rows, dim, candidates, version } = entry;
  if (!TWOSTAGE_VERSIONS.includes(version)) throw new Error(`table version ${version} is not a two-stage table`);
  const words = Math.ceil(dim / 64), nibbleBytes = Math.ceil(dim / 2);
  const topBytesAt = nibbleBytes + Math.ceil(dim / 4), valueBytes = magnitudeBytes(version, dim);
  const table = {
    kind: "twostage", version, rows, dim, candidates, words, nibbleBytes, topBytesAt, valueBytes,
    values: new Uint8Array(values), codes: new Uint32Array(codes),
  };
  if (table.values.length !== rows * valueBytes) throw new Error(`${entry.file}: ${table.values.length} bytes, expected ${rows * valueBytes}`);
  if (table.codes.length !== rows * words * 2) throw new Error(`${entry.codes_file}: ${table.codes.length * 4} bytes, expected ${rows * words * 8}`);
  if (version === 3) return Object.assign(table, centreV3(entry));
  table.scales = new Float32Array(scales);
  table.centre = Float32Array.from(entry.centre);
  if (table.scales.length !== rows) throw new Error(`${entry.scales_file}: ${table.scales.length} scales, expected ${rows}`);
  if (table.centre.length !== dim) throw new Error(`table.centre: ${table.centre.length} values, expected ${dim}`);
  return table;
}

/**
 * The prefilter's query: the sign code of x = query - centre (Uint32Array, 2 per word) and, for
 * query_bits P >= 2, P weight planes (bit k of w_d = min(M, rint(|x_d| / s)), s = fround(max|x| / M),
 * M = 2^P - 1), as edge/table_codes.py `query_weights`.
 */
function queryCode(table, query) {
  const { dim, centre, words } = table, bits = table.queryBits ?? 1;
  const code = new Uint32Array(words * 2), residual = new Float32Array(dim);
  let peak = 0;
  for (let d = 0; d < dim; d++) {
    residual[d] = query[d] - centre[d]; // float32, as numpy
    if (residual[d] > 0) code[d >> 5] |= 1 << (d & 31);
    peak = Math.max(peak, Math.abs(residual[d]));
  }
  if (bits === 1) return { code, planes: [], maxDistance: words * 64 };
  const most = (1 << bits) - 1;
  let scale = Math.fround(peak / most);
  if (!(scale > 0)) scale = 1; // a zero residual, or one whose step underflows: every weight 0
  const planes = Array.from({ length: bits }, () => new Uint32Array(words * 2));
  for (let d = 0; d < dim; d++) {
    const weight = Math.min(most, roundHalfEven(Math.fround(Math.abs(residual[d]) / scale)));
    for (let k = 0; k < bits; k++) if ((weight >> k) & 1) planes[k][d >> 5] |= 1 << (d & 31);
  }
  return { code, planes, maxDistance: most * dim };
}

/** Rows of the `keep` smallest distances to the query code (Hamming or weighted), ascending. */
function prefilter(table, query, keep) {
  const { rows, codes } = table, halves = table.words * 2;
  const { code, planes, maxDistance } = query;
  const distances = new Uint16Array(rows), histogram = new Int32Array(maxDistance + 1);
  for (let r = 0, base = 0; r < rows; r++, base += halves) {
    let d = 0;
    if (planes.length === 0) {
      for (let h = 0; h < halves; h++) d += popcount32(codes[base + h] ^ code[h]);
    } else {
      for (let h = 0; h < halves; h++) {
        const x = codes[base + h] ^ code[h];
        for (let k = 0; k < planes.length; k++) d += popcount32(x & planes[k][h]) << k;
      }
    }
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

/**
 * Row r's signed integer values into `out` (dim,): the magnitude from the nibble plane (bits 0-3),
 * the crumb plane (bits 4-5) and, in version 3, the top plane (bit 6); the sign from the code
 * (1: v >= 0, 0: v <= 0).
 */
function decodeRow(table, r, out) {
  const { dim, values, codes, nibbleBytes, topBytesAt, valueBytes, words, version } = table;
  const base = r * valueBytes, codeBase = r * words * 2;
  for (let d = 0; d < dim; d++) {
    const low = (values[base + (d >> 1)] >> ((d & 1) << 2)) & 15;
    const high = (values[base + nibbleBytes + (d >> 2)] >> ((d & 3) << 1)) & 3;
    const top = version === 3 ? (values[base + topBytesAt + (d >> 3)] >> (d & 7)) & 1 : 0;
    const magnitude = low | (high << 4) | (top << 6);
    const positive = (codes[codeBase + (d >> 5)] >>> (d & 31)) & 1;
    out[d] = positive ? magnitude : -magnitude;
  }
  return out;
}

/** Version 2 key of decoded values v: float32(v . q8) * scale_r (one float32 multiply). */
function keyV2(table, r, v, query8) {
  let dot = 0;
  for (let d = 0; d < table.dim; d++) dot += v[d] * query8[d];
  return Math.fround(Math.fround(dot) * table.scales[r]);
}

/**
 * Version 3 key of decoded values v: float64(v . q8) * s_r, with the exact integers A = v . c8 and
 * B = v . v, a = centre_scale * A and s_r = (sqrt(a * a + B * K) - a) / B (0 when B = 0): each step
 * one float64 operation in this order, as edge/table_codes.py `implied_scales`.
 */
function keyV3(table, r, v, query8) {
  const { dim, centre8, centreScale, radial } = table;
  let dot = 0, along = 0, energy = 0;
  for (let d = 0; d < dim; d++) {
    dot += v[d] * query8[d];
    along += v[d] * centre8[d];
    energy += v[d] * v[d];
  }
  if (energy === 0) return dot * 0;
  const a = centreScale * along;
  return dot * ((Math.sqrt(a * a + energy * radial) - a) / energy);
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
  const { rows, dim, centre } = table;
  if (query.length !== dim) throw new Error(`query dim ${query.length} != table dim ${dim}`);
  if (!query.every(Number.isFinite)) throw new Error("query embedding holds NaN or infinity");
  k = Math.max(0, Math.min(k, rows));
  if (k === 0) return { rows: [], scores: [] };
  let peak = 0, offset = 0;
  for (let d = 0; d < dim; d++) {
    peak = Math.max(peak, Math.abs(query[d]));
    offset += centre[d] * query[d];
  }
  const scale = peak > 0 ? Math.fround(peak / 127) : 1;
  const query8 = Int32Array.from(query, (v) => roundHalfEven(Math.fround(v / scale)));
  const kept = prefilter(table, queryCode(table, query), Math.min(rows, Math.max(k, candidates)));
  const key = table.version === 3 ? keyV3 : keyV2, values = new Int32Array(dim);
  const hits = Array.from(kept, (r) => ({ row: r, key: key(table, r, decodeRow(table, r, values), query8) }));
  hits.sort((a, b) => {
    if (Number.isNaN(a.key) || Number.isNaN(b.key)) return Number.isNaN(a.key) - Number.isNaN(b.key) || a.row - b.row;
    return b.key - a.key || a.row - b.row;
  });
  const best = hits.slice(0, k);
  const shift = Math.fround(offset);
  return { rows: best.map((h) => h.row), scores: best.map((h) => Math.fround(Math.fround(Math.fround(h.key) * scale) + shift)) };
}
