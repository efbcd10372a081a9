// The two-stage search over raw table files, for a CPU this machine cannot run natively: built alone
// with a cross compiler (twostage.cc and table.cc only, no bundle code) and run under an emulator,
// e.g. qemu-aarch64 for the NEON kernels (tests/test_native_cross.py).
//
//   table_search_raw DIR DIM ROWS QUERY_BITS CANDIDATES K
//
// DIR holds codes.u64 (ROWS x ceil(DIM / 64) little-endian words), values.u8 (the rows),
// centre.f32 (DIM), queries.f32 (Q x DIM), and for version 3 centre8.i32 (DIM) and centre_scale.f64
// (1), for version 2 scales.f32 (ROWS) instead. Prints the K rows of each query on one line, best
// first.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "../src/common.h"
#include "../src/twostage.h"

namespace malm {
std::string join_path(const std::string& root, const std::string& relative) { return root + "/" + relative; }
}  // namespace malm

template <typename T>
static std::vector<T> read_all(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    std::fprintf(stderr, "cannot open %s\n", path.c_str());
    std::exit(2);
  }
  std::vector<T> out;
  T value;
  while (std::fread(&value, sizeof(T), 1, f) == 1) out.push_back(value);
  std::fclose(f);
  return out;
}

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: table_search_raw DIR DIM ROWS QUERY_BITS CANDIDATES K\n");
    return 2;
  }
  const std::string dir = argv[1];
  const size_t dim = std::strtoul(argv[2], nullptr, 10);
  const int64_t rows = std::strtoll(argv[3], nullptr, 10), candidates = std::strtoll(argv[5], nullptr, 10);
  const int query_bits = std::atoi(argv[4]), k = std::atoi(argv[6]);
  const std::vector<uint64_t> codes = read_all<uint64_t>(dir + "/codes.u64");
  const std::vector<uint8_t> values = read_all<uint8_t>(dir + "/values.u8");
  const std::vector<float> queries = read_all<float>(dir + "/queries.f32");
  std::FILE* scales_file = std::fopen((dir + "/scales.f32").c_str(), "rb");
  const bool v2 = scales_file != nullptr;
  if (v2) std::fclose(scales_file);
  const std::vector<float> scales = v2 ? read_all<float>(dir + "/scales.f32") : std::vector<float>();
  const malm::CentreCodes implied = v2 ? malm::CentreCodes{} : malm::CentreCodes{
      read_all<int32_t>(dir + "/centre8.i32"), read_all<double>(dir + "/centre_scale.f64").at(0), query_bits};
  try {
    malm::TwoStageTable table(codes.data(), values.data(), v2 ? scales.data() : nullptr,
                              read_all<float>(dir + "/centre.f32"), rows, candidates, implied);
    for (size_t q = 0; q + dim <= queries.size(); q += dim) {
      const std::vector<malm::Hit> hits = table.search(queries.data() + q, dim, k);
      for (size_t i = 0; i < hits.size(); ++i) std::printf(i ? " %lld" : "%lld", (long long)hits[i].row);
      std::printf("\n");
    }
  } catch (const malm::Error& err) {
    std::fprintf(stderr, "%s\n", err.what());
    return 1;
  }
  return 0;
}
