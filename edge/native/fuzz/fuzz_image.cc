// libFuzzer: image file bytes -> decode (JPEG/PNG, EXIF) -> PIL-exact resize + centre crop.
// Any input must decode or raise malm::Error (MALM_ERR_IMAGE), never crash.
#include <cstdint>

#include "../src/common.h"
#include "../src/image_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    malm::Image8 image = malm::decode_image_memory(data, size, "fuzz.img", /*max_pixels=*/1 << 22);
    malm::Image8 crop = malm::resize_and_crop({image.pixels.data(), image.width, image.height, image.width * 3}, 36, 32);
    (void)crop;
  } catch (const malm::Error& err) {
    if (err.status() != MALM_ERR_IMAGE) __builtin_trap();
  }
  return 0;
}
