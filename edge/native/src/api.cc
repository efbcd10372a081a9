// The C ABI: every entry point catches everything, stores the message, returns a malm_status.
#include <cmath>
#include <cstring>
#include <memory>
#include <new>

#include "catalog.h"
#include "common.h"
#include "encoder.h"
#include "malm_edge.h"
#include "manifest.h"
#include "preprocess.h"
#include "signature.h"
#include "table.h"
#include "twostage.h"

struct malm_engine {
  std::string root;
  malm::Manifest manifest;
  std::unique_ptr<malm::SearchTable> table;
  std::unique_ptr<malm::Catalog> catalog;
  std::unique_ptr<malm::Encoder> encoder;
  std::string encoder_name, encoder_file;
  bool normalized_input = true;
};

struct malm_results {
  std::vector<malm::Recipe> recipes;
};

namespace {

thread_local std::string g_last_error;

// Messages cross to Swift/Kotlin/Python as UTF-8: invalid bytes (a JSON parser quoting the
// manifest's raw bytes, a non-UTF-8 path) become '?'.
std::string valid_utf8(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (size_t j = 1; ok && j < n; ++j) ok = (static_cast<unsigned char>(s[i + j]) & 0xC0) == 0x80;
    if (ok) out.append(s, i, n);
    else out += '?';
    i += ok ? n : 1;
  }
  return out;
}

template <typename F>
malm_status guarded(F&& body) {
  try {
    g_last_error.clear();
    body();
    return MALM_OK;
  } catch (const malm::Error& err) {
    g_last_error = valid_utf8(err.what());
    return err.status();
  } catch (const std::bad_alloc&) {
    g_last_error = "out of memory";
    return MALM_ERR_NO_MEMORY;
  } catch (const std::exception& err) {
    g_last_error = valid_utf8(std::string("internal error: ") + err.what());
    return MALM_ERR_INTERNAL;
  } catch (...) {
    g_last_error = "internal error";
    return MALM_ERR_INTERNAL;
  }
}

void require(bool ok, const char* what) {
  if (!ok) malm::fail(MALM_ERR_INVALID_ARGUMENT, what);
}

const malm::EncoderEntry& pick_encoder(const malm::Manifest& m, const std::string& root, const char* wanted) {
  for (const auto& e : m.encoders) {
    if (wanted ? (e.name == wanted || e.target == wanted) && e.target == "executorch" : e.target == "executorch") return e;
  }
  std::string have;
  for (const auto& e : m.encoders) have += (have.empty() ? "" : ", ") + e.name + " (" + e.target + ")";
  malm::fail(MALM_ERR_ENCODER, root + ": no executorch encoder" + (wanted ? std::string(" '") + wanted + "'" : "") +
                                   " in this bundle (the native core runs .pte files); it has " + have);
}

std::vector<float> preprocess(const malm_engine* e, const uint8_t* rgb, int width, int height, int stride) {
  const auto& pre = e->manifest.preprocessing;
  malm::Image8 crop = malm::resize_and_crop({rgb, width, height, stride}, int(pre.resize_size), int(pre.input_size));
  std::vector<float> pixels(size_t(3) * pre.input_size * pre.input_size);
  malm::normalize_nchw(crop, pre, e->normalized_input, pixels.data());
  return pixels;
}

std::vector<float> embed(malm_engine* e, const uint8_t* rgb, int width, int height, int stride) {
  if (!e->encoder) malm::fail(MALM_ERR_UNSUPPORTED, e->root + ": the engine was opened without an encoder");
  std::vector<float> pixels = preprocess(e, rgb, width, height, stride);
  std::vector<float> out = e->encoder->run(pixels, int(e->manifest.preprocessing.input_size));
  if (int64_t(out.size()) != e->manifest.embedding_dim) {
    malm::fail(MALM_ERR_ENCODER, malm::join_path(e->root, e->encoder_file) + ": encoder output has " +
                                     std::to_string(out.size()) + " values, expected embedding_dim " +
                                     std::to_string(e->manifest.embedding_dim));
  }
  double sum = 0;
  for (float v : out) sum += double(v) * v;
  float norm = std::max(float(std::sqrt(sum)), 1e-12f);  // edge/backends.py l2_normalize
  for (float& v : out) v /= norm;
  return out;
}

malm_results* search(malm_engine* e, const float* query, size_t dim, int k) {
  require(k >= 0, "k must be >= 0");
  std::vector<malm::Hit> hits = e->table->search(query, dim, k);
  std::vector<int64_t> rows;
  for (const auto& h : hits) rows.push_back(h.row);
  auto results = std::make_unique<malm_results>();
  results->recipes = e->catalog->lookup(rows);
  for (size_t i = 0; i < hits.size(); ++i) results->recipes[i].score = hits[i].score;
  return results.release();
}

const malm::Recipe* at(const malm_results* r, int i) {
  return r && i >= 0 && size_t(i) < r->recipes.size() ? &r->recipes[size_t(i)] : nullptr;
}

}  // namespace

