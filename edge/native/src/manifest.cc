// Manifest v1 reader: the rules and messages of edge/bundle.py (parse_manifest, read_bundle).
#include "manifest.h"

#include <dirent.h>
#include <limits.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common.h"
#include "signature.h"

namespace malm {
namespace {

using json = nlohmann::json;

[[noreturn]] void bundle_error(const std::string& message) { fail(MALM_ERR_BUNDLE, message); }

// Python's repr() of a str, enough for messages: 'text' with \ and ' escaped.
std::string py_repr(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\\' || c == '\'') out += '\\';
    out += c;
  }
  return out + "'";
}

std::string py_type(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "NoneType";
    case json::value_t::boolean: return "bool";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "int";
    case json::value_t::number_float: return "float";
    case json::value_t::string: return "str";
    case json::value_t::array: return "list";
    case json::value_t::object: return "dict";
    default: return "object";
  }
}

// The kinds edge/bundle.py checks, with the text Python prints for them.
enum class Kind { Int, Str, List, Dict, Number, Sequence };

const char* kind_text(Kind kind) {
  switch (kind) {
    case Kind::Int: return "<class 'int'>";
    case Kind::Str: return "<class 'str'>";
    case Kind::List: return "<class 'list'>";
    case Kind::Dict: return "<class 'dict'>";
    case Kind::Number: return "(<class 'int'>, <class 'float'>)";
    case Kind::Sequence: return "(<class 'list'>, <class 'tuple'>)";
  }
  return "";
}

bool is_int(const json& v) {
  if (v.is_number_integer() && !v.is_number_unsigned()) return true;
  return v.is_number_unsigned() && v.get<uint64_t>() <= uint64_t(INT64_MAX);
}

bool has_kind(const json& v, Kind kind) {  // bools are refused for int and float, as bad_bool
  switch (kind) {
    case Kind::Int: return is_int(v);
    case Kind::Str: return v.is_string();
    case Kind::List:
    case Kind::Sequence: return v.is_array();
    case Kind::Dict: return v.is_object();
    case Kind::Number: return is_int(v) || v.is_number_float();
  }
  return false;
}

struct Ctx {
  std::string src;  // manifest path for messages
};

// _require: a present field of the right kind.
const json& require(const Ctx& c, const json& obj, const std::string& key, Kind kind,
                    const std::string& where) {
  if (!obj.is_object() || !obj.contains(key)) bundle_error(c.src + ": missing field '" + where + key + "'");
  const json& value = obj.at(key);
  if (!has_kind(value, kind)) {
    bundle_error(c.src + ": field '" + where + key + "' has type " + py_type(value) + ", expected " +
                 kind_text(kind));
  }
  return value;
}

// _build: an object with every required field present (unknown keys ignored).
void require_object(const Ctx& c, const json& raw, const std::string& where,
                    const std::vector<std::string>& required) {
  std::string name = where.substr(0, where.size() - 1);  // where.rstrip('.')
  if (!raw.is_object()) bundle_error(c.src + ": field '" + name + "' must be an object");
  for (const auto& key : required) {
    if (!raw.contains(key)) bundle_error(c.src + ": missing field '" + where + key + "'");
  }
}

// _check_types on an optional field whose None is allowed (returns false when absent or null).
bool optional_field(const Ctx& c, const json& raw, const std::string& key, Kind kind,
                    const std::string& where) {
  if (!raw.contains(key) || raw.at(key).is_null()) return false;
  require(c, raw, key, kind, where);
  return true;
}

std::string str_or(const json& raw, const std::string& key, const std::string& fallback) {
  if (!raw.contains(key)) return fallback;
  const json& v = raw.at(key);
  return v.is_string() ? v.get<std::string>() : v.dump();
}

void parse_triple(const Ctx& c, const json& raw, const char* key, double out[3]) {
  if (!raw.contains(key)) return;
  const json& v = raw.at(key);
  if (!v.is_array()) bundle_error(c.src + ": field 'preprocessing' is invalid: " + key + " must be a list of numbers");
  for (const auto& x : v) {
    if (!x.is_number()) bundle_error(c.src + ": field 'preprocessing' is invalid: " + key + " must hold numbers");
  }
  if (v.size() != 3) bundle_error(c.src + ": preprocessing.mean/std must be 3 values, std > 0");
  for (int i = 0; i < 3; ++i) out[i] = v[i].get<double>();
}

