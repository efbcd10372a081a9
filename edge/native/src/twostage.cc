#include "twostage.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MALM_X86_KERNELS 1  // AVX-512 (VPOPCNTDQ, BW, BMI2) kernels, chosen at run time
#endif
#if defined(__aarch64__) && defined(__ARM_NEON) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#include <arm_neon.h>
#define MALM_NEON_KERNELS 1  // every AArch64 CPU has NEON: chosen at compile time (kernels read codes as bytes)
#endif
#if defined(MALM_X86_KERNELS) || defined(MALM_NEON_KERNELS)
#define MALM_BLOCK_KERNELS 1  // the weighted scan over byte-transposed codes (transpose_codes)
#endif

namespace malm {
namespace {

constexpr int kValueMax = 63;
constexpr float kInt8Max = 127.0f;
constexpr size_t kPrefetchBytes = 8192;  // codes fetched ahead of the scan (Ice Lake: 4-16 KiB beat 0.5-2)
constexpr int kRescorePrefetchRows = 8;  // candidate rows fetched ahead of their rescoring
constexpr int64_t kSampleBlocks = 64, kSampleBlockRows = 64;
constexpr int64_t kBlockRows = 64;  // rows of a byte-transposed code block (the block scans)
static_assert(kBlockRows == kSampleBlockRows, "a sampled run of rows is one block");

bool simd_allowed() {
  const char* off = std::getenv("MALM_EDGE_DISABLE_SIMD");  // the portable kernels on this CPU (tests)
  return !(off && *off && std::strcmp(off, "0") != 0);
}
const bool kSimdAllowed = simd_allowed();

// The rows the prefilter may still keep, in row order, with their distances. Only rows at
// distance <= `limit` are offered; once `capacity` are held, `tighten` drops every row that can no
// longer be kept, so memory stays O(keep) whatever the data (ties, an ordered table, a loose limit).
class Candidates {
 public:
  Candidates(int64_t keep, int64_t rows, int limit, size_t bins)
      : limit(limit), keep_(keep), capacity_(size_t(std::min(rows, std::max<int64_t>(4 * keep, keep + 1024)))),
        histogram_(bins) {
    rows_.reserve(capacity_);
    distances_.reserve(capacity_);
  }

  void add(int64_t row, int distance) {
    if (distance > limit) return;  // a kernel's vector compare may predate a tighten
    rows_.push_back(row);
    distances_.push_back(uint16_t(distance));
    if (rows_.size() >= capacity_) tighten();
  }

  // Keep the `keep` rows of smallest distance, lower rows at the boundary distance b (the
  // counting rule of edge/twostage.py). A later row at distance >= b ranks after all of them, so
  // from here on only rows closer than b are offered.
  void tighten() {
    if (int64_t(rows_.size()) < keep_) return;
    std::fill(histogram_.begin(), histogram_.end(), 0);
    for (uint16_t d : distances_) ++histogram_[d];
    int64_t below = 0;  // rows strictly closer than the boundary distance
    int boundary = 0;
    while (below + histogram_[size_t(boundary)] < keep_) below += histogram_[size_t(boundary++)];
    int64_t at_boundary = keep_ - below;  // taken in row order
    size_t out = 0;
    for (size_t i = 0; i < rows_.size(); ++i) {
      const int d = distances_[i];
      if (d < boundary || (d == boundary && at_boundary-- > 0)) {
        rows_[out] = rows_[i];
        distances_[out++] = uint16_t(d);
      }
    }
    rows_.resize(out);
    distances_.resize(out);
    limit = boundary - 1;
  }

  size_t size() const { return rows_.size(); }
  std::vector<int64_t> take() {
    tighten();
    return std::move(rows_);
  }

  int limit;  // the largest distance still offered (-1: none)

