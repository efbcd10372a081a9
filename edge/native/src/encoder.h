// The image encoder: a .pte run by ExecuTorch's C++ runtime (XNNPACK delegate), or, in a build
// without ExecuTorch (MALM_WITH_EXECUTORCH=OFF, e.g. the AddressSanitizer variant), a stub that
// fails with MALM_ERR_UNSUPPORTED.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace malm {

class Encoder {
 public:
  virtual ~Encoder() = default;
  // (1, 3, S, S) float32 -> raw (D,) output (not normalised).
  virtual std::vector<float> run(std::vector<float>& pixels, int size) = 0;
};

// Load `path` (method "forward"); threads > 0 resizes ExecuTorch's process-wide XNNPACK pool.
std::unique_ptr<Encoder> load_encoder(const std::string& path, int threads);
bool encoder_available();

}  // namespace malm
