// JNI glue for dev.malmedge.MalmEdge (the Android shell) over the C API in malm_edge.h, and nothing
// else: every native method is one C call plus the conversion of its arguments and results.
//
// - Errors: a failed malm_status becomes a dev.malmedge.MalmEdgeException(code, malm_last_error()).
//   Bad input from Java (null arrays, short pixel buffers, negative k) reaches the C API's checks or
//   ours, and no C++ exception leaves a native method (guard); nothing aborts the VM.
// - Strings cross as UTF-16 (NewString / GetStringRegion) converted here from and to UTF-8, never as
//   JNI's "modified UTF-8" (NewStringUTF), which encodes characters beyond the BMP differently and
//   which Android's CheckJNI aborts on when handed standard 4-byte UTF-8.
// - Each result is built in its own local frame (Push/PopLocalFrame), so k results never fill the
//   caller's local reference table (ART aborts past its limit).
// - Methods are registered in JNI_OnLoad (a renamed Java method fails loudly at load time) and the
//   classes this file constructs are cached there as global references (FindClass from a native
//   thread would see the system class loader on Android).
#include <jni.h>

#include <cstdint>
#include <memory>
#include <new>
#include <string>

#include "malm_edge.h"

namespace {

jclass g_exception_class;    // dev.malmedge.MalmEdgeException
jmethodID g_exception_init;  // (int code, String message)
jclass g_result_class;       // dev.malmedge.SearchResult
jmethodID g_result_init;     // (long row, float score, String id, title, ingredientsJson, instructionsJson)

constexpr char16_t kReplacement = 0xFFFD;

// Standard UTF-8 -> UTF-16; an invalid or overlong sequence becomes U+FFFD, one per bad byte.
std::u16string utf16_from_utf8(const char* text) {
  std::u16string out;
  const auto* s = reinterpret_cast<const unsigned char*>(text);
  for (size_t i = 0; s[i] != 0;) {
    unsigned char c = s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
    bool ok = n > 0;
    for (size_t j = 1; ok && j < n; ++j) {
      ok = (s[i + j] & 0xC0) == 0x80;  // also stops at the terminating NUL
      cp = (cp << 6) | (s[i + j] & 0x3F);
    }
    static const uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= kMin[n] && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
    if (!ok) {
      out += kReplacement;
      i += 1;
    } else if (cp >= 0x10000) {
      out += char16_t(0xD800 + ((cp - 0x10000) >> 10));
      out += char16_t(0xDC00 + ((cp - 0x10000) & 0x3FF));
      i += n;
    } else {
      out += char16_t(cp);
      i += n;
    }
  }
  return out;
}

// UTF-16 -> standard UTF-8; a lone surrogate becomes U+FFFD.
std::string utf8_from_utf16(const std::u16string& s) {
  std::string out;
  auto put = [&out](uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  };
  for (size_t i = 0; i < s.size(); ++i) {
    uint32_t c = s[i];
    bool high = c >= 0xD800 && c <= 0xDBFF, low = c >= 0xDC00 && c <= 0xDFFF;
    if (high && i + 1 < s.size() && s[i + 1] >= 0xDC00 && s[i + 1] <= 0xDFFF) {
      put(0x10000 + ((c - 0xD800) << 10) + (s[i + 1] - 0xDC00));
      ++i;
    } else {
      put(high || low ? kReplacement : c);
    }
  }
  return out;
}

// A new java.lang.String from C UTF-8; nullptr with an OutOfMemoryError pending.
jstring new_string(JNIEnv* env, const char* utf8) {
  std::u16string text = utf16_from_utf8(utf8 ? utf8 : "");
  return env->NewString(reinterpret_cast<const jchar*>(text.data()), jsize(text.size()));
}

void throw_malm(JNIEnv* env, int status, const char* message) {
  jstring text = new_string(env, message);
  if (text == nullptr) return;  // OutOfMemoryError pending
  jobject error = env->NewObject(g_exception_class, g_exception_init, jint(status), text);
  env->DeleteLocalRef(text);
  if (error != nullptr) {
    env->Throw(static_cast<jthrowable>(error));
    env->DeleteLocalRef(error);
  }
}

// True on MALM_OK; otherwise throws the status with malm_last_error() and returns false.
bool ok(JNIEnv* env, malm_status status) {
  if (status == MALM_OK) return true;
  throw_malm(env, status, malm_last_error());
  return false;
}

// A Java String argument as UTF-8 for the C API. `present` is false for a null String (passed on
// as NULL, for the C API to judge); returns false with an exception pending when it cannot be used.
struct Utf8Arg {
  std::string text;
  bool present = false;
  const char* c_str() const { return present ? text.c_str() : nullptr; }
};

bool read_string(JNIEnv* env, jstring value, const char* name, Utf8Arg* out) {
  if (value == nullptr) return true;
  std::u16string utf16(size_t(env->GetStringLength(value)), u'\0');
  env->GetStringRegion(value, 0, jsize(utf16.size()), reinterpret_cast<jchar*>(&utf16[0]));
  if (env->ExceptionCheck()) return false;
  if (utf16.find(u'\0') != std::u16string::npos) {  // C would silently cut the string there
    throw_malm(env, MALM_ERR_INVALID_ARGUMENT, (std::string(name) + " contains a NUL character").c_str());
    return false;
  }
  out->text = utf8_from_utf16(utf16);
  out->present = true;
  return true;
}

// Elements of a primitive Java array for the length of one call, released without copying back.
template <typename Array, typename Element>
class Pinned {
 public:
  using Get = Element* (JNIEnv::*)(Array, jboolean*);
  using Release = void (JNIEnv::*)(Array, Element*, jint);
  Pinned(JNIEnv* env, Array array, Get get, Release release) : env_(env), array_(array), release_(release) {
    if (array != nullptr) {
      length_ = env->GetArrayLength(array);
      data_ = (env->*get)(array, nullptr);  // nullptr: OutOfMemoryError pending
    }
  }
  ~Pinned() {
    if (data_ != nullptr) (env_->*release_)(array_, data_, JNI_ABORT);
  }
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;
  // False when the array was non-null but its elements could not be had (exception pending).
  bool usable() const { return array_ == nullptr || data_ != nullptr; }
  Element* data() const { return data_; }
  jsize length() const { return length_; }

