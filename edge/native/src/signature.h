// Ed25519 signatures of bundle manifests (edge/signing.py): who built a bundle, not only is it intact.
//
// `manifest.sig` is JSON {format: "malm-edge-signature", version: 1, algorithm: "Ed25519", key_id,
// public_key, signature}: the signature (64 bytes, base64) is over the exact bytes of manifest.json.
// Verification always uses the key the reader trusts (a PEM SubjectPublicKeyInfo file, as written
// by `malm-edge keygen`); the file's own `public_key` and `key_id` only help a person see which key
// signed. OpenSSL libcrypto does the Ed25519 (EVP_DigestVerify with EVP_PKEY_ED25519). Errors are
// malm::Error(MALM_ERR_SIGNATURE, "<file>: <what>") with edge/signing.py's messages.
#pragma once

#include <string>
#include <vector>

namespace malm {

constexpr const char* kSignatureFormat = "malm-edge-signature";
constexpr int kSignatureVersion = 1;
constexpr size_t kMaxSignatureBytes = 1u << 16;  // edge/signing.py reads the first 64 KiB

struct SignatureRecord {
  std::vector<unsigned char> signature;  // 64 bytes
  std::string key_id;                    // as the file claims it ("?" when absent)
};

// The checks of manifest.sig's text (format, version, algorithm, a 64-byte base64 signature);
// `path` names the file in messages. Exposed for the unit tests and the fuzzer.
SignatureRecord parse_signature_text(const std::string& text, const std::string& path);
// Ed25519 verification of `message` with a raw 32-byte public key (true: valid).
bool verify_ed25519_raw(const unsigned char* raw_public_key, const std::vector<unsigned char>& signature,
                        const std::string& message);
// Key id of a trusted public key file: first 16 hex digits of sha256 of its 32 raw bytes.
std::string public_key_id(const std::string& public_key_path);
// Check <root>/manifest.sig over these exact manifest bytes with the trusted key; returns its key id.
std::string verify_manifest_bytes(const std::string& root, const std::string& manifest_bytes,
                                  const std::string& public_key_path);

}  // namespace malm
