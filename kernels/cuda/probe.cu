// Probes for the power measurements of `troupe bench kernels --group step_energy`: a pure streaming read
// (the least work a kernel can do per byte it reads: the floor under decode attention's energy) and a
// busy wait on every SM (the board's power with the SMs clocked and doing nothing).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/check.h"
#include "kernels/cuda/probe.h"

namespace troupe::kernels::cuda {
namespace {

// Each thread XORs 16-byte words, four loads in flight, grid-stride; one word a block goes out.
__global__ void read_probe_kernel(const uint4* data, int64_t words, uint32_t* sink) {
  uint32_t acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < words; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = __ldcs(data + i + k * stride);
#pragma unroll
    for (int k = 0; k < 4; ++k) acc ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;
  }
  for (; i < words; i += stride) {
    const uint4 v = __ldcs(data + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  __shared__ uint32_t block_acc;
  if (threadIdx.x == 0) block_acc = 0;
  __syncthreads();
  atomicXor(&block_acc, acc);
  __syncthreads();
  if (threadIdx.x == 0) sink[blockIdx.x] = block_acc;
}

__global__ void spin_probe_kernel(int64_t cycles, uint32_t* sink) {
  const int64_t start = clock64();
  uint32_t n = 0;
  while (clock64() - start < cycles) ++n;
  if (n == 0xFFFFFFFFu) sink[0] = n;  // keeps the loop; never true in practice
}

}  // namespace

int read_probe_blocks() {
  int dev = 0, sms = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms * 8;
}

void read_probe(const void* data, int64_t bytes, uint32_t* sink, cudaStream_t stream) {
  TROUPE_KERNEL_REQUIRE(bytes % 16 == 0 && reinterpret_cast<uintptr_t>(data) % 16 == 0,
                        "read_probe: " << bytes << " bytes at " << data << " is not 16-byte aligned");
  read_probe_kernel<<<read_probe_blocks(), 256, 0, stream>>>(static_cast<const uint4*>(data), bytes / 16,
                                                             sink);
  TROUPE_CUDA_CHECK_LAUNCH();
}

void spin_probe(int64_t cycles, uint32_t* sink, cudaStream_t stream) {
  spin_probe_kernel<<<read_probe_blocks() / 4, 128, 0, stream>>>(cycles, sink);
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels::cuda