 private:
  int64_t keep_;
  size_t capacity_;
  std::vector<int64_t> rows_;
  std::vector<uint16_t> distances_;
  std::vector<int64_t> histogram_;  // (bins,), tighten's scratch
};

inline int row_distance(const uint64_t* row, size_t words, const uint64_t* query_code) {
  int d = 0;
  for (size_t w = 0; w < words; ++w) d += __builtin_popcountll(row[w] ^ query_code[w]);
  return d;
}

// Hamming, or weighted: sum_k 2^k popcount((row ^ code) & plane_k).
inline int row_distance(const uint64_t* row, const QueryCode& q) {
  if (q.planes.empty()) return row_distance(row, q.words, q.code.data());
  int d = 0;
  for (size_t w = 0; w < q.words; ++w) {
    const uint64_t x = row[w] ^ q.code[w];
    for (int k = 0; k < q.bits; ++k) d += __builtin_popcountll(x & q.planes[size_t(k) * q.words + w]) << k;
  }
  return d;
}

// The POPCNT instruction where the CPU has it (else libgcc's bit tricks), chosen at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
#define MALM_POPCNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define MALM_POPCNT_CLONES
#endif

// Rows [begin, end) of the codes to `kept` (portable: one popcount per word and plane, a rarely
// taken branch).
MALM_POPCNT_CLONES
void scan_portable(const uint64_t* codes, int64_t begin, int64_t end, const QueryCode& q, Candidates& kept) {
  const size_t words = q.words;
  int64_t r = begin;
  if (!q.planes.empty()) {
    for (; r < end; ++r) {
      if ((r & 3) == 0) __builtin_prefetch(reinterpret_cast<const char*>(codes + size_t(r) * words) + kPrefetchBytes);
      const int d = row_distance(codes + size_t(r) * words, q);
      if (d <= kept.limit) kept.add(r, d);
    }
    return;
  }
  const uint64_t* query_code = q.code.data();
  if (words == 2) {  // 65..128-d models: the phone's case, four rows (one cache line) a step
    const uint64_t q0 = query_code[0], q1 = query_code[1];
    for (; r + 4 <= end; r += 4) {
      const uint64_t* row = codes + size_t(r) * 2;
      __builtin_prefetch(reinterpret_cast<const char*>(row) + kPrefetchBytes);
      for (int j = 0; j < 4; ++j) {
        const int d = __builtin_popcountll(row[2 * j] ^ q0) + __builtin_popcountll(row[2 * j + 1] ^ q1);
        if (d <= kept.limit) kept.add(r + j, d);
      }
    }
  }
  for (; r < end; ++r) {
    const int d = row_distance(codes + size_t(r) * words, words, query_code);
    if (d <= kept.limit) kept.add(r, d);
  }
}

#if MALM_NEON_KERNELS
// 128-bit codes, 16 rows a step: VCNT of the XOR per byte, a pairwise-add tree to one byte per
// row (at most 128), one compare against the limit.
void scan_neon(const uint64_t* codes, int64_t begin, int64_t end, const QueryCode& q, Candidates& kept) {
  if (q.words != 2 || !q.planes.empty()) return scan_portable(codes, begin, end, q, kept);
  const uint8x16_t query = vld1q_u8(reinterpret_cast<const uint8_t*>(q.code.data()));
  int64_t r = begin;
  for (; r + 16 <= end && kept.limit >= 0; r += 16) {
    const uint8_t* row = reinterpret_cast<const uint8_t*>(codes + size_t(r) * 2);
    __builtin_prefetch(row + kPrefetchBytes);
    __builtin_prefetch(row + kPrefetchBytes + 64);
    __builtin_prefetch(row + kPrefetchBytes + 128);
    __builtin_prefetch(row + kPrefetchBytes + 192);
    uint8x16_t level[8];  // pairwise sums: (rows 2i, 2i + 1) x 8 bytes, then 4 x 4, 8 x 2, 16 x 1
    for (int i = 0; i < 8; ++i) {
      level[i] = vpaddq_u8(vcntq_u8(veorq_u8(vld1q_u8(row + 32 * i), query)),
                           vcntq_u8(veorq_u8(vld1q_u8(row + 32 * i + 16), query)));
    }
    for (int n = 4; n >= 1; n /= 2) {
      for (int i = 0; i < n; ++i) level[i] = vpaddq_u8(level[2 * i], level[2 * i + 1]);
    }
    const uint8x16_t near = vcleq_u8(level[0], vdupq_n_u8(uint8_t(std::min(kept.limit, 128))));
    if (__builtin_expect(vmaxvq_u8(near) != 0, 0)) {
      uint8_t distances[16];
      vst1q_u8(distances, level[0]);
      for (int j = 0; j < 16; ++j) kept.add(r + j, distances[j]);
    }
  }
  scan_portable(codes, r, end, q, kept);
}

// Dims 16 g..16 g + 15 of a row's magnitude planes: the nibble (bits 0-3) and crumb (bits 4-5)
// planes as one byte a dim (8 nibble bytes zipped into dim order, 4 crumb bytes spread to their 4
// dims each by a table lookup and per-lane shifts).
inline uint8x16_t low6_neon(const uint8_t* nibbles, const uint8_t* crumbs, size_t g) {
  static const uint8_t kSpread4[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
  static const int8_t kCrumbShift[16] = {0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6};
  const uint8x8_t nib = vld1_u8(nibbles + 8 * g);
  const uint8x8x2_t pairs = vzip_u8(vand_u8(nib, vdup_n_u8(15)), vshr_n_u8(nib, 4));
  uint32_t crumb4;
  std::memcpy(&crumb4, crumbs + 4 * g, 4);
  const uint8x16_t crumb = vqtbl1q_u8(vreinterpretq_u8_u32(vdupq_n_u32(crumb4)), vld1q_u8(kSpread4));
  return vorrq_u8(vcombine_u8(pairs.val[0], pairs.val[1]),
                  vshlq_n_u8(vandq_u8(vshlq_u8(crumb, vld1q_s8(kCrumbShift)), vdupq_n_u8(3)), 4));
}

// Bits 16 g..16 g + 15 of a bit plane (little-endian bytes) as bytes: 0xFF where set, else 0.
inline uint8x16_t bit_lanes_neon(const uint8_t* bits, size_t g) {
  static const uint8_t kSpread8[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  static const uint8_t kBit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  uint16_t two;
  std::memcpy(&two, bits + 2 * g, 2);
  return vtstq_u8(vqtbl1q_u8(vreinterpretq_u8_u16(vdupq_n_u16(two)), vld1q_u8(kSpread8)), vld1q_u8(kBit));
}

// 7-bit rows (version 2) as integer dots, dim a multiple of 16: the magnitudes, negated where the
// sign bit is 0; widening multiplies (|pair| <= 2 x 63 x 127) accumulated in int32.
int32_t dot_neon(const uint8_t* nibbles, const uint8_t* crumbs, const uint8_t* signs, const int8_t* query,
                 size_t dim) {
  int32x4_t total = vdupq_n_s32(0);
  for (size_t g = 0; g < dim / 16; ++g) {
    const int8x16_t negative = vreinterpretq_s8_u8(vmvnq_u8(bit_lanes_neon(signs, g)));  // -1 where v < 0
    const int8x16_t value = vsubq_s8(veorq_s8(vreinterpretq_s8_u8(low6_neon(nibbles, crumbs, g)), negative), negative);
    const int8x16_t q = vld1q_s8(query + 16 * g);
    total = vpadalq_s16(total, vmlal_high_s8(vmull_s8(vget_low_s8(value), vget_low_s8(q)), value, q));
  }
  return vaddvq_s32(total);
}

// Version 3's 8-bit rows (magnitudes 0..127 with the bit-6 plane), dim a multiple of 16: v . q8,
// v . centre8 and v . v as dots8_portable (|pair| <= 2 x 127 x 127 fits int16).
void dots8_neon(const uint8_t* nibbles, const uint8_t* crumbs, const uint8_t* top, const uint8_t* signs,
                const int8_t* query8, const int8_t* centre8, size_t dim, int32_t* out) {
  int32x4_t dots = vdupq_n_s32(0), along = vdupq_n_s32(0);
  uint32x4_t energy = vdupq_n_u32(0);
  for (size_t g = 0; g < dim / 16; ++g) {
    const uint8x16_t m = vorrq_u8(low6_neon(nibbles, crumbs, g), vandq_u8(bit_lanes_neon(top, g), vdupq_n_u8(64)));
    const int8x16_t negative = vreinterpretq_s8_u8(vmvnq_u8(bit_lanes_neon(signs, g)));
    const int8x16_t value = vsubq_s8(veorq_s8(vreinterpretq_s8_u8(m), negative), negative);
    const int8x16_t q = vld1q_s8(query8 + 16 * g), c = vld1q_s8(centre8 + 16 * g);
    dots = vpadalq_s16(dots, vmlal_high_s8(vmull_s8(vget_low_s8(value), vget_low_s8(q)), value, q));
    along = vpadalq_s16(along, vmlal_high_s8(vmull_s8(vget_low_s8(value), vget_low_s8(c)), value, c));
    energy = vpadalq_u16(energy, vmlal_high_u8(vmull_u8(vget_low_u8(m), vget_low_u8(m)), m, m));
  }
  out[0] = vaddvq_s32(dots), out[1] = vaddvq_s32(along), out[2] = int32_t(vaddvq_u32(energy));
}

// scan_blocks_avx512's weighted distances with 128-bit registers: one block's 64 rows as four
// groups of 16, a VTBL per nibble, two code bytes summed in bytes, then widened into 16-bit sums
// (row order: sums[2 g] rows 16 g..16 g + 7, sums[2 g + 1] the next 8).
inline void block_distances_neon(const uint8_t* block, size_t code_bytes, const uint8_t* tables,
                                 uint16x8_t sums[8]) {
  const uint8x16_t low = vdupq_n_u8(15);
  for (int i = 0; i < 8; ++i) sums[i] = vdupq_n_u16(0);
  for (size_t b = 0; b < code_bytes; b += 2) {
    uint8x16_t pair[4] = {vdupq_n_u8(0), vdupq_n_u8(0), vdupq_n_u8(0), vdupq_n_u8(0)};  // (16,) uint8 each
    for (size_t c = b; c < b + 2; ++c) {
      const uint8x16_t low_table = vld1q_u8(tables + 128 * c), high_table = vld1q_u8(tables + 128 * c + 64);
      for (int g = 0; g < 4; ++g) {
        const uint8x16_t bytes = vld1q_u8(block + 64 * c + 16 * g);
        pair[g] = vaddq_u8(pair[g], vqtbl1q_u8(low_table, vandq_u8(bytes, low)));
        pair[g] = vaddq_u8(pair[g], vqtbl1q_u8(high_table, vshrq_n_u8(bytes, 4)));
      }
    }
    for (int g = 0; g < 4; ++g) {
      sums[2 * g] = vaddw_u8(sums[2 * g], vget_low_u8(pair[g]));
      sums[2 * g + 1] = vaddw_high_u8(sums[2 * g + 1], pair[g]);
    }
  }
}

// The weighted scan of every block (transpose_codes), 64 rows a step.
void scan_blocks_neon(const uint8_t* blocks, int64_t n_blocks, size_t code_bytes, const uint8_t* tables,
                      Candidates& kept) {
  const size_t block_bytes = code_bytes * kBlockRows;
  for (int64_t i = 0; i < n_blocks && kept.limit >= 0; ++i) {
    const uint8_t* block = blocks + size_t(i) * block_bytes;
    for (size_t at = 0; at < block_bytes; at += 64) __builtin_prefetch(block + kPrefetchBytes + at);
    uint16x8_t sums[8];
    block_distances_neon(block, code_bytes, tables, sums);
    const uint16x8_t limit = vdupq_n_u16(uint16_t(kept.limit));
    uint16x8_t near = vcleq_u16(sums[0], limit);
    for (int j = 1; j < 8; ++j) near = vorrq_u16(near, vcleq_u16(sums[j], limit));
    if (__builtin_expect(vmaxvq_u16(near) != 0, 0)) {
      uint16_t distances[64];
      for (int j = 0; j < 8; ++j) vst1q_u16(distances + 8 * j, sums[j]);
      for (int j = 0; j < 64; ++j) kept.add(i * kBlockRows + j, distances[j]);
    }
  }
}

// sample_rows from the blocks: kSampleBlocks evenly spread blocks of 64 rows.
void sample_blocks_neon(const uint8_t* blocks, int64_t n_blocks, size_t code_bytes, const uint8_t* tables,
                        std::vector<int64_t>& histogram) {
  for (int64_t b = 0; b < kSampleBlocks; ++b) {
    uint16x8_t sums[8];
    block_distances_neon(blocks + size_t((n_blocks - 1) * b / (kSampleBlocks - 1)) * code_bytes * kBlockRows,
                         code_bytes, tables, sums);
    uint16_t distances[64];
    for (int j = 0; j < 8; ++j) vst1q_u16(distances + 8 * j, sums[j]);
    for (uint16_t d : distances) ++histogram[d];
  }
}
#endif

using ScanKernel = void (*)(const uint64_t*, int64_t, int64_t, const QueryCode&, Candidates&);

// Whether a sample of the table pays: a table of fewer rows is scanned with no limit.
bool sample_pays(int64_t rows, int64_t keep) {
  return rows >= 64 * keep && rows >= 4 * kSampleBlocks * kSampleBlockRows;
}

// The distances of kSampleBlocks evenly spread runs of kSampleBlockRows rows, counted by distance.
MALM_POPCNT_CLONES
void sample_rows(const uint64_t* codes, int64_t rows, const QueryCode& q, std::vector<int64_t>& histogram) {
  for (int64_t b = 0; b < kSampleBlocks; ++b) {
    const int64_t start = (rows - kSampleBlockRows) * b / (kSampleBlocks - 1);
    for (int64_t r = start; r < start + kSampleBlockRows; ++r) {
      ++histogram[size_t(row_distance(codes + size_t(r) * q.words, q))];
    }
  }
}

// A distance limit about 2 x keep rows (plus a margin) fall within, from a sample's histogram.
int sampled_limit(const std::vector<int64_t>& histogram, int64_t rows, int64_t keep) {
  const int64_t sampled = kSampleBlocks * kSampleBlockRows;
  const int64_t wanted = (2 * keep * sampled + rows - 1) / rows + 16;
  int64_t seen = 0;
  for (size_t d = 0; d < histogram.size(); ++d) {
    if ((seen += histogram[d]) >= wanted) return int(d);
  }
  return int(histogram.size()) - 1;
}

#if MALM_BLOCK_KERNELS  // the layout and the query tables of the block scans
// The codes of rows [0, 64 n) byte-transposed in blocks of 64 rows, into `out` (n x words x 512
// bytes): byte b of row 64 i + j at (i x code_bytes + b) x 64 + j, so one 64-byte load holds one
// code byte of 64 rows.
void transpose_codes(const uint64_t* codes, int64_t n_blocks, size_t words, uint8_t* out) {
  const size_t code_bytes = words * 8;
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(codes);  // little-endian words
  for (size_t i = 0; i < size_t(n_blocks); ++i) {
    uint8_t* block = out + i * code_bytes * kBlockRows;
    for (size_t j = 0; j < size_t(kBlockRows); ++j) {
      const uint8_t* row = bytes + (i * kBlockRows + j) * code_bytes;
      for (size_t b = 0; b < code_bytes; ++b) block[b * kBlockRows + j] = row[b];
    }
  }
}

// For code byte b and its nibble h (bits 4h..4h + 3), the distance each of the 16 nibble values
// adds (the weights of its dims whose bit differs from the query's; weight 1 for Hamming),
// repeated in the four 128-bit lanes a byte shuffle reads: (code_bytes, 2, 64). An entry is at
// most 4 x 15 = 60, so the four entries of two bytes add up in a byte.
constexpr int kMostQueryBits = 4;  // set_layout's bound on query_bits
static_assert(2 * 4 * ((1 << kMostQueryBits) - 1) <= 255, "two code bytes' lookups fit a byte");
std::vector<uint8_t> nibble_tables(const QueryCode& q) {
  const size_t code_bytes = q.words * 8;
  std::vector<uint8_t> tables(code_bytes * 2 * 64);
  for (size_t b = 0; b < code_bytes; ++b) {
    for (int h = 0; h < 2; ++h) {
      int weight[4], query_bit[4];
      for (int i = 0; i < 4; ++i) {
        const size_t d = 8 * b + 4 * size_t(h) + size_t(i), w = d >> 6, bit = d & 63;
        query_bit[i] = int((q.code[w] >> bit) & 1);
        weight[i] = q.planes.empty() ? 1 : 0;
        for (int k = 0; k < q.bits && !q.planes.empty(); ++k) {
          weight[i] |= int((q.planes[size_t(k) * q.words + w] >> bit) & 1) << k;
        }
      }
      uint8_t* table = tables.data() + (2 * b + size_t(h)) * 64;
      for (int n = 0; n < 16; ++n) {
        int distance = 0;
        for (int i = 0; i < 4; ++i) distance += ((n >> i) & 1) != query_bit[i] ? weight[i] : 0;
        for (int lane = 0; lane < 4; ++lane) table[16 * lane + n] = uint8_t(distance);
      }
    }
  }
  return tables;
}
#endif

#if MALM_X86_KERNELS
#if !defined(__clang__)
// GCC 12's AVX-512 headers seed results with `__m512i __Y = __Y;` (_mm512_undefined_epi32), which
// its own -Wuninitialized then reports at every inlined use.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
__attribute__((target("avx512f")))
inline __m512i word_pairs(const uint64_t* word) {  // (word[0], word[1]) in each 128-bit lane
  const int64_t w0 = int64_t(word[0]), w1 = int64_t(word[1]);
  return _mm512_set_epi64(w1, w0, w1, w0, w1, w0, w1, w0);
}

// 128-bit codes, 16 rows a step: VPOPCNTQ of the XOR (kBits = 0, Hamming) or the sum over planes k
// of VPOPCNTQ(XOR & plane_k) << k (weighted), the two words of a row added within each 128-bit
// lane, one signed compare against the limit; the branch is taken for a few rows in 1,000.
// (Adding the planes bitwise first, a ripple-carry adder needing P + 1 popcounts for 8 rows instead
// of 2 P for 4, measured no faster on Zen 4.)
template <int kBits>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")))
void scan_codes_avx512(const uint64_t* codes, int64_t begin, int64_t end, const QueryCode& q, Candidates& kept) {
  const __m512i query = word_pairs(q.code.data());
  __m512i planes[kBits > 0 ? kBits : 1];
  for (int k = 0; k < kBits; ++k) planes[k] = word_pairs(q.planes.data() + 2 * k);
  __m512i limit = _mm512_set1_epi64(kept.limit);
  int64_t r = begin;
  for (; r + 16 <= end; r += 16) {
    const uint64_t* row = codes + size_t(r) * 2;
    const char* ahead = reinterpret_cast<const char*>(row) + kPrefetchBytes;
    for (int line = 0; line < 4; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);
    uint32_t near = 0;  // bit 2j (and 2j + 1): row r + j within the limit
    for (int v = 0; v < 4; ++v) {
      const __m512i x = _mm512_xor_si512(_mm512_loadu_si512(row + 8 * v), query);
      __m512i counts;  // (8,)
      if constexpr (kBits == 0) {
        counts = _mm512_popcnt_epi64(x);
      } else {
        counts = _mm512_popcnt_epi64(_mm512_and_si512(x, planes[0]));
        for (int k = 1; k < kBits; ++k) {
          counts = _mm512_add_epi64(counts, _mm512_slli_epi64(_mm512_popcnt_epi64(_mm512_and_si512(x, planes[k])), k));
        }
      }
      counts = _mm512_add_epi64(counts, _mm512_shuffle_epi32(counts, _MM_PERM_BADC));  // both words' sum
      near |= uint32_t(_mm512_cmple_epi64_mask(counts, limit)) << (8 * v);
    }
    near &= 0x55555555u;
    if (__builtin_expect(near != 0, 0)) {
      for (; near; near &= near - 1) {
        const int j = __builtin_ctz(near) / 2;
        kept.add(r + j, row_distance(row + 2 * j, q));
      }
      limit = _mm512_set1_epi64(kept.limit);
    }
  }
  scan_portable(codes, r, end, q, kept);
}

void scan_avx512(const uint64_t* codes, int64_t begin, int64_t end, const QueryCode& q, Candidates& kept) {
  if (q.words != 2) return scan_portable(codes, begin, end, q, kept);
  switch (q.planes.empty() ? 1 : q.bits) {
    case 2: return scan_codes_avx512<2>(codes, begin, end, q, kept);
    case 3: return scan_codes_avx512<3>(codes, begin, end, q, kept);
    case 4: return scan_codes_avx512<4>(codes, begin, end, q, kept);
    default: return scan_codes_avx512<0>(codes, begin, end, q, kept);
  }
}

// 7-bit rows as integer dots, dim a multiple of 128 (AVX-512BW + BMI2). The query is laid out once
// per search in the order the planes decode (query_planes), so a row is never interleaved: per 128
// dims, 64 nibble bytes give the even and the odd dims, 32 crumb bytes (broadcast) dims 4j + i, and
// the sign bits, gathered per plane with PEXT, negate the query bytes of the negative values.
// (dim * 2,) int8: per 128 dims, q[2j], q[2j + 1], (q[4j], q[4j + 1]) and (q[4j + 2], q[4j + 3]), 64 each.
std::vector<int8_t> query_planes(const int16_t* query8, size_t dim) {
  std::vector<int8_t> planes(dim * 2);
  for (size_t c = 0; c < dim / 128; ++c) {
    const int16_t* q = query8 + 128 * c;
    int8_t* out = planes.data() + 256 * c;
    for (int j = 0; j < 64; ++j) {
      out[j] = int8_t(q[2 * j]);
      out[64 + j] = int8_t(q[2 * j + 1]);
      out[128 + j] = int8_t(q[4 * (j % 32) + j / 32]);
      out[192 + j] = int8_t(q[4 * (j % 32) + 2 + j / 32]);
    }
  }
  return planes;
}

__attribute__((target("avx512f,avx512bw,bmi2")))
inline __m512i signed_plane(const int8_t* plane, uint64_t positive) {
  const __m512i q = _mm512_loadu_si512(plane);
  return _mm512_mask_sub_epi8(q, ~positive, _mm512_setzero_si512(), q);
}

// The sign bits under `mask` of two code words, the first word's in the low `width` bits.
__attribute__((target("bmi2")))
inline uint64_t gather_signs(uint64_t w0, uint64_t w1, uint64_t mask, int width) {
  return _pext_u64(w0, mask) | _pext_u64(w1, mask) << width;
}

__attribute__((target("avx512f,avx512bw,bmi2")))
int32_t dot_avx512(const uint8_t* nibbles, const uint8_t* crumbs, const uint64_t* signs, const int8_t* planes,
                   size_t dim) {
  constexpr uint64_t kEven = 0x5555555555555555ull, kFours = 0x1111111111111111ull;
  const __m512i low_nibble = _mm512_set1_epi8(15), low_crumb = _mm512_set1_epi8(3), ones = _mm512_set1_epi16(1);
  const __m512i shift01 = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);  // dims 4j, 4j + 1
  const __m512i shift23 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);  // dims 4j + 2, 4j + 3
  __m512i total = _mm512_setzero_si512();  // (16,) int32
  for (size_t c = 0; c < dim / 128; ++c) {
    const uint64_t w0 = signs[2 * c], w1 = signs[2 * c + 1];
    const int8_t* q = planes + 256 * c;
    const __m512i nib = _mm512_loadu_si512(nibbles + 64 * c);
    const __m512i crumb = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(crumbs + 32 * c)));
    const __m512i even = _mm512_and_si512(nib, low_nibble);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi16(nib, 4), low_nibble);
    const __m512i c01 = _mm512_and_si512(_mm512_srlv_epi16(crumb, shift01), low_crumb);
    const __m512i c23 = _mm512_and_si512(_mm512_srlv_epi16(crumb, shift23), low_crumb);
    // int16 pair sums: nibbles |.| <= 2 x 2 x 15 x 127, crumbs x 16 <= 16 x 2 x 2 x 3 x 127; 32,004 in all.
    const uint64_t signs_even = gather_signs(w0, w1, kEven, 32), signs_odd = gather_signs(w0, w1, kEven << 1, 32);
    const __m512i nibble_part = _mm512_add_epi16(_mm512_maddubs_epi16(even, signed_plane(q, signs_even)),
                                                 _mm512_maddubs_epi16(odd, signed_plane(q + 64, signs_odd)));
    const uint64_t signs01 = gather_signs(w0, w1, kFours, 16) | gather_signs(w0, w1, kFours << 1, 16) << 32;
    const uint64_t signs23 = gather_signs(w0, w1, kFours << 2, 16) | gather_signs(w0, w1, kFours << 3, 16) << 32;
    const __m512i crumb_part = _mm512_add_epi16(_mm512_maddubs_epi16(c01, signed_plane(q + 128, signs01)),
                                                _mm512_maddubs_epi16(c23, signed_plane(q + 192, signs23)));
    const __m512i sum = _mm512_add_epi16(nibble_part, _mm512_slli_epi16(crumb_part, 4));
    total = _mm512_add_epi32(total, _mm512_madd_epi16(sum, ones));
  }
  return _mm512_reduce_add_epi32(total);
}

