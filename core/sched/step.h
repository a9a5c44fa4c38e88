// The per-step contract between the scheduler and a worker: one step_plan in, one step_result out.
// Tables travel as diffs against what the worker already holds for each sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/kv/kv_manager.h"
#include "core/sampling.h"

namespace troupe {

// Asynchronous scheduling: a plan's token that is not known yet when the scheduler plans the step. It is
// the id the same sequence draws in the step submitted just before this one (always exactly one step
// back; only a decode token, the sequence's first and only token of the step). The step executor turns
// it into forward_batch::pending_rows for a runner that steps asynchronously, or into the real id on the
// host for any other runner.
inline constexpr int32_t kTokenPending = -1;

struct seq_step {
  int64_t seq_id = 0;
  int32_t start = 0;  // first position computed this step (= tokens already cached)
  // This step's tokens, at positions start .. start + num_tokens - 1, live in the plan's token_ids (one
  // flat array, so that a decode step does not allocate per sequence).
  int32_t token_offset = 0;
  int32_t num_tokens = 0;
  bool sample = false;       // these tokens complete the sequence: sample the next one
  int32_t output_index = 0;  // index of the token to sample among the outputs (RNG counter)
  // A sequence the worker has not seen (new, or recomputed after preemption) carries its history.
  bool is_new = false;
  std::vector<int32_t> prompt;                    // is_new: the prompt (for penalties and dynamic RoPE)
  std::vector<int32_t> outputs;                   // is_new: outputs so far (recompute after preemption)
  std::shared_ptr<const sampling_params> params;  // is_new
  uint64_t seed = 0;                              // is_new
  // Block-table diff: entries [index] = block, then the table is cut/extended to table_size.
  std::vector<std::pair<int32_t, int32_t>> table_diff;
  int32_t table_size = 0;
  // n > 1: when this step samples the prompt's first token, these children copy this sequence's state
  // (they share its blocks) and each samples its own first token from the same logits.
  std::vector<int64_t> fork_children;
  std::vector<uint64_t> fork_seeds;
};

struct step_plan {
  uint64_t step = 0;
  std::vector<seq_step> seqs;
  std::vector<int32_t> token_ids;  // [num_tokens] every sequence's tokens, in seqs order
  std::vector<block_copy> copies;  // copy-on-write, performed before the forward
  std::vector<int64_t> dropped;    // sequences the worker must forget (finished, aborted, preempted)
  // Swap preemption: device block -> host slot before anything else runs, and host slot -> device block
  // for sequences coming back (performed before the copies and the forward).
  std::vector<block_copy> swap_out;  // src = device block, dst = host slot
  std::vector<block_copy> swap_in;   // src = host slot, dst = device block
  int32_t num_tokens = 0;

  const int32_t* tokens_of(const seq_step& s) const { return token_ids.data() + s.token_offset; }
  // Nothing for the worker to do (the scheduler sends no such plan).
  bool empty() const {
    return seqs.empty() && copies.empty() && dropped.empty() && swap_out.empty() && swap_in.empty();
  }
};

struct sampled_token {
  int64_t seq_id = 0;
  int32_t token = 0;
  float logprob = 0;
  std::vector<token_logprob> top;
};

struct step_result {
  uint64_t step = 0;
  std::vector<sampled_token> samples;
  double forward_s = 0;
};

}  // namespace troupe
