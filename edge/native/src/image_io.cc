#include "image_io.h"

#include <png.h>
#include <setjmp.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

extern "C" {
#include <jpeglib.h>
#include <jerror.h>
}

#include "common.h"

namespace malm {
namespace {

[[noreturn]] void image_error(const std::string& name, const std::string& why) {
  fail(MALM_ERR_IMAGE, name + ": " + why);
}

void check_size(const std::string& name, uint64_t w, uint64_t h, int64_t max_pixels) {
  if (w == 0 || h == 0) image_error(name, "empty image (" + std::to_string(w) + "x" + std::to_string(h) + ")");
  if (w > 1u << 20 || h > 1u << 20 || int64_t(w * h) > max_pixels) {
    image_error(name, std::to_string(w) + "x" + std::to_string(h) + " = " + std::to_string(w * h) +
                          " pixels exceeds the limit of " + std::to_string(max_pixels) + " (decompression bomb?)");
  }
}

// ---------------------------------------------------------------------------------------- JPEG

struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

void jpeg_message(j_common_ptr cinfo, int level) {
  // PIL refuses a truncated JPEG ("image file is truncated"); libjpeg only warns and pads.
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_exit(cinfo);
}

uint16_t read16(const uint8_t* p, bool le) { return le ? uint16_t(p[0] | p[1] << 8) : uint16_t(p[0] << 8 | p[1]); }
uint32_t read32(const uint8_t* p, bool le) {
  return le ? uint32_t(p[0] | p[1] << 8 | p[2] << 16 | uint32_t(p[3]) << 24)
            : uint32_t(uint32_t(p[0]) << 24 | p[1] << 16 | p[2] << 8 | p[3]);
}

// Everything touched after setjmp lives here (no C++ destructors are skipped by longjmp).
struct JpegState {
  jpeg_decompress_struct cinfo;
  JpegError err;
  int orientation = 1;
};

void decode_jpeg_into(JpegState& s, const uint8_t* data, size_t size, Image8& out, int64_t max_pixels,
                      std::string& error) {
  s.cinfo.err = jpeg_std_error(&s.err.mgr);
  s.err.mgr.error_exit = jpeg_exit;
  s.err.mgr.emit_message = jpeg_message;
  if (setjmp(s.err.jump)) {
    error = std::string("truncated or corrupt image data: ") + s.err.message;
    jpeg_destroy_decompress(&s.cinfo);
    return;
  }
  jpeg_create_decompress(&s.cinfo);
  jpeg_mem_src(&s.cinfo, data, static_cast<unsigned long>(size));
  jpeg_save_markers(&s.cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&s.cinfo, TRUE);
  for (jpeg_saved_marker_ptr m = s.cinfo.marker_list; m; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      s.orientation = exif_orientation(m->data + 6, m->data_length - 6);
      break;
    }
  }
  uint64_t w = s.cinfo.image_width, h = s.cinfo.image_height;
  if (w == 0 || h == 0 || w > 1u << 20 || h > 1u << 20 || int64_t(w * h) > max_pixels) {
    error = "size";
    jpeg_destroy_decompress(&s.cinfo);
    return;
  }
  if (s.cinfo.jpeg_color_space == JCS_CMYK || s.cinfo.jpeg_color_space == JCS_YCCK) {
    error = "CMYK JPEGs are not supported by the native decoder";
    jpeg_destroy_decompress(&s.cinfo);
    return;
  }
  s.cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&s.cinfo);
  out.width = int(s.cinfo.output_width);
  out.height = int(s.cinfo.output_height);
  out.pixels.resize(size_t(out.width) * out.height * 3);
  while (s.cinfo.output_scanline < s.cinfo.output_height) {
    JSAMPROW row = out.pixels.data() + size_t(s.cinfo.output_scanline) * out.width * 3;
    jpeg_read_scanlines(&s.cinfo, &row, 1);
  }
  jpeg_finish_decompress(&s.cinfo);
  jpeg_destroy_decompress(&s.cinfo);
}