extern "C" {

const char* malm_version(void) { return "0.1.0"; }
const char* malm_last_error(void) { return g_last_error.c_str(); }

malm_open_options malm_default_options(void) { return {1, 1, 0, nullptr, nullptr}; }

malm_status malm_verify_bundle(const char* bundle_dir, int verify_checksums) {
  return guarded([&] {
    require(bundle_dir != nullptr, "bundle_dir is NULL");
    malm::read_bundle(bundle_dir, verify_checksums != 0);
  });
}

malm_status malm_verify_bundle_signed(const char* bundle_dir, int verify_checksums, const char* trusted_public_key) {
  return guarded([&] {
    require(bundle_dir != nullptr, "bundle_dir is NULL");
    malm::read_bundle(bundle_dir, verify_checksums != 0, trusted_public_key ? trusted_public_key : "");
  });
}

malm_status malm_public_key_id(const char* public_key_path, char* out, size_t out_len) {
  return guarded([&] {
    require(public_key_path != nullptr && out != nullptr, "public_key_path or out is NULL");
    std::string id = malm::public_key_id(public_key_path);
    require(out_len > id.size(), "out_len too small for the key id (17 bytes)");
    std::memcpy(out, id.c_str(), id.size() + 1);
  });
}

malm_status malm_open(const char* bundle_dir, const malm_open_options* options, malm_engine** out_engine) {
  return guarded([&] {
    require(bundle_dir != nullptr && out_engine != nullptr, "bundle_dir or out_engine is NULL");
    *out_engine = nullptr;
    malm_open_options opts = options ? *options : malm_default_options();
    auto e = std::make_unique<malm_engine>();
    e->root = bundle_dir;
    const std::string trusted = opts.trusted_public_key ? opts.trusted_public_key : "";
    e->manifest = malm::read_bundle(e->root, opts.verify_checksums != 0, trusted);  // before anything is used
    const auto& t = e->manifest.table;
    e->table = malm::open_search_table(e->root, t);
    e->catalog = std::make_unique<malm::Catalog>(malm::join_path(e->root, e->manifest.catalog.file), t.rows);
    if (opts.load_encoder) {
      const malm::EncoderEntry& entry = pick_encoder(e->manifest, e->root, opts.encoder);
      e->encoder = malm::load_encoder(malm::join_path(e->root, entry.file), opts.threads);
      e->encoder_name = entry.name;
      e->encoder_file = entry.file;
      e->normalized_input = entry.pixel_input == "normalized";
    }
    *out_engine = e.release();
  });
}

void malm_close(malm_engine* engine) { delete engine; }

int malm_embedding_dim(const malm_engine* e) { return e ? int(e->manifest.embedding_dim) : 0; }
int malm_input_size(const malm_engine* e) { return e ? int(e->manifest.preprocessing.input_size) : 0; }
int64_t malm_table_rows(const malm_engine* e) { return e ? e->manifest.table.rows : 0; }
const char* malm_encoder_name(const malm_engine* e) { return e ? e->encoder_name.c_str() : ""; }

malm_status malm_resize_crop_rgb8(const uint8_t* rgb, int width, int height, int stride, int resize_size,
                                  int out_size, uint8_t* out) {
  return guarded([&] {
    require(out != nullptr, "out is NULL");
    malm::Image8 crop = malm::resize_and_crop({rgb, width, height, stride}, resize_size, out_size);
    std::memcpy(out, crop.pixels.data(), crop.pixels.size());
  });
}

malm_status malm_preprocess_rgb8(const malm_engine* e, const uint8_t* rgb, int width, int height, int stride,
                                 float* out, size_t out_len) {
  return guarded([&] {
    require(e != nullptr && out != nullptr, "engine or out is NULL");
    std::vector<float> pixels = preprocess(e, rgb, width, height, stride);
    require(out_len >= pixels.size(), "out_len smaller than 3 * input_size^2");
    std::memcpy(out, pixels.data(), pixels.size() * sizeof(float));
  });
}

malm_status malm_embed_rgb8(malm_engine* e, const uint8_t* rgb, int width, int height, int stride, float* out,
                            size_t out_len) {
  return guarded([&] {
    require(e != nullptr && out != nullptr, "engine or out is NULL");
    require(out_len >= size_t(e->manifest.embedding_dim), "out_len smaller than embedding_dim");
    std::vector<float> emb = embed(e, rgb, width, height, stride);
    std::memcpy(out, emb.data(), emb.size() * sizeof(float));
  });
}

malm_status malm_search_embedding(malm_engine* e, const float* query, size_t dim, int k, malm_results** out) {
  return guarded([&] {
    require(e != nullptr && query != nullptr && out != nullptr, "engine, query or out_results is NULL");
    *out = nullptr;
    *out = search(e, query, dim, k);
  });
}

malm_status malm_search_rgb8(malm_engine* e, const uint8_t* rgb, int width, int height, int stride, int k,
                             malm_results** out) {
  return guarded([&] {
    require(e != nullptr && out != nullptr, "engine or out_results is NULL");
    *out = nullptr;
    std::vector<float> emb = embed(e, rgb, width, height, stride);
    *out = search(e, emb.data(), emb.size(), k);
  });
}

malm_status malm_search_text(malm_engine* e, const char* words, int limit, malm_results** out) {
  return guarded([&] {
    require(e != nullptr && words != nullptr && out != nullptr, "engine, words or out_results is NULL");
    *out = nullptr;
    auto results = std::make_unique<malm_results>();
    results->recipes = e->catalog->text_search(words, limit);
    *out = results.release();
  });
}

int malm_results_count(const malm_results* r) { return r ? int(r->recipes.size()) : 0; }
int64_t malm_results_row(const malm_results* r, int i) { return at(r, i) ? at(r, i)->row : -1; }
float malm_results_score(const malm_results* r, int i) { return at(r, i) ? at(r, i)->score : 0.0f; }
const char* malm_results_id(const malm_results* r, int i) { return at(r, i) ? at(r, i)->id.c_str() : ""; }
const char* malm_results_title(const malm_results* r, int i) { return at(r, i) ? at(r, i)->title.c_str() : ""; }
const char* malm_results_ingredients_json(const malm_results* r, int i) {
  return at(r, i) ? at(r, i)->ingredients_json.c_str() : "";
}
const char* malm_results_instructions_json(const malm_results* r, int i) {
  return at(r, i) ? at(r, i)->instructions_json.c_str() : "";
}
void malm_results_free(malm_results* r) { delete r; }

}  // extern "C"
