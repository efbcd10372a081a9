"""Encodings of the two-stage table (table format v2, edge/twostage.py): sign bits and 7-bit rows.

Every recipe row x is stored relative to the table's centre c (the mean row, kept once in the
manifest): r = x - c. Ranking by x . q is ranking by r . q, since c . q is the same for every row.

- **Sign codes**: bit d of row r is 1 where r[d] > 0. Bits go little-endian into 64-bit words
  (dim d -> word d // 64, bit d % 64), so row r is W = ceil(D / 64) little-endian uint64 words;
  bits past D are 0 in rows and query alike. The query's code is the sign of (q - c) (the same
  centring as the rows): for near-duplicate and cross-modal queries alike it measured better than
  the sign of q (BENCHMARKS.md, "Two-stage table").
- **7-bit rows**: r ~= scale_r * v_r with v_r[d] in -63..63. The sign of v_r[d] is the sign bit
  above (1: v >= 0, 0: v <= 0), so only the magnitude |v| (6 bits) is stored, in two planes per
  row: a nibble plane of ceil(D / 2) bytes holding |v| & 15 (dim 2j in the low nibble of byte j,
  2j + 1 in the high one) then a crumb plane of ceil(D / 4) bytes holding |v| >> 4 (dim 4j + i in
  bits 2i, 2i + 1 of byte j). 96 bytes for D = 128; padding is 0. The scale is fitted per row:
  from max|r| / 63, round, refit the scale by least squares to the rounded values (two rounds);
  writer-side only, readers just multiply.
- **8-bit rows with an implied scale** (table version 3): r ~= s_r * v_r with v_r[d] in -127..127,
  its sign again the sign bit and its 7-bit magnitude in three planes: the nibble and crumb planes
  above (bits 0-3 and 4-5), then a top plane of ceil(D / 8) bytes holding bit 6 (dim 8j + i in bit
  i of byte j). 112 bytes for D = 128, and no stored scale: the table's centre is quantised too,
  c = centre_scale * c8 with c8 in -127..127, and s_r is the one that puts c + s_r v_r on the unit
  sphere, where every row (an L2-normalised embedding) lies: with the exact integers
  A = v_r . c8 and B = v_r . v_r, and K = 1 - (centre_scale^2) * (c8 . c8),
  a = centre_scale * A,  s_r = (sqrt(a * a + B * K) - a) / B  (0 when B = 0),
  each step one float64 operation in this order (numpy, C++ and JavaScript alike: no fused
  multiply-add). Writer side, v = rint(r / s) with s = max|r| / 127. Putting the row back on the
  sphere removes the radial part of its rounding error, which is what near neighbours' scores
  differ by: recall@10 at 1M rows rose from 0.945 (stored per-row scale) to 0.963 (BENCHMARKS.md).
- **Weighted prefilter** (table version 3 with `query_bits` P >= 2): the query's sign code is weighed
  dim by dim. With x = q - c (float32), P-bit weights w_d = min(M, rint(|x_d| / s_x)) (half to even),
  M = 2^P - 1, s_x = float32(max|x| / M) (1 when x = 0), and the distance of row r is
  sum_d w_d [bit_d(r) != bit_d(x)] = sum_k 2^k popcount((code_r ^ code_x) & plane_k), plane_k holding
  bit k of every w_d in the code's word layout. Maximising sum_d sign(r_d) sign(x_d) w_d, it is the
  sign-code dot product with the query kept at P bits (an asymmetric distance); P = 1 is the plain
  Hamming distance (every w_d = 1). It matters for queries far from every row (a photo against a
  recipe table): the trained teacher's first stage kept 0.76 of the true top-10 with Hamming and
  0.94 with float weights at 1,000 candidates (BENCHMARKS.md).
- **Query**: quantised symmetric int8, q8 = rint(q / s_q) (half to even) with s_q = max|q| / 127,
  both in float32. Then v_r . q8 is an exact integer (int32 in C++, float64 in numpy and JS), so
  numpy, C++ and JavaScript rank identically, ties included: key_r = float32(v_r . q8) * scale_r
  (one correctly rounded float32 multiply) in version 2, key_r = float64(v_r . q8) * s_r in version 3;
  best key first, ties to the lower row.
"""

from __future__ import annotations

import numpy as np

VALUE_MAX = 63
VALUE8_MAX = 127
INT8_MAX = 127


