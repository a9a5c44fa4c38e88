// Sampling on the device: the greedy argmax (kernels/cuda/argmax.cu), and the full sampler
// (kernels/cuda/sampling.cu) that reproduces troupe::sampler::sample (core/sampling.h) token for token.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
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

// The most top logprobs a row may ask for (sampling_max_logprobs in core/sampling.h).
constexpr int kSampleMaxTop = 20;
// The largest vocabulary sample_rows accepts: its 84-bit fixed-point sums of weights in [0, 1] are held as
// two 64-bit halves of 42 bits each, which cannot overflow below 2^21 terms.
constexpr int64_t kSampleMaxVocab = int64_t{1} << 21;

// One draw: sampling_params flattened (the host fills these from a device_sample_row).
struct sample_row_params {
  int32_t logits_row;        // row of the logits matrix (the n > 1 children of a sequence share one)
  int32_t work_slot;         // row of the workspace; -1 for a greedy row without penalties (needs none)
  float temperature;         // below 1e-5: greedy (argmax of the penalized logits)
  int32_t top_k;             // <= 0 or >= vocab: off
  float top_p;               // >= 1: off
  float min_p;               // 0: off
  float repetition_penalty;  // over penalty entries (prompt + output); 1: off
  float presence_penalty;    // over entries with an output count > 0
  float frequency_penalty;   // times the output count
  int32_t num_top;           // top raw logprobs wanted, 0..kSampleMaxTop
  int32_t penalty_begin;     // this row's entries in the penalty lists: [begin, end)
  int32_t penalty_end;       // begin == end: no penalties
  uint64_t seed;             // the draw's uniform is rng::uniform_double(seed, step)
  uint64_t step;
};

struct sample_view {
  const float* logits;            // [num_logits_rows, vocab] fp32, read only
  const sample_row_params* rows;  // [num_rows]
  const int32_t* penalty_ids;     // [num_penalty_entries]: per row the distinct ids of prompt + output
  const int32_t* penalty_counts;  // [num_penalty_entries]: each id's count among the outputs (0: prompt only)
  float* workspace;               // [num_work_slots, 2, vocab]: penalized scaled logits, then weights
  int32_t* ids;                   // [num_rows] out: the drawn token; -1 when the row cannot be sampled
  float* logprobs;                // [num_rows] out: its log-softmax over the raw logits (NaN when -1)
  int32_t* top_ids;               // [num_rows, kSampleMaxTop] out: the first num_top of each row
  float* top_logprobs;            // [num_rows, kSampleMaxTop] out
  int64_t num_rows;
  int64_t vocab;
};

// Floats of workspace that num_work_slots rows need.
inline size_t sample_workspace_floats(int64_t num_work_slots, int64_t vocab) {
  return static_cast<size_t>(num_work_slots) * 2 * static_cast<size_t>(vocab);
}

// One block per row; per row the result of sampler::sample (core/sampling.cpp) for the same logits, params,
// penalty history, seed and step. Sums of weights are exact (fixed point), so a draw differs from the CPU's
// only where the CPU's own double rounding (< vocab * 2^-53 relative) decides it. A row whose raw logits
// hold a NaN or +inf, or are all -inf, or whose penalized scaled maximum is not finite (sampled rows),
// gets ids[r] = -1.
void sample_rows(sample_view v, cudaStream_t stream);

}  // namespace troupe::kernels::cuda
