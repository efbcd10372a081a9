/* malm-edge native core: bundle -> photo embedding -> int8 table top-k -> SQLite catalog.
 *
 * A C ABI (no C++ types, no exceptions cross it) for Swift (module.modulemap beside this header)
 * and Kotlin (JNI). Every function returns a malm_status; on failure malm_last_error() gives a
 * message naming the file and what is wrong (thread-local, valid until the next call on the same
 * thread). Nothing here aborts the process on bad input.
 *
 * Threading: one malm_engine may be used by one thread at a time (search calls mutate the
 * encoder's buffers); open one engine per thread, or serialise calls.
 */
#ifndef MALM_EDGE_H
#define MALM_EDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MALM_API __attribute__((visibility("default")))
#else
#define MALM_API
#endif

typedef enum malm_status {
  MALM_OK = 0,
  MALM_ERR_INVALID_ARGUMENT = 1, /* a NULL pointer, a bad size or k from the caller */
  MALM_ERR_BUNDLE = 2,           /* manifest or bundle file malformed, missing or tampered */
  MALM_ERR_IMAGE = 3,            /* image not decodable, truncated, empty or too large */
  MALM_ERR_ENCODER = 4,          /* the .pte cannot be loaded or run by ExecuTorch */
  MALM_ERR_CATALOG = 5,          /* SQLite catalog unreadable or inconsistent */
  MALM_ERR_UNSUPPORTED = 6,      /* built without a component (e.g. no ExecuTorch) */
  MALM_ERR_NO_MEMORY = 7,
  MALM_ERR_INTERNAL = 8,
  MALM_ERR_SIGNATURE = 9         /* a signature was required: manifest.sig missing, malformed, by
                                    another key or not over this manifest; or a bad trusted key */
} malm_status;

typedef struct malm_engine malm_engine;   /* an opened, validated bundle */
typedef struct malm_results malm_results; /* search results; free with malm_results_free */

typedef struct malm_open_options {
  int verify_checksums; /* 1: sha256 of every bundle file before use (default); 0: skip */
  int load_encoder;     /* 1: load the ExecuTorch encoder (default); 0: table + catalog only */
  int threads;          /* encoder threads (XNNPACK pool, process-wide); 0: runtime default */
  const char *encoder;  /* encoder name from the manifest, or NULL: first executorch entry */
  /* Path of a trusted Ed25519 public key (PEM SubjectPublicKeyInfo, `malm-edge keygen`'s KEY.pub),
   * or NULL: the bundle must then carry manifest.sig, a signature by that key over the exact bytes
   * of manifest.json, checked before the manifest is parsed (MALM_ERR_SIGNATURE otherwise). NULL
   * accepts unsigned bundles; a manifest.sig present is then not checked (edge/ does the same). */
  const char *trusted_public_key;
} malm_open_options;

/* Version string of this library, e.g. "0.1.0". */
MALM_API const char *malm_version(void);
/* Message of the last failed call on this thread ("" if none). */
MALM_API const char *malm_last_error(void);
/* Default options (verify checksums, load the encoder, default threads, first .pte, no signature). */
MALM_API malm_open_options malm_default_options(void);

/* Validate a bundle (manifest, files, dims, sizes, sha256) exactly as malm_open does, load nothing. */
MALM_API malm_status malm_verify_bundle(const char *bundle_dir, int verify_checksums);
/* The same, and first require manifest.sig by the trusted public key (a PEM file path; NULL: as
 * malm_verify_bundle). */
MALM_API malm_status malm_verify_bundle_signed(const char *bundle_dir, int verify_checksums,
                                               const char *trusted_public_key);
/* Key id (16 hex digits, as `malm-edge keygen` prints) of a PEM public key file, into out (>= 17 bytes). */
MALM_API malm_status malm_public_key_id(const char *public_key_path, char *out, size_t out_len);
/* Validate then open a bundle: memory-map the table, open the catalog, load the encoder. */
MALM_API malm_status malm_open(const char *bundle_dir, const malm_open_options *options,
                               malm_engine **out_engine);
MALM_API void malm_close(malm_engine *engine);

MALM_API int malm_embedding_dim(const malm_engine *engine);
MALM_API int malm_input_size(const malm_engine *engine);
MALM_API int64_t malm_table_rows(const malm_engine *engine);
/* Name of the loaded encoder ("" when none is loaded). */
MALM_API const char *malm_encoder_name(const malm_engine *engine);

/* Resize (shorter side, PIL BICUBIC) and centre-crop an RGB8 image to out_size x out_size RGB8.
 * rgb: height rows of `stride` bytes (>= 3 * width), interleaved R,G,B. out: out_size^2 * 3. */
MALM_API malm_status malm_resize_crop_rgb8(const uint8_t *rgb, int width, int height, int stride,
                                           int resize_size, int out_size, uint8_t *out);
/* The manifest's whole preprocessing: RGB8 -> float32 (1, 3, S, S) NCHW in `out` (3*S*S floats;
 * normalised with mean/std, or 0..255 for an encoder whose pixel_input is "rgb_0_255"). */
MALM_API malm_status malm_preprocess_rgb8(const malm_engine *engine, const uint8_t *rgb, int width,
                                          int height, int stride, float *out, size_t out_len);
/* RGB8 photo -> L2-normalised embedding (dim floats in `out`). */
MALM_API malm_status malm_embed_rgb8(malm_engine *engine, const uint8_t *rgb, int width, int height,
                                     int stride, float *out, size_t out_len);
/* Top-k table rows for a query embedding (dim floats), with their catalog rows. */
MALM_API malm_status malm_search_embedding(malm_engine *engine, const float *query, size_t dim,
                                           int k, malm_results **out_results);
/* Photo -> top-k recipes (embed + search + catalog). */
MALM_API malm_status malm_search_rgb8(malm_engine *engine, const uint8_t *rgb, int width,
                                      int height, int stride, int k, malm_results **out_results);
/* Recipes whose title or ingredients hold every word of `words` (FTS5, bm25 then row order).
 * Scores are 0 for text results. */
MALM_API malm_status malm_search_text(malm_engine *engine, const char *words, int limit,
                                      malm_results **out_results);

MALM_API int malm_results_count(const malm_results *results);
MALM_API int64_t malm_results_row(const malm_results *results, int i);
MALM_API float malm_results_score(const malm_results *results, int i);
/* UTF-8 strings owned by `results` (valid until malm_results_free); "" when out of range. */
MALM_API const char *malm_results_id(const malm_results *results, int i);
MALM_API const char *malm_results_title(const malm_results *results, int i);
MALM_API const char *malm_results_ingredients_json(const malm_results *results, int i);
MALM_API const char *malm_results_instructions_json(const malm_results *results, int i);
MALM_API void malm_results_free(malm_results *results);

#ifdef __cplusplus
}
#endif
#endif /* MALM_EDGE_H */
