// manifest.sig verification: the rules and messages of edge/signing.py (verify_manifest_bytes).
#include "signature.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "common.h"
#include "manifest.h"

namespace malm {
namespace {

using json = nlohmann::json;
using PKey = std::unique_ptr<EVP_PKEY, void (*)(EVP_PKEY*)>;

[[noreturn]] void signature_error(const std::string& message) { fail(MALM_ERR_SIGNATURE, message); }

std::string openssl_error() {
  unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "no PEM public key found";
  char text[256];
  ERR_error_string_n(code, text, sizeof text);
  return text;
}

// Python's repr() of a decoded JSON value, enough for messages (None, True, 'text', 1).
std::string py_value_repr(const json& v) {
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (!v.is_string()) return v.dump();
  std::string out = "'";
  for (char c : v.get<std::string>()) {
    if (c == '\\' || c == '\'') out += '\\';
    out += c;
  }
  return out + "'";
}

// Python's str() of record.get(key, fallback).
std::string py_str(const json& record, const char* key, const std::string& fallback) {
  if (!record.contains(key)) return fallback;
  const json& v = record.at(key);
  return v.is_string() ? v.get<std::string>() : py_value_repr(v);
}

// Python's `value == 1` for a decoded JSON value (True and 1.0 compare equal to 1).
bool equals_one(const json& v) {
  if (v.is_boolean()) return v.get<bool>();
  return v.is_number() && v.get<double>() == 1.0;
}

PKey load_public_key(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file) {
    int code = errno;  // as Python's OSError prints itself
    signature_error(path + ": not a readable PEM public key ([Errno " + std::to_string(code) + "] " +
                    std::strerror(code) + ": '" + path + "')");
  }
  ERR_clear_error();
  PKey key(PEM_read_PUBKEY(file.get(), nullptr, nullptr, nullptr), EVP_PKEY_free);
  if (!key) signature_error(path + ": not a readable PEM public key (" + openssl_error() + ")");
  if (EVP_PKEY_id(key.get()) != EVP_PKEY_ED25519) {
    signature_error(path + ": not an Ed25519 public key (make one with `malm-edge keygen`)");
  }
  return key;
}

std::string key_id_of(const EVP_PKEY* key) {
  unsigned char raw[32];
  size_t n = sizeof raw;
  if (EVP_PKEY_get_raw_public_key(key, raw, &n) != 1 || n != sizeof raw) {
    fail(MALM_ERR_INTERNAL, "Ed25519: cannot read the raw public key");
  }
  return sha256_hex(raw, n).substr(0, 16);
}

// Python's base64.b64decode(text, validate=True): the alphabet only, padded to a multiple of 4.
bool b64decode_strict(const std::string& text, std::vector<unsigned char>& out) {
  if (text.empty() || text.size() % 4 != 0) return false;
  size_t pad = 0;
  while (pad < text.size() && text[text.size() - 1 - pad] == '=') ++pad;
  if (pad > 2) return false;
  for (size_t i = 0; i + pad < text.size(); ++i) {
    char c = text[i];
    bool alphabet = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
    if (!alphabet) return false;
  }
  out.resize(text.size() / 4 * 3);
  int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(text.data()), int(text.size()));
  if (n < 0 || size_t(n) != out.size()) return false;
  out.resize(out.size() - pad);
  return true;
}

SignatureRecord read_signature(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    signature_error(path + ": missing; the bundle is not signed (sign it with `malm-edge sign` or "
                           "`malm-edge convert --sign KEY`)");
  }
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file) signature_error(path + ": missing; the bundle is not signed (cannot open it)");
  std::string text(kMaxSignatureBytes, '\0');
  text.resize(std::fread(&text[0], 1, text.size(), file.get()));
  return parse_signature_text(text, path);
}

}  // namespace

SignatureRecord parse_signature_text(const std::string& text, const std::string& path) {
  if (json_nested_deeper_than(text, kMaxJsonDepth)) {
    signature_error(path + ": not a signature file (JSON nested too deeply (more than " +
                    std::to_string(kMaxJsonDepth) + " levels))");
  }
  json record;
  try {
    record = json::parse(text);
  } catch (const json::exception& err) {
    signature_error(path + ": not a signature file (malformed JSON: " + err.what() + ")");
  }
  if (!record.is_object() || !record.contains("format") || record["format"] != kSignatureFormat) {
    signature_error(path + ": not a " + kSignatureFormat + " file");
  }
  const json none;
  const json& version = record.contains("version") ? record["version"] : none;
  const json& algorithm = record.contains("algorithm") ? record["algorithm"] : none;
  if (!equals_one(version) || algorithm != "Ed25519") {
    signature_error(path + ": unsupported signature version/algorithm (" + py_value_repr(version) + ", " +
                    py_value_repr(algorithm) + "; this reader: 1, Ed25519)");
  }
  SignatureRecord out;
  if (!b64decode_strict(py_str(record, "signature", ""), out.signature) || out.signature.size() != 64) {
    signature_error(path + ": 'signature' is not 64 base64-encoded bytes");
  }
  out.key_id = py_str(record, "key_id", "?");
  return out;
}

namespace {

bool ed25519_verify(EVP_PKEY* key, const std::vector<unsigned char>& signature, const std::string& message) {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key) != 1) {
    ERR_clear_error();
    fail(MALM_ERR_INTERNAL, "Ed25519: OpenSSL cannot set up verification");
  }
  int ok = EVP_DigestVerify(ctx.get(), signature.data(), signature.size(),
                            reinterpret_cast<const unsigned char*>(message.data()), message.size());
  ERR_clear_error();
  return ok == 1;
}

}  // namespace

bool verify_ed25519_raw(const unsigned char* raw_public_key, const std::vector<unsigned char>& signature,
                        const std::string& message) {
  PKey key(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, raw_public_key, 32), EVP_PKEY_free);
  if (!key) fail(MALM_ERR_INTERNAL, "Ed25519: OpenSSL cannot make a key from 32 raw bytes");
  return ed25519_verify(key.get(), signature, message);
}

std::string public_key_id(const std::string& public_key_path) {
  return key_id_of(load_public_key(public_key_path).get());
}

std::string verify_manifest_bytes(const std::string& root, const std::string& manifest_bytes,
                                  const std::string& public_key_path) {
  PKey key = load_public_key(public_key_path);
  const std::string trusted = key_id_of(key.get());
  const std::string sig_path = join_path(root, kSignatureFile);
  SignatureRecord record = read_signature(sig_path);
  if (!ed25519_verify(key.get(), record.signature, manifest_bytes)) {
    if (record.key_id != trusted) {
      signature_error(sig_path + ": signed by key " + record.key_id + ", not by the trusted key " + trusted + " (" +
                      public_key_path + ")");
    }
    signature_error(join_path(root, kManifestFile) + ": the signature does not match the manifest (key " + trusted +
                    "); the manifest was changed after signing");
  }
  return trusted;
}

}  // namespace malm
