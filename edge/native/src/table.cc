#include "table.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MALM_X86_DOT 1  // AVX-512F / AVX2 int8 dot kernels, chosen at run time
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define MALM_NEON_DOT 1
#endif

namespace malm {
namespace {

float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

bool better(const Hit& a, const Hit& b) { return a.score > b.score || (a.score == b.score && a.row < b.row); }

}  // namespace

// Dot products of int8 rows with a float query. Element i + j of each 16-wide step goes to lane j
// (mul, then add: no FMA, this file is compiled with -ffp-contract=off); the 16 lanes are then
// added as a tree (j + 8, j + 4, j + 2, j + 1) and the tail, summed in order, comes last. Every
// kernel below keeps exactly that arithmetic, so all return the same floats. The tree, not a
// sequential sum, because at 128 dims the reduction is most of a row's work.
namespace detail {
namespace {

inline float finish_dot(float* lanes, const int8_t* row, const float* q, size_t i, size_t dim) {
  for (int width = 8; width >= 1; width /= 2) {
    for (int j = 0; j < width; ++j) lanes[j] += lanes[j + width];
  }
  float tail = 0;
  for (; i < dim; ++i) tail += float(row[i]) * q[i];
  return lanes[0] + tail;
}

inline float dot_portable(const int8_t* row, const float* q, size_t dim) {
  float lanes[16] = {0};
  size_t i = 0;
  for (; i + 16 <= dim; i += 16) {
    for (int j = 0; j < 16; ++j) lanes[j] += float(row[i + j]) * q[i + j];
  }
  return finish_dot(lanes, row, q, i, dim);
}

void rows_portable(const int8_t* rows, size_t count, size_t dim, const float* q, float* out) {
  for (size_t r = 0; r < count; ++r) out[r] = dot_portable(rows + r * dim, q, dim);
}

#if MALM_X86_DOT
#if !defined(__clang__)
// GCC 12's AVX-512 headers seed results with `__m512 __Y = __Y;`, which -Wuninitialized reports.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// One zmm register is the 16 lanes: 16 int8 -> int32 -> float a step.
__attribute__((target("avx512f"))) void rows_avx512(const int8_t* rows, size_t count, size_t dim, const float* q,
                                                    float* out) {
  for (size_t r = 0; r < count; ++r) {
    const int8_t* row = rows + r * dim;
    __m512 acc = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i));
      acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), _mm512_loadu_ps(q + i)));
    }
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, acc);
    out[r] = finish_dot(lanes, row, q, i, dim);
  }
}

// Two ymm registers: lanes 0..7 and 8..15.
__attribute__((target("avx2"))) void rows_avx2(const int8_t* rows, size_t count, size_t dim, const float* q,
                                               float* out) {
  for (size_t r = 0; r < count; ++r) {
    const int8_t* row = rows + r * dim;
    __m256 low = _mm256_setzero_ps(), high = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i));
      const __m256 first = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
      const __m256 second = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
      low = _mm256_add_ps(low, _mm256_mul_ps(first, _mm256_loadu_ps(q + i)));
      high = _mm256_add_ps(high, _mm256_mul_ps(second, _mm256_loadu_ps(q + i + 8)));
    }
    alignas(32) float lanes[16];
    _mm256_store_ps(lanes, low);
    _mm256_store_ps(lanes + 8, high);
    out[r] = finish_dot(lanes, row, q, i, dim);
  }
}
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

#if MALM_NEON_DOT
// Four q registers of 4 lanes (AArch64 phones).
void rows_neon(const int8_t* rows, size_t count, size_t dim, const float* q, float* out) {
  for (size_t r = 0; r < count; ++r) {
    const int8_t* row = rows + r * dim;
    float32x4_t acc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
      const int8x16_t bytes = vld1q_s8(row + i);
      const int16x8_t halves[2] = {vmovl_s8(vget_low_s8(bytes)), vmovl_s8(vget_high_s8(bytes))};
      for (int h = 0; h < 2; ++h) {
        const float32x4_t a = vcvtq_f32_s32(vmovl_s16(vget_low_s16(halves[h])));
        const float32x4_t b = vcvtq_f32_s32(vmovl_s16(vget_high_s16(halves[h])));
        acc[2 * h] = vaddq_f32(acc[2 * h], vmulq_f32(a, vld1q_f32(q + i + 8 * h)));
        acc[2 * h + 1] = vaddq_f32(acc[2 * h + 1], vmulq_f32(b, vld1q_f32(q + i + 8 * h + 4)));
      }
    }
    float lanes[16];
    for (int k = 0; k < 4; ++k) vst1q_f32(lanes + 4 * k, acc[k]);
    out[r] = finish_dot(lanes, row, q, i, dim);
  }
}
#endif

RowsKernel pick_rows_kernel() {
  const char* off = std::getenv("MALM_EDGE_DISABLE_SIMD");  // the portable loop on this CPU (tests)
  if (off && *off && std::strcmp(off, "0") != 0) return rows_portable;
#if MALM_X86_DOT
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return rows_avx512;
  if (__builtin_cpu_supports("avx2")) return rows_avx2;
#elif MALM_NEON_DOT
  return rows_neon;
#endif
  return rows_portable;
}

}  // namespace

const RowsKernel dot_int8_rows = pick_rows_kernel();

float dot_int8_portable(const int8_t* row, const float* query, size_t dim) { return dot_portable(row, query, dim); }

}  // namespace detail

MappedFile::~MappedFile() {
  if (base_) munmap(base_, bytes_);
}