 private:
  JNIEnv* env_;
  Array array_;
  Release release_;
  Element* data_ = nullptr;
  jsize length_ = 0;
};

using PinnedBytes = Pinned<jbyteArray, jbyte>;
using PinnedFloats = Pinned<jfloatArray, jfloat>;

PinnedBytes pin(JNIEnv* env, jbyteArray a) {
  return PinnedBytes(env, a, &JNIEnv::GetByteArrayElements, &JNIEnv::ReleaseByteArrayElements);
}

// The C API reads height * 3 * width bytes it cannot bound itself; check them against the array.
bool rgb_fits(JNIEnv* env, const PinnedBytes& rgb, jint width, jint height) {
  if (!rgb.usable()) return false;
  if (rgb.data() == nullptr || width <= 0 || height <= 0) return true;  // the C API reports these
  int64_t needed = int64_t(width) * height * 3;
  if (needed <= rgb.length()) return true;
  throw_malm(env, MALM_ERR_INVALID_ARGUMENT,
             ("rgb holds " + std::to_string(rgb.length()) + " bytes, a " + std::to_string(width) + "x" +
              std::to_string(height) + " RGB8 image needs " + std::to_string(needed))
                 .c_str());
  return false;
}

const uint8_t* pixels(const PinnedBytes& rgb) { return reinterpret_cast<const uint8_t*>(rgb.data()); }

malm_engine* engine(jlong handle) { return reinterpret_cast<malm_engine*>(static_cast<intptr_t>(handle)); }

using Results = std::unique_ptr<malm_results, decltype(&malm_results_free)>;

// One SearchResult for result i; nullptr with an exception pending. Its local refs are the caller's.
jobject new_result(JNIEnv* env, const malm_results* results, int i) {
  jstring id = new_string(env, malm_results_id(results, i));
  jstring title = id ? new_string(env, malm_results_title(results, i)) : nullptr;
  jstring ingredients = title ? new_string(env, malm_results_ingredients_json(results, i)) : nullptr;
  jstring instructions = ingredients ? new_string(env, malm_results_instructions_json(results, i)) : nullptr;
  if (instructions == nullptr) return nullptr;
  return env->NewObject(g_result_class, g_result_init, jlong(malm_results_row(results, i)),
                        jfloat(malm_results_score(results, i)), id, title, ingredients, instructions);
}

// malm_results -> SearchResult[]; nullptr with an exception pending on failure. Each result is
// made inside its own local frame, so its five references are freed whatever k is.
jobjectArray to_java(JNIEnv* env, malm_results* raw) {
  Results results(raw, &malm_results_free);
  int count = malm_results_count(results.get());
  jobjectArray array = env->NewObjectArray(count, g_result_class, nullptr);
  if (array == nullptr) return nullptr;
  for (int i = 0; i < count; ++i) {
    if (env->PushLocalFrame(8) != JNI_OK) break;  // OutOfMemoryError pending
    jobject item = new_result(env, results.get(), i);
    if (item != nullptr) env->SetObjectArrayElement(array, i, item);
    env->PopLocalFrame(nullptr);
    if (env->ExceptionCheck()) break;
  }
  if (!env->ExceptionCheck()) return array;
  env->DeleteLocalRef(array);
  return nullptr;
}

// ------------------------------------------------------------------------------- native methods

// Runs a native method's body; a C++ exception from this file (std::bad_alloc building a string)
// becomes a Java error instead of std::terminate, which would abort the app.
template <typename R, typename Body>
R guard(JNIEnv* env, R failed, Body&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    if (!env->ExceptionCheck()) env->ThrowNew(env->FindClass("java/lang/OutOfMemoryError"), "malm_edge_jni");
  } catch (...) {
    if (!env->ExceptionCheck()) throw_malm(env, MALM_ERR_INTERNAL, "internal error in malm_edge_jni");
  }
  return failed;
}

