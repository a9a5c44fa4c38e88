// Hopper (sm_90a) building blocks shared by the wgmma kernels (flash_prefill_sm90.cu, gemm_sm90.cu):
// shared-memory matrix descriptors, the wgmma fence/commit/wait trio, mbarriers and TMA tile loads.
// The device helpers compile only for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL). A build for other architectures
// still compiles every kernel, whose body there is TROUPE_SM90_UNAVAILABLE_BODY; the host side tells the two
// apart with sm90_image_present and never launches the fallback.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/check.h"

// A kernel body for builds without sm_90a: it declares static shared memory, which the real kernels (dynamic
// shared memory only) do not, and traps if it is ever launched.
#define TROUPE_SM90_UNAVAILABLE_BODY()        \
  do {                                        \
    volatile __shared__ int sm90_unavailable; \
    sm90_unavailable = 1;                     \
    __syncthreads();                          \
    if (sm90_unavailable != 0) __trap();      \
  } while (0)

namespace troupe::kernels::cuda::detail::sm90 {

// True when the current device is compute capability 9.0 and `kernel` (a Hopper kernel whose fallback body
// is TROUPE_SM90_UNAVAILABLE_BODY) has its sm_90a image in this build. Callers cache the answer.
inline bool sm90_image_present(const void* kernel) {
  int dev = 0, major = 0, minor = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  if (major != 9 || minor != 0) return false;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
    (void)cudaGetLastError();  // no image for this device: not an error of the caller's
    return false;
  }
  return attr.sharedSizeBytes == 0;  // the fallback has static shared memory, the real kernel none
}

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Matrix descriptor of a shared-memory wgmma operand with the 128-byte swizzle.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t leading_bytes, uint32_t stride_bytes) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | static_cast<uint64_t>(leading_bytes >> 4) << 16 |
         static_cast<uint64_t>(stride_bytes >> 4) << 32 | uint64_t{1} << 62;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// cp.async writes shared memory through the generic proxy; wgmma reads it through the async proxy.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Pins register values at this point of the instruction stream: the compiler may not move their producers
// below, nor their consumers above, the neighbouring wgmma fence/wait (CUTLASS's warpgroup_fence_operand).
template <int N>
__device__ __forceinline__ void reg_fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N, int M>
__device__ __forceinline__ void reg_fence(uint32_t (&r)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < M; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// The 64 accumulator operands d[o] .. d[o + 63] of a wgmma asm statement (m64n128 takes one run, m64n256
// two).
#define TROUPE_WGMMA_ACC64(d, o)                                                                     \
  "+f"(d[(o) + 0]), "+f"(d[(o) + 1]), "+f"(d[(o) + 2]), "+f"(d[(o) + 3]), "+f"(d[(o) + 4]),          \
      "+f"(d[(o) + 5]), "+f"(d[(o) + 6]), "+f"(d[(o) + 7]), "+f"(d[(o) + 8]), "+f"(d[(o) + 9]),      \
      "+f"(d[(o) + 10]), "+f"(d[(o) + 11]), "+f"(d[(o) + 12]), "+f"(d[(o) + 13]), "+f"(d[(o) + 14]), \
      "+f"(d[(o) + 15]), "+f"(d[(o) + 16]), "+f"(d[(o) + 17]), "+f"(d[(o) + 18]), "+f"(d[(o) + 19]), \
      "+f"(d[(o) + 20]), "+f"(d[(o) + 21]), "+f"(d[(o) + 22]), "+f"(d[(o) + 23]), "+f"(d[(o) + 24]), \
      "+f"(d[(o) + 25]), "+f"(d[(o) + 26]), "+f"(d[(o) + 27]), "+f"(d[(o) + 28]), "+f"(d[(o) + 29]), \
      "+f"(d[(o) + 30]), "+f"(d[(o) + 31]), "+f"(d[(o) + 32]), "+f"(d[(o) + 33]), "+f"(d[(o) + 34]), \
      "+f"(d[(o) + 35]), "+f"(d[(o) + 36]), "+f"(d[(o) + 37]), "+f"(d[(o) + 38]), "+f"(d[(o) + 39]), \
      "+f"(d[(o) + 40]), "+f"(d[(o) + 41]), "+f"(d[(o) + 42]), "+f"(d[(o) + 43]), "+f"(d[(o) + 44]), \
      "+f"(d[(o) + 45]), "+f"(d[(o) + 46]), "+f"(d[(o) + 47]), "+f"(d[(o) + 48]), "+f"(d[(o) + 49]), \
      "+f"(d[(o) + 50]), "+f"(d[(o) + 51]), "+f"(d[(o) + 52]), "+f"(d[(o) + 53]), "+f"(d[(o) + 54]), \
      "+f"(d[(o) + 55]), "+f"(d[(o) + 56]), "+f"(d[(o) + 57]), "+f"(d[(o) + 58]), "+f"(d[(o) + 59]), \
      "+f"(d[(o) + 60]), "+f"(d[(o) + 61]), "+f"(d[(o) + 62]), "+f"(d[(o) + 63])

// mbarriers (shared-memory addresses). A phase completes when `count` arrivals and every expected
// transaction byte (TMA) have landed; waiters name the parity of the phase they wait for.
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialized barriers visible to the async proxy (TMA) and the other threads (with a barrier).
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (done == 0);
}

// TMA: the box at (c0 innermost, c1) of the tensor `map` describes into shared memory at dst; its bytes
// complete a transaction on `bar`. Out-of-range elements arrive as zeros and still count.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}

#endif  // sm_90a

}  // namespace troupe::kernels::cuda::detail::sm90
