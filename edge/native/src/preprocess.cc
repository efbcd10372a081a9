// PIL-exact BICUBIC resize (Pillow src/libImaging/Resample.c, 8 bits per channel) + crop + normalise.
#include "preprocess.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common.h"

namespace malm {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Resample.c PRECISION_BITS

double bicubic_filter(double x) {  // Resample.c bicubic_filter, a = -0.5
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;  // (xmin, xcount) per output pixel
  std::vector<int32_t> kk;  // fixed-point weights, ksize per output pixel
};

// precompute_coeffs + normalize_coeffs_8bpc for an input span [0, in_size) -> out_size.
Coeffs precompute(int in_size, int out_size) {
  const double support_base = 2.0;
  double scale = double(in_size) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = support_base * filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.bounds.resize(size_t(out_size) * 2);
  c.kk.assign(size_t(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = (xx + 0.5) * scale;
    double ww = 0.0, ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      double w = bicubic_filter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < c.ksize; ++x) {
      double w = x < xmax ? (ww != 0.0 ? k[x] / ww : k[x]) : 0.0;
      double fixed = w * (1 << kPrecisionBits);
      c.kk[size_t(xx) * c.ksize + x] = int32_t(w < 0 ? -0.5 + fixed : 0.5 + fixed);
    }
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Horizontal pass over rows [y0, y0 + rows) of `in` into a packed image of width out_w.
Image8 resample_horizontal(const Rgb8& in, int y0, int rows, int out_w, const Coeffs& c) {
  Image8 out{out_w, rows, std::vector<uint8_t>(size_t(out_w) * rows * 3)};
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = in.data + size_t(y + y0) * in.stride;
    uint8_t* dst = out.pixels.data() + size_t(y) * out_w * 3;
    for (int xx = 0; xx < out_w; ++xx) {
      int xmin = c.bounds[xx * 2], xmax = c.bounds[xx * 2 + 1];
      const int32_t* k = &c.kk[size_t(xx) * c.ksize];
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < xmax; ++x) {
        const uint8_t* p = src + size_t(x + xmin) * 3;
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      dst[xx * 3] = clip8(s0);
      dst[xx * 3 + 1] = clip8(s1);
      dst[xx * 3 + 2] = clip8(s2);
    }
  }
  return out;
}

// Vertical pass; `c.bounds` already shifted so row 0 of `in` is the first one used.
Image8 resample_vertical(const Rgb8& in, int out_h, const Coeffs& c, int shift) {
  Image8 out{in.width, out_h, std::vector<uint8_t>(size_t(in.width) * out_h * 3)};
  const int row_bytes = in.width * 3;
  for (int yy = 0; yy < out_h; ++yy) {
    int ymin = c.bounds[yy * 2] - shift, ymax = c.bounds[yy * 2 + 1];
    const int32_t* k = &c.kk[size_t(yy) * c.ksize];
    uint8_t* dst = out.pixels.data() + size_t(yy) * row_bytes;
    for (int xx = 0; xx < row_bytes; ++xx) {
      int32_t s = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < ymax; ++y) s += in.data[size_t(y + ymin) * in.stride + xx] * k[y];
      dst[xx] = clip8(s);
    }
  }
  return out;
}

Image8 copy_of(const Rgb8& in) {
  Image8 out{in.width, in.height, std::vector<uint8_t>(size_t(in.width) * in.height * 3)};
  for (int y = 0; y < in.height; ++y) {
    std::copy_n(in.data + size_t(y) * in.stride, size_t(in.width) * 3, out.pixels.data() + size_t(y) * in.width * 3);
  }
  return out;
}

Rgb8 view(const Image8& image) { return {image.pixels.data(), image.width, image.height, image.width * 3}; }

// Python's round() to an int: half to even (int(round(x)) in edge/preprocess.py).
int64_t py_round(double x) { return int64_t(std::nearbyint(x)); }

}  // namespace

