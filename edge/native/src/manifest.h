// Bundle format v1: manifest.json parsing and bundle validation with the rules and messages of
// edge/bundle.py (read_bundle): [signature of the manifest's bytes] -> fields and types -> files
// present inside the bundle -> nothing unnamed in the folder -> dims and sizes -> sha256 of every file. Errors are malm::Error(MALM_ERR_BUNDLE, "<file>: <what>").
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace malm {

struct Preprocessing {
  int64_t input_size = 224;
  int64_t resize_size = 224;
  double mean[3] = {0.48145466, 0.4578275, 0.40821073};
  double std[3] = {0.26862954, 0.26130258, 0.27577711};
  double scale = 1.0 / 255.0;
};

using Dim = std::variant<int64_t, std::string>;  // a symbolic dim is a name

struct TensorSpec {
  std::string name;
  std::vector<Dim> shape;
  std::string dtype = "float32";
};

struct EncoderEntry {
  std::string name, file, sha256, target, quantization, pixel_input = "normalized";
  TensorSpec input, output;
  int64_t size_bytes = 0;
};

struct TableEntry {
  std::string file, dtype, sha256, scales_file, scales_sha256;  // "" = absent
  int64_t rows = 0, dim = 0;
  int64_t version = 1;  // 1: exact rows (table.h); 2, 3: sign codes + 7-bit or 8-bit rows (twostage.h)
  std::string codes_file, codes_sha256;  // versions 2 and 3
  std::vector<float> centre;             // versions 2 and 3: dim values (v3: float32(centre8 x centre_scale))
  int64_t candidates = 0;                // versions 2 and 3: rows the prefilter keeps
  std::vector<int32_t> centre8;          // version 3: the manifest's `centre`, dim integers in -127..127
  double centre_scale = 0;               // version 3
  int query_bits = 1;                    // version 3: the prefilter's query weight bits (1: Hamming)
};

struct CatalogEntry {
  std::string file, sha256;
  int64_t count = 0;
};

struct ExtraFile {  // report.md / report.json / report.png: covered like every other file
  std::string file, sha256;
};

struct Manifest {
  int64_t embedding_dim = 0;
  Preprocessing preprocessing;
  std::vector<EncoderEntry> encoders;
  TableEntry table;
  CatalogEntry catalog;
  std::vector<ExtraFile> extra_files;
};

constexpr int kFormatVersion = 1;
constexpr const char* kFormatName = "malm-edge-bundle";
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kSignatureFile = "manifest.sig";
constexpr int kMaxJsonDepth = 64;
constexpr size_t kMaxManifestBytes = 16u << 20;

// Parse and type-check a manifest from its text; `src` names the file in messages.
Manifest parse_manifest_text(const std::string& text, const std::string& src);
// A manifest's `table` object alone, from JSON text (benchmarks: malm-edge-native table-search).
TableEntry parse_table_text(const std::string& text, const std::string& src);
// Read <root>/manifest.json and parse it (no file checks). With a trusted Ed25519 public key (PEM
// file path, "" = none) the manifest's exact bytes must carry a valid manifest.sig by that key
// before they are parsed (signature.h; edge/bundle.py read_manifest(require_signature=...)).
Manifest read_manifest(const std::string& root, const std::string& trusted_public_key = "");
// The whole validation of edge/bundle.py read_bundle, returning the manifest.
Manifest read_bundle(const std::string& root, bool verify_checksums,
                     const std::string& trusted_public_key = "");
// Lowercase hex sha256 of a file, or edge/bundle.py's directory digest for a directory.
std::string sha256_path(const std::string& path);
// Lowercase hex sha256 of bytes in memory.
std::string sha256_hex(const void* data, size_t size);
// True when JSON text nests arrays/objects deeper than max_depth (checked before any parsing).
bool json_nested_deeper_than(const std::string& text, int max_depth);
// "a/b" joined as Python's Path does (no duplicate separator; trailing "/" of root dropped).
std::string join_path(const std::string& root, const std::string& relative);

}  // namespace malm
