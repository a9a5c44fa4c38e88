// The Hopper (sm_90a) GEMM of gemm_context for decode-sized batches: y[m, n] = x[m, k] @ w[n, k]^T with
// wgmma, TMA loads and a stream-K split of the work over one block an SM. gemm.cu dispatches to it; the
// GPU tests call it directly to force small grids (many split tiles).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace troupe::kernels::cuda::detail {

// True when the current device is compute capability 9.0 and this build holds the sm_90a kernel.
bool gemm_sm90_available();

// Whether gemm_sm90_xwt takes this shape and these pointers: k and n multiples of 8 (TMA's 16-byte row
// strides; pairs of output columns), 16-byte aligned x and w, 8-byte aligned y, sizes below 2^31.
bool gemm_sm90_supports(const void* x, const void* w, const void* y, int64_t m, int64_t n, int64_t k);

// Workspace for grids of up to `ctas` blocks (at most 1024): a flag area of fixed size, then one fp32
// partial tile a block. The flags must be zero before the first call (cudaMemset); every call leaves them
// zero again, whatever its grid.
size_t gemm_sm90_workspace_bytes(int ctas);
// Where the partials start in the workspace (tests poison them to catch reads of unwritten partials).
size_t gemm_sm90_partials_offset();

// y = x @ w^T in bf16 (f32_out: fp32) with fp32 accumulation, on at most `ctas` blocks (the SM count for
// speed; fewer in tests). Requires gemm_sm90_available() and gemm_sm90_supports(); calls on one workspace
// must not run concurrently (one stream).
void gemm_sm90_xwt(const __nv_bfloat16* x,  // [m, k]
                   const __nv_bfloat16* w,  // [n, k]
                   void* y,                 // [m, n], bf16 or fp32
                   bool f32_out, int64_t m, int64_t n, int64_t k, void* workspace, int ctas,
                   cudaStream_t stream);

}  // namespace troupe::kernels::cuda::detail