// Version 3 rows, dim a multiple of 64 (AVX-512BW): per 64 dims the magnitudes are rebuilt in dim
// order (32 nibble bytes widened to 16-bit lanes, 16 crumb bytes to 32-bit lanes, the bit-6 plane
// as a byte mask), the sign bits negate the query and centre bytes, and three unsigned x signed
// byte dots (|pair| <= 2 x 127 x 127) give v . q8, v . centre8 and v . v in int32.
__attribute__((target("avx512f,avx512bw")))
void dots8_avx512(const uint8_t* nibbles, const uint8_t* crumbs, const uint8_t* top, const uint64_t* signs,
                  const int8_t* query8, const int8_t* centre8, size_t dim, int32_t* out) {
  const __m512i zero = _mm512_setzero_si512(), ones = _mm512_set1_epi16(1), bit6 = _mm512_set1_epi8(64);
  const __m512i low_nibble = _mm512_set1_epi16(0x000F), high_nibble = _mm512_set1_epi16(0x0F00);
  __m512i dots = zero, along = zero, energy = zero;  // (16,) int32 each
  for (size_t b = 0; b < dim / 64; ++b) {
    const __m512i nib = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(nibbles + 32 * b)));
    __m512i m = _mm512_or_si512(_mm512_and_si512(nib, low_nibble),
                                _mm512_and_si512(_mm512_slli_epi16(nib, 4), high_nibble));  // dims 2j, 2j + 1
    const __m512i crumb = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(crumbs + 16 * b)));
    for (int i = 0; i < 4; ++i) {  // bits 2i, 2i + 1 of crumb byte j -> bits 4, 5 of dim 4j + i's byte
      const __m512i part = _mm512_and_si512(crumb, _mm512_set1_epi32(3 << (2 * i)));
      m = _mm512_or_si512(m, _mm512_sllv_epi32(part, _mm512_set1_epi32(6 * i + 4)));
    }
    uint64_t top_bits;
    std::memcpy(&top_bits, top + 8 * b, 8);
    m = _mm512_mask_add_epi8(m, top_bits, m, bit6);  // (64,) magnitudes 0..127
    const uint64_t negative = ~signs[b];
    const __m512i q = _mm512_loadu_si512(query8 + 64 * b), c = _mm512_loadu_si512(centre8 + 64 * b);
    const __m512i signed_q = _mm512_mask_sub_epi8(q, negative, zero, q);
    const __m512i signed_c = _mm512_mask_sub_epi8(c, negative, zero, c);
    dots = _mm512_add_epi32(dots, _mm512_madd_epi16(_mm512_maddubs_epi16(m, signed_q), ones));
    along = _mm512_add_epi32(along, _mm512_madd_epi16(_mm512_maddubs_epi16(m, signed_c), ones));
    energy = _mm512_add_epi32(energy, _mm512_madd_epi16(_mm512_maddubs_epi16(m, m), ones));
  }
  out[0] = _mm512_reduce_add_epi32(dots);
  out[1] = _mm512_reduce_add_epi32(along);
  out[2] = _mm512_reduce_add_epi32(energy);
}