Preprocessing parse_preprocessing(const Ctx& c, const json& raw) {
  const std::string where = "preprocessing.";
  require_object(c, raw, where, {});
  Preprocessing pre;
  parse_triple(c, raw, "mean", pre.mean);  // Preprocessing.__post_init__ runs before the checks
  parse_triple(c, raw, "std", pre.std);
  json view = raw;  // resize_size defaults to input_size (post_init)
  if (!view.contains("resize_size") || view["resize_size"].is_null()) {
    view["resize_size"] = view.contains("input_size") ? view["input_size"] : json(224);
  }
  if (!view.contains("input_size")) view["input_size"] = 224;
  pre.input_size = require(c, view, "input_size", Kind::Int, where).get<int64_t>();
  pre.resize_size = require(c, view, "resize_size", Kind::Int, where).get<int64_t>();
  const std::pair<const char*, const char*> supported[] = {
      {"resize", "shorter_side"}, {"interpolation", "bicubic"}, {"crop", "center"},
      {"channel_order", "RGB"}, {"layout", "NCHW"}};
  for (const auto& [key, value] : supported) optional_field(c, raw, key, Kind::Str, where);
  if (raw.contains("scale")) pre.scale = require(c, raw, "scale", Kind::Number, where).get<double>();
  for (const auto& [key, value] : supported) {
    std::string got = str_or(raw, key, value);
    if (got != value) {
      bundle_error(c.src + ": preprocessing." + key + " = " + py_repr(got) +
                   " is not supported by format v1 (expected " + py_repr(value) + ")");
    }
  }
  if (pre.std[0] <= 0 || pre.std[1] <= 0 || pre.std[2] <= 0) {
    bundle_error(c.src + ": preprocessing.mean/std must be 3 values, std > 0");
  }
  if (pre.input_size <= 0 || pre.resize_size < pre.input_size) {
    bundle_error(c.src + ": preprocessing needs 0 < input_size <= resize_size, got " +
                 std::to_string(pre.input_size) + " and " + std::to_string(pre.resize_size));
  }
  if (pre.resize_size > 8192) bundle_error(c.src + ": preprocessing.resize_size above 8192 is not supported");
  return pre;
}

TensorSpec parse_tensor(const Ctx& c, const json& raw, const std::string& where) {
  require_object(c, raw, where, {"name", "shape"});
  TensorSpec spec;
  spec.name = require(c, raw, "name", Kind::Str, where).get<std::string>();
  const json& shape = require(c, raw, "shape", Kind::List, where);
  if (raw.contains("dtype")) spec.dtype = require(c, raw, "dtype", Kind::Str, where).get<std::string>();
  for (const auto& d : shape) {
    if (is_int(d)) spec.shape.emplace_back(d.get<int64_t>());
    else if (d.is_string()) spec.shape.emplace_back(d.get<std::string>());
    else bundle_error(c.src + ": field '" + where + "shape' must hold integers or symbolic names");
  }
  return spec;
}

EncoderEntry parse_encoder(const Ctx& c, const json& raw, size_t index) {
  const std::string where = "encoders[" + std::to_string(index) + "].";
  require_object(c, raw, where, {"name", "file", "sha256", "target", "quantization", "input",
                                 "output", "size_bytes"});
  EncoderEntry e;
  e.name = require(c, raw, "name", Kind::Str, where).get<std::string>();
  e.file = require(c, raw, "file", Kind::Str, where).get<std::string>();
  e.sha256 = require(c, raw, "sha256", Kind::Str, where).get<std::string>();
  e.target = require(c, raw, "target", Kind::Str, where).get<std::string>();
  e.quantization = require(c, raw, "quantization", Kind::Str, where).get<std::string>();
  e.size_bytes = require(c, raw, "size_bytes", Kind::Int, where).get<int64_t>();
  if (e.target != "executorch" && e.target != "onnx" && e.target != "coreml") {
    bundle_error(c.src + ": " + where + "target = " + py_repr(e.target) +
                 ", expected one of ('executorch', 'onnx', 'coreml')");
  }
  e.pixel_input = str_or(raw, "pixel_input", "normalized");
  if (raw.contains("pixel_input") && !raw.at("pixel_input").is_string()) e.pixel_input = raw.at("pixel_input").dump();
  if (e.pixel_input != "normalized" && e.pixel_input != "rgb_0_255") {
    bundle_error(c.src + ": " + where + "pixel_input = " + py_repr(e.pixel_input) +
                 ", expected one of ('normalized', 'rgb_0_255')");
  }
  e.input = parse_tensor(c, raw.at("input"), where + "input.");
  e.output = parse_tensor(c, raw.at("output"), where + "output.");
  if (raw.contains("verification") && !raw.at("verification").is_null()) {
    require_object(c, raw.at("verification"), where + "verification.",
                   {"cosine_mean", "cosine_min", "top10_agreement", "n_photos"});
  }
  return e;
}

