// Internal error type: thrown inside the library, caught at the C ABI (api.cc) and turned into a
// malm_status plus malm_last_error(). Never crosses extern "C".
#pragma once

#include <stdexcept>
#include <string>

#include "malm_edge.h"

namespace malm {

class Error : public std::runtime_error {
 public:
  Error(malm_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  malm_status status() const { return status_; }

 private:
  malm_status status_;
};

[[noreturn]] inline void fail(malm_status status, const std::string& message) {
  throw Error(status, message);
}

}  // namespace malm
