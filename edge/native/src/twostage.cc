#include "twostage.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "common.h"

namespace malm {
namespace {

constexpr int kValueMax = 63;
constexpr float kInt8Max = 127.0f;

// Hamming distance of every row to the query code, and their histogram (one pass over the codes).
// Four histograms, one per row of an unrolled group: consecutive rows often share a distance, and
// one histogram would make each increment wait for the previous one's store.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("popcnt", "default")))
#endif
void hamming_histogram(const uint64_t* codes, int64_t rows, size_t words, const uint64_t* query_code,
                       uint16_t* distances, int64_t* histogram) {
  const size_t bins = words * 64 + 1;
  std::vector<int64_t> partial(4 * bins, 0);  // (4, bins)
  int64_t* h[4] = {partial.data(), partial.data() + bins, partial.data() + 2 * bins, partial.data() + 3 * bins};
  int64_t r = 0;
  if (words == 2) {  // 65..128-d models: the phone's case, unrolled
    const uint64_t q0 = query_code[0], q1 = query_code[1];
    for (; r + 4 <= rows; r += 4) {
      const uint64_t* row = codes + size_t(r) * 2;
      for (int j = 0; j < 4; ++j) {
        const int d = __builtin_popcountll(row[2 * j] ^ q0) + __builtin_popcountll(row[2 * j + 1] ^ q1);
        distances[r + j] = uint16_t(d);
        ++h[j][d];
      }
    }
  }
  for (; r < rows; ++r) {
    const uint64_t* row = codes + size_t(r) * words;
    int d = 0;
    for (size_t w = 0; w < words; ++w) d += __builtin_popcountll(row[w] ^ query_code[w]);
    distances[r] = uint16_t(d);
    ++h[0][d];
  }
  for (size_t b = 0; b < bins; ++b) histogram[b] = h[0][b] + h[1][b] + h[2][b] + h[3][b];
}

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

// Best key first, ties to the lower row; a NaN key ranks after every number (as numpy's sort).
bool better(const Hit& a, const Hit& b) {
  const bool a_nan = std::isnan(a.score), b_nan = std::isnan(b.score);
  if (a_nan != b_nan) return b_nan;
  if (a_nan) return a.row < b.row;
  return a.score > b.score || (a.score == b.score && a.row < b.row);
}

}  // namespace

TwoStageTable::TwoStageTable(const std::string& values_file, const std::string& scales_file,
                             const std::string& codes_file, std::vector<float> centre, int64_t rows,
                             int64_t candidates)
    : rows_(rows), candidates_(candidates), centre_(std::move(centre)) {
  const size_t dim = centre_.size();
  words_ = (dim + 63) / 64;
  nibble_bytes_ = (dim + 1) / 2;
  value_bytes_ = nibble_bytes_ + (dim + 3) / 4;
  values_ = static_cast<const uint8_t*>(maps_[0].map(values_file, size_t(rows) * value_bytes_));
  scales_ = static_cast<const float*>(maps_[1].map(scales_file, size_t(rows) * 4));
  codes_ = static_cast<const uint64_t*>(maps_[2].map(codes_file, size_t(rows) * words_ * 8));
}

TwoStageTable::TwoStageTable(const uint64_t* codes, const uint8_t* values, const float* scales,
                             std::vector<float> centre, int64_t rows, int64_t candidates)
    : rows_(rows), candidates_(candidates), centre_(std::move(centre)), codes_(codes), values_(values),
      scales_(scales) {
  const size_t dim = centre_.size();
  words_ = (dim + 63) / 64;
  nibble_bytes_ = (dim + 1) / 2;
  value_bytes_ = nibble_bytes_ + (dim + 3) / 4;
}

TwoStageTable::~TwoStageTable() = default;

std::vector<int64_t> TwoStageTable::prefilter(const uint64_t* query_code, int64_t keep) const {
  std::vector<uint16_t> distances(static_cast<size_t>(rows_));
  std::vector<int64_t> histogram(words_ * 64 + 1, 0);
  hamming_histogram(codes_, rows_, words_, query_code, distances.data(), histogram.data());
  int64_t below = 0;  // rows strictly closer than the boundary distance
  size_t boundary = 0;
  while (below + histogram[boundary] < keep) below += histogram[boundary++];
  int64_t at_boundary = keep - below;  // taken in row order
  std::vector<int64_t> rows;
  rows.reserve(size_t(keep));
  for (int64_t r = 0; r < rows_; ++r) {
    const size_t d = distances[size_t(r)];
    if (d < boundary || (d == boundary && at_boundary-- > 0)) rows.push_back(r);
  }
  return rows;
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
  std::vector<uint64_t> query_code(words_, 0);
  float peak = 0;
  double offset = 0;  // centre . query, for the reported score only
  for (size_t d = 0; d < dim; ++d) {
    if (query[d] - centre_[d] > 0) query_code[d >> 6] |= uint64_t(1) << (d & 63);
    peak = std::max(peak, std::fabs(query[d]));
    offset += double(centre_[d]) * query[d];
  }
  const float query_scale = peak > 0 ? peak / kInt8Max : 1.0f;
  std::vector<int16_t> query8(dim);
  for (size_t d = 0; d < dim; ++d) query8[d] = int16_t(std::nearbyint(query[d] / query_scale));  // half to even
  static_assert(kValueMax * 127 < (1 << 15), "a product fits; dim <= 65536 keeps the sum in int32");
  const int64_t n_keep = std::min<int64_t>(rows_, std::max<int64_t>(keep, candidates));
  std::vector<Hit> hits;
  std::vector<int8_t> scratch(2 * (((dim + 7) & ~size_t(7)) + 8) + 8, 0);  // decoded row (dot_row)
  for (int64_t r : prefilter(query_code.data(), n_keep)) {
    hits.push_back({r, float(dot_row(r, query8.data(), scratch.data())) * scales_[r]});
  }
  std::partial_sort(hits.begin(), hits.begin() + keep, hits.end(), better);
  hits.resize(size_t(keep));
  for (Hit& h : hits) h.score = h.score * query_scale + float(offset);
  return hits;
}

std::unique_ptr<SearchTable> open_search_table(const std::string& root, const TableEntry& t) {
  if (t.version == 2) {
    return std::make_unique<TwoStageTable>(join_path(root, t.file), join_path(root, t.scales_file),
                                           join_path(root, t.codes_file), t.centre, t.rows, t.candidates);
  }
  return std::make_unique<Table>(join_path(root, t.file), t.scales_file.empty() ? "" : join_path(root, t.scales_file),
                                 t.dtype, t.rows, t.dim);
}

}  // namespace malm