Image8 decode_jpeg(const uint8_t* data, size_t size, const std::string& name, int64_t max_pixels) {
  auto state = std::make_unique<JpegState>();
  Image8 out;
  std::string error;
  decode_jpeg_into(*state, data, size, out, max_pixels, error);
  if (error == "size") {
    check_size(name, state->cinfo.image_width, state->cinfo.image_height, max_pixels);
    image_error(name, "image too large");
  }
  if (!error.empty()) image_error(name, error);
  return apply_orientation(std::move(out), state->orientation);
}

// ----------------------------------------------------------------------------------------- PNG

struct PngReader {
  const uint8_t* data;
  size_t size, offset;
};

void png_read_memory(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (n > r->size - r->offset) png_error(png, "image file is truncated");
  std::memcpy(out, r->data + r->offset, n);
  r->offset += n;
}

void png_fail(png_structp png, png_const_charp message) {
  auto* text = static_cast<std::string*>(png_get_error_ptr(png));
  *text = message;
  png_longjmp(png, 1);
}

void png_warn(png_structp, png_const_charp) {}

// PIL alpha_composite of RGBA over opaque white (AlphaComposite.c, PRECISION_BITS 7).
uint8_t over_white(uint32_t c, uint32_t a) {
  uint32_t coef1 = a * 128, coef2 = 255 * 128 - coef1;
  uint32_t t = c * coef1 + 255 * coef2 + (0x80 << 7);
  return uint8_t((((t >> 8) + t) >> 8) >> 7);
}

struct PngState {
  png_structp png = nullptr;
  png_infop info = nullptr;
  std::string error;
  int orientation = 1;
  png_uint_32 w = 0, h = 0;
  int bit_depth = 0, color = 0;
  std::vector<png_bytep> rows;
  std::vector<uint8_t> raw;  // decoded rows, `channels` samples of 8 or 16 bits
  int channels = 0, bytes = 1;
};

void decode_png_into(PngState& s, PngReader& reader, int64_t max_pixels) {
  s.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s.error, png_fail, png_warn);
  if (!s.png) {
    s.error = "out of memory";
    return;
  }
  s.info = png_create_info_struct(s.png);
  if (!s.info || setjmp(png_jmpbuf(s.png))) {
    if (s.error.empty()) s.error = "corrupt image data";
    return;
  }
  png_set_read_fn(s.png, &reader, png_read_memory);
  png_set_user_limits(s.png, 1u << 20, 1u << 20);
  png_read_info(s.png, s.info);
  png_get_IHDR(s.png, s.info, &s.w, &s.h, &s.bit_depth, &s.color, nullptr, nullptr, nullptr);
  if (s.w == 0 || s.h == 0 || int64_t(uint64_t(s.w) * s.h) > max_pixels) {
    s.error = "size";
    return;
  }
  bool grey16 = (s.color == PNG_COLOR_TYPE_GRAY || s.color == PNG_COLOR_TYPE_GRAY_ALPHA) && s.bit_depth == 16;
  if (s.color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(s.png);
  if (s.color == PNG_COLOR_TYPE_GRAY && s.bit_depth < 8) png_set_expand_gray_1_2_4_to_8(s.png);
  if (png_get_valid(s.png, s.info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(s.png);
  if (s.bit_depth == 16 && !grey16) png_set_strip_16(s.png);  // PIL keeps the high byte (RGB;16B)
  png_set_interlace_handling(s.png);
  png_read_update_info(s.png, s.info);
  s.channels = png_get_channels(s.png, s.info);
  s.bytes = png_get_bit_depth(s.png, s.info) == 16 ? 2 : 1;
  size_t row_bytes = png_get_rowbytes(s.png, s.info);
  s.raw.resize(row_bytes * s.h);
  s.rows.resize(s.h);
  for (png_uint_32 y = 0; y < s.h; ++y) s.rows[y] = s.raw.data() + y * row_bytes;
  png_read_image(s.png, s.rows.data());
  png_read_end(s.png, nullptr);
#ifdef PNG_eXIf_SUPPORTED
  png_uint_32 exif_size = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(s.png, s.info, &exif_size, &exif) && exif) s.orientation = exif_orientation(exif, exif_size);
#endif
}

Image8 decode_png(const uint8_t* data, size_t size, const std::string& name, int64_t max_pixels) {
  PngReader reader{data, size, 0};
  auto s = std::make_unique<PngState>();
  decode_png_into(*s, reader, max_pixels);
  png_destroy_read_struct(&s->png, &s->info, nullptr);
  if (s->error == "size") check_size(name, s->w, s->h, max_pixels);
  if (!s->error.empty()) image_error(name, "truncated or corrupt image data: " + s->error);
  Image8 out{int(s->w), int(s->h), std::vector<uint8_t>(size_t(s->w) * s->h * 3)};
  const int ch = s->channels;
  const bool alpha = ch == 2 || ch == 4;
  for (size_t i = 0; i < size_t(s->w) * s->h; ++i) {
    uint32_t v[4] = {0, 0, 0, 0};
    for (int c = 0; c < ch; ++c) {
      const uint8_t* p = s->raw.data() + (i * ch + c) * s->bytes;
      v[c] = s->bytes == 2 ? uint32_t(std::nearbyint((p[0] << 8 | p[1]) / 257.0)) : p[0];  // I;16 -> L
    }
    uint32_t rgb[3] = {v[0], ch >= 3 ? v[1] : v[0], ch >= 3 ? v[2] : v[0]};
    uint32_t a = alpha ? v[ch - 1] : 255;
    for (int c = 0; c < 3; ++c) out.pixels[i * 3 + c] = alpha ? over_white(rgb[c], a) : uint8_t(rgb[c]);
  }
  return apply_orientation(std::move(out), s->orientation);
}

}  // namespace

