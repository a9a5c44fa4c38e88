// The process-wide switches of kernels/cuda/pdl.h.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

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

bool pdl_early_triggers() {
  static const bool on = [] {
    const char* e = std::getenv("TROUPE_EARLY_TRIGGER");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return on;
}

void set_max_dynamic_smem(const void* kernel, int bytes) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int> limit;  // (kernel, device) -> the largest size set
  int dev = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  int& set = limit[{kernel, dev}];  // 0 when new
  if (bytes <= set) return;         // a limit is a ceiling: a smaller launch fits under it
  TROUPE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  set = bytes;
}

bool pdl_trigger_early(int64_t blocks) {
  static const int sms = [] {
    int dev = 0, n = 0;
    TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
    TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return pdl_early_triggers() && blocks < sms;
}

}  // namespace troupe::kernels::cuda