// The weighted distances of one byte-transposed block (transpose_codes), any width: per code byte,
// two byte shuffles look up what its nibbles add (nibble_tables); two bytes' four lookups are
// summed in bytes, then into 16-bit sums: `even` and `odd` hold rows 2i and 2i + 1 of the block in
// lane i (exact, as (2^P - 1) x dim <= 65535). The distances of row_distance, with 2 P popcounts
// a 64-bit word replaced by 2 shuffles a byte whatever P.
// kCodeBytes: the code bytes a row when fixed at compile time (16: 65..128-d), else 0.
template <size_t kCodeBytes>
__attribute__((target("avx512f,avx512bw"))) inline void block_distances(
    const uint8_t* block, size_t runtime_code_bytes, const uint8_t* tables, __m512i& even, __m512i& odd) {
  const size_t code_bytes = kCodeBytes ? kCodeBytes : runtime_code_bytes;
  const __m512i low = _mm512_set1_epi8(0x0f);
  __m512i words = _mm512_setzero_si512();  // (32,) uint16: even + 256 odd, mod 2^16
  odd = _mm512_setzero_si512();
  for (size_t b = 0; b < code_bytes; b += 2) {
    __m512i sum = _mm512_setzero_si512();  // (64,) uint8: <= 4 x 60
    for (size_t c = b; c < b + 2; ++c) {
      const __m512i bytes = _mm512_loadu_si512(block + 64 * c);
      const uint8_t* table = tables + 128 * c;  // the low nibble's, then the high nibble's
      sum = _mm512_add_epi8(sum, _mm512_shuffle_epi8(_mm512_loadu_si512(table), _mm512_and_si512(bytes, low)));
      sum = _mm512_add_epi8(sum, _mm512_shuffle_epi8(_mm512_loadu_si512(table + 64),
                                                     _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low)));
    }
    words = _mm512_add_epi16(words, sum);
    odd = _mm512_add_epi16(odd, _mm512_srli_epi16(sum, 8));
  }
  even = _mm512_sub_epi16(words, _mm512_slli_epi16(odd, 8));
}