int exif_orientation(const uint8_t* tiff, size_t size) {
  if (size < 8) return 1;
  bool le;
  if (std::memcmp(tiff, "II*\0", 4) == 0) le = true;
  else if (std::memcmp(tiff, "MM\0*", 4) == 0) le = false;
  else return 1;
  uint32_t ifd = read32(tiff + 4, le);
  if (ifd > size - 2 || size < 2) return 1;
  uint16_t count = read16(tiff + ifd, le);
  for (uint32_t i = 0; i < count; ++i) {
    size_t entry = size_t(ifd) + 2 + size_t(i) * 12;
    if (entry + 12 > size) return 1;
    if (read16(tiff + entry, le) == 0x0112 && read16(tiff + entry + 2, le) == 3) {
      int value = read16(tiff + entry + 8, le);
      return value >= 1 && value <= 8 ? value : 1;
    }
  }
  return 1;
}

Image8 apply_orientation(Image8 in, int orientation) {
  if (orientation <= 1 || orientation > 8) return in;
  const int W = in.width, H = in.height;
  const bool swap = orientation >= 5;
  Image8 out{swap ? H : W, swap ? W : H, std::vector<uint8_t>(in.pixels.size())};
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2: sx = W - 1 - x; break;                   // FLIP_LEFT_RIGHT
        case 3: sx = W - 1 - x; sy = H - 1 - y; break;   // ROTATE_180
        case 4: sy = H - 1 - y; break;                   // FLIP_TOP_BOTTOM
        case 5: sx = y; sy = x; break;                   // TRANSPOSE
        case 6: sx = y; sy = H - 1 - x; break;           // ROTATE_270
        case 7: sx = W - 1 - y; sy = H - 1 - x; break;   // TRANSVERSE
        case 8: sx = W - 1 - y; sy = x; break;           // ROTATE_90
      }
      std::memcpy(&out.pixels[(size_t(y) * out.width + x) * 3], &in.pixels[(size_t(sy) * W + sx) * 3], 3);
    }
  }
  return out;
}

Image8 decode_image_memory(const uint8_t* data, size_t size, const std::string& name, int64_t max_pixels) {
  if (size == 0) image_error(name, "not a readable image file (empty file)");
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return decode_jpeg(data, size, name, max_pixels);
  if (size >= 8 && png_sig_cmp(data, 0, 8) == 0) return decode_png(data, size, name, max_pixels);
  image_error(name, "not a readable image file (the native CLI reads JPEG and PNG)");
}

Image8 decode_image_file(const std::string& path, int64_t max_pixels) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) image_error(path, "file not found");
  std::streamoff size = in.tellg();
  if (size < 0) image_error(path, "cannot read the file");
  if (size > (int64_t(1) << 30)) image_error(path, "file larger than 1 GiB");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), size)) image_error(path, "cannot read the file");
  return decode_image_memory(bytes.data(), bytes.size(), path, max_pixels);
}

}  // namespace malm