// Row stride of a tight RGB8 image; 0 (which the C API refuses) where 3 * width does not fit.
int stride(jint width) { return width > 0 && width <= INT32_MAX / 3 ? width * 3 : 0; }

jlong native_open(JNIEnv* env, jclass, jstring bundle_dir, jboolean verify_checksums, jboolean load_encoder,
                  jint threads, jstring encoder, jstring trusted_public_key) {
  return guard(env, jlong(0), [&]() -> jlong {
    Utf8Arg dir, encoder_name, key;
    if (!read_string(env, bundle_dir, "bundleDir", &dir) || !read_string(env, encoder, "encoder", &encoder_name) ||
        !read_string(env, trusted_public_key, "trustedPublicKey", &key)) {
      return 0;
    }
    malm_open_options options = malm_default_options();
    options.verify_checksums = verify_checksums ? 1 : 0;
    options.load_encoder = load_encoder ? 1 : 0;
    options.threads = threads;
    options.encoder = encoder_name.c_str();
    options.trusted_public_key = key.c_str();
    malm_engine* opened = nullptr;
    if (!ok(env, malm_open(dir.c_str(), &options, &opened))) return 0;
    return static_cast<jlong>(reinterpret_cast<intptr_t>(opened));
  });
}

void native_verify_bundle(JNIEnv* env, jclass, jstring bundle_dir, jboolean verify_checksums,
                          jstring trusted_public_key) {
  guard(env, 0, [&] {
    Utf8Arg dir, key;
    if (read_string(env, bundle_dir, "bundleDir", &dir) &&
        read_string(env, trusted_public_key, "trustedPublicKey", &key)) {
      ok(env, malm_verify_bundle_signed(dir.c_str(), verify_checksums, key.c_str()));
    }
    return 0;
  });
}

jstring native_public_key_id(JNIEnv* env, jclass, jstring public_key_path) {
  return guard(env, jstring(nullptr), [&]() -> jstring {
    Utf8Arg path;
    char id[32] = {0};
    if (!read_string(env, public_key_path, "publicKeyPath", &path)) return nullptr;
    if (!ok(env, malm_public_key_id(path.c_str(), id, sizeof(id)))) return nullptr;
    return new_string(env, id);
  });
}

void native_close(JNIEnv*, jclass, jlong handle) { malm_close(engine(handle)); }

jstring native_version(JNIEnv* env, jclass) {
  return guard(env, jstring(nullptr), [&] { return new_string(env, malm_version()); });
}

jint native_embedding_dim(JNIEnv*, jclass, jlong handle) { return malm_embedding_dim(engine(handle)); }

jint native_input_size(JNIEnv*, jclass, jlong handle) { return malm_input_size(engine(handle)); }

jlong native_table_rows(JNIEnv*, jclass, jlong handle) { return malm_table_rows(engine(handle)); }

jstring native_encoder_name(JNIEnv* env, jclass, jlong handle) {
  return guard(env, jstring(nullptr), [&] { return new_string(env, malm_encoder_name(engine(handle))); });
}

jfloatArray native_embed_rgb8(JNIEnv* env, jclass, jlong handle, jbyteArray rgb, jint width, jint height) {
  return guard(env, jfloatArray(nullptr), [&]() -> jfloatArray {
    int dim = malm_embedding_dim(engine(handle));
    std::unique_ptr<float[]> embedding(new float[size_t(dim > 0 ? dim : 1)]);
    {
      PinnedBytes pixels_in = pin(env, rgb);
      if (!rgb_fits(env, pixels_in, width, height)) return nullptr;
      if (!ok(env, malm_embed_rgb8(engine(handle), pixels(pixels_in), width, height, stride(width),
                                   embedding.get(), size_t(dim)))) {
        return nullptr;
      }
    }
    jfloatArray out = env->NewFloatArray(dim);
    if (out != nullptr) env->SetFloatArrayRegion(out, 0, dim, embedding.get());
    return out;
  });
}