def code_words(dim: int) -> int:
    """64-bit words per sign code of a `dim`-wide row."""
    return (dim + 63) // 64


def packed_bytes(dim: int) -> int:
    """Bytes of the nibble plane of a `dim`-wide row."""
    return (dim + 1) // 2


def crumb_bytes(dim: int) -> int:
    """Bytes of the 2-bit plane of a `dim`-wide row."""
    return (dim + 3) // 4


def magnitude_bytes(dim: int) -> int:
    """Bytes of both magnitude planes of a `dim`-wide row (96 for D = 128)."""
    return packed_bytes(dim) + crumb_bytes(dim)


def top_bytes(dim: int) -> int:
    """Bytes of the bit-6 plane of a `dim`-wide row (version 3)."""
    return (dim + 7) // 8


def magnitude8_bytes(dim: int) -> int:
    """Bytes of the three magnitude planes of a `dim`-wide version 3 row (112 for D = 128)."""
    return magnitude_bytes(dim) + top_bytes(dim)


def sign_codes(residuals: np.ndarray) -> np.ndarray:
    """Sign bits of (N, D) centred rows as (N, W) little-endian uint64 words."""
    residuals = np.asarray(residuals, dtype=np.float32)  # (N, D)
    n, dim = residuals.shape
    bits = np.zeros((n, code_words(dim) * 64), dtype=bool)  # (N, 64 W)
    bits[:, :dim] = residuals > 0
    packed = np.packbits(bits, axis=1, bitorder="little")  # (N, 8 W) bytes, dim d -> byte d // 8
    return np.ascontiguousarray(packed).view("<u8")  # (N, W)