// "table version N needs table.a, table.b" for every key absent or null, as edge/bundle.py.
void require_table_fields(const Ctx& c, const json& raw, int version, std::initializer_list<const char*> keys) {
  std::string missing;
  for (const char* key : keys) {
    if (!raw.contains(key) || raw.at(key).is_null()) missing += (missing.empty() ? "table." : ", table.") + std::string(key);
  }
  if (!missing.empty()) bundle_error(c.src + ": table version " + std::to_string(version) + " needs " + missing);
}

// Table version 2 (edge/bundle.py _parse_table_v2): the same checks in the same order.
TableEntry parse_table_v2(const Ctx& c, const json& raw, TableEntry t) {
  const std::string where = "table.";
  require_table_fields(c, raw, 2, {"codes_file", "codes_sha256", "centre", "candidates", "scales_file", "scales_sha256"});
  t.codes_file = require(c, raw, "codes_file", Kind::Str, where).get<std::string>();
  t.codes_sha256 = require(c, raw, "codes_sha256", Kind::Str, where).get<std::string>();
  const json& centre = require(c, raw, "centre", Kind::List, where);
  t.candidates = require(c, raw, "candidates", Kind::Int, where).get<int64_t>();
  if (t.dtype != "int7") {
    bundle_error(c.src + ": table.dtype = " + py_repr(t.dtype) + ", expected 'int7' for table version 2");
  }
  if (t.rows < 0 || t.dim <= 0 || t.candidates < 1) {
    bundle_error(c.src + ": table.rows must be >= 0, table.dim > 0 and table.candidates >= 1");
  }
  bool numbers = int64_t(centre.size()) == t.dim;
  for (const auto& v : centre) numbers = numbers && (is_int(v) || v.is_number_float()) && std::isfinite(v.get<double>());
  if (!numbers) {
    bundle_error(c.src + ": table.centre must be " + std::to_string(t.dim) + " finite numbers (table.dim)");
  }
  for (const auto& v : centre) t.centre.push_back(float(v.get<double>()));  // as numpy's float32 cast
  // uint16 Hamming distances (twostage.cc): at most 65535 bits.
  if (t.dim > 65535) bundle_error(c.src + ": table.dim above 65535 is not supported for table version 2");
  return t;
}