void check_rgb8(const Rgb8& in) {
  if (!in.data) fail(MALM_ERR_INVALID_ARGUMENT, "rgb8: NULL pixel buffer");
  if (in.width <= 0 || in.height <= 0) {
    fail(MALM_ERR_IMAGE, "rgb8: empty image (" + std::to_string(in.width) + "x" + std::to_string(in.height) + ")");
  }
  if (int64_t(in.width) * in.height > kMaxPixels) {
    fail(MALM_ERR_IMAGE, "rgb8: " + std::to_string(in.width) + "x" + std::to_string(in.height) +
                             " exceeds the limit of " + std::to_string(kMaxPixels) + " pixels");
  }
  if (in.stride < in.width * 3) fail(MALM_ERR_INVALID_ARGUMENT, "rgb8: stride smaller than 3 * width");
}

Image8 resize_bicubic(const Rgb8& in, int out_w, int out_h) {
  check_rgb8(in);
  if (out_w <= 0 || out_h <= 0 || int64_t(out_w) * out_h > kMaxPixels) {
    fail(MALM_ERR_IMAGE, "rgb8: resize target " + std::to_string(out_w) + "x" + std::to_string(out_h) + " out of range");
  }
  bool need_h = out_w != in.width, need_v = out_h != in.height;
  if (!need_h && !need_v) return copy_of(in);
  Coeffs horiz = precompute(in.width, out_w), vert = precompute(in.height, out_h);
  if (!need_v) return resample_horizontal(in, 0, in.height, out_w, horiz);
  if (!need_h) return resample_vertical(in, out_h, vert, 0);
  int first = vert.bounds[0];  // ImagingResampleInner: only the rows the vertical pass reads
  int last = vert.bounds[out_h * 2 - 2] + vert.bounds[out_h * 2 - 1];
  Image8 temp = resample_horizontal(in, first, last - first, out_w, horiz);
  return resample_vertical(view(temp), out_h, vert, first);
}

Image8 resize_and_crop(const Rgb8& in, int resize_size, int crop_size) {
  check_rgb8(in);
  if (resize_size <= 0 || crop_size <= 0 || crop_size > resize_size) {
    fail(MALM_ERR_INVALID_ARGUMENT, "rgb8: need 0 < crop size <= resize size");
  }
  int64_t new_w, new_h;
  if (in.width <= in.height) {
    new_w = resize_size;
    new_h = py_round(double(in.height) * resize_size / in.width);
  } else {
    new_w = py_round(double(in.width) * resize_size / in.height);
    new_h = resize_size;
  }
  if (new_w > std::numeric_limits<int>::max() / 4 || new_h > std::numeric_limits<int>::max() / 4) {
    fail(MALM_ERR_IMAGE, "rgb8: aspect ratio too extreme to resize");
  }
  Image8 resized = resize_bicubic(in, int(new_w), int(new_h));
  int64_t left = py_round((resized.width - crop_size) / 2.0);
  int64_t top = py_round((resized.height - crop_size) / 2.0);
  Image8 crop{crop_size, crop_size, std::vector<uint8_t>(size_t(crop_size) * crop_size * 3, 0)};
  for (int y = 0; y < crop_size; ++y) {  // PIL pads outside the image with black (never here)
    int64_t sy = top + y;
    if (sy < 0 || sy >= resized.height) continue;
    for (int x = 0; x < crop_size; ++x) {
      int64_t sx = left + x;
      if (sx < 0 || sx >= resized.width) continue;
      const uint8_t* p = &resized.pixels[(size_t(sy) * resized.width + sx) * 3];
      std::copy_n(p, 3, &crop.pixels[(size_t(y) * crop_size + x) * 3]);
    }
  }
  return crop;
}

void normalize_nchw(const Image8& crop, const Preprocessing& pre, bool normalized, float* out) {
  const size_t plane = size_t(crop.width) * crop.height;
  // As numpy in float32: pixel / float32(1 / scale), then (x - mean) / std.
  const float divisor = float(1.0 / pre.scale);
  for (int ch = 0; ch < 3; ++ch) {
    const float mean = float(pre.mean[ch]), std = float(pre.std[ch]);
    for (size_t i = 0; i < plane; ++i) {
      float v = float(crop.pixels[i * 3 + ch]);
      out[ch * plane + i] = normalized ? (v / divisor - mean) / std : v;
    }
  }
}

}  // namespace malm
