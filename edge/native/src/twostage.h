// The two-stage recipe table, table format version 2 (edge/twostage.py, edge/table_codes.py):
// sign bits of (x - centre) as little-endian uint64 words [rows, ceil(dim / 64)], the 6-bit
// magnitudes of 7-bit rescoring values [rows, ceil(dim / 2) + ceil(dim / 4)] (a nibble plane then
// a 2-bit plane; the signs are the sign bits) and float32 per-row scales [rows].
//
// Search: Hamming distance (popcount of XOR) to the code of (query - centre); keep the
// max(k, candidates) rows of smallest distance, the lower rows at the boundary distance; rescore
// them with the int8-quantised query as exact integer dots, key = float(v . q8) * scale_r; top-k by
// key, ties to the lower row. The same rows, in the same order, as edge/ and the PWA.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <memory>

#include "manifest.h"
#include "table.h"

namespace malm {

class TwoStageTable : public SearchTable {
 public:
  // Map the three files; sizes must match rows x dim (checked again here).
  TwoStageTable(const std::string& values_file, const std::string& scales_file, const std::string& codes_file,
                std::vector<float> centre, int64_t rows, int64_t candidates);
  // A table over caller-owned memory (benchmarks, tests).
  TwoStageTable(const uint64_t* codes, const uint8_t* values, const float* scales, std::vector<float> centre,
                int64_t rows, int64_t candidates);
  ~TwoStageTable() override;
  TwoStageTable(const TwoStageTable&) = delete;
  TwoStageTable& operator=(const TwoStageTable&) = delete;

  int64_t rows() const override { return rows_; }
  int64_t dim() const override { return int64_t(centre_.size()); }
  size_t bytes_per_row() const override { return words_ * 8 + value_bytes_ + 4; }
  std::vector<Hit> search(const float* query, size_t dim, int k) const override;
  // The same with another candidate count (benchmarks).
  std::vector<Hit> search(const float* query, size_t dim, int k, int64_t candidates) const;

 private:
  std::vector<int64_t> prefilter(const uint64_t* query_code, int64_t keep) const;
  int32_t dot_row(int64_t r, const int16_t* query8, int8_t* scratch) const;

  int64_t rows_ = 0, candidates_ = 1000;
  size_t words_ = 1, nibble_bytes_ = 0, value_bytes_ = 0;
  std::vector<float> centre_;
  const uint64_t* codes_ = nullptr;
  const uint8_t* values_ = nullptr;
  const float* scales_ = nullptr;
  MappedFile maps_[3];
};

// The table of a parsed entry, files under `root`: version 1 -> Table, version 2 -> TwoStageTable.
std::unique_ptr<SearchTable> open_search_table(const std::string& root, const TableEntry& t);

}  // namespace malm