// Table version 3 (edge/bundle.py _parse_table_v3): the same checks in the same order.
TableEntry parse_table_v3(const Ctx& c, const json& raw, TableEntry t) {
  const std::string where = "table.";
  require_table_fields(c, raw, 3, {"codes_file", "codes_sha256", "centre", "centre_scale", "candidates"});
  t.codes_file = require(c, raw, "codes_file", Kind::Str, where).get<std::string>();
  t.codes_sha256 = require(c, raw, "codes_sha256", Kind::Str, where).get<std::string>();
  const json& centre = require(c, raw, "centre", Kind::List, where);
  t.candidates = require(c, raw, "candidates", Kind::Int, where).get<int64_t>();
  const double centre_scale = require(c, raw, "centre_scale", Kind::Number, where).get<double>();
  if (t.dtype != "int8n") {
    bundle_error(c.src + ": table.dtype = " + py_repr(t.dtype) + ", expected 'int8n' for table version 3");
  }
  const auto present = [&](const char* key) { return raw.contains(key) && !raw.at(key).is_null(); };
  if (present("scales_file") || present("scales_sha256")) {
    bundle_error(c.src + ": table version 3 has no scales file (its row scales are implied)");
  }
  if (t.rows < 0 || t.dim <= 0 || t.candidates < 1) {
    bundle_error(c.src + ": table.rows must be >= 0, table.dim > 0 and table.candidates >= 1");
  }
  bool integers = int64_t(centre.size()) == t.dim;
  for (const auto& v : centre) integers = integers && is_int(v) && v.get<int64_t>() >= -127 && v.get<int64_t>() <= 127;
  if (!integers) {
    bundle_error(c.src + ": table.centre must be " + std::to_string(t.dim) + " integers in -127..127 (table.dim)");
  }
  if (!(std::isfinite(centre_scale) && centre_scale > 0)) bundle_error(c.src + ": table.centre_scale must be a finite number > 0");
  int64_t squares = 0;
  for (const auto& v : centre) squares += v.get<int64_t>() * v.get<int64_t>();
  if (centre_scale * centre_scale * double(squares) >= 1) {
    bundle_error(c.src + ": table.centre x table.centre_scale must be shorter than 1 (the mean of unit rows)");
  }
  t.centre_scale = centre_scale;
  for (const auto& v : centre) {
    t.centre8.push_back(int32_t(v.get<int64_t>()));
    t.centre.push_back(float(double(t.centre8.back()) * centre_scale));  // as numpy's float32 cast
  }
  if (present("query_bits")) {
    const int64_t bits = require(c, raw, "query_bits", Kind::Int, where).get<int64_t>();
    if (bits < 1 || bits > 4) {
      bundle_error(c.src + ": table.query_bits must be one of (1, 2, 3, 4), got " + std::to_string(bits));
    }
    if (((int64_t(1) << bits) - 1) * t.dim > 65535) {  // uint16 distances (twostage.cc)
      bundle_error(c.src + ": table.query_bits " + std::to_string(bits) + " is too wide for a " +
                   std::to_string(t.dim) + "-d table: distances must stay <= 65535");
    }
    t.query_bits = int(bits);
  }
  if (t.dim > 65535) bundle_error(c.src + ": table.dim above 65535 is not supported for table version 3");
  return t;
}

TableEntry parse_table(const Ctx& c, const json& raw) {
  const std::string where = "table.";
  require_object(c, raw, where, {"file", "dtype", "rows", "dim", "sha256"});
  TableEntry t;
  t.file = require(c, raw, "file", Kind::Str, where).get<std::string>();
  t.dtype = require(c, raw, "dtype", Kind::Str, where).get<std::string>();
  t.rows = require(c, raw, "rows", Kind::Int, where).get<int64_t>();
  t.dim = require(c, raw, "dim", Kind::Int, where).get<int64_t>();
  t.sha256 = require(c, raw, "sha256", Kind::Str, where).get<std::string>();
  if (optional_field(c, raw, "scales_file", Kind::Str, where)) t.scales_file = raw["scales_file"];
  if (optional_field(c, raw, "scales_sha256", Kind::Str, where)) t.scales_sha256 = raw["scales_sha256"];
  if (raw.contains("version")) t.version = require(c, raw, "version", Kind::Int, where).get<int64_t>();
  if (t.version < 1 || t.version > 3) {
    bundle_error(c.src + ": unknown table format version " + std::to_string(t.version) +
                 " (this reader supports table versions [1, 2, 3])");
  }
  if (raw.contains("query_bits") && !raw.at("query_bits").is_null() && t.version != 3) {
    bundle_error(c.src + ": table.query_bits needs table version 3 (this table is version " + std::to_string(t.version) + ")");
  }
  if (t.version == 2) return parse_table_v2(c, raw, t);
  if (t.version == 3) return parse_table_v3(c, raw, t);
  if (t.dtype != "int8" && t.dtype != "float16" && t.dtype != "float32") {
    bundle_error(c.src + ": table.dtype = " + py_repr(t.dtype) +
                 ", expected one of ['int8', 'float16', 'float32']");
  }
  if (t.dtype == "int8" && (t.scales_file.empty() || t.scales_sha256.empty())) {
    bundle_error(c.src + ": an int8 table needs table.scales_file and table.scales_sha256");
  }
  if (t.rows < 0 || t.dim <= 0) bundle_error(c.src + ": table.rows must be >= 0 and table.dim > 0");
  if (t.dim > 65536) bundle_error(c.src + ": table.dim above 65536 is not supported");
  return t;
}

ExtraFile parse_extra(const Ctx& c, const json& raw, size_t index) {
  const std::string where = "extra_files[" + std::to_string(index) + "].";
  require_object(c, raw, where, {"file", "sha256"});
  return {require(c, raw, "file", Kind::Str, where).get<std::string>(),
          require(c, raw, "sha256", Kind::Str, where).get<std::string>()};
}

