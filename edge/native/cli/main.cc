// malm-edge-native: the native core's command line (same JSON as `malm-edge search --json`).
//
//   malm-edge-native search PHOTO... --bundle B [--top-k 5] [--json] [--encoder NAME] [--threads N]
//   malm-edge-native text "words" --bundle B [--top-k 10] [--json]
//   malm-edge-native verify --bundle B [--no-checksums]
//   malm-edge-native bench --bundle B --photo P [--repeats 30] [--warmup 3] [--threads 1]
//                          [--rows 10000,100000,1029720] [--table-repeats 5] [--json]
//   malm-edge-native table-search --table DIR --queries Q.f32 [--top-k 10] [--candidates C]
//                          [--repeats 1]    (benchmarks: DIR/table.json is a manifest `table`
//                          object, Q.f32 raw float32 [Q, dim]; prints rows found and times)
//
// Every command takes --require-signature PUBKEY (as `malm-edge search`): refuse the bundle unless
// manifest.sig is a valid signature of manifest.json by that Ed25519 public key (PEM).
//
// Exit codes: 0 ok, 1 a photo or the bundle failed (message on stderr), 2 usage.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "../src/common.h"
#include "../src/encoder.h"
#include "../src/image_io.h"
#include "../src/manifest.h"
#include "../src/table.h"
#include "../src/twostage.h"
#include "malm_edge.h"

