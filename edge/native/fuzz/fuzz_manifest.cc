// libFuzzer: manifest.json text -> parse_manifest_text. Any input must end in a manifest or a
// malm::Error (MALM_ERR_BUNDLE), never a crash, hang or sanitizer report.
#include <cstdint>
#include <string>

#include "../src/common.h"
#include "../src/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  try {
    malm::Manifest m = malm::parse_manifest_text(text, "fuzz/manifest.json");
    (void)m;
  } catch (const malm::Error& err) {
    if (err.status() != MALM_ERR_BUNDLE) __builtin_trap();
  }
  return 0;
}