// Deep nesting is refused before parsing (the manifest is 3 levels deep; the fuzzer goes deeper).
void check_depth(const Ctx& c, const std::string& text) {
  if (json_nested_deeper_than(text, kMaxJsonDepth)) {
    bundle_error(c.src + ": not valid JSON (nested deeper than " + std::to_string(kMaxJsonDepth) + " levels)");
  }
}

std::string repr_names(const std::vector<EncoderEntry>& encoders) {
  std::string out = "[";
  for (size_t i = 0; i < encoders.size(); ++i) out += (i ? ", " : "") + py_repr(encoders[i].name);
  return out + "]";
}

std::string dim_text(const Dim& d, bool quoted) {
  if (std::holds_alternative<int64_t>(d)) return std::to_string(std::get<int64_t>(d));
  return quoted ? py_repr(std::get<std::string>(d)) : std::get<std::string>(d);
}

std::string shape_text(const std::vector<Dim>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + dim_text(shape[i], true);
  return out + "]";
}

bool is_dir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_symlink(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}

int64_t file_size(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) bundle_error(path + ": cannot stat");
  return int64_t(st.st_size);
}

// (relative POSIX path, full path) of every regular file below root, sorted (byte order = the
// code-point order Python sorts str by, for UTF-8 names); symlinks refused.
void walk_files(const std::string& root, const std::string& prefix,
                std::vector<std::pair<std::string, std::string>>& out, int depth) {
  if (depth > 64) bundle_error(root + ": directory nesting too deep");
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(root.c_str()), closedir);
  if (!dir) bundle_error(root + ": cannot open directory");
  std::vector<std::string> names;
  while (dirent* entry = readdir(dir.get())) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  for (const auto& name : names) {
    std::string full = root + "/" + name;
    if (is_symlink(full)) bundle_error(full + ": symbolic links are not allowed inside a bundle");
    if (is_dir(full)) walk_files(full, prefix + name + "/", out, depth + 1);
    else out.emplace_back(prefix + name, full);
  }
}

std::string hex(const unsigned char* digest, unsigned int n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out += digits[digest[i] >> 4];
    out += digits[digest[i] & 15];
  }
  return out;
}

class Sha256 {  // OpenSSL's EVP SHA-256
 public:
  Sha256() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) fail(MALM_ERR_INTERNAL, "sha256: OpenSSL init failed");
  }
  void update(const void* data, size_t n) { EVP_DigestUpdate(ctx_.get(), data, n); }
  std::string hexdigest() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx_.get(), digest, &n);
    return hex(digest, n);
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

std::string sha256_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file) bundle_error(path + ": cannot open for reading");
  Sha256 digest;
  std::vector<char> block(1 << 20);
  size_t n;
  while ((n = std::fread(block.data(), 1, block.size(), file.get())) > 0) digest.update(block.data(), n);
  if (std::ferror(file.get())) bundle_error(path + ": read error");
  return digest.hexdigest();
}

int64_t size_path(const std::string& path) {
  if (!is_dir(path)) return file_size(path);
  std::vector<std::pair<std::string, std::string>> files;
  walk_files(path, "", files, 0);
  int64_t total = 0;
  for (const auto& f : files) total += file_size(f.second);
  return total;
}

struct FileRef {
  std::string what, relative, sha256;
};

std::vector<FileRef> referenced_files(const Manifest& m) {
  std::vector<FileRef> files;
  for (const auto& e : m.encoders) files.push_back({"encoder '" + e.name + "'", e.file, e.sha256});
  files.push_back({"table", m.table.file, m.table.sha256});
  if (!m.table.scales_file.empty()) files.push_back({"table scales", m.table.scales_file, m.table.scales_sha256});
  if (m.table.version >= 2) files.push_back({"table codes", m.table.codes_file, m.table.codes_sha256});
  files.push_back({"catalog", m.catalog.file, m.catalog.sha256});
  for (const auto& x : m.extra_files) files.push_back({"extra file " + py_repr(x.file), x.file, x.sha256});
  return files;
}

// The relative POSIX form Python's Path(relative).as_posix() gives ("./a//b" -> "a/b").
std::string posix_relative(const std::string& relative) {
  std::string out;
  std::stringstream parts(relative);
  for (std::string part; std::getline(parts, part, '/');) {
    if (part.empty() || part == ".") continue;
    out += (out.empty() ? "" : "/") + part;
  }
  return out;
}

