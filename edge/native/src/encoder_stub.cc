#include "common.h"
#include "encoder.h"

namespace malm {

bool encoder_available() { return false; }

std::unique_ptr<Encoder> load_encoder(const std::string& path, int) {
  fail(MALM_ERR_UNSUPPORTED, path + ": this build of the native core has no ExecuTorch runtime");
}

}  // namespace malm