namespace {

using ojson = nlohmann::ordered_json;

struct Args {
  std::string command, bundle, encoder, photo, trusted_key, table_dir, queries;
  int64_t candidates = 0;  // table-search: 0 = the table's own
  std::vector<std::string> positional;
  std::vector<int64_t> rows = {10000, 100000, 1029720};
  int top_k = -1, threads = 0, repeats = 30, warmup = 3, table_repeats = 5;
  bool repeats_given = false;  // table-search: 1 pass over the queries unless --repeats
  bool json = false, checksums = true;
};

const char* kUsage =
    "usage: malm-edge-native search PHOTO... --bundle B [--top-k 5] [--json] [--encoder NAME] [--threads N]\n"
    "       malm-edge-native text \"words\" --bundle B [--top-k 10] [--json]\n"
    "       malm-edge-native verify --bundle B [--no-checksums]\n"
    "       malm-edge-native bench --bundle B --photo P [--repeats 30] [--warmup 3] [--threads 1]\n"
    "                              [--rows 10000,100000,1029720] [--table-repeats 5] [--json]\n"
    "       malm-edge-native table-search --table DIR --queries Q.f32 [--top-k 10] [--candidates C] [--repeats 1]\n"
    "every command: [--require-signature PUBKEY]  (refuse a bundle not signed by this Ed25519 key)\n";

int usage(const std::string& why) {
  std::cerr << "error: " << why << "\n" << kUsage;
  return 2;
}

bool parse_int(const std::string& text, int64_t lo, int64_t hi, int64_t& out) {
  try {
    size_t used = 0;
    long long v = std::stoll(text, &used);
    if (used != text.size() || v < lo || v > hi) return false;
    out = v;
    return true;
  } catch (...) {
    return false;
  }
}

// Returns "" or the usage error.
std::string parse_args(int argc, char** argv, Args& a) {
  if (argc < 2) return "missing command";
  a.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](std::string& out) -> bool {
      if (i + 1 >= argc) return false;
      out = argv[++i];
      return true;
    };
    auto number = [&](int& out, int64_t lo, int64_t hi) -> bool {
      std::string text;
      int64_t v;
      if (!value(text) || !parse_int(text, lo, hi, v)) return false;
      out = int(v);
      return true;
    };
    bool ok = true;
    if (arg == "--bundle" || arg == "-b") ok = value(a.bundle);
    else if (arg == "--encoder") ok = value(a.encoder);
    else if (arg == "--photo") ok = value(a.photo);
    else if (arg == "--require-signature") ok = value(a.trusted_key) && !a.trusted_key.empty();
    else if (arg == "--table") ok = value(a.table_dir);
    else if (arg == "--queries") ok = value(a.queries);
    else if (arg == "--candidates") {
      std::string text;
      ok = value(text) && parse_int(text, 1, int64_t(1) << 40, a.candidates);
    }
    else if (arg == "--top-k" || arg == "-k") ok = number(a.top_k, 1, 100000);
    else if (arg == "--threads") ok = number(a.threads, 1, 1024);
    else if (arg == "--repeats") ok = (a.repeats_given = true) && number(a.repeats, 1, 100000);
    else if (arg == "--warmup") ok = number(a.warmup, 0, 100000);
    else if (arg == "--table-repeats") ok = number(a.table_repeats, 1, 100000);
    else if (arg == "--json") a.json = true;
    else if (arg == "--no-checksums") a.checksums = false;
    else if (arg == "--rows") {
      std::string text;
      ok = value(text);
      a.rows.clear();
      size_t start = 0;  // "" = no synthetic tables
      while (ok && !text.empty() && start <= text.size()) {
        size_t comma = text.find(',', start);
        std::string part = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        int64_t v;
        ok = parse_int(part, 1, int64_t(1) << 32, v);
        if (ok) a.rows.push_back(v);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else if (arg.size() > 1 && arg[0] == '-') return "unknown option " + arg;
    else a.positional.push_back(arg);
    if (!ok) return "option " + arg + " needs a valid value";
  }
  if (a.command == "table-search") return a.table_dir.empty() || a.queries.empty() ? "--table and --queries are required" : "";
  if (a.bundle.empty()) return "--bundle is required";
  while (a.bundle.size() > 1 && a.bundle.back() == '/') a.bundle.pop_back();
  return "";
}

struct Engine {
  malm_engine* ptr = nullptr;
  ~Engine() { malm_close(ptr); }
};

struct Results {
  malm_results* ptr = nullptr;
  ~Results() { malm_results_free(ptr); }
};

bool open_engine(const Args& a, bool load_encoder, Engine& engine) {
  malm_open_options opts = malm_default_options();
  opts.verify_checksums = a.checksums;
  opts.load_encoder = load_encoder;
  opts.threads = a.threads;
  opts.encoder = a.encoder.empty() ? nullptr : a.encoder.c_str();
  opts.trusted_public_key = a.trusted_key.empty() ? nullptr : a.trusted_key.c_str();
  if (malm_open(a.bundle.c_str(), &opts, &engine.ptr) != MALM_OK) {
    std::cerr << "error: " << malm_last_error() << "\n";
    return false;
  }
  return true;
}

double peak_rss_mb();

// One photo -> {"photo", "bundle", "backend", "encoder", ["error",] "results"} or false on error.
ojson search_photo(malm_engine* e, const Args& a, const std::string& photo, std::string& error) {
  ojson out;
  out["photo"] = photo;
  out["bundle"] = a.bundle;
  out["backend"] = "executorch";
  out["encoder"] = malm_encoder_name(e);
  malm::Image8 image;
  try {
    image = malm::decode_image_file(photo);
  } catch (const malm::Error& err) {
    error = err.what();
  } catch (const std::exception& err) {
    error = photo + ": " + err.what();
  }
  Results r;
  if (error.empty() && malm_search_rgb8(e, image.pixels.data(), image.width, image.height, image.width * 3,
                                        a.top_k, &r.ptr) != MALM_OK) {
    error = malm_last_error();
  }
  ojson results = ojson::array();
  if (error.empty()) {
    for (int i = 0; i < malm_results_count(r.ptr); ++i) {
      ojson hit;
      hit["rank"] = i + 1;
      hit["id"] = malm_results_id(r.ptr, i);
      hit["title"] = malm_results_title(r.ptr, i);
      hit["score"] = double(malm_results_score(r.ptr, i));
      results.push_back(hit);
    }
  } else {
    out["error"] = error;
  }
  out["results"] = results;
  return out;
}

std::string dump(const ojson& j) { return j.dump(2, ' ', /*ensure_ascii=*/true, ojson::error_handler_t::replace); }

int cmd_search(const Args& a) {
  if (a.positional.empty()) return usage("search needs at least one PHOTO");
  Engine engine;
  if (!open_engine(a, true, engine)) return 1;
  ojson outputs = ojson::array();
  bool failed = false;
  for (const auto& photo : a.positional) {
    std::string error;
    ojson out = search_photo(engine.ptr, a, photo, error);
    if (!error.empty()) {
      std::cerr << "error: " << error << "\n";
      failed = true;
    }
    outputs.push_back(out);
  }
  if (std::getenv("MALM_EDGE_PEAK_RSS")) std::cerr << "peak_rss_mb " << peak_rss_mb() << "\n";
  if (a.json) {
    if (a.positional.size() > 1) std::cout << dump(outputs) << "\n";
    else if (!failed) std::cout << dump(outputs[0]) << "\n";
  } else {
    for (const auto& out : outputs) {
      if (out.contains("error")) continue;
      std::cout << out["photo"].get<std::string>() << "  (executorch: " << out["encoder"].get<std::string>() << ")\n";
      for (const auto& hit : out["results"]) {
        char line[64];
        std::snprintf(line, sizeof line, "  %2d. %.4f  ", hit["rank"].get<int>(), hit["score"].get<double>());
        std::cout << line << hit["title"].get<std::string>() << "  [" << hit["id"].get<std::string>() << "]\n";
      }
    }
  }
  return failed ? 1 : 0;
}

int cmd_text(const Args& a) {
  if (a.positional.size() != 1) return usage("text needs one quoted query");
  Engine engine;
  if (!open_engine(a, false, engine)) return 1;
  Results r;
  int limit = a.top_k > 0 ? a.top_k : 10;
  if (malm_search_text(engine.ptr, a.positional[0].c_str(), limit, &r.ptr) != MALM_OK) {
    std::cerr << "error: " << malm_last_error() << "\n";
    return 1;
  }
  ojson out;
  out["query"] = a.positional[0];
  out["bundle"] = a.bundle;
  out["results"] = ojson::array();
  for (int i = 0; i < malm_results_count(r.ptr); ++i) {
    ojson hit;
    hit["rank"] = i + 1;
    hit["id"] = malm_results_id(r.ptr, i);
    hit["title"] = malm_results_title(r.ptr, i);
    hit["row"] = malm_results_row(r.ptr, i);
    out["results"].push_back(hit);
  }
  if (a.json) {
    std::cout << dump(out) << "\n";
  } else {
    for (const auto& hit : out["results"]) {
      std::cout << "  " << hit["rank"].get<int>() << ". " << hit["title"].get<std::string>() << "  ["
                << hit["id"].get<std::string>() << "]\n";
    }
  }
  return 0;
}

int cmd_verify(const Args& a) {
  const char* key = a.trusted_key.empty() ? nullptr : a.trusted_key.c_str();
  if (malm_verify_bundle_signed(a.bundle.c_str(), a.checksums, key) != MALM_OK) {
    std::cerr << "error: " << malm_last_error() << "\n";
    return 1;
  }
  if (key) {
    char id[32];
    malm_public_key_id(key, id, sizeof id);
    std::cout << a.bundle << ": ok, signed by key " << id << "\n";
  } else {
    std::cout << a.bundle << ": ok\n";
  }
  return 0;
}

// ------------------------------------------------------------------------------------- bench

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

ojson summary(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  auto pct = [&](double p) { return ms[std::min(ms.size() - 1, size_t(p * (ms.size() - 1) + 0.5))]; };
  ojson s;
  s["median_ms"] = pct(0.5);
  s["p90_ms"] = pct(0.9);
  s["min_ms"] = ms.front();
  s["n"] = ms.size();
  return s;
}

// Peak RSS of this process: VmHWM (getrusage's ru_maxrss would include the parent's peak when
// the parent vforked us, as Python's subprocess does).
double peak_rss_mb() {
  FILE* status = std::fopen("/proc/self/status", "r");
  if (!status) return -1;
  char line[256];
  double kb = -1;
  while (std::fgets(line, sizeof line, status)) {
    if (std::strncmp(line, "VmHWM:", 6) == 0) kb = std::atof(line + 6);
  }
  std::fclose(status);
  return kb / 1024.0;
}

// Single-thread read bandwidth: sum 64-bit words of a buffer larger than the caches, best of 5.
double read_bandwidth_gbs(size_t bytes) {
  std::vector<uint64_t> buffer(bytes / 8, 1);
  double best = 0;
  volatile uint64_t sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    auto start = Clock::now();
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= buffer.size(); i += 4) {
      s0 += buffer[i];
      s1 += buffer[i + 1];
      s2 += buffer[i + 2];
      s3 += buffer[i + 3];
    }
    sink = sink + s0 + s1 + s2 + s3;
    best = std::max(best, bytes / (ms_since(start) / 1e3) / 1e9);
  }
  return best;
}

