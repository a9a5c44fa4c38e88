// The unnormalized probability of a token in sampler::sample, shared with the CUDA sampler
// (kernels/cuda/sampling.cu) so that both compute the very same float: exp(adj - max) evaluated in double
// and rounded once to float. A float exp differs between libm builds (glibc's FMA and non-FMA variants)
// and from CUDA's expf by an ulp on some inputs, enough to move a draw that lands near a CDF boundary; a
// double exp within one double ulp (glibc's and CUDA's both are) rounds to the same float except when the
// exact value lies within ~2^-52 relative of a float rounding midpoint, about one input in 10^8.
#pragma once

#include <cmath>

#include "core/host_device.h"

namespace troupe {

// adj: a penalized, temperature-scaled logit; max_adj: the row's maximum of those (so the result is in
// [0, 1], exactly 1 at the maximum, and 0 for -inf).
TROUPE_HOST_DEVICE inline float sampling_weight(float adj, float max_adj) {
  return static_cast<float>(::exp(static_cast<double>(adj - max_adj)));
}

}  // namespace troupe
