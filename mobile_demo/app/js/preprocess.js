// Photo -> encoder input, exactly edge/preprocess.py (the training evaluation transform):
//   1. decode, EXIF orientation, RGB on white; 2. shorter side -> resize_size with PIL's BICUBIC;
//   3. centre crop S x S, left = round((w - S) / 2) (Python's round: half to even);
//   4. / 255; 5. (x - mean) / std; 6. NCHW Float32Array, RGB.
//
// Step 2 re-implements Pillow's resampling (libImaging/Resample.c, 8 bits per channel) bit for bit:
// a separable convolution, horizontal pass then vertical, with the bicubic kernel (a = -0.5) whose
// support is scaled by the downscale factor, coefficients normalised per output pixel, then
// converted to 22-bit fixed point; each pass rounds and clips to 0..255. Canvas smoothing does
// not match PIL, so it is never used for resizing here.

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS; // 1 << 22
const HALF = 2 ** (PRECISION_BITS - 1);
const BICUBIC_SUPPORT = 2.0;
export const DEFAULT_MAX_PIXELS = 64_000_000;

/** Python 3's round(): halves go to the even neighbour. */
export function pyRound(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Pillow's bicubic_filter with a = -0.5. */
function bicubic(x) {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

/**
 * Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis (box = whole input).
 * @returns {{ksize: number, bounds: Int32Array, kk: Int32Array}} bounds: [xmin, count] per output.
 */
export function precomputeCoeffs(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = BICUBIC_SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const weights = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      weights[x] = bicubic((x + xmin - center + 0.5) * ss);
      ww += weights[x];
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0.0 ? weights[x] / ww : weights[x];
      kk[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(sum) {
  const v = Math.floor(sum / ONE); // arithmetic >> 22 (sums stay far inside int32)
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Horizontal pass over rows [yFirst, yFirst + rows) of an interleaved image.
 * @returns {Uint8Array} outW x rows, 3 channels.
 */
function resampleHorizontal(src, srcW, channels, yFirst, rows, outW, coeffs) {
  const { ksize, bounds, kk } = coeffs;
  const out = new Uint8Array(outW * rows * 3);
  for (let y = 0; y < rows; y++) {
    const rowBase = (y + yFirst) * srcW * channels;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2], count = bounds[xx * 2 + 1], k = xx * ksize;
      let s0 = HALF, s1 = HALF, s2 = HALF;
      for (let x = 0; x < count; x++) {
        const p = rowBase + (x + xmin) * channels, w = kk[k + x];
        s0 += src[p] * w;
        s1 += src[p + 1] * w;
        s2 += src[p + 2] * w;
      }
      const o = (y * outW + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return out;
}

/** Vertical pass; `src` is width x ?, 3 channels; bounds are relative to src's first row. */
function resampleVertical(src, width, outH, coeffs, yShift) {
  const { ksize, bounds, kk } = coeffs;
  const out = new Uint8Array(width * outH * 3);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2] - yShift, count = bounds[yy * 2 + 1], k = yy * ksize;
    for (let xx = 0; xx < width; xx++) {
      let s0 = HALF, s1 = HALF, s2 = HALF;
      for (let y = 0; y < count; y++) {
        const p = ((y + ymin) * width + xx) * 3, w = kk[k + y];
        s0 += src[p] * w;
        s1 += src[p + 1] * w;
        s2 += src[p + 2] * w;
      }
      const o = (yy * width + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return out;
}

function toRGB(src, width, height, channels) {
  if (channels === 3) return src;
  const out = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; j < out.length; i += channels, j += 3) {
    out[j] = src[i];
    out[j + 1] = src[i + 1];
    out[j + 2] = src[i + 2];
  }
  return out;
}

/**
 * PIL's Image.resize((outW, outH), BICUBIC) for an 8-bit RGB(A) image (alpha ignored).
 * @param {Uint8Array|Uint8ClampedArray} src interleaved pixels, `channels` (3 or 4) per pixel.
 * @returns {Uint8Array} outW x outH RGB.
 */
export function resizeBicubic(src, width, height, channels, outW, outH) {
  const needH = outW !== width, needV = outH !== height;
  const vert = precomputeCoeffs(height, outH);
  let image = src, imageChannels = channels, rowsShift = 0;
  if (needH) {
    // Like Pillow, only the rows the vertical pass reads are resampled horizontally.
    const first = vert.bounds[0];
    const last = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1];
    image = resampleHorizontal(src, width, channels, first, last - first, outW, precomputeCoeffs(width, outW));
    imageChannels = 3;
    rowsShift = first;
  }
  if (needV) return resampleVertical(toRGB(image, outW, needH ? image.length / (outW * 3) : height, imageChannels), outW, outH, vert, rowsShift);
  return toRGB(image, outW, outH, imageChannels);
}

/** Size after "shorter side -> size" (edge/preprocess.py resize_shorter_side). */
export function shorterSideSize(width, height, size) {
  return width <= height ? [size, pyRound((height * size) / width)] : [pyRound((width * size) / height), size];
}

/**
 * Steps 2-6 on decoded pixels.
 * @param {Uint8Array|Uint8ClampedArray} pixels interleaved RGB(A), already on white.
 * @param {object} pre the manifest's `preprocessing`.
 * @param {boolean} normalized false: float RGB 0..255 (encoders with pixel_input "rgb_0_255").
 * @returns {Float32Array} (1, 3, S, S) NCHW.
 */
export function preprocessPixels(pixels, width, height, channels, pre, normalized = true) {
  const size = pre.input_size, resize = pre.resize_size ?? pre.input_size;
  const [rw, rh] = shorterSideSize(width, height, resize);
  const resized = resizeBicubic(pixels, width, height, channels, rw, rh); // (rh, rw, 3)
  const left = pyRound((rw - size) / 2.0), top = pyRound((rh - size) / 2.0);
  const out = new Float32Array(3 * size * size);
  const f = Math.fround;
  const divisor = f(1.0 / pre.scale); // 255, as numpy's float32(1 / scale)
  const mean = pre.mean.map(f), std = pre.std.map(f);
  const plane = size * size;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const p = ((y + top) * rw + (x + left)) * 3;
      for (let c = 0; c < 3; c++) {
        // float32 arithmetic step by step, as numpy does: (v / 255 - mean) / std
        const value = normalized ? f(f(f(resized[p + c] / divisor) - mean[c]) / std[c]) : resized[p + c];
        out[c * plane + y * size + x] = value;
      }
    }
  }
  return out;
}

/**
 * Step 1 in the browser: decode with the EXIF orientation applied, no colour management (PIL
 * ignores ICC profiles), composite on white.
 * @param {Blob} blob the photo file.
 * @returns {Promise<{pixels: Uint8ClampedArray, width: number, height: number}>} RGBA on white.
 */
export async function decodePhoto(blob, maxPixels = DEFAULT_MAX_PIXELS) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {
      imageOrientation: "from-image",
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch (err) {
    throw new Error(`${blob.name || "photo"}: not a readable image file (${err.message || err})`);
  }
  const { width, height } = bitmap;
  if (width * height > maxPixels) {
    bitmap.close();
    throw new Error(`${blob.name || "photo"}: ${width}x${height} pixels exceeds the limit of ${maxPixels}`);
  }
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return { pixels: ctx.getImageData(0, 0, width, height).data, width, height };
}
