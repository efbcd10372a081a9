// TwoStageTable::search against a naive reference on synthetic tables (native_unit_tests; also
// built alone for other CPUs, e.g. under qemu-aarch64 for the NEON prefilter): version 2 with the
// Hamming prefilter, and version 3 (implied scales) with query_bits 1..4.
//
// The tables are large enough for the sampled distance limit (16,384+ rows, 64 x keep), hold
// heavy ties (rows sharing one code, exact copies of rows) and a layout where the sample sees too
// few far rows, so the second, full pass runs; k > candidates and k == rows are searched too.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "../src/twostage.h"

namespace twostage_reference {

struct Synthetic {
  int64_t rows = 0;
  size_t dim = 0, words = 0, nibble_bytes = 0, value_bytes = 0;
  std::vector<uint64_t> codes;   // (rows, words)
  std::vector<uint8_t> values;   // (rows, value_bytes)
  std::vector<float> scales;     // (rows,)
};

inline Synthetic make_table(int64_t rows, size_t dim, uint32_t seed) {
  Synthetic t;
  t.rows = rows, t.dim = dim, t.words = (dim + 63) / 64;
  t.nibble_bytes = (dim + 1) / 2, t.value_bytes = t.nibble_bytes + (dim + 3) / 4;
  t.codes.resize(size_t(rows) * t.words);
  t.values.resize(size_t(rows) * t.value_bytes);
  t.scales.resize(size_t(rows));
  std::mt19937_64 rng(seed);
  std::vector<uint64_t> bases(16 * t.words);
  for (uint64_t& w : bases) w = rng();
  const uint64_t tail = dim % 64 ? (uint64_t(1) << (dim % 64)) - 1 : ~uint64_t(0);  // bits past dim stay 0
  for (int64_t r = 0; r < rows; ++r) {
    const size_t base = size_t(rng() % 16);
    const bool tied = r % 3 == 0;  // a third of the rows share base 0's code exactly
    for (size_t w = 0; w < t.words; ++w) {
      const uint64_t flips = rng() & rng() & rng();  // each bit flips with p = 1/8
      uint64_t word = tied ? bases[w] : bases[base * t.words + w] ^ flips;
      if (w + 1 == t.words) word &= tail;
      t.codes[size_t(r) * t.words + w] = word;
    }
    for (size_t b = 0; b < t.value_bytes; ++b) t.values[size_t(r) * t.value_bytes + b] = uint8_t(rng());
    t.scales[size_t(r)] = 0.01f + float(rng() % 1000) / 1e5f;
    if (r % 101 == 7 && r > 7) {  // exact copies of an earlier row: equal keys
      std::copy_n(&t.codes[size_t(r - 7) * t.words], t.words, &t.codes[size_t(r) * t.words]);
      std::copy_n(&t.values[size_t(r - 7) * t.value_bytes], t.value_bytes, &t.values[size_t(r) * t.value_bytes]);
      t.scales[size_t(r)] = t.scales[size_t(r - 7)];
    }
  }
  return t;
}

inline int value_of(const Synthetic& t, int64_t r, size_t d) {
  const uint8_t* row = &t.values[size_t(r) * t.value_bytes];
  const int nibble = (row[d / 2] >> (4 * (d % 2))) & 15, crumb = (row[t.nibble_bytes + d / 4] >> (2 * (d % 4))) & 3;
  const bool positive = (t.codes[size_t(r) * t.words + d / 64] >> (d % 64)) & 1;
  return positive ? nibble + 16 * crumb : -(nibble + 16 * crumb);
}

// Every distance, a stable sort by distance, the first max(k, candidates); each dot value by value.
inline std::vector<malm::Hit> reference_search(const Synthetic& t, const std::vector<float>& query, int k,
                                               int64_t candidates) {
  std::vector<uint64_t> code(t.words, 0);
  float peak = 0;
  for (size_t d = 0; d < t.dim; ++d) {
    if (query[d] > 0) code[d / 64] |= uint64_t(1) << (d % 64);
    peak = std::max(peak, std::fabs(query[d]));
  }
  const float query_scale = peak > 0 ? peak / 127.0f : 1.0f;
  std::vector<int> distance(size_t(t.rows));
  std::vector<int64_t> order(size_t(t.rows));
  for (int64_t r = 0; r < t.rows; ++r) {
    order[size_t(r)] = r;
    for (size_t w = 0; w < t.words; ++w) {
      distance[size_t(r)] += __builtin_popcountll(t.codes[size_t(r) * t.words + w] ^ code[w]);
    }
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return distance[size_t(a)] < distance[size_t(b)]; });
  const int64_t keep = std::min<int64_t>(k, t.rows);
  const int64_t kept = std::min<int64_t>(t.rows, std::max<int64_t>(keep, candidates));
  std::vector<malm::Hit> hits;
  for (int64_t i = 0; i < kept; ++i) {
    const int64_t r = order[size_t(i)];
    int32_t dot = 0;
    for (size_t d = 0; d < t.dim; ++d) dot += value_of(t, r, d) * int32_t(std::nearbyint(query[d] / query_scale));
    hits.push_back({r, float(dot) * t.scales[size_t(r)]});
  }
  std::stable_sort(hits.begin(), hits.end(), [](const malm::Hit& a, const malm::Hit& b) {
    return a.score > b.score || (a.score == b.score && a.row < b.row);
  });
  hits.resize(size_t(keep));
  for (malm::Hit& h : hits) h.score = h.score * query_scale;  // centre 0: no offset
  return hits;
}

