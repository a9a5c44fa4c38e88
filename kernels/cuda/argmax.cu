// The greedy argmax on the device (argmax_logprob): per row the lowest id of the maximum logit and its
// log-softmax, so that a greedy step returns a few bytes per sequence instead of a vocabulary-wide row of
// floats. The full sampler, sample_rows, is in sampling.cu.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/check.h"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/sampling.h"

namespace troupe::kernels::cuda {
namespace {

constexpr int kThreads = 1024;

// Running state of one thread: the best logit and its id, and the online softmax denominator sum(exp(l -
// m)) against the running maximum m (FlashAttention's rescaling trick), so one pass over the row suffices.
struct arg_state {
  float best;
  int32_t id;
  float sum;  // relative to best
  int nan;
};

__device__ __forceinline__ void push(arg_state& s, float x, int32_t i) {
  if (x != x) {
    s.nan = 1;
    return;
  }
  if (x > s.best) {
    s.sum = s.sum * __expf(s.best - x) + 1.0f;  // best == -inf: sum was 0, stays exact
    s.best = x;
    s.id = i;
  } else {
    s.sum += __expf(x - s.best);
  }
}

__device__ __forceinline__ arg_state merge(arg_state a, const arg_state& b) {
  arg_state r;
  r.nan = a.nan | b.nan;
  if (b.best > a.best || (b.best == a.best && b.id < a.id)) {
    r.best = b.best;
    r.id = b.id;
  } else {
    r.best = a.best;
    r.id = a.id;
  }
  const float sa = a.best == -INFINITY ? 0.0f : a.sum * __expf(a.best - r.best);
  const float sb = b.best == -INFINITY ? 0.0f : b.sum * __expf(b.best - r.best);
  r.sum = sa + sb;
  return r;
}

__device__ __forceinline__ arg_state shfl_down(const arg_state& s, int delta) {
  arg_state o;
  o.best = __shfl_down_sync(0xffffffffu, s.best, delta);
  o.id = __shfl_down_sync(0xffffffffu, s.id, delta);
  o.sum = __shfl_down_sync(0xffffffffu, s.sum, delta);
  o.nan = __shfl_down_sync(0xffffffffu, s.nan, delta);
  return o;
}

// One block per row. Threads read the row in strided float4s (coalesced), then a warp-shuffle and a
// shared-memory reduction combine the states; ties resolve to the lower id at every merge.
__global__ void argmax_logprob_kernel(const float* __restrict__ logits, int64_t vocab,
                                      int32_t* __restrict__ ids, float* __restrict__ logprobs) {
  pdl_wait();
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  arg_state s{-INFINITY, INT32_MAX, 0.0f, 0};
  const bool aligned = (reinterpret_cast<uintptr_t>(row) & 15) == 0;
  int64_t i0 = 0;
  if (aligned) {
    const int64_t n4 = vocab / 4;
    const float4* row4 = reinterpret_cast<const float4*>(row);
    for (int64_t j = threadIdx.x; j < n4; j += blockDim.x) {
      const float4 v = row4[j];
      const int32_t base = static_cast<int32_t>(4 * j);
      push(s, v.x, base);
      push(s, v.y, base + 1);
      push(s, v.z, base + 2);
      push(s, v.w, base + 3);
    }
    i0 = 4 * n4;
  }
  for (int64_t j = i0 + threadIdx.x; j < vocab; j += blockDim.x) push(s, row[j], static_cast<int32_t>(j));
  // Within a thread ids only grow, and "x > best" keeps the first of equal values: ties keep the lowest.
  for (int d = 16; d > 0; d >>= 1) s = merge(s, shfl_down(s, d));
  __shared__ arg_state warp_states[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_states[warp] = s;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = (blockDim.x + 31) / 32;
    s = lane < nwarps ? warp_states[lane] : arg_state{-INFINITY, INT32_MAX, 0.0f, 0};
    for (int d = 16; d > 0; d >>= 1) s = merge(s, shfl_down(s, d));
    if (lane == 0) {
      if (s.nan || s.best == -INFINITY || s.best == INFINITY) {
        ids[blockIdx.x] = -1;  // the host reports the bad row
        logprobs[blockIdx.x] = NAN;
      } else {
        ids[blockIdx.x] = s.id;
        logprobs[blockIdx.x] = -logf(s.sum);  // logit[id] - (best + log(sum)) with logit[id] == best
      }
    }
  }
}

}  // namespace

void argmax_logprob(const float* logits, int64_t rows, int64_t vocab, int32_t* ids, float* logprobs,
                    cudaStream_t stream) {
  if (rows == 0) return;
  if (vocab <= 0 || vocab > INT32_MAX) raise_cuda("argmax_logprob", "vocab out of range", __FILE__, __LINE__);
  launch_pdl(argmax_logprob_kernel, dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0, stream, logits,
             vocab, ids, logprobs);
}

}  // namespace troupe::kernels::cuda