// _check_covered: every file in the folder is named by the manifest (or is the manifest or its
// signature); a file nothing covers could be read by an app without any check. A named directory
// (an .mlpackage encoder) is hashed as a whole and not walked.
void check_covered(const std::string& root, const std::string& dir, const std::string& prefix,
                   const std::vector<std::string>& named, int depth) {
  if (depth > 64) bundle_error(dir + ": directory nesting too deep");
  std::unique_ptr<DIR, int (*)(DIR*)> handle(opendir(dir.c_str()), closedir);
  if (!handle) bundle_error(dir + ": cannot open directory");
  std::vector<std::string> names, subdirs;
  while (dirent* entry = readdir(handle.get())) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  auto is_named = [&](const std::string& relative) {
    return std::find(named.begin(), named.end(), relative) != named.end();
  };
  for (const auto& name : names) {  // files (and links) of this folder first, then its subfolders
    std::string relative = prefix + name, full = dir + "/" + name;
    if (!is_symlink(full) && is_dir(full)) {
      if (!is_named(relative)) subdirs.push_back(name);
      continue;
    }
    bool allowed = is_named(relative) || (prefix.empty() && (name == kManifestFile || name == kSignatureFile));
    if (!allowed) {
      bundle_error(join_path(root, relative) + ": not named in manifest.json; a bundle holds only the files its "
                                              "manifest covers (remove it, or rebuild the bundle)");
    }
  }
  for (const auto& name : subdirs) check_covered(root, dir + "/" + name, prefix + name + "/", named, depth + 1);
}

// _resolve (a link as the file itself is refused with edge/'s message), plus the native reader's
// extra rule: no symbolic link on the way either (a linked folder could point anywhere).
void resolve(const std::string& root, const FileRef& f, const std::string& src) {
  const std::string& rel = f.relative;
  bool dotdot = false;
  std::stringstream parts(rel);
  for (std::string part; std::getline(parts, part, '/');) dotdot = dotdot || part == "..";
  if (rel.empty() || rel[0] == '/' || dotdot) {
    bundle_error(src + ": " + f.what + " path " + py_repr(rel) + " must be relative and inside the bundle");
  }
  std::string full = join_path(root, rel);
  if (is_symlink(full)) bundle_error(full + ": a symbolic link (" + f.what + "); bundle files must be regular files");
  struct stat st;
  if (stat(full.c_str(), &st) != 0) bundle_error(full + ": missing (" + f.what + " named in manifest.json)");
  std::string walked = root;
  std::stringstream again(rel);
  for (std::string part; std::getline(again, part, '/');) {
    if (part.empty() || part == ".") continue;
    walked += "/" + part;
    if (is_symlink(walked)) bundle_error(walked + ": symbolic links are not allowed inside a bundle");
  }
}

void check_dims(const Manifest& m, const std::string& root) {
  const int64_t dim = m.embedding_dim;
  if (m.table.dim != dim) {
    bundle_error(join_path(root, m.table.file) + ": table dim " + std::to_string(m.table.dim) +
                 " != manifest embedding_dim " + std::to_string(dim));
  }
  const int64_t size = m.preprocessing.input_size;
  for (const auto& e : m.encoders) {
    const auto& shape = e.output.shape;
    bool ok = !shape.empty() && std::holds_alternative<int64_t>(shape.back()) &&
              std::get<int64_t>(shape.back()) == dim;
    if (!ok) {
      std::string out_dim = shape.empty() ? "None" : dim_text(shape.back(), false);
      bundle_error(join_path(root, e.file) + ": encoder '" + e.name + "' output dim " + out_dim +
                   " != manifest embedding_dim " + std::to_string(dim));
    }
    const auto& in = e.input.shape;
    bool fixed_ok = in.size() == 4;
    const int64_t want[3] = {3, size, size};
    for (size_t i = 1; fixed_ok && i < 4; ++i) {
      fixed_ok = std::holds_alternative<std::string>(in[i]) || std::get<int64_t>(in[i]) == want[i - 1];
    }
    if (!fixed_ok) {
      bundle_error(join_path(root, e.file) + ": encoder '" + e.name + "' input shape " + shape_text(in) +
                   " does not match NCHW [N, 3, " + std::to_string(size) + ", " + std::to_string(size) +
                   "] from preprocessing");
    }
  }
  if (m.table.rows != m.catalog.count) {
    bundle_error(join_path(root, m.catalog.file) + ": catalog count " + std::to_string(m.catalog.count) +
                 " != table rows " + std::to_string(m.table.rows));
  }
}

