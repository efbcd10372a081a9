#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include "common.h"
#include "encoder.h"

// The wheel ships libexecutorch_threadpool.so but not threadpool.h; these two declarations are
// the part of its public API (extension/threadpool/threadpool.h) used to set the thread count.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace malm {
namespace {

using executorch::extension::Module;
using executorch::runtime::Error;

class ExecuTorchEncoder : public Encoder {
 public:
  explicit ExecuTorchEncoder(const std::string& path)
      : path_(path), module_(path, Module::LoadMode::Mmap) {
    Error err = module_.load_forward();
    if (err != Error::Ok) {
      fail(MALM_ERR_ENCODER, path + ": executorch cannot load method 'forward' (error " +
                                 std::to_string(int(err)) + ")");
    }
  }

  std::vector<float> run(std::vector<float>& pixels, int size) override {
    auto tensor = executorch::extension::from_blob(pixels.data(), {1, 3, size, size});
    auto result = module_.forward(tensor);
    if (!result.ok()) {
      fail(MALM_ERR_ENCODER, path_ + ": executorch forward failed (error " + std::to_string(int(result.error())) + ")");
    }
    if (result->empty() || !result->at(0).isTensor()) fail(MALM_ERR_ENCODER, path_ + ": output 0 is not a tensor");
    const auto& out = result->at(0).toTensor();
    if (out.scalar_type() != executorch::aten::ScalarType::Float) fail(MALM_ERR_ENCODER, path_ + ": output is not float32");
    const float* data = out.const_data_ptr<float>();
    return std::vector<float>(data, data + out.numel());
  }

 private:
  std::string path_;
  Module module_;
};

}  // namespace

bool encoder_available() { return true; }

std::unique_ptr<Encoder> load_encoder(const std::string& path, int threads) {
  if (threads > 0) {
    auto* pool = executorch::extension::threadpool::get_threadpool();
    if (pool && pool->get_thread_count() != size_t(threads)) pool->_unsafe_reset_threadpool(uint32_t(threads));
  }
  return std::make_unique<ExecuTorchEncoder>(path);
}

}  // namespace malm
