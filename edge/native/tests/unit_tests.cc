// C++ unit tests of the parts Python cannot reach directly (ctest; no framework, no data files).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../src/catalog.h"
#include "../src/common.h"
#include "../src/image_io.h"
#include "../src/manifest.h"
#include "../src/preprocess.h"
#include "../src/signature.h"
#include "../src/table.h"
#include "../src/twostage.h"
#include "twostage_reference.h"

static int failures = 0;
#define CHECK(cond)                                                  \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::fprintf(stderr, "%s:%d: CHECK(%s)\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                    \
    }                                                                \
  } while (0)

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const malm::Error& err) {
    return err.what();
  }
  return "";
}

static void test_sha256() {
  const char* path = "unit_sha256.txt";
  FILE* f = std::fopen(path, "wb");
  std::fputs("abc", f);
  std::fclose(f);
  CHECK(malm::sha256_path(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::remove(path);
}

static void test_manifest_errors() {
  CHECK(error_of([] { malm::parse_manifest_text("{not json", "m.json"); }).find("m.json: not valid JSON") == 0);
  std::string deep(100000, '[');
  CHECK(error_of([&] { malm::parse_manifest_text(deep, "m.json"); }).find("nested deeper") != std::string::npos);
  CHECK(error_of([] { malm::parse_manifest_text("[]", "m.json"); }) == "m.json: the manifest must be a JSON object");
  CHECK(error_of([] { malm::parse_manifest_text(R"({"format": "malm-edge-bundle", "version": 2})", "m.json"); }) ==
        "m.json: unknown bundle format version 2 (this reader supports version 1)");
  CHECK(error_of([] { malm::parse_manifest_text(R"({"format": "malm-edge-bundle", "version": true})", "m.json"); }) ==
        "m.json: field 'version' has type bool, expected <class 'int'>");
}

static void test_join_path() {
  CHECK(malm::join_path("/a/b/", "./c//d") == "/a/b/c/d");
  CHECK(malm::join_path("b", "c") == "b/c");
}

// The int8 dot kernel picked on this CPU (AVX-512F, AVX2, NEON) adds in the portable loop's order:
// same float, bit for bit, at every width (16-wide steps and tails), on random rows and queries.
static void test_dot_int8_kernel_matches_the_portable_loop() {
  uint32_t state = 12345;
  auto next = [&state] { return state = state * 1664525u + 1013904223u; };
  std::vector<int8_t> row(1100);
  std::vector<float> query(1100);
  for (size_t i = 0; i < row.size(); ++i) {
    row[i] = int8_t(next() >> 24);
    query[i] = float(int32_t(next() >> 8) - (1 << 23)) / float(1 << 23);
  }
  for (size_t dim : {size_t(1), size_t(15), size_t(16), size_t(17), size_t(31), size_t(64), size_t(127),
                     size_t(128), size_t(129), size_t(1024), size_t(1100)}) {
    for (size_t offset : {size_t(0), size_t(3)}) {  // unaligned rows too
      if (offset + dim > row.size()) continue;
      float got = 0;
      malm::detail::dot_int8_rows(row.data() + offset, 1, dim, query.data(), &got);
      const float want = malm::detail::dot_int8_portable(row.data() + offset, query.data(), dim);
      CHECK(std::memcmp(&got, &want, sizeof got) == 0);
    }
  }
  float block[8];  // several rows a call, as Table::search scores them
  malm::detail::dot_int8_rows(row.data(), 8, 129, query.data(), block);
  for (size_t r = 0; r < 8; ++r) {
    const float want = malm::detail::dot_int8_portable(row.data() + r * 129, query.data(), 129);
    CHECK(std::memcmp(&block[r], &want, sizeof want) == 0);
  }
}

static void test_topk_ties() {
  const int8_t values[] = {1, 0, 2, 0, 2, 0, 1, 0, 2, 0};  // rows 1, 2, 4 tie at the top
  const float scales[] = {1, 1, 1, 1, 1};
  malm::Table table(values, scales, 5, 2);
  const float q[] = {1.0f, 0.0f};
  auto hits = table.search(q, 2, 3);
  CHECK(hits.size() == 3 && hits[0].row == 1 && hits[1].row == 2 && hits[2].row == 4);
  CHECK(table.search(q, 2, 10).size() == 5);
  const float nan_q[] = {NAN, 0.0f};
  CHECK(!error_of([&] { table.search(nan_q, 2, 3); }).empty());
}

// Table version 2 by hand (dim 2, centre 0): rows v = (1, 0), (3, 0), (3, 0), (-2, 1), (2, 2).
static void test_two_stage_prefilter_and_ties() {
  const uint64_t codes[] = {1, 1, 1, 2, 3};  // bit d: v[d] >= 0 (a 0 value has bit 0)
  const uint8_t values[] = {1, 0, 3, 0, 3, 0, 2 | 1 << 4, 0, 2 | 2 << 4, 0};  // nibble plane, crumb plane
  const float scales[] = {1, 1, 1, 1, 1};
  const float q[] = {1.0f, 0.0f};  // code 0b01: distances 0, 0, 0, 2, 1; q8 = (127, 0)
  malm::TwoStageTable three(codes, values, scales, {0.0f, 0.0f}, 5, 3);
  auto hits = three.search(q, 2, 3);  // only the three rows at distance 0 are rescored
  CHECK(hits.size() == 3 && hits[0].row == 1 && hits[1].row == 2 && hits[2].row == 0);
  CHECK(std::fabs(hits[0].score - 3.0f) < 1e-6f);  // key 381 x (1 / 127)
  auto four = three.search(q, 2, 3, 4);  // one more: the lowest row at distance 1
  CHECK(four.size() == 3 && four[0].row == 1 && four[1].row == 2 && four[2].row == 4);
  auto all = three.search(q, 2, 10);  // k clipped to the rows, all rescored
  CHECK(all.size() == 5 && all[3].row == 0 && all[4].row == 3 && all[4].score < 0);
  CHECK(three.bytes_per_row() == 8 + 2 + 4);
  const float nan_q[] = {NAN, 0.0f};
  CHECK(!error_of([&] { three.search(nan_q, 2, 3); }).empty());
}

// The prefilter's kernels, sampled limit, fallback pass and vector dots against a naive search.
static void test_two_stage_against_reference() { CHECK(twostage_reference::check_all() == 0); }

static void test_fts_query() {
  CHECK(malm::fts_query("chicken, curry!") == "\"chicken\" \"curry\"");
  CHECK(malm::fts_query("\"NEAR(*)\"") == "\"NEAR\"");
  CHECK(malm::fts_query("  ...  ").empty());
  CHECK(malm::fts_query("cr\xc3\xa8" "me br\xc3\xbbl\xc3\xa9" "e") == "\"cr\xc3\xa8" "me\" \"br\xc3\xbbl\xc3\xa9" "e\"");
}

static void test_resize_identity_and_orientation() {
  std::vector<uint8_t> px(4 * 2 * 3);
  for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t(i * 10);
  malm::Image8 same = malm::resize_bicubic({px.data(), 4, 2, 12}, 4, 2);
  CHECK(same.pixels == px);
  malm::Image8 img{4, 2, px};
  malm::Image8 rot = malm::apply_orientation(img, 6);  // ROTATE_270 (clockwise)
  CHECK(rot.width == 2 && rot.height == 4);
  CHECK(std::memcmp(&rot.pixels[0], &px[(1 * 4 + 0) * 3], 3) == 0);  // top-left <- bottom-left
  malm::Image8 back = malm::apply_orientation(malm::apply_orientation(rot, 8), 1);
  CHECK(back.pixels == px);
  CHECK(!error_of([] { malm::decode_image_memory(nullptr, 0, "empty.jpg"); }).empty());
  const uint8_t junk[] = {0xFF, 0xD8, 0xFF, 0xE0, 0x00};
  CHECK(error_of([&] { malm::decode_image_memory(junk, sizeof junk, "junk.jpg"); }).find("junk.jpg: ") == 0);
}

static std::vector<unsigned char> from_hex(const std::string& hex) {
  std::vector<unsigned char> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(uint8_t(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

static void test_ed25519_and_signature_records() {
  // RFC 8032 section 7.1, test 1 (empty message): OpenSSL's Ed25519 as the native core calls it.
  auto key = from_hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  auto sig = from_hex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b");
  CHECK(malm::verify_ed25519_raw(key.data(), sig, ""));
  CHECK(!malm::verify_ed25519_raw(key.data(), sig, "x"));
  sig[0] ^= 1;
  CHECK(!malm::verify_ed25519_raw(key.data(), sig, ""));
  const std::string sig64(86, 'A');  // 64 zero bytes, base64: 86 characters and "=="
  auto record = [](const std::string& signature) {
    return R"({"format": "malm-edge-signature", "version": 1, "algorithm": "Ed25519", "key_id": "k", "signature": ")" +
           signature + "\"}";
  };
  malm::SignatureRecord ok = malm::parse_signature_text(record(sig64 + "=="), "s.sig");
  CHECK(ok.signature.size() == 64 && ok.key_id == "k");
  const std::string short_sig = "s.sig: 'signature' is not 64 base64-encoded bytes";
  for (const std::string& bad : {sig64 + "=", sig64 + "A=", sig64 + "===", sig64 + "\\n==", sig64.substr(4) + "=="}) {
    CHECK(error_of([&] { malm::parse_signature_text(record(bad), "s.sig"); }) == short_sig);
  }
  CHECK(error_of([] { malm::parse_signature_text("{}", "s.sig"); }) == "s.sig: not a malm-edge-signature file");
  CHECK(error_of([] { malm::parse_signature_text(R"({"format": "malm-edge-signature", "version": true, "algorithm": "RSA"})", "s.sig"); }) ==
        "s.sig: unsupported signature version/algorithm (True, 'RSA'; this reader: 1, Ed25519)");
  CHECK(error_of([] { malm::parse_signature_text(std::string(100, '['), "s.sig"); }).find("nested too deeply") != std::string::npos);
}

int main() {
  test_ed25519_and_signature_records();
  test_sha256();
  test_manifest_errors();
  test_join_path();
  test_dot_int8_kernel_matches_the_portable_loop();
  test_topk_ties();
  test_two_stage_prefilter_and_ties();
  test_two_stage_against_reference();
  test_fts_query();
  test_resize_identity_and_orientation();
  if (failures) std::fprintf(stderr, "%d check(s) failed\n", failures);
  else std::printf("native unit tests: all passed\n");
  return failures ? 1 : 0;
}