def _fit_scales(residuals: np.ndarray, rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(values (N, D) int8 in -63..63, scales (N,) float32) with residuals ~= values * scales."""
    peak = np.abs(residuals).max(axis=1) if residuals.size else np.zeros(len(residuals), np.float32)
    scales = np.where(peak > 0, peak / VALUE_MAX, 1.0).astype(np.float32)  # (N,)
    for _ in range(rounds):
        values = np.clip(np.rint(residuals / scales[:, None]), -VALUE_MAX, VALUE_MAX)  # (N, D)
        energy = (values * values).sum(axis=1)  # (N,)
        fitted = (values * residuals).sum(axis=1) / np.maximum(energy, 1.0)  # least squares
        scales = np.where(energy > 0, fitted, scales).astype(np.float32)  # (N,)
    values = np.clip(np.rint(residuals / scales[:, None]), -VALUE_MAX, VALUE_MAX)  # (N, D)
    return values.astype(np.int8), scales


def quantize_rows_int7(residuals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row-scaled 7-bit rows whose signs are the sign codes (`sign_codes(residuals)`).

    Args:
        residuals: (N, D) float centred rows.

    Returns:
        (magnitude planes (N, ceil(D / 2) + ceil(D / 4)) uint8, scales (N,) float32).
    """
    residuals = np.asarray(residuals, dtype=np.float32)  # (N, D)
    values, scales = _fit_scales(residuals)  # (N, D) int8, (N,)
    # a value's sign must be its residual's sign bit: rint keeps the sign, 0 has none to keep
    magnitude = np.abs(values).astype(np.uint8)  # (N, D) in 0..63
    return pack_magnitudes(magnitude), scales


def pack_magnitudes(magnitude: np.ndarray) -> np.ndarray:
    """(N, D) uint8 in 0..63 -> (N, ceil(D / 2) + ceil(D / 4)) nibble plane, then crumb plane."""
    n, dim = magnitude.shape
    low = np.zeros((n, packed_bytes(dim) * 2), np.uint8)  # (N, 2 B4)
    low[:, :dim] = magnitude & 0x0F
    high = np.zeros((n, crumb_bytes(dim) * 4), np.uint8)  # (N, 4 B2)
    high[:, :dim] = magnitude >> 4
    nibbles = low[:, 0::2] | (low[:, 1::2] << 4)  # (N, B4)
    crumbs = high[:, 0::4] | (high[:, 1::4] << 2) | (high[:, 2::4] << 4) | (high[:, 3::4] << 6)
    return np.ascontiguousarray(np.concatenate([nibbles, crumbs], axis=1))  # (N, B4 + B2)


def unpack_magnitudes(planes: np.ndarray, dim: int) -> np.ndarray:
    """(C, >= B4 + B2) planes -> (C, dim) uint8 magnitudes 0..63 of the nibble and crumb planes."""
    planes = np.asarray(planes, dtype=np.uint8)  # (C, B4 + B2 [+ B1])
    n, b4, b2 = len(planes), packed_bytes(dim), crumb_bytes(dim)
    magnitude = np.empty((n, b4 * 2), np.uint8)  # (C, 2 B4)
    magnitude[:, 0::2] = planes[:, :b4] & 0x0F
    magnitude[:, 1::2] = planes[:, :b4] >> 4
    crumbs = planes[:, b4:b4 + b2]  # (C, B2)
    high = np.stack([(crumbs >> shift) & 0x03 for shift in (0, 2, 4, 6)], axis=2)  # (C, B2, 4)
    return magnitude[:, :dim] | (high.reshape(n, -1)[:, :dim] << 4)  # (C, D)


def unpack_int7(planes: np.ndarray, codes: np.ndarray, dim: int) -> np.ndarray:
    """(C, B4 + B2) magnitude planes and (C, W) sign codes -> (C, dim) int8 values in -63..63."""
    magnitude = unpack_magnitudes(planes, dim).astype(np.int8)  # (C, D)
    return np.where(sign_bits(codes, dim), magnitude, -magnitude)


def sign_bits(codes: np.ndarray, dim: int) -> np.ndarray:
    """(C, W) uint64 sign codes -> (C, dim) bool."""
    as_bytes = np.ascontiguousarray(codes, dtype="<u8").view(np.uint8)  # (C, 8 W)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :dim].astype(bool)


def quantize_query_int8(query: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """(D,) float query -> ((D,) float64 holding integers in -127..127, its float32 scale)."""
    query = np.asarray(query, dtype=np.float32)  # (D,)
    peak = np.float32(np.abs(query).max()) if query.size else np.float32(0)
    scale = np.float32(peak / np.float32(INT8_MAX)) if peak > 0 else np.float32(1)
    return np.rint(query / scale).astype(np.float64), scale  # (D,), ()


QUERY_BITS = (1, 2, 3, 4)  # weight bits of the weighted prefilter; 1: plain Hamming
DEFAULT_QUERY_BITS = 4  # the writer's (BENCHMARKS.md, "Weighted prefilter"), up to 4,369 dims
MAX_DISTANCE = 65535  # (2^P - 1) * D must fit: the native core counts distances in uint16


def check_query_bits(bits: object, dim: int) -> int:
    """`bits` if it is a valid query_bits for a `dim`-wide table, else ValueError saying why."""
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in QUERY_BITS:
        raise ValueError(f"query_bits must be one of {QUERY_BITS}, got {bits!r}")
    if ((1 << bits) - 1) * dim > MAX_DISTANCE:
        raise ValueError(f"query_bits {bits} is too wide for a {dim}-d table: distances must stay <= {MAX_DISTANCE}")
    return bits


def default_query_bits(dim: int) -> int:
    """The writer's query_bits for a `dim`-wide table: DEFAULT_QUERY_BITS, or fewer where distances would
    pass MAX_DISTANCE."""
    fitting = [b for b in QUERY_BITS if b <= DEFAULT_QUERY_BITS and ((1 << b) - 1) * dim <= MAX_DISTANCE]
    return max(fitting, default=1)


def query_weights(residual: np.ndarray, bits: int) -> np.ndarray:
    """(D,) float32 x = q - c -> (D,) int64 prefilter weights in 0..2^bits - 1 (all 1 for bits = 1)."""
    residual = np.asarray(residual, dtype=np.float32)  # (D,)
    if bits == 1:
        return np.ones(residual.shape, np.int64)
    most = np.float32((1 << bits) - 1)
    magnitude = np.abs(residual)  # (D,)
    peak = np.float32(magnitude.max()) if magnitude.size else np.float32(0)
    scale = np.float32(peak / most)
    if not scale > 0:  # a zero residual, or one so small its step underflows: every weight 0
        scale = np.float32(1)
    return np.minimum(np.rint(magnitude / scale), most).astype(np.int64)


def weight_planes(weights: np.ndarray, bits: int) -> np.ndarray:
    """(D,) weights -> (bits, W) uint64 planes: bit k of w_d at word d // 64, bit d % 64 of plane k."""
    weights = np.asarray(weights, dtype=np.int64)  # (D,)
    stacked = np.stack([(weights >> k) & 1 for k in range(bits)]).astype(np.float32)  # (P, D), 0 or 1
    return sign_codes(stacked - 0.5)  # (P, W): bit set where the plane's bit is 1


CENTRE_MAX_NORM2 = 1 - 1e-3  # |c|^2 of the quantised centre stays below 1: K > 0, no NaN scale


def quantize_centre(centre: np.ndarray) -> tuple[np.ndarray, float]:
    """(D,) float centre -> ((D,) int64 codes c8 in -127..127, float64 scale), centre ~= c8 * scale.

    The quantised centre is kept strictly inside the unit sphere (|c|^2 <= CENTRE_MAX_NORM2), so
    K = 1 - |c|^2 > 0 and every implied scale is a number: the mean of unit rows has length <= 1,
    and rounding (or a table of one repeated row) could otherwise push it past 1. Any centre inside
    the sphere is correct; this one only moves by at most a few thousandths.
    """
    centre = np.asarray(centre, dtype=np.float64)  # (D,)
    while True:
        peak = float(np.abs(centre).max()) if centre.size else 0.0
        scale = peak / VALUE8_MAX if peak > 0 else 1.0
        codes = np.rint(centre / scale).astype(np.int64)
        if (scale * scale) * float(np.dot(codes, codes)) <= CENTRE_MAX_NORM2:
            return codes, scale
        centre = centre * 0.99  # shrink towards 0 until the rounded centre is inside


def quantize_rows_int8n(residuals: np.ndarray) -> np.ndarray:
    """(N, D) rows minus the quantised centre -> (N, magnitude8_bytes(D)) uint8 magnitude planes of
    v = rint(r / s), s = max|r| / 127 per row (signs: `sign_codes(residuals)`)."""
    residuals = np.asarray(residuals, dtype=np.float64)  # (N, D)
    peak = np.abs(residuals).max(axis=1) if residuals.size else np.zeros(len(residuals))  # (N,)
    scales = np.where(peak > 0, peak / VALUE8_MAX, 1.0)  # (N,)
    magnitude = np.clip(np.rint(np.abs(residuals) / scales[:, None]), 0, VALUE8_MAX).astype(np.uint8)
    return pack_magnitudes8(magnitude)


def pack_magnitudes8(magnitude: np.ndarray) -> np.ndarray:
    """(N, D) uint8 in 0..127 -> (N, magnitude8_bytes(D)): nibble, crumb, then bit-6 planes."""
    n, dim = magnitude.shape
    top = np.zeros((n, top_bytes(dim) * 8), bool)  # (N, 8 B1)
    top[:, :dim] = magnitude >> 6
    planes = [pack_magnitudes(magnitude & 0x3F), np.packbits(top, axis=1, bitorder="little")]
    return np.ascontiguousarray(np.concatenate(planes, axis=1))


def unpack_int8n(planes: np.ndarray, codes: np.ndarray, dim: int) -> np.ndarray:
    """(C, magnitude8_bytes(dim)) planes and (C, W) sign codes -> (C, dim) int16 values in -127..127."""
    planes = np.asarray(planes, dtype=np.uint8)
    top = np.unpackbits(planes[:, magnitude_bytes(dim):], axis=1, bitorder="little")[:, :dim]  # (C, D)
    magnitude = unpack_magnitudes(planes, dim).astype(np.int16) | (top.astype(np.int16) << 6)
    return np.where(sign_bits(codes, dim), magnitude, -magnitude)


def implied_scales(values: np.ndarray, centre8: np.ndarray, centre_scale: float) -> np.ndarray:
    """(C,) float64 s_r putting c + s_r v_r on the unit sphere, for (C, D) integer values (see above)."""
    values = np.asarray(values, dtype=np.float64)  # (C, D), exact integers
    along = values @ np.asarray(centre8, dtype=np.float64)  # (C,) A, exact
    energy = np.einsum("cd,cd->c", values, values)  # (C,) B, exact
    k = 1.0 - (centre_scale * centre_scale) * float(np.dot(centre8, centre8))
    a = centre_scale * along
    with np.errstate(invalid="ignore", divide="ignore"):
        scales = (np.sqrt(a * a + energy * k) - a) / energy
    return np.where(energy > 0, scales, 0.0)