int64_t dtype_bytes(const std::string& dtype) { return dtype == "int8" ? 1 : dtype == "float16" ? 2 : 4; }

void check_sizes(const Manifest& m, const std::string& root) {
  const TableEntry& t = m.table;
  std::string path = join_path(root, t.file);
  // rows * dim overflow would need > 2^63 bytes; dim <= 65536 and rows < 2^40 keep it exact.
  if (t.rows > (int64_t(1) << 40)) bundle_error(path + ": table.rows " + std::to_string(t.rows) + " is too large");
  const int64_t planes = (t.dim + 1) / 2 + (t.dim + 3) / 4;  // nibble + crumb planes (v2), + bit-6 plane (v3)
  const int64_t row_bytes = t.version == 3 ? planes + (t.dim + 7) / 8 : t.version == 2 ? planes : t.dim * dtype_bytes(t.dtype);
  int64_t expected = t.rows * row_bytes, actual = file_size(path);
  if (actual != expected) {
    bundle_error(path + ": " + std::to_string(actual) + " bytes, expected " + std::to_string(expected) +
                 " for " + std::to_string(t.rows) + " x " + std::to_string(t.dim) + " " + t.dtype);
  }
  if (!t.scales_file.empty()) {
    std::string scales = join_path(root, t.scales_file);
    actual = file_size(scales);
    if (actual != t.rows * 4) {
      bundle_error(scales + ": " + std::to_string(actual) + " bytes, expected " + std::to_string(t.rows * 4) +
                   " for " + std::to_string(t.rows) + " float32 scales");
    }
  }
  if (t.version >= 2) {
    const int64_t words = (t.dim + 63) / 64;
    std::string codes = join_path(root, t.codes_file);
    actual = file_size(codes);
    if (actual != t.rows * words * 8) {
      bundle_error(codes + ": " + std::to_string(actual) + " bytes, expected " + std::to_string(t.rows * words * 8) +
                   " for " + std::to_string(t.rows) + " sign codes of " + std::to_string(words) + " 64-bit words");
    }
  }
  for (const auto& e : m.encoders) {
    std::string file = join_path(root, e.file);
    actual = size_path(file);
    if (actual != e.size_bytes) {
      bundle_error(file + ": " + std::to_string(actual) + " bytes, manifest says " + std::to_string(e.size_bytes));
    }
  }
}

}  // namespace

std::string join_path(const std::string& root, const std::string& relative) {
  std::string out = root;
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  std::stringstream parts(relative);
  for (std::string part; std::getline(parts, part, '/');) {
    if (part.empty() || part == ".") continue;
    out += (out == "/" ? "" : "/") + part;
  }
  return out;
}

bool json_nested_deeper_than(const std::string& text, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char ch : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (ch == '\\') escaped = true;
      else if (ch == '"') in_string = false;
    } else if (ch == '"') {
      in_string = true;
    } else if (ch == '[' || ch == '{') {
      if (++depth > max_depth) return true;
    } else if (ch == ']' || ch == '}') {
      --depth;
    }
  }
  return false;
}

std::string sha256_hex(const void* data, size_t size) {
  Sha256 digest;
  digest.update(data, size);
  return digest.hexdigest();
}

std::string sha256_path(const std::string& path) {
  if (!is_dir(path)) return sha256_file(path);
  std::vector<std::pair<std::string, std::string>> files;
  walk_files(path, "", files, 0);
  std::sort(files.begin(), files.end());
  Sha256 digest;
  for (const auto& [relative, full] : files) {
    std::string line = relative + std::string(1, '\0') + sha256_file(full) + "\n";
    digest.update(line.data(), line.size());
  }
  return digest.hexdigest();
}

TableEntry parse_table_text(const std::string& text, const std::string& src) {
  Ctx c{src};
  check_depth(c, text);
  json data = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (data.is_discarded()) bundle_error(src + ": not valid JSON");
  return parse_table(c, data);
}