// The weighted scan of every block, 64 rows a step: one unsigned compare per 32 rows.
template <size_t kCodeBytes>
__attribute__((target("avx512f,avx512bw,bmi2")))
void scan_blocks_avx512(const uint8_t* blocks, int64_t n_blocks, size_t code_bytes, const uint8_t* tables,
                        Candidates& kept) {
  const size_t block_bytes = code_bytes * kBlockRows;
  alignas(64) uint16_t sums[2][32];  // the even rows' and the odd rows' distances of a block
  for (int64_t i = 0; i < n_blocks && kept.limit >= 0; ++i) {
    const uint8_t* block = blocks + size_t(i) * block_bytes;
    const char* ahead = reinterpret_cast<const char*>(block) + kPrefetchBytes;
    for (size_t at = 0; at < block_bytes; at += 64) _mm_prefetch(ahead + at, _MM_HINT_T0);
    __m512i even, odd;
    block_distances<kCodeBytes>(block, code_bytes, tables, even, odd);
    const __m512i limit = _mm512_set1_epi16(int16_t(uint16_t(kept.limit)));
    uint64_t near = _pdep_u64(_mm512_cmple_epu16_mask(even, limit), 0x5555555555555555ull) |
                    _pdep_u64(_mm512_cmple_epu16_mask(odd, limit), 0xAAAAAAAAAAAAAAAAull);  // bit j: row 64 i + j
    if (__builtin_expect(near != 0, 0)) {
      _mm512_store_si512(sums[0], even);
      _mm512_store_si512(sums[1], odd);
      for (; near; near &= near - 1) {
        const int j = __builtin_ctzll(near);
        kept.add(i * kBlockRows + j, sums[j & 1][j >> 1]);
      }
    }
  }
}

