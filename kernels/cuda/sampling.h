// Sampling reductions on the device (see kernels/cuda/sampling.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace troupe::kernels::cuda {

// Per row r: ids[r] = argmax of logits[r, :] (the lowest id among equal maxima, as the CPU sampler picks)
// and logprobs[r] = its log-softmax over the row. A row with a NaN or +inf logit (or only -inf) gets
// ids[r] = -1 and logprobs[r] = NaN, for the host to report.
void argmax_logprob(const float* logits,  // [rows, vocab] fp32
                    int64_t rows, int64_t vocab,
                    int32_t* ids,     // [rows]
                    float* logprobs,  // [rows]
                    cudaStream_t stream);

}  // namespace troupe::kernels::cuda
