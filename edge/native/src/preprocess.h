// The preprocessing contract of edge/preprocess.py on an RGB8 pixel buffer (decoding and EXIF
// orientation are the caller's: the OS on a phone, image_io.cc in the CLI):
// shorter side -> resize_size with PIL's BICUBIC (separable, support scaled by the downscale
// factor, a = -0.5, 22-bit fixed-point coefficients, 8-bit rounding between the horizontal and
// the vertical pass, as Pillow's Resample.c), centre crop S x S with left = round((w - S) / 2)
// (Python's round, half to even), then float32 / 255, (x - mean) / std, NCHW.
#pragma once

#include <cstdint>
#include <vector>

#include "manifest.h"

namespace malm {

struct Rgb8 {  // a view of interleaved RGB8 rows
  const uint8_t* data;
  int width, height, stride;
};

struct Image8 {  // an owned RGB8 image, rows packed (stride = 3 * width)
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;
};

constexpr int64_t kMaxPixels = 64000000;  // edge/preprocess.py DEFAULT_MAX_PIXELS

// PIL Image.resize((out_w, out_h), BICUBIC) of the whole image.
Image8 resize_bicubic(const Rgb8& in, int out_w, int out_h);
// Steps 2-3: (new_w, new_h) by the shorter-side rule, then the centre crop box.
Image8 resize_and_crop(const Rgb8& in, int resize_size, int crop_size);
// Steps 4-6 on a crop: float32 (3, S, S); normalized=false keeps 0..255.
void normalize_nchw(const Image8& crop, const Preprocessing& pre, bool normalized, float* out);
// Checks the caller's buffer (sizes, stride, pixel limit); throws MALM_ERR_IMAGE / INVALID_ARGUMENT.
void check_rgb8(const Rgb8& in);

}  // namespace malm
