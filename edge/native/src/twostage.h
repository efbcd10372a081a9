// The two-stage recipe table, table format versions 3 and 2 (edge/twostage.py, edge/table_codes.py):
// sign bits of (x - centre) as little-endian uint64 words [rows, ceil(dim / 64)] and the
// magnitudes of the rescoring values (their signs are the sign bits), per row a nibble plane
// (bits 0-3) and a 2-bit plane (bits 4-5), then in version 3 a bit-6 plane:
// - version 3: 8-bit values, no stored scale: the row's scale puts centre + s_r v_r on the unit
//   sphere (exact integers A = v . centre8, B = v . v; float64, no fused multiply-add);
// - version 2: 7-bit values and float32 per-row scales [rows].
//
// Search: distance to the code of x = query - centre, Hamming (popcount of XOR) or, with
// query_bits P >= 2, weighted by x's P-bit magnitudes (sum_k 2^k popcount(XOR & plane_k)); keep the
// max(k, candidates) rows of smallest distance, the lower rows at the boundary distance; rescore
// them with the int8-quantised query as exact integer dots, key = double(v . q8) * s_r (v3) or
// float(v . q8) * scale_r (v2); top-k by key, ties to the lower row. The same rows, in the same
// order, as edge/ and the PWA.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <memory>

#include "manifest.h"
#include "table.h"

namespace malm {

// Version 3's quantised centre (centre = scale x codes, codes in -127..127) and prefilter weights.
struct CentreCodes {
  std::vector<int32_t> codes;  // (dim,); empty for version 2
  double scale = 0;
  int query_bits = 1;  // the prefilter's query weight bits: 1 Hamming, 2..4 weighted
};

// The query side of the prefilter: the sign code of x = query - centre and its weight planes.
struct QueryCode {
  std::vector<uint64_t> code;    // (words,)
  std::vector<uint64_t> planes;  // (bits, words): bit k of every weight; empty: Hamming
  size_t words = 0;
  int bits = 1;
  int max_distance = 0;  // the largest distance a row can have
};

class TwoStageTable : public SearchTable {
 public:
  // Map the files; sizes must match rows x dim (checked again here). Version 3 when
  // `implied.codes` is given (no scales file: `scales_file` empty), else version 2.
  TwoStageTable(const std::string& values_file, const std::string& scales_file, const std::string& codes_file,
                std::vector<float> centre, int64_t rows, int64_t candidates, CentreCodes implied = {});
  // A table over caller-owned memory (benchmarks, tests); `scales` null for version 3.
  TwoStageTable(const uint64_t* codes, const uint8_t* values, const float* scales, std::vector<float> centre,
                int64_t rows, int64_t candidates, CentreCodes implied = {});
  ~TwoStageTable() override;
  TwoStageTable(const TwoStageTable&) = delete;
  TwoStageTable& operator=(const TwoStageTable&) = delete;

  int64_t rows() const override { return rows_; }
  int64_t dim() const override { return int64_t(centre_.size()); }
  size_t bytes_per_row() const override { return words_ * 8 + value_bytes_ + (version_ == 2 ? 4 : 0); }
  std::vector<Hit> search(const float* query, size_t dim, int k) const override;
  // The same with another candidate count (benchmarks).
  std::vector<Hit> search(const float* query, size_t dim, int k, int64_t candidates) const;

 private:
  void set_layout(CentreCodes implied);
  void transpose_for_scan();
  QueryCode query_code(const float* query) const;
  std::vector<int64_t> prefilter(const QueryCode& query, int64_t keep) const;
  int32_t dot_row(int64_t r, const int16_t* query8, int8_t* scratch) const;
  void prefetch_row(int64_t r) const;
  std::vector<Hit> rescore_v2(const std::vector<int64_t>& rows, const std::vector<int16_t>& query8) const;
  std::vector<double> rescore_v3(const std::vector<int64_t>& rows, const std::vector<int16_t>& query8) const;

  int64_t rows_ = 0, candidates_ = 1000;
  int version_ = 2, query_bits_ = 1;
  size_t words_ = 1, nibble_bytes_ = 0, crumb_bytes_ = 0, value_bytes_ = 0;
  std::vector<float> centre_;
  std::vector<int8_t> centre8_;  // version 3: the centre codes, -127..127
  double centre_scale_ = 0, sphere_k_ = 0;  // version 3: K = 1 - centre_scale^2 x (centre8 . centre8)
  const uint64_t* codes_ = nullptr;
  const uint8_t* values_ = nullptr;
  const float* scales_ = nullptr;
  const uint8_t* blocks_ = nullptr;  // the codes byte-transposed for the block scans, or null
  int64_t n_blocks_ = 0;             // blocks of 64 rows in it
  MappedFile maps_[3], block_memory_;
};

// The table of a parsed entry, files under `root`: version 1 -> Table, versions 2 and 3 -> TwoStageTable.
std::unique_ptr<SearchTable> open_search_table(const std::string& root, const TableEntry& t);

}  // namespace malm
