// Programmatic dependent launch (Hopper): a kernel launched with launch_pdl may start while the kernel
// before it in the stream is finishing, so its launch and prologue overlap that kernel's tail instead of
// following it. A decode step at batch 1 is ~290 short kernels, and each boundary otherwise costs a drain,
// a launch and a ramp-up.
//
// Contract for every kernel launched with launch_pdl: it calls pdl_wait() before it reads anything an
// earlier kernel wrote and before it writes anything (after pdl_wait(), every earlier kernel in the stream
// has completed and its writes are visible). Work before pdl_wait() may only touch read-only inputs (the
// weights, and the K/V of earlier steps). pdl_trigger() lets the next kernel launch once every block has
// called it (or exited); kernels call it when their main loop is done, or on entry (early triggers, below).
// Since every kernel waits for the one before it to complete, a kernel that launched early still sees all
// earlier kernels complete after its pdl_wait(). Both are no-ops for a kernel launched the ordinary way, so
// tests and other callers may launch these kernels with <<<>>>.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/check.h"

namespace troupe::kernels::cuda {

// On by default; off makes launch_pdl an ordinary launch (benchmarks compare; TROUPE_PDL=0 at startup).
bool pdl_enabled();
void set_pdl_enabled(bool on);

// Early triggers: a kernel may call pdl_trigger() on entry rather than after its main loop, so that the
// kernel after it launches sooner and requests its weights (which no kernel writes) before its pdl_wait().
// The gemvs do (the next kernel's blocks take SMs as the gemv's last blocks retire), and so does a grid
// smaller than the GPU (the norms, the embedding and decode attention at batch 1), which leaves most SMs and
// HBM idle: pdl_trigger_early(blocks). TROUPE_EARLY_TRIGGER=0 at startup: none (benchmarks compare).
bool pdl_early_triggers();
bool pdl_trigger_early(int64_t blocks);

// Raises a kernel's dynamic shared-memory limit to at least `bytes` on the current device, once for each
// device: the attribute belongs to the function as loaded on one device, so a process that launches on
// several GPUs must set it on each. Call before a launch (and before an occupancy query) that needs more than
// 48 KB.
void set_max_dynamic_smem(const void* kernel, int bytes);
template <typename... KernelArgs>
void set_max_dynamic_smem(void (*kernel)(KernelArgs...), int bytes) {
  set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
}

#ifdef __CUDACC__
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent of the previous kernel when
// pdl_enabled(). Checks the launch.
template <typename... KernelArgs, typename... Args>
void launch_pdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  TROUPE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<KernelArgs>(args)...));
}
#endif

}  // namespace troupe::kernels::cuda