// sample_rows from the blocks: kSampleBlocks evenly spread blocks of 64 rows.
__attribute__((target("avx512f,avx512bw")))
void sample_blocks_avx512(const uint8_t* blocks, int64_t n_blocks, size_t code_bytes, const uint8_t* tables,
                          std::vector<int64_t>& histogram) {
  alignas(64) uint16_t sums[2][32];
  for (int64_t b = 0; b < kSampleBlocks; ++b) {
    const uint8_t* block = blocks + size_t((n_blocks - 1) * b / (kSampleBlocks - 1)) * code_bytes * kBlockRows;
    __m512i even, odd;
    if (code_bytes == 16) block_distances<16>(block, code_bytes, tables, even, odd);
    else block_distances<0>(block, code_bytes, tables, even, odd);
    _mm512_store_si512(sums[0], even);
    _mm512_store_si512(sums[1], odd);
    for (int j = 0; j < 64; ++j) ++histogram[sums[j & 1][j >> 1]];
  }
}

bool has_avx512() {
  if (!kSimdAllowed) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq") &&
         __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
}
const bool kAvx512 = has_avx512();

// The block scans need AVX-512F/BW and BMI2 only (Skylake-SP and Cascade Lake have no VPOPCNTDQ).
bool has_avx512bw() {
  if (!kSimdAllowed) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("bmi2");
}
const bool kBlockScan = has_avx512bw();
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

ScanKernel scan_kernel() {
#if MALM_X86_KERNELS
  if (kAvx512) return scan_avx512;
#endif
#if MALM_NEON_KERNELS
  if (kSimdAllowed) return scan_neon;
#endif
  return scan_portable;
}
#if MALM_NEON_KERNELS
const bool kBlockScan = kSimdAllowed;
#endif

#if MALM_BLOCK_KERNELS
// The weighted scan of the byte-transposed blocks, and its sample, for this CPU.
struct BlockKernels {
  void (*scan)(const uint8_t* blocks, int64_t n_blocks, size_t code_bytes, const uint8_t* tables, Candidates& kept);
  void (*sample)(const uint8_t* blocks, int64_t n_blocks, size_t code_bytes, const uint8_t* tables,
                 std::vector<int64_t>& histogram);
};

BlockKernels block_kernels(size_t words) {
#if MALM_X86_KERNELS
  return {words == 2 ? scan_blocks_avx512<16> : scan_blocks_avx512<0>, sample_blocks_avx512};
#else
  return {scan_blocks_neon, sample_blocks_neon};
#endif
}
#endif

// signs[c] holds 8 bytes, one per bit of c (LSB first): 0 where the bit is 1 (v >= 0), -1 where 0.
struct SignMasks {
  int8_t masks[256][8];
  SignMasks() {
    for (int c = 0; c < 256; ++c) {
      for (int b = 0; b < 8; ++b) masks[c][b] = (c >> b) & 1 ? 0 : -1;
    }
  }
};
const SignMasks kSignMasks;

// Version 3 rows, any dim: v . q8, v . centre8 and v . v of one row, value by value.
void dots8_portable(const uint8_t* nibbles, const uint8_t* crumbs, const uint8_t* top, const uint8_t* signs,
                    const int8_t* query8, const int8_t* centre8, size_t dim, int32_t* out) {
  int32_t dots = 0, along = 0, energy = 0;
  for (size_t d = 0; d < dim; ++d) {
    const int m = ((nibbles[d >> 1] >> ((d & 1) << 2)) & 15) | (((crumbs[d >> 2] >> ((d & 3) << 1)) & 3) << 4) |
                  (((top[d >> 3] >> (d & 7)) & 1) << 6);
    const int v = (signs[d >> 3] >> (d & 7)) & 1 ? m : -m;  // little-endian code words, read as bytes
    dots += v * query8[d];
    along += v * centre8[d];
    energy += m * m;
  }
  out[0] = dots, out[1] = along, out[2] = energy;
}

// Best key first, ties to the lower row; a NaN key ranks after every number (as numpy's sort).
template <typename Key>
bool ranks_before(const Hit& a, const Hit& b, Key a_key, Key b_key) {
  const bool a_nan = std::isnan(a_key), b_nan = std::isnan(b_key);
  if (a_nan != b_nan) return b_nan;
  if (a_nan) return a.row < b.row;
  return a_key > b_key || (a_key == b_key && a.row < b.row);
}
bool better(const Hit& a, const Hit& b) { return ranks_before(a, b, a.score, b.score); }

}  // namespace

TwoStageTable::TwoStageTable(const std::string& values_file, const std::string& scales_file,
                             const std::string& codes_file, std::vector<float> centre, int64_t rows,
                             int64_t candidates, CentreCodes implied)
    : rows_(rows), candidates_(candidates), centre_(std::move(centre)) {
  set_layout(std::move(implied));
  values_ = static_cast<const uint8_t*>(maps_[0].map(values_file, size_t(rows) * value_bytes_));
  if (version_ == 2) scales_ = static_cast<const float*>(maps_[1].map(scales_file, size_t(rows) * 4));
  codes_ = static_cast<const uint64_t*>(maps_[2].map(codes_file, size_t(rows) * words_ * 8));
  transpose_for_scan();
}

TwoStageTable::TwoStageTable(const uint64_t* codes, const uint8_t* values, const float* scales,
                             std::vector<float> centre, int64_t rows, int64_t candidates, CentreCodes implied)
    : rows_(rows), candidates_(candidates), centre_(std::move(centre)), codes_(codes), values_(values),
      scales_(scales) {
  set_layout(std::move(implied));
  transpose_for_scan();
}

// A weighted table's codes copied into the shuffle scan's layout (words x 8 more bytes a row in
// memory: 16 MB for a 1M-row 128-d table, in huge pages where the OS gives them: 4-9% faster a
// search at 1M rows, BENCHMARKS.md), where this CPU runs that scan. Hamming keeps its
// popcount scan, which needs fewer instructions a row than the shuffles.
void TwoStageTable::transpose_for_scan() {
#if MALM_BLOCK_KERNELS
  if (!kBlockScan || query_bits_ < 2 || rows_ < kBlockRows) return;
  n_blocks_ = rows_ / kBlockRows;
  uint8_t* blocks = static_cast<uint8_t*>(block_memory_.allocate(size_t(n_blocks_) * words_ * 8 * kBlockRows));
  transpose_codes(codes_, n_blocks_, words_, blocks);  // page-aligned: whole cache lines a load
  blocks_ = blocks;
#endif
}

void TwoStageTable::set_layout(CentreCodes implied) {
  const size_t dim = centre_.size();
  words_ = (dim + 63) / 64;
  nibble_bytes_ = (dim + 1) / 2;
  crumb_bytes_ = (dim + 3) / 4;
  version_ = implied.codes.empty() ? 2 : 3;
  query_bits_ = version_ == 3 ? implied.query_bits : 1;
  if (query_bits_ < 1 || query_bits_ > 4 || ((1 << query_bits_) - 1) * int64_t(dim) > 65535) {
    fail(MALM_ERR_INVALID_ARGUMENT, "query_bits must be 1..4 with (2^bits - 1) x dim <= 65535");
  }
  value_bytes_ = nibble_bytes_ + crumb_bytes_ + (version_ == 3 ? (dim + 7) / 8 : 0);
  if (version_ == 2) return;
  if (implied.codes.size() != dim) fail(MALM_ERR_INVALID_ARGUMENT, "the centre codes do not match the table dim");
  centre8_.assign(implied.codes.begin(), implied.codes.end());  // |c| <= 127 (manifest.cc)
  centre_scale_ = implied.scale;
  int64_t energy = 0;
  for (int32_t c : implied.codes) energy += int64_t(c) * c;
  sphere_k_ = 1.0 - (centre_scale_ * centre_scale_) * double(energy);  // the order edge/table_codes.py uses
}