jobjectArray native_search_embedding(JNIEnv* env, jclass, jlong handle, jfloatArray query, jint k) {
  return guard(env, jobjectArray(nullptr), [&]() -> jobjectArray {
    malm_results* results = nullptr;
    {
      PinnedFloats floats(env, query, &JNIEnv::GetFloatArrayElements, &JNIEnv::ReleaseFloatArrayElements);
      if (!floats.usable()) return nullptr;
      if (!ok(env, malm_search_embedding(engine(handle), floats.data(), size_t(floats.length()), k, &results))) {
        return nullptr;
      }
    }
    return to_java(env, results);
  });
}

jobjectArray native_search_rgb8(JNIEnv* env, jclass, jlong handle, jbyteArray rgb, jint width, jint height, jint k) {
  return guard(env, jobjectArray(nullptr), [&]() -> jobjectArray {
    malm_results* results = nullptr;
    {
      PinnedBytes pixels_in = pin(env, rgb);
      if (!rgb_fits(env, pixels_in, width, height)) return nullptr;
      if (!ok(env, malm_search_rgb8(engine(handle), pixels(pixels_in), width, height, stride(width), k,
                                    &results))) {
        return nullptr;
      }
    }
    return to_java(env, results);
  });
}

jobjectArray native_search_text(JNIEnv* env, jclass, jlong handle, jstring words, jint limit) {
  return guard(env, jobjectArray(nullptr), [&]() -> jobjectArray {
    Utf8Arg text;
    malm_results* results = nullptr;
    if (!read_string(env, words, "words", &text)) return nullptr;
    if (!ok(env, malm_search_text(engine(handle), text.c_str(), limit, &results))) return nullptr;
    return to_java(env, results);
  });
}

#define MALM_NATIVE(name, signature, function) \
  { const_cast<char*>(name), const_cast<char*>(signature), reinterpret_cast<void*>(function) }

const JNINativeMethod kMethods[] = {
    MALM_NATIVE("nativeOpen", "(Ljava/lang/String;ZZILjava/lang/String;Ljava/lang/String;)J", native_open),
    MALM_NATIVE("nativeVerifyBundle", "(Ljava/lang/String;ZLjava/lang/String;)V", native_verify_bundle),
    MALM_NATIVE("nativePublicKeyId", "(Ljava/lang/String;)Ljava/lang/String;", native_public_key_id),
    MALM_NATIVE("nativeClose", "(J)V", native_close),
    MALM_NATIVE("nativeVersion", "()Ljava/lang/String;", native_version),
    MALM_NATIVE("nativeEmbeddingDim", "(J)I", native_embedding_dim),
    MALM_NATIVE("nativeInputSize", "(J)I", native_input_size),
    MALM_NATIVE("nativeTableRows", "(J)J", native_table_rows),
    MALM_NATIVE("nativeEncoderName", "(J)Ljava/lang/String;", native_encoder_name),
    MALM_NATIVE("nativeEmbedRgb8", "(J[BII)[F", native_embed_rgb8),
    MALM_NATIVE("nativeSearchEmbedding", "(J[FI)[Ldev/malmedge/SearchResult;", native_search_embedding),
    MALM_NATIVE("nativeSearchRgb8", "(J[BIII)[Ldev/malmedge/SearchResult;", native_search_rgb8),
    MALM_NATIVE("nativeSearchText", "(JLjava/lang/String;I)[Ldev/malmedge/SearchResult;", native_search_text),
};

jclass global_class(JNIEnv* env, const char* name) {
  jclass local = env->FindClass(name);
  if (local == nullptr) return nullptr;
  auto global = static_cast<jclass>(env->NewGlobalRef(local));
  env->DeleteLocalRef(local);
  return global;
}

}  // namespace

extern "C" JNIEXPORT jint JNI_OnLoad(JavaVM* vm, void*) {
  JNIEnv* env = nullptr;
  if (vm->GetEnv(reinterpret_cast<void**>(&env), JNI_VERSION_1_6) != JNI_OK) return JNI_ERR;
  g_exception_class = global_class(env, "dev/malmedge/MalmEdgeException");
  g_result_class = g_exception_class ? global_class(env, "dev/malmedge/SearchResult") : nullptr;
  if (g_result_class == nullptr) return JNI_ERR;
  g_exception_init = env->GetMethodID(g_exception_class, "<init>", "(ILjava/lang/String;)V");
  g_result_init = g_exception_init ? env->GetMethodID(g_result_class, "<init>",
                                                      "(JFLjava/lang/String;Ljava/lang/String;"
                                                      "Ljava/lang/String;Ljava/lang/String;)V")
                                   : nullptr;
  if (g_result_init == nullptr) return JNI_ERR;
  jclass engine_class = env->FindClass("dev/malmedge/MalmEdge");
  if (engine_class == nullptr) return JNI_ERR;
  jint registered = env->RegisterNatives(engine_class, kMethods, jint(sizeof(kMethods) / sizeof(kMethods[0])));
  env->DeleteLocalRef(engine_class);
  return registered == JNI_OK ? JNI_VERSION_1_6 : JNI_ERR;
}