// A query whose code is row `r`'s with `flips` bits flipped; magnitudes vary, some repeat.
inline std::vector<float> query_near(const Synthetic& t, int64_t r, int flips, std::mt19937_64& rng) {
  std::vector<float> q(t.dim);
  for (size_t d = 0; d < t.dim; ++d) {
    const bool positive = (t.codes[size_t(r) * t.words + d / 64] >> (d % 64)) & 1;
    const float size = 0.05f + float(rng() % 8) / 8.0f;
    q[d] = positive ? size : -size;
  }
  for (int f = 0; f < flips; ++f) {
    const size_t d = size_t(rng() % t.dim);
    q[d] = -q[d];
  }
  return q;
}

// Rows at the sample's blocks (64 of 64 rows, evenly spread: twostage.cc) made nearest to `code_row`
// (3 a block, 192 in all) and every other row far from it: with keep 300 the sampled limit admits
// fewer than keep rows, so the search must fall back to the full pass.
inline void crowd_the_sample(Synthetic& t, int64_t code_row) {
  std::vector<uint64_t> code(&t.codes[size_t(code_row) * t.words], &t.codes[size_t(code_row) * t.words] + t.words);
  const uint64_t tail = t.dim % 64 ? (uint64_t(1) << (t.dim % 64)) - 1 : ~uint64_t(0);
  for (int64_t r = 0; r < t.rows; ++r) {
    for (size_t w = 0; w < t.words; ++w) {
      const uint64_t far = ~code[w] ^ (uint64_t(0x0101010101010101) * uint64_t(r % 7));  // ~56 of 64 bits differ
      t.codes[size_t(r) * t.words + w] = (w + 1 == t.words ? tail : ~uint64_t(0)) & far;
    }
  }
  for (int64_t b = 0; b < 64; ++b) {
    const int64_t start = (t.rows - 64) * b / 63;
    for (int64_t r = start; r < start + 3; ++r) std::copy(code.begin(), code.end(), &t.codes[size_t(r) * t.words]);
  }
}

// Version 3: 8-bit values (nibble, crumb and bit-6 planes) with implied scales, and the prefilter
// weighted by the query's P-bit magnitudes, done the slow way (edge/table_codes.py's formulas).
struct SyntheticV3 {
  Synthetic t;                  // codes; values hold the three planes (scales unused)
  size_t crumb_bytes = 0;
  std::vector<int32_t> centre8;  // (dim,) in -127..127
  double centre_scale = 0;
  std::vector<float> centre;     // (dim,) = centre_scale x centre8, as float
};