TwoStageTable::~TwoStageTable() = default;

// x = query - centre in float32 (as edge/twostage.py); the weights as edge/table_codes.py query_weights.
QueryCode TwoStageTable::query_code(const float* query) const {
  const size_t dim = centre_.size();
  QueryCode q;
  q.words = words_;
  q.bits = query_bits_;
  q.code.assign(words_, 0);
  std::vector<float> residual(dim);
  float peak = 0;
  for (size_t d = 0; d < dim; ++d) {
    residual[d] = query[d] - centre_[d];
    if (residual[d] > 0) q.code[d >> 6] |= uint64_t(1) << (d & 63);
    peak = std::max(peak, std::fabs(residual[d]));
  }
  if (query_bits_ == 1) {
    q.max_distance = int(words_ * 64);
    return q;
  }
  const float most = float((1 << query_bits_) - 1);
  float scale = peak / most;
  if (!(scale > 0)) scale = 1.0f;  // a zero residual, or one whose step underflows: every weight 0
  q.planes.assign(size_t(query_bits_) * words_, 0);
  for (size_t d = 0; d < dim; ++d) {
    const int weight = int(std::min(most, std::nearbyint(std::fabs(residual[d]) / scale)));  // half to even
    for (int k = 0; k < query_bits_; ++k) {
      if ((weight >> k) & 1) q.planes[size_t(k) * words_ + (d >> 6)] |= uint64_t(1) << (d & 63);
    }
  }
  q.max_distance = int(most) * int(dim);
  return q;
}

std::vector<int64_t> TwoStageTable::prefilter(const QueryCode& query, int64_t keep) const {
  // One pass with a limit estimated from a sample; a second over every row in the rare case the
  // sample set it too low (fewer than keep rows within it). Either way the rows are exactly those
  // of the counting rule, since Candidates only ever drops rows that rank after `keep` others.
  const ScanKernel scan = scan_kernel();
  const size_t bins = size_t(query.max_distance) + 1;
#if MALM_BLOCK_KERNELS
  const BlockKernels blocked = block_kernels(words_);
  const int64_t n_blocks = n_blocks_;
  const std::vector<uint8_t> tables = n_blocks ? nibble_tables(query) : std::vector<uint8_t>();
#endif
  auto scan_rows = [&](Candidates& kept) {  // every row, in row order
    int64_t begin = 0;
#if MALM_BLOCK_KERNELS
    if (n_blocks) blocked.scan(blocks_, n_blocks, words_ * 8, tables.data(), kept);
    begin = n_blocks * kBlockRows;
#endif
    scan(codes_, begin, rows_, query, kept);
  };
  auto sample = [&](std::vector<int64_t>& histogram) {
#if MALM_BLOCK_KERNELS
    if (n_blocks) return blocked.sample(blocks_, n_blocks, words_ * 8, tables.data(), histogram);
#endif
    sample_rows(codes_, rows_, query, histogram);
  };
  int limit = query.max_distance;
  if (sample_pays(rows_, keep)) {
    std::vector<int64_t> histogram(bins, 0);
    sample(histogram);
    limit = sampled_limit(histogram, rows_, keep);
  }
  Candidates kept(keep, rows_, limit, bins);
  scan_rows(kept);
  if (int64_t(kept.size()) >= keep || limit == query.max_distance) return kept.take();
  Candidates all(keep, rows_, query.max_distance, bins);
  scan_rows(all);
  return all.take();
}

int32_t TwoStageTable::dot_row(int64_t r, const int16_t* query8, int8_t* scratch) const {
  // Decode into scratch (magnitudes, then signed by the sign bits), then one vectorisable dot.
  const size_t dim = centre_.size(), padded = (dim + 7) & ~size_t(7);
  const uint8_t* nibbles = values_ + size_t(r) * value_bytes_;
  const uint8_t* crumbs = nibbles + nibble_bytes_;
  const uint8_t* signs = reinterpret_cast<const uint8_t*>(codes_ + size_t(r) * words_);  // little-endian words
  int8_t* magnitude = scratch;            // (padded,)
  int8_t* mask = scratch + padded + 8;    // (padded,)
  for (size_t j = 0; j < nibble_bytes_; ++j) {
    magnitude[2 * j] = int8_t(nibbles[j] & 15);
    magnitude[2 * j + 1] = int8_t(nibbles[j] >> 4);
  }
  for (size_t j = 0; j < (dim + 3) / 4; ++j) {
    const uint8_t c = crumbs[j];
    magnitude[4 * j] = int8_t(magnitude[4 * j] | ((c & 3) << 4));
    magnitude[4 * j + 1] = int8_t(magnitude[4 * j + 1] | (((c >> 2) & 3) << 4));
    magnitude[4 * j + 2] = int8_t(magnitude[4 * j + 2] | (((c >> 4) & 3) << 4));
    magnitude[4 * j + 3] = int8_t(magnitude[4 * j + 3] | ((c >> 6) << 4));
  }
  for (size_t j = 0; j < padded / 8; ++j) std::memcpy(mask + 8 * j, kSignMasks.masks[signs[j]], 8);
  int32_t total = 0;
  for (size_t d = 0; d < dim; ++d) {
    const int32_t value = (magnitude[d] ^ mask[d]) - mask[d];  // +m or -m
    total += value * query8[d];
  }
  return total;
}

std::vector<Hit> TwoStageTable::search(const float* query, size_t dim, int k) const {
  return search(query, dim, k, candidates_);
}

std::vector<Hit> TwoStageTable::search(const float* query, size_t dim, int k, int64_t candidates) const {
  if (dim != centre_.size()) {
    fail(MALM_ERR_INVALID_ARGUMENT, "query dim " + std::to_string(dim) + " != table dim " + std::to_string(centre_.size()));
  }
  for (size_t i = 0; i < dim; ++i) {
    if (!std::isfinite(query[i])) fail(MALM_ERR_ENCODER, "query embedding holds NaN or infinity (a broken encoder output?)");
  }
  if (k < 0) fail(MALM_ERR_INVALID_ARGUMENT, "k must be >= 0");
  const int64_t keep = std::min<int64_t>(k, rows_);
  if (keep == 0) return {};
  float peak = 0;
  double offset = 0;  // centre . query, for the reported score only
  for (size_t d = 0; d < dim; ++d) {
    peak = std::max(peak, std::fabs(query[d]));
    offset += double(centre_[d]) * query[d];
  }
  const float query_scale = peak > 0 ? peak / kInt8Max : 1.0f;
  std::vector<int16_t> query8(dim);
  for (size_t d = 0; d < dim; ++d) query8[d] = int16_t(std::nearbyint(query[d] / query_scale));  // half to even
  static_assert(kValueMax * 127 < (1 << 15), "a product fits; dim <= 65536 keeps the sum in int32");
  const int64_t n_keep = std::min<int64_t>(rows_, std::max<int64_t>(keep, candidates));
  const std::vector<int64_t> rows = prefilter(query_code(query), n_keep);
  if (version_ == 2) {
    std::vector<Hit> hits = rescore_v2(rows, query8);
    std::partial_sort(hits.begin(), hits.begin() + keep, hits.end(), better);
    hits.resize(size_t(keep));
    for (Hit& h : hits) h.score = h.score * query_scale + float(offset);
    return hits;
  }
  const std::vector<double> keys = rescore_v3(rows, query8);
  std::vector<size_t> order(rows.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](size_t a, size_t b) {
    return ranks_before(Hit{rows[a], 0}, Hit{rows[b], 0}, keys[a], keys[b]);
  });
  std::vector<Hit> hits(static_cast<size_t>(keep));
  for (size_t i = 0; i < hits.size(); ++i) hits[i] = {rows[order[i]], float(keys[order[i]]) * query_scale + float(offset)};
  return hits;
}

