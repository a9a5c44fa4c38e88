// Error checks for the CUDA kernels and their launchers. Every runtime/cuBLAS call and every launch goes
// through these: a failed launch must stop the program at the launch that failed, not three kernels later.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <sstream>
#include <stdexcept>
#include <string>

namespace troupe::kernels::cuda {

[[noreturn]] inline void raise_cuda(const char* what, const char* detail, const char* file, int line) {
  std::ostringstream os;
  os << file << ":" << line << ": " << what << ": " << detail;
  throw std::runtime_error(os.str());
}

}  // namespace troupe::kernels::cuda

#define TROUPE_CUDA_CHECK(expr)                                                                        \
  do {                                                                                                 \
    const cudaError_t troupe_err_ = (expr);                                                            \
    if (troupe_err_ != cudaSuccess)                                                                    \
      ::troupe::kernels::cuda::raise_cuda(#expr, cudaGetErrorString(troupe_err_), __FILE__, __LINE__); \
  } while (0)

// After a <<<>>> launch: catches bad configurations (too much shared memory, too many threads) at once.
#define TROUPE_CUDA_CHECK_LAUNCH() TROUPE_CUDA_CHECK(cudaGetLastError())

#define TROUPE_CUBLAS_CHECK(expr)                                                                          \
  do {                                                                                                     \
    const cublasStatus_t troupe_st_ = (expr);                                                              \
    if (troupe_st_ != CUBLAS_STATUS_SUCCESS)                                                               \
      ::troupe::kernels::cuda::raise_cuda(#expr, cublasLtGetStatusString(troupe_st_), __FILE__, __LINE__); \
  } while (0)

// Fails loudly on a value the kernels were not compiled for (e.g. head_dim 96).
#define TROUPE_KERNEL_REQUIRE(cond, msg)                                                        \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      std::ostringstream troupe_os_;                                                            \
      troupe_os_ << msg;                                                                        \
      ::troupe::kernels::cuda::raise_cuda(#cond, troupe_os_.str().c_str(), __FILE__, __LINE__); \
    }                                                                                           \
  } while (0)

// Runtime head dim -> compile-time kHeadDim. Unsupported values throw with the list of supported ones.
#define TROUPE_DISPATCH_HEAD_DIM(head_dim, ...)                                                            \
  [&] {                                                                                                    \
    switch (head_dim) {                                                                                    \
      case 32: {                                                                                           \
        constexpr int kHeadDim = 32;                                                                       \
        return __VA_ARGS__();                                                                              \
      }                                                                                                    \
      case 64: {                                                                                           \
        constexpr int kHeadDim = 64;                                                                       \
        return __VA_ARGS__();                                                                              \
      }                                                                                                    \
      case 128: {                                                                                          \
        constexpr int kHeadDim = 128;                                                                      \
        return __VA_ARGS__();                                                                              \
      }                                                                                                    \
      case 256: {                                                                                          \
        constexpr int kHeadDim = 256;                                                                      \
        return __VA_ARGS__();                                                                              \
      }                                                                                                    \
      default:                                                                                             \
        TROUPE_KERNEL_REQUIRE(false, "head_dim " << (head_dim) << " is not supported (32, 64, 128, 256)"); \
    }                                                                                                      \
  }()