inline SyntheticV3 make_table_v3(int64_t rows, size_t dim, uint32_t seed) {
  SyntheticV3 v;
  v.t = make_table(rows, dim, seed);  // codes with ties and exact copies
  v.crumb_bytes = (dim + 3) / 4;
  const size_t value_bytes = v.t.nibble_bytes + v.crumb_bytes + (dim + 7) / 8;
  std::mt19937_64 rng(seed + 1);
  std::vector<uint8_t> values(size_t(rows) * value_bytes);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t source = r % 101 == 7 && r > 7 ? r - 7 : r;  // the copies stay copies
    for (size_t b = 0; b < value_bytes; ++b) {
      values[size_t(r) * value_bytes + b] = source == r ? uint8_t(rng()) : values[size_t(source) * value_bytes + b];
    }
  }
  v.t.values = std::move(values);
  v.t.value_bytes = value_bytes;
  v.centre_scale = 0.25 / (127.0 * std::sqrt(double(dim)));  // |centre| <= 1/4: K > 0
  for (size_t d = 0; d < dim; ++d) {
    v.centre8.push_back(int32_t(rng() % 255) - 127);
    v.centre.push_back(float(v.centre_scale * v.centre8.back()));
  }
  return v;
}

inline int value8_of(const SyntheticV3& v, int64_t r, size_t d) {
  const Synthetic& t = v.t;
  const uint8_t* row = &t.values[size_t(r) * t.value_bytes];
  const int magnitude = ((row[d / 2] >> (4 * (d % 2))) & 15) + 16 * ((row[t.nibble_bytes + d / 4] >> (2 * (d % 4))) & 3) +
                        64 * ((row[t.nibble_bytes + v.crumb_bytes + d / 8] >> (d % 8)) & 1);
  const bool positive = (t.codes[size_t(r) * t.words + d / 64] >> (d % 64)) & 1;
  return positive ? magnitude : -magnitude;
}

inline std::vector<malm::Hit> reference_search_v3(const SyntheticV3& v, const std::vector<float>& query, int k,
                                                  int64_t candidates, int bits) {
  const Synthetic& t = v.t;
  std::vector<float> residual(t.dim);
  float peak = 0, residual_peak = 0;
  double offset = 0;
  for (size_t d = 0; d < t.dim; ++d) {
    residual[d] = query[d] - v.centre[d];
    residual_peak = std::max(residual_peak, std::fabs(residual[d]));
    peak = std::max(peak, std::fabs(query[d]));
    offset += double(v.centre[d]) * query[d];
  }
  const float most = float((1 << bits) - 1);
  float step = residual_peak / most;
  if (!(step > 0)) step = 1.0f;
  std::vector<int> weight(t.dim, 1);
  if (bits > 1) {
    for (size_t d = 0; d < t.dim; ++d) weight[d] = int(std::min(most, std::nearbyint(std::fabs(residual[d]) / step)));
  }
  std::vector<int> distance(size_t(t.rows), 0);
  std::vector<int64_t> order(size_t(t.rows));
  for (int64_t r = 0; r < t.rows; ++r) {
    order[size_t(r)] = r;
    for (size_t d = 0; d < t.dim; ++d) {
      const bool row_bit = (t.codes[size_t(r) * t.words + d / 64] >> (d % 64)) & 1;
      distance[size_t(r)] += row_bit != (residual[d] > 0) ? weight[d] : 0;
    }
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return distance[size_t(a)] < distance[size_t(b)]; });
  const float query_scale = peak > 0 ? peak / 127.0f : 1.0f;
  int64_t centre_energy = 0;
  for (int32_t c : v.centre8) centre_energy += int64_t(c) * c;
  const double sphere_k = 1.0 - (v.centre_scale * v.centre_scale) * double(centre_energy);
  const int64_t keep = std::min<int64_t>(k, t.rows);
  const int64_t kept = std::min<int64_t>(t.rows, std::max<int64_t>(keep, candidates));
  std::vector<std::pair<double, int64_t>> keyed;
  for (int64_t i = 0; i < kept; ++i) {
    const int64_t r = order[size_t(i)];
    int64_t dot = 0, along = 0, energy = 0;
    for (size_t d = 0; d < t.dim; ++d) {
      const int value = value8_of(v, r, d);
      dot += value * int64_t(std::nearbyint(query[d] / query_scale));
      along += value * int64_t(v.centre8[d]);
      energy += int64_t(value) * value;
    }
    const double a = v.centre_scale * double(along);
    const double scale = energy > 0 ? (std::sqrt(a * a + double(energy) * sphere_k) - a) / double(energy) : 0.0;
    keyed.push_back({double(dot) * scale, r});
  }
  std::stable_sort(keyed.begin(), keyed.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  std::vector<malm::Hit> hits;
  for (int64_t i = 0; i < keep; ++i) hits.push_back({keyed[size_t(i)].second, float(keyed[size_t(i)].first) * query_scale + float(offset)});
  return hits;
}

