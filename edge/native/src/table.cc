#include "table.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"

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

// Dot product of an int8 row with a float query, float32 accumulation in 16 lanes (vectorisable
// without -ffast-math: each lane is its own sequential sum).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
// AVX2 clone chosen at load time where the CPU has it (same per-lane arithmetic, same result).
__attribute__((target_clones("avx2", "default")))
#endif
float dot_int8(const int8_t* row, const float* q, size_t dim) {
  float lanes[16] = {0};
  size_t i = 0;
  for (; i + 16 <= dim; i += 16) {
    for (int j = 0; j < 16; ++j) lanes[j] += float(row[i + j]) * q[i + j];
  }
  float total = 0;
  for (; i < dim; ++i) total += float(row[i]) * q[i];
  for (int j = 0; j < 16; ++j) total += lanes[j];
  return total;
}

bool better(const Hit& a, const Hit& b) { return a.score > b.score || (a.score == b.score && a.row < b.row); }

}  // namespace

MappedFile::~MappedFile() {
  if (base_) munmap(base_, bytes_);
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

float Table::score_row(int64_t r, const float* query) const {
  const size_t d = size_t(dim_);
  if (dtype_ == "int8") {
    return dot_int8(reinterpret_cast<const int8_t*>(values_) + size_t(r) * d, query, d) * scales_[r];
  }
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
  for (int64_t r = 0; r < rows_; ++r) {
    Hit hit{r, score_row(r, query)};
    if (best.size() == keep && !better(hit, best.back())) continue;
    if (std::isnan(hit.score)) continue;  // a NaN scale never ranks
    auto at = std::upper_bound(best.begin(), best.end(), hit, better);
    best.insert(at, hit);
    if (best.size() > keep) best.pop_back();
  }
  return best;
}

}  // namespace malm