template <typename F>
std::vector<double> timed(int warmup, int repeats, F&& call) {
  for (int i = 0; i < warmup; ++i) call();
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    auto start = Clock::now();
    call();
    ms.push_back(ms_since(start));
  }
  return ms;
}

int cmd_bench(const Args& a) {
  if (a.photo.empty()) return usage("bench needs --photo P");
  ojson report;
  auto t0 = Clock::now();
  Engine engine;
  if (!open_engine(a, true, engine)) return 1;
  report["open_ms"] = ms_since(t0);
  report["encoder"] = malm_encoder_name(engine.ptr);
  report["threads"] = a.threads;
  malm::Image8 image;
  try {
    image = malm::decode_image_file(a.photo);
  } catch (const std::exception& err) {
    std::cerr << "error: " << err.what() << "\n";
    return 1;
  }
  const int size = malm_input_size(engine.ptr), dim = malm_embedding_dim(engine.ptr);
  std::vector<float> pixels(size_t(3) * size * size), embedding(dim);
  bool ok = true;
  auto check = [&](malm_status s) { ok = ok && s == MALM_OK; };
  report["decode"] = summary(timed(a.warmup, a.repeats, [&] { (void)malm::decode_image_file(a.photo); }));
  report["preprocess"] = summary(timed(a.warmup, a.repeats, [&] {
    check(malm_preprocess_rgb8(engine.ptr, image.pixels.data(), image.width, image.height, image.width * 3,
                               pixels.data(), pixels.size()));
  }));
  {  // the encoder alone on the preprocessed input (a second instance of the same .pte)
    malm::Manifest manifest = malm::read_manifest(a.bundle);
    std::string file;
    for (const auto& e : manifest.encoders) {
      if (e.name == malm_encoder_name(engine.ptr)) file = malm::join_path(a.bundle, e.file);
    }
    std::unique_ptr<malm::Encoder> encoder = malm::load_encoder(file, a.threads);
    check(malm_preprocess_rgb8(engine.ptr, image.pixels.data(), image.width, image.height, image.width * 3,
                               pixels.data(), pixels.size()));
    std::vector<float> input = pixels;
    report["encoder_only"] = summary(timed(a.warmup, a.repeats, [&] { (void)encoder->run(input, size); }));
  }
  report["embed"] = summary(timed(a.warmup, a.repeats, [&] {  // preprocess + encoder + L2 norm
    check(malm_embed_rgb8(engine.ptr, image.pixels.data(), image.width, image.height, image.width * 3,
                          embedding.data(), embedding.size()));
  }));
  report["table_search_bundle"] = summary(timed(a.warmup, a.repeats, [&] {
    Results r;
    check(malm_search_embedding(engine.ptr, embedding.data(), embedding.size(), 5, &r.ptr));
  }));
  report["end_to_end"] = summary(timed(a.warmup, a.repeats, [&] {  // decode -> top-5 with catalog rows
    malm::Image8 decoded = malm::decode_image_file(a.photo);
    Results r;
    check(malm_search_rgb8(engine.ptr, decoded.pixels.data(), decoded.width, decoded.height, decoded.width * 3, 5,
                           &r.ptr));
  }));
  if (!ok) {
    std::cerr << "error: " << malm_last_error() << "\n";
    return 1;
  }
  report["peak_rss_mb_after_end_to_end"] = peak_rss_mb();
  ojson tables = ojson::array();
  std::mt19937 rng(0);
  std::uniform_int_distribution<int> q8(-127, 127);
  for (int64_t rows : a.rows) {  // random int8 tables of the bundle's dim, as edge/bench.py does
    std::vector<int8_t> values(size_t(rows) * dim);
    for (auto& v : values) v = int8_t(q8(rng));
    std::vector<float> scales(size_t(rows), 1.0f / 127 / std::sqrt(float(dim)));
    malm::Table table(values.data(), scales.data(), rows, dim);
    ojson t = summary(timed(1, a.table_repeats, [&] { (void)table.search(embedding.data(), dim, 5); }));
    t["rows"] = rows;
    t["bytes_per_query"] = double(table.bytes_per_row()) * rows;
    t["gb_per_s"] = t["bytes_per_query"].get<double>() / (t["median_ms"].get<double>() / 1e3) / 1e9;
    tables.push_back(t);
  }
  report["table_search_synthetic"] = tables;
  report["read_bandwidth_gb_per_s_1_thread"] = read_bandwidth_gbs(size_t(1) << 30);
  report["peak_rss_mb"] = peak_rss_mb();
  std::cout << (a.json ? dump(report) : report.dump(2)) << "\n";
  return 0;
}

