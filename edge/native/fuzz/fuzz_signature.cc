// libFuzzer: manifest.sig text -> parse_signature_text -> Ed25519 verification (OpenSSL) of a fixed
// message with a fixed key. Any input must end in a record or a malm::Error (MALM_ERR_SIGNATURE),
// never a crash, hang or sanitizer report.
#include <cstdint>
#include <string>

#include "../src/common.h"
#include "../src/signature.h"

namespace {
// RFC 8032 section 7.1, test 1: the public key whose signature of the empty message is known.
const unsigned char kPublicKey[32] = {0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe,
                                      0xd3, 0xc9, 0x64, 0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6,
                                      0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  try {
    malm::SignatureRecord record = malm::parse_signature_text(text, "fuzz/manifest.sig");
    if (record.signature.size() != 64) __builtin_trap();
    (void)malm::verify_ed25519_raw(kPublicKey, record.signature, text);
  } catch (const malm::Error& err) {
    if (err.status() != MALM_ERR_SIGNATURE) __builtin_trap();
  }
  return 0;
}
