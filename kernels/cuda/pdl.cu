// The process-wide switch of kernels/cuda/pdl.h.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/pdl.h"

namespace troupe::kernels::cuda {
namespace {
std::atomic<bool>& pdl_flag() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("TROUPE_PDL");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }()};
  return on;
}
}  // namespace

bool pdl_enabled() { return pdl_flag().load(std::memory_order_relaxed); }
void set_pdl_enabled(bool on) { pdl_flag().store(on, std::memory_order_relaxed); }

}  // namespace troupe::kernels::cuda
