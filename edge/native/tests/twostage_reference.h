// TwoStageTable::search against a naive reference on synthetic tables (native_unit_tests; also
// built alone for other CPUs, e.g. under qemu-aarch64 for the NEON prefilter).
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
      bool same = got.size() == want.size();
      for (size_t i = 0; same && i < got.size(); ++i) {
        same = got[i].row == want[i].row &&
               std::fabs(got[i].score - want[i].score) <= 1e-6f * std::fabs(want[i].score) + 1e-30f;
      }
      if (!same) {
        std::fprintf(stderr, "two-stage reference: rows %lld dim %zu k %d candidates %lld query %d differ\n",
                     (long long)c.rows, c.dim, c.k, (long long)c.candidates, q);
        ++failures;
      }
    }
  }
  return failures;
}

}  // namespace twostage_reference