Manifest parse_manifest_text(const std::string& text, const std::string& src) {
  Ctx c{src};
  if (text.size() > kMaxManifestBytes) bundle_error(src + ": not valid JSON (larger than 16 MiB)");
  check_depth(c, text);
  json data = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (data.is_discarded()) {
    try {
      json reparsed = json::parse(text);
      (void)reparsed;
    } catch (const json::exception& err) {
      bundle_error(src + ": not valid JSON (" + err.what() + ")");
    }
    bundle_error(src + ": not valid JSON");
  }
  if (!data.is_object()) bundle_error(src + ": the manifest must be a JSON object");
  std::string format = require(c, data, "format", Kind::Str, "").get<std::string>();
  if (format != kFormatName) {
    bundle_error(src + ": format is " + py_repr(format) + ", expected " + py_repr(kFormatName));
  }
  int64_t version = require(c, data, "version", Kind::Int, "").get<int64_t>();
  if (version != kFormatVersion) {
    bundle_error(src + ": unknown bundle format version " + std::to_string(version) +
                 " (this reader supports version 1)");
  }
  const json& encoders = require(c, data, "encoders", Kind::List, "");
  if (encoders.empty()) bundle_error(src + ": 'encoders' is empty; a bundle needs at least one encoder");
  Manifest m;
  m.embedding_dim = require(c, data, "embedding_dim", Kind::Int, "").get<int64_t>();
  m.preprocessing = parse_preprocessing(c, require(c, data, "preprocessing", Kind::Dict, ""));
  for (size_t i = 0; i < encoders.size(); ++i) m.encoders.push_back(parse_encoder(c, encoders[i], i));
  m.table = parse_table(c, require(c, data, "table", Kind::Dict, ""));
  const json& catalog = require(c, data, "catalog", Kind::Dict, "");
  require_object(c, catalog, "catalog.", {"file", "sha256", "count"});
  if (data.contains("extra_files")) {  // parsed before the catalog's types are checked, as edge/ does
    const json& extra = require(c, data, "extra_files", Kind::List, "");
    for (size_t i = 0; i < extra.size(); ++i) m.extra_files.push_back(parse_extra(c, extra[i], i));
  }
  m.catalog.file = require(c, catalog, "file", Kind::Str, "catalog.").get<std::string>();
  m.catalog.sha256 = require(c, catalog, "sha256", Kind::Str, "catalog.").get<std::string>();
  m.catalog.count = require(c, catalog, "count", Kind::Int, "catalog.").get<int64_t>();
  for (size_t i = 0; i < m.encoders.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (m.encoders[i].name == m.encoders[j].name) {
        bundle_error(src + ": encoder names are not unique: " + repr_names(m.encoders));
      }
    }
  }
  return m;
}

Manifest read_manifest(const std::string& root, const std::string& trusted_public_key) {
  std::string src = join_path(root, kManifestFile);
  struct stat st;
  if (lstat(src.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
    bundle_error(src + ": a symbolic link; the manifest must be a regular file");
  }
  if (stat(src.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    bundle_error(src + ": missing; " + root + " is not a malm-edge bundle");
  }
  if (size_t(st.st_size) > kMaxManifestBytes) {
    bundle_error(src + ": " + std::to_string(st.st_size) + " bytes, over the limit of " +
                 std::to_string(kMaxManifestBytes) + " for a manifest");
  }
  std::ifstream in(src, std::ios::binary);
  if (!in) bundle_error(src + ": cannot open for reading");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string data = buffer.str();  // read once: the bytes verified are the bytes parsed
  if (!trusted_public_key.empty()) verify_manifest_bytes(root, data, trusted_public_key);
  return parse_manifest_text(data, src);
}

Manifest read_bundle(const std::string& root, bool verify_checksums, const std::string& trusted_public_key) {
  std::string src = join_path(root, kManifestFile);
  Manifest m = read_manifest(root, trusted_public_key);
  auto files = referenced_files(m);
  for (const auto& f : files) resolve(root, f, src);
  std::vector<std::string> named;
  for (const auto& f : files) named.push_back(posix_relative(f.relative));
  check_covered(root, root, "", named, 0);
  check_dims(m, root);
  check_sizes(m, root);
  if (verify_checksums) {
    for (const auto& f : files) {
      std::string full = join_path(root, f.relative);
      std::string actual = sha256_path(full);
      if (actual != f.sha256) {
        bundle_error(full + ": sha256 mismatch for " + f.what + " (manifest " + f.sha256.substr(0, 12) +
                     "..., file " + actual.substr(0, 12) + "...); the file was modified or corrupted");
      }
    }
  }
  return m;
}

}  // namespace malm