// Rows are scattered: fetch ahead what rescoring row `r` reads.
void TwoStageTable::prefetch_row(int64_t r) const {
  const char* ahead = reinterpret_cast<const char*>(values_ + size_t(r) * value_bytes_);
  for (size_t at = 0; at < value_bytes_; at += 64) __builtin_prefetch(ahead + at);
  __builtin_prefetch(ahead + value_bytes_ - 1);
  __builtin_prefetch(codes_ + size_t(r) * words_);
  if (scales_) __builtin_prefetch(scales_ + r);
}

std::vector<Hit> TwoStageTable::rescore_v2(const std::vector<int64_t>& rows, const std::vector<int16_t>& query8) const {
  const size_t dim = centre_.size();
  // The dot kernel this CPU and width get, and the int8 query in its layout.
#if MALM_X86_KERNELS
  const bool vector_dot = kAvx512 && dim % 128 == 0;
  const std::vector<int8_t> laid_out = vector_dot ? query_planes(query8.data(), dim) : std::vector<int8_t>();
#elif MALM_NEON_KERNELS
  const bool vector_dot = kSimdAllowed && dim % 16 == 0;
  const std::vector<int8_t> laid_out(query8.begin(), query8.end());  // |q8| <= 127
#else
  const bool vector_dot = false;
#endif
  std::vector<int8_t> scratch(vector_dot ? 0 : 2 * (((dim + 7) & ~size_t(7)) + 8) + 8, 0);  // decoded row (dot_row)
  auto dot = [&](int64_t r) -> int32_t {
    const uint8_t* nibbles = values_ + size_t(r) * value_bytes_;
    const uint64_t* signs = codes_ + size_t(r) * words_;
#if MALM_X86_KERNELS
    if (vector_dot) return dot_avx512(nibbles, nibbles + nibble_bytes_, signs, laid_out.data(), dim);
#elif MALM_NEON_KERNELS
    if (vector_dot) {
      return dot_neon(nibbles, nibbles + nibble_bytes_, reinterpret_cast<const uint8_t*>(signs), laid_out.data(), dim);
    }
#endif
    (void)nibbles, (void)signs;
    return dot_row(r, query8.data(), scratch.data());
  };
  std::vector<Hit> hits(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i + kRescorePrefetchRows < rows.size()) prefetch_row(rows[i + kRescorePrefetchRows]);
    const int64_t r = rows[i];
    hits[i] = {r, float(dot(r)) * scales_[r]};
  }
  return hits;
}

std::vector<double> TwoStageTable::rescore_v3(const std::vector<int64_t>& rows,
                                              const std::vector<int16_t>& query8) const {
  const size_t dim = centre_.size(), code_bytes = words_ * 8;
  const size_t stride = words_ + (value_bytes_ + 7) / 8;  // uint64 words a gathered row: codes stay aligned
  const std::vector<int8_t> q8(query8.begin(), query8.end());  // |q8| <= 127
#if MALM_X86_KERNELS
  const bool vector_dot = kAvx512 && dim % 64 == 0;
#elif MALM_NEON_KERNELS
  const bool vector_dot = kSimdAllowed && dim % 16 == 0;
#endif
  // Gather the candidates' codes and magnitudes first: the copies are independent loads, so the
  // CPU overlaps their cache misses (the rows are scattered over the table), which the dot loop,
  // one row after another, did not (the whole search at 1,000 candidates of a 1M-row table: 0.70-0.78
  // ms against 0.99-1.07, BENCHMARKS.md).
  std::vector<uint64_t> gathered(rows.size() * stride);
  for (size_t i = 0; i < rows.size(); ++i) {
    uint64_t* out = gathered.data() + i * stride;
    std::memcpy(out, codes_ + size_t(rows[i]) * words_, code_bytes);
    std::memcpy(out + words_, values_ + size_t(rows[i]) * value_bytes_, value_bytes_);
  }
  std::vector<double> keys(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const uint64_t* signs = gathered.data() + i * stride;
    const uint8_t* nibbles = reinterpret_cast<const uint8_t*>(signs + words_);
    const uint8_t* crumbs = nibbles + nibble_bytes_;
    const uint8_t* top = crumbs + crumb_bytes_;
    int32_t dots[3];  // v . q8, v . centre8 (A), v . v (B): exact integers
#if MALM_X86_KERNELS
    if (vector_dot) {
      dots8_avx512(nibbles, crumbs, top, signs, q8.data(), centre8_.data(), dim, dots);
    } else
#elif MALM_NEON_KERNELS
    if (vector_dot) {
      dots8_neon(nibbles, crumbs, top, reinterpret_cast<const uint8_t*>(signs), q8.data(), centre8_.data(), dim, dots);
    } else
#endif
    {
      dots8_portable(nibbles, crumbs, top, reinterpret_cast<const uint8_t*>(signs), q8.data(), centre8_.data(), dim,
                     dots);
    }
    // The scale that puts centre + s v on the unit sphere; each step one float64 operation, in the
    // order of edge/table_codes.py implied_scales (table.cc's -ffp-contract=off applies here too).
    const double a = centre_scale_ * double(dots[1]), energy = double(dots[2]);
    const double scale = dots[2] > 0 ? (std::sqrt(a * a + energy * sphere_k_) - a) / energy : 0.0;
    keys[i] = double(dots[0]) * scale;
  }
  return keys;
}

std::unique_ptr<SearchTable> open_search_table(const std::string& root, const TableEntry& t) {
  if (t.version == 2) {
    return std::make_unique<TwoStageTable>(join_path(root, t.file), join_path(root, t.scales_file),
                                           join_path(root, t.codes_file), t.centre, t.rows, t.candidates);
  }
  if (t.version == 3) {
    return std::make_unique<TwoStageTable>(join_path(root, t.file), "", join_path(root, t.codes_file), t.centre,
                                           t.rows, t.candidates, CentreCodes{t.centre8, t.centre_scale, t.query_bits});
  }
  return std::make_unique<Table>(join_path(root, t.file), t.scales_file.empty() ? "" : join_path(root, t.scales_file),
                                 t.dtype, t.rows, t.dim);
}

}  // namespace malm
