// Helpers for the GPU kernel tests: device detection (skip with a reason when there is none), RAII device
// buffers, bf16 conversions and random inputs. Inputs are always fresh random values, never zeros, and
// outputs are poisoned with NaN before a kernel runs so an unwritten element fails the comparison.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/check.h"

namespace troupe::gpu_test {

// Empty when a device is usable, else why not.
inline std::string no_device_reason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
  if (n == 0) return "no CUDA device";
  return std::string();
}

#define TROUPE_SKIP_WITHOUT_GPU()                                              \
  do {                                                                         \
    const std::string troupe_reason_ = ::troupe::gpu_test::no_device_reason(); \
    if (!troupe_reason_.empty()) GTEST_SKIP() << troupe_reason_;               \
  } while (0)

template <typename T>
class device_buffer {
 public:
  device_buffer() = default;
  explicit device_buffer(size_t n) : n_(n) {
    TROUPE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), std::max<size_t>(1, n) * sizeof(T)));
  }
  explicit device_buffer(const std::vector<T>& host) : device_buffer(host.size()) { upload(host); }
  ~device_buffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr; }

  void upload(const std::vector<T>& host) {
    TROUPE_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    TROUPE_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  // Fills with NaN (0xFF bytes are NaN in bf16 and fp32).
  void poison() { TROUPE_CUDA_CHECK(cudaMemset(ptr_, 0xFF, n_ * sizeof(T))); }
  T* get() const { return ptr_; }
  size_t size() const { return n_; }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

using bf16 = __nv_bfloat16;

inline float to_float(bf16 v) { return __bfloat162float(v); }
inline bf16 to_bf16(float v) { return __float2bfloat16(v); }
inline float round_bf16(float v) { return to_float(to_bf16(v)); }

// Random bf16 values in N(0, stddev) and their exact fp32 values (the CPU reference's inputs).
struct bf16_tensor {
  std::vector<bf16> dev;
  std::vector<float> ref;
};
inline bf16_tensor random_bf16(std::mt19937& rng, size_t n, float stddev = 1.0f, float mean = 0.0f) {
  std::normal_distribution<float> dist(mean, stddev);
  bf16_tensor t;
  t.dev.resize(n);
  t.ref.resize(n);
  for (size_t i = 0; i < n; ++i) {
    t.dev[i] = to_bf16(dist(rng));
    t.ref[i] = to_float(t.dev[i]);
  }
  return t;
}

inline std::vector<float> to_float(const std::vector<bf16>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = to_float(v[i]);
  return f;
}

// Fails on any NaN, any |got - ref| > atol + rtol * |ref|, or a relative L2 error over rel_l2.
inline void expect_close(const std::vector<float>& got, const std::vector<float>& ref, float atol, float rtol,
                         double rel_l2, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double num = 0, den = 0;
  size_t bad = 0, first_bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
    if (!(std::fabs(d) <= atol + rtol * std::fabs(ref[i]))) {  // negated so NaN counts as bad
      if (bad++ == 0) first_bad = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements off; first at " << first_bad
                     << ": got " << got[first_bad] << " want " << ref[first_bad];
  const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  EXPECT_LE(rel, rel_l2) << what << ": relative L2 error";
}

}  // namespace troupe::gpu_test
