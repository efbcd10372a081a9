// Photo files -> RGB8 for the CLI and the fuzzer (phone apps decode with the OS and pass pixels):
// JPEG with libjpeg-turbo, PNG with libpng, as edge/preprocess.py step 1 does with PIL: EXIF
// orientation applied, greyscale replicated, transparency composited on white (PIL's
// alpha_composite arithmetic), 16-bit greyscale / 257, images over 64 MP refused from the header.
// Truncated or corrupt data is an error (MALM_ERR_IMAGE naming the file), never a crash.
#pragma once

#include <cstdint>
#include <string>

#include "preprocess.h"

namespace malm {

Image8 decode_image_file(const std::string& path, int64_t max_pixels = kMaxPixels);
Image8 decode_image_memory(const uint8_t* data, size_t size, const std::string& name,
                           int64_t max_pixels = kMaxPixels);
// EXIF orientation (1..8) from a TIFF block ("II*\0" / "MM\0*" header); 1 when absent or bad.
int exif_orientation(const uint8_t* tiff, size_t size);
// PIL ImageOps.exif_transpose for an orientation value.
Image8 apply_orientation(Image8 image, int orientation);

}  // namespace malm