void* MappedFile::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail(MALM_ERR_NO_MEMORY, "cannot allocate " + std::to_string(bytes) + " bytes");
#ifdef MADV_HUGEPAGE
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: ignored where THP is off
#endif
  base_ = p;
  bytes_ = bytes;
  return p;
}

const void* MappedFile::map(const std::string& path, size_t bytes) {
  if (bytes == 0) return nullptr;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(MALM_ERR_BUNDLE, path + ": cannot open the table file");
  struct stat st;
  if (fstat(fd, &st) != 0 || size_t(st.st_size) != bytes) {
    close(fd);
    fail(MALM_ERR_BUNDLE, path + ": " + std::to_string(st.st_size) + " bytes, expected " + std::to_string(bytes));
  }
  void* p = mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) fail(MALM_ERR_BUNDLE, path + ": cannot memory-map the table file");
  base_ = p;
  bytes_ = bytes;
  return p;
}

void* Table::map_file(const std::string& path, size_t bytes, void** base, size_t* mapped) {
  if (bytes == 0) return nullptr;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(MALM_ERR_BUNDLE, path + ": cannot open the table file");
  struct stat st;
  if (fstat(fd, &st) != 0 || size_t(st.st_size) != bytes) {
    close(fd);
    fail(MALM_ERR_BUNDLE, path + ": " + std::to_string(st.st_size) + " bytes, expected " + std::to_string(bytes));
  }
  void* p = mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) fail(MALM_ERR_BUNDLE, path + ": cannot memory-map the table file");
  *base = p;
  *mapped = bytes;
  return p;
}

Table::Table(const std::string& file, const std::string& scales_file, const std::string& dtype,
             int64_t rows, int64_t dim)
    : rows_(rows), dim_(dim), dtype_(dtype) {
  elem_ = dtype == "int8" ? 1 : dtype == "float16" ? 2 : 4;
  values_ = static_cast<const uint8_t*>(map_file(file, size_t(rows) * dim * elem_, &maps_[0], &map_bytes_[0]));
  if (dtype == "int8") {
    try {
      scales_ = static_cast<const float*>(map_file(scales_file, size_t(rows) * 4, &maps_[1], &map_bytes_[1]));
    } catch (...) {
      if (maps_[0]) munmap(maps_[0], map_bytes_[0]);
      throw;
    }
  }
  if (maps_[0]) madvise(maps_[0], map_bytes_[0], MADV_SEQUENTIAL);
}

Table::Table(const int8_t* values, const float* scales, int64_t rows, int64_t dim)
    : rows_(rows), dim_(dim), values_(reinterpret_cast<const uint8_t*>(values)), scales_(scales) {}

Table::~Table() {
  for (int i = 0; i < 2; ++i) {
    if (maps_[i]) munmap(maps_[i], map_bytes_[i]);
  }
}

void Table::score_rows(int64_t first, int64_t count, const float* query, float* out) const {
  const size_t d = size_t(dim_);
  if (dtype_ == "int8") {
    detail::dot_int8_rows(reinterpret_cast<const int8_t*>(values_) + size_t(first) * d, size_t(count), d, query, out);
    for (int64_t j = 0; j < count; ++j) out[j] *= scales_[first + j];
    return;
  }
  for (int64_t j = 0; j < count; ++j) out[j] = score_float_row(first + j, query);
}

float Table::score_float_row(int64_t r, const float* query) const {
  const size_t d = size_t(dim_);
  float total = 0;
  if (dtype_ == "float16") {
    const uint8_t* row = values_ + size_t(r) * d * 2;
    for (size_t i = 0; i < d; ++i) {
      uint16_t h;
      std::memcpy(&h, row + i * 2, 2);
      total += half_to_float(h) * query[i];
    }
  } else {
    const uint8_t* row = values_ + size_t(r) * d * 4;
    for (size_t i = 0; i < d; ++i) {
      float v;
      std::memcpy(&v, row + i * 4, 4);
      total += v * query[i];
    }
  }
  return total;
}

std::vector<Hit> Table::search(const float* query, size_t dim, int k) const {
  if (dim != size_t(dim_)) {
    fail(MALM_ERR_INVALID_ARGUMENT, "query dim " + std::to_string(dim) + " != table dim " + std::to_string(dim_));
  }
  for (size_t i = 0; i < dim; ++i) {
    if (!std::isfinite(query[i])) fail(MALM_ERR_ENCODER, "query embedding holds NaN or infinity (a broken encoder output?)");
  }
  if (k < 0) fail(MALM_ERR_INVALID_ARGUMENT, "k must be >= 0");
  const size_t keep = size_t(std::min<int64_t>(k, rows_));
  std::vector<Hit> best;  // sorted best first, at most `keep`
  best.reserve(keep + 1);
  if (keep == 0) return best;
  constexpr int64_t kBlock = 256;  // rows scored by one kernel call
  float scores[kBlock];
  for (int64_t first = 0; first < rows_; first += kBlock) {
    const int64_t count = std::min(kBlock, rows_ - first);
    score_rows(first, count, query, scores);
    for (int64_t j = 0; j < count; ++j) {
      const Hit hit{first + j, scores[j]};
      if (best.size() == keep && !better(hit, best.back())) continue;
      if (std::isnan(hit.score)) continue;  // a NaN scale never ranks
      auto at = std::upper_bound(best.begin(), best.end(), hit, better);
      best.insert(at, hit);
      if (best.size() > keep) best.pop_back();
    }
  }
  return best;
}

}  // namespace malm