inline bool same_hits(const std::vector<malm::Hit>& got, const std::vector<malm::Hit>& want) {
  bool same = got.size() == want.size();
  for (size_t i = 0; same && i < got.size(); ++i) {
    same = got[i].row == want[i].row &&
           std::fabs(got[i].score - want[i].score) <= 1e-6f * std::fabs(want[i].score) + 1e-30f;
  }
  return same;
}

// Version 3 tables with query_bits 1..4 (the block scans at 128 dims, the portable and popcount
// scans at the others), ties and copies included, and the full pass forced by a crowded sample.
inline int check_weighted() {
  int failures = 0;
  std::mt19937_64 rng(11);
  struct Case { int64_t rows; size_t dim; int k; int64_t candidates; bool crowd; };
  const Case cases[] = {
      {20000, 128, 10, 200, false}, {20000, 128, 300, 60, false}, {20000, 128, 10, 300, true},
      {20000, 64, 10, 200, false},  {17000, 200, 12, 100, false}, {1003, 128, 1003, 10, false},
  };
  for (const Case& c : cases) {
    SyntheticV3 v = make_table_v3(c.rows, c.dim, uint32_t(3 * c.rows + c.dim));
    if (c.crowd) crowd_the_sample(v.t, 5);
    for (int bits = 1; bits <= 4; ++bits) {
      malm::CentreCodes implied{v.centre8, v.centre_scale, bits};
      malm::TwoStageTable table(v.t.codes.data(), v.t.values.data(), nullptr, v.centre, v.t.rows, c.candidates,
                                implied);
      for (int q = 0; q < 6; ++q) {
        const std::vector<float> query =
            query_near(v.t, q < 2 ? 5 * q : int64_t(rng() % uint64_t(v.t.rows)), q % 3 * 9, rng);
        if (!same_hits(table.search(query.data(), c.dim, c.k), reference_search_v3(v, query, c.k, c.candidates, bits))) {
          std::fprintf(stderr, "two-stage v3 reference: rows %lld dim %zu k %d candidates %lld bits %d query %d differ\n",
                       (long long)c.rows, c.dim, c.k, (long long)c.candidates, bits, q);
          ++failures;
        }
      }
    }
  }
  return failures;
}

// Returns the number of mismatching searches (printed to stderr).
inline int check_all() {
  int failures = 0;
  std::mt19937_64 rng(7);
  struct Case { int64_t rows; size_t dim; int k; int64_t candidates; bool crowd; };
  const Case cases[] = {
      {20000, 128, 10, 200, false}, {20000, 128, 10, 60, false}, {20000, 128, 300, 60, false},
      {20000, 128, 300, 60, true},  {20000, 256, 10, 200, false}, {17000, 200, 12, 100, false},
      {20000, 64, 10, 200, false},  {3000, 128, 3000, 10, false}, {1001, 128, 5, 1001, false},
  };
  for (const Case& c : cases) {
    Synthetic t = make_table(c.rows, c.dim, uint32_t(c.rows + c.dim));
    if (c.crowd) crowd_the_sample(t, 5);
    malm::TwoStageTable table(t.codes.data(), t.values.data(), t.scales.data(), std::vector<float>(c.dim, 0.0f),
                              t.rows, c.candidates);
    for (int q = 0; q < 12; ++q) {
      const std::vector<float> query = query_near(t, q < 4 ? 5 * q : int64_t(rng() % uint64_t(t.rows)), q % 4 * 9, rng);
      const std::vector<malm::Hit> got = table.search(query.data(), c.dim, c.k);
      const std::vector<malm::Hit> want = reference_search(t, query, c.k, c.candidates);
      if (!same_hits(got, want)) {
        std::fprintf(stderr, "two-stage reference: rows %lld dim %zu k %d candidates %lld query %d differ\n",
                     (long long)c.rows, c.dim, c.k, (long long)c.candidates, q);
        ++failures;
      }
    }
  }
  return failures + check_weighted();
}

}  // namespace twostage_reference
