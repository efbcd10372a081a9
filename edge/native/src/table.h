// The recipe embedding table (edge/table.py): memory-mapped raw little-endian [rows, dim] int8
// with float32 per-row scales (or float16 / float32 rows); exact top-k by dot product, float32
// accumulation, score = (q_r . query) * scale_r; ties to the lower row index.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace malm {

namespace detail {
// out[r] = (row r . query), r < count, for `count` int8 rows of `dim` (float32): the kernel picked at
// load time (AVX-512F, AVX2, NEON, or the portable loop when MALM_EDGE_DISABLE_SIMD is set), equal
// bit for bit to dot_int8_portable on every row.
using RowsKernel = void (*)(const int8_t* rows, size_t count, size_t dim, const float* query, float* out);
extern const RowsKernel dot_int8_rows;
float dot_int8_portable(const int8_t* row, const float* query, size_t dim);
}  // namespace detail

struct Hit {
  int64_t row;
  float score;
};

// What the engine searches: an exact table (version 1, below) or a two-stage one (twostage.h).
class SearchTable {
 public:
  virtual ~SearchTable() = default;
  virtual int64_t rows() const = 0;
  virtual int64_t dim() const = 0;
  virtual size_t bytes_per_row() const = 0;
  // Best k rows, best first (k clipped to rows); throws on a non-finite query.
  virtual std::vector<Hit> search(const float* query, size_t dim, int k) const = 0;
};

// A read-only memory map of a whole file whose size must be `bytes` (nothing mapped for 0).
class MappedFile {
 public:
  MappedFile() = default;
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const void* map(const std::string& path, size_t bytes);
  // Instead: `bytes` of zeroed read-write memory (page-aligned; transparent huge pages asked for
  // where the OS has them, so a large scanned copy costs fewer TLB misses).
  void* allocate(size_t bytes);

 private:
  void* base_ = nullptr;
  size_t bytes_ = 0;
};

class Table : public SearchTable {
 public:
  // Map <file> (and <scales_file> for int8); sizes must match rows x dim (checked again here).
  Table(const std::string& file, const std::string& scales_file, const std::string& dtype,
        int64_t rows, int64_t dim);
  // A table over caller-owned memory (benchmarks, tests): int8 values + scales.
  Table(const int8_t* values, const float* scales, int64_t rows, int64_t dim);
  ~Table() override;
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;

  int64_t rows() const override { return rows_; }
  int64_t dim() const override { return dim_; }
  size_t bytes_per_row() const override { return size_t(dim_) * elem_ + (scales_ ? 4 : 0); }
  std::vector<Hit> search(const float* query, size_t dim, int k) const override;

 private:
  // out[j] = score of row first + j, j < count.
  void score_rows(int64_t first, int64_t count, const float* query, float* out) const;
  float score_float_row(int64_t r, const float* query) const;  // float16 / float32 rows
  void* map_file(const std::string& path, size_t bytes, void** base, size_t* mapped);

  int64_t rows_ = 0, dim_ = 0;
  size_t elem_ = 1;
  std::string dtype_ = "int8";
  const uint8_t* values_ = nullptr;
  const float* scales_ = nullptr;
  void* maps_[2] = {nullptr, nullptr};
  size_t map_bytes_[2] = {0, 0};
};

}  // namespace malm