std::string read_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) malm::fail(MALM_ERR_INVALID_ARGUMENT, path + ": cannot open");
  std::string data;
  char buffer[1 << 16];
  for (size_t n; (n = std::fread(buffer, 1, sizeof buffer, f)) > 0;) data.append(buffer, n);
  std::fclose(f);
  return data;
}

// Every query searched once per repeat, each timed on its own; the rows found come back for recall.
int cmd_table_search(const Args& a) {
  const std::string src = malm::join_path(a.table_dir, "table.json");
  malm::TableEntry entry = malm::parse_table_text(read_file(src), src);
  std::unique_ptr<malm::SearchTable> table = malm::open_search_table(a.table_dir, entry);
  const std::string raw = read_file(a.queries);
  const size_t dim = size_t(entry.dim), n = raw.size() / (dim * 4);
  if (raw.size() != n * dim * 4) return usage(a.queries + ": not a float32 [Q, " + std::to_string(dim) + "] file");
  std::vector<float> queries(n * dim);
  std::memcpy(queries.data(), raw.data(), raw.size());
  const int k = a.top_k < 0 ? 10 : a.top_k;
  auto* two_stage = dynamic_cast<malm::TwoStageTable*>(table.get());
  auto search = [&](size_t q) {
    const float* query = queries.data() + q * dim;
    return two_stage && a.candidates > 0 ? two_stage->search(query, dim, k, a.candidates) : table->search(query, dim, k);
  };
  std::vector<double> ms;
  ojson found = ojson::array();
  for (int rep = 0; rep < (a.repeats_given ? a.repeats : 1); ++rep) {
    for (size_t q = 0; q < n; ++q) {
      auto start = Clock::now();
      std::vector<malm::Hit> hits = search(q);
      ms.push_back(ms_since(start));
      if (rep > 0) continue;
      ojson rows = ojson::array();
      for (const auto& h : hits) rows.push_back(h.row);
      found.push_back(rows);
    }
  }
  ojson report = summary(ms);
  report["bytes_per_row"] = table->bytes_per_row();
  report["rows"] = found;
  std::cout << report.dump() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  std::string why = parse_args(argc, argv, a);
  if (!why.empty()) return usage(why);
  try {
    if (a.command == "search") {
      if (a.top_k < 0) a.top_k = 5;
      return cmd_search(a);
    }
    if (a.command == "text") return cmd_text(a);
    if (a.command == "verify") return cmd_verify(a);
    if (a.command == "bench") return cmd_bench(a);
    if (a.command == "table-search") return cmd_table_search(a);
  } catch (const std::exception& err) {  // decode errors in bench loops, bad_alloc
    std::cerr << "error: " << err.what() << "\n";
    return 1;
  }
  return usage("unknown command " + a.command);
}
