// The Hopper (sm_90a) prefill kernel of flash_attention_prefill: wgmma warpgroup MMAs, head_dim 128 only.
// flash_attention.cu dispatches to it; nothing else includes this header.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/cuda/attention.h"

namespace troupe::kernels::cuda::detail {

// True when the current device is compute capability 9.0 and this build holds the sm_90a kernel (a build
// for plain sm_90 or older architectures compiles it to a stub).
bool flash_prefill_sm90_available();

// Same contract as flash_attention_prefill; requires head_dim == 128 and flash_prefill_sm90_available().
void flash_prefill_sm90(const attention_params& p, cudaStream_t stream);

}  // namespace troupe::kernels::cuda::detail
