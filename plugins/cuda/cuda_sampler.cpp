#include "plugins/cuda/cuda_sampler.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/sampling.h"

namespace troupe {

namespace kc = kernels::cuda;

static_assert(kc::kSampleMaxTop == sampling_max_logprobs, "the kernel's top-logprob slots");
static_assert(sizeof(kc::sample_row_params) % sizeof(int32_t) == 0, "row params are followed by int32 lists");

cuda_sampler::cuda_sampler(int32_t vocab_size)
    : vocab_(vocab_size), seen_(vocab_size, 0), entry_(vocab_size, 0) {
  TROUPE_CHECK(vocab_size > 0 && vocab_size <= kc::kSampleMaxVocab)
      << "the CUDA sampler handles vocabularies up to" << kc::kSampleMaxVocab << "tokens, not" << vocab_size;
}

cuda_sampler::~cuda_sampler() {
  for (void* p : {in_dev_, out_dev_, work_dev_}) {
    if (p != nullptr) cudaFree(p);
  }
  for (slot_state& sl : slots_) {
    for (void* p : {sl.in_host, sl.out_host}) {
      if (p != nullptr) cudaFreeHost(p);
    }
    if (sl.done != nullptr) cudaEventDestroy(sl.done);
  }
}

void cuda_sampler::reserve(void*& buf, size_t& cap, size_t n, bool pinned, cudaStream_t stream) {
  if (n <= cap && buf != nullptr) return;
  const size_t want = std::max({n, cap + cap / 2, size_t{256}});
  TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream));  // the old buffer may still be read by queued work
  if (buf != nullptr) TROUPE_CUDA_CHECK(pinned ? cudaFreeHost(buf) : cudaFree(buf));
  buf = nullptr;
  TROUPE_CUDA_CHECK(pinned ? cudaMallocHost(&buf, want) : cudaMalloc(&buf, want));
  cap = want;
}

void cuda_sampler::sample(const float* logits, int32_t num_logits, const device_sample_row* rows,
                          int32_t num_rows, int32_t* ids, float* logprobs, token_logprob* top,
                          cudaStream_t stream) {
  if (num_rows == 0) return;
  launch(logits, num_logits, rows, num_rows, 0, nullptr, stream);
  finish(0, ids, logprobs, top);
}

void cuda_sampler::launch(const float* logits, int32_t num_logits, const device_sample_row* rows,
                          int32_t num_rows, int slot, int32_t* ids_copy, cudaStream_t stream) {
  TROUPE_CHECK(slot == 0 || slot == 1) << "sampler slot" << slot;
  slot_state& sl = slots_[slot];
  TROUPE_CHECK(!sl.pending) << "sampler slot" << slot << "launched twice without finish";
  if (sl.done == nullptr) TROUPE_CUDA_CHECK(cudaEventCreateWithFlags(&sl.done, cudaEventDisableTiming));
  sl.num_rows = num_rows;
  sl.num_top.resize(static_cast<size_t>(num_rows));
  if (num_rows == 0) {
    TROUPE_CUDA_CHECK(cudaEventRecord(sl.done, stream));
    sl.pending = true;
    return;
  }
  const size_t R = static_cast<size_t>(num_rows);
  // Upper bound of the penalty entries, so the pinned staging holds them without a second pass.
  size_t max_entries = 0;
  bool any_top = false, plain_greedy = true;
  for (size_t r = 0; r < R; ++r) {
    const sampling_params* p = rows[r].params;
    TROUPE_CHECK(p != nullptr) << "sample row" << r << "has no parameters";
    TROUPE_CHECK(rows[r].logits_row >= 0 && rows[r].logits_row < num_logits)
        << "sample row" << r << "reads logits row" << rows[r].logits_row << "of" << num_logits;
    TROUPE_CHECK(p->logprobs >= 0 && p->logprobs <= sampling_max_logprobs) << "logprobs" << p->logprobs;
    any_top |= p->logprobs > 0;
    sl.num_top[r] = std::min(p->logprobs, vocab_);
    if (p->repetition_penalty != 1.0f) max_entries += static_cast<size_t>(rows[r].num_prompt_ids);
    if (p->has_penalties()) max_entries += static_cast<size_t>(rows[r].num_output_ids);
    plain_greedy = plain_greedy && p->is_greedy() && !p->has_penalties() && p->logprobs == 0 &&
                   rows[r].logits_row == static_cast<int32_t>(r);
  }
  const size_t out_small = 2 * R * sizeof(int32_t);
  if (plain_greedy && num_rows == num_logits) {
    // Every row greedy, in logits order, with no penalties or top logprobs (a batch of greedy requests):
    // the argmax kernel alone, with no row parameters to build and upload. Same ids (the lowest among equal
    // maxima, -1 for a NaN, +inf or all -inf row) and log-softmax as sample_rows' greedy rows.
    reserve(out_dev_, out_dev_cap_, out_small, false, stream);
    reserve(sl.out_host, sl.out_host_cap, out_small, true, stream);
    auto* d_ids = static_cast<int32_t*>(out_dev_);
    kc::argmax_logprob(logits, num_rows, vocab_, d_ids, reinterpret_cast<float*>(d_ids + R), stream);
    if (ids_copy != nullptr)
      TROUPE_CUDA_CHECK(
          cudaMemcpyAsync(ids_copy, d_ids, R * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(sl.out_host, out_dev_, out_small, cudaMemcpyDeviceToHost, stream));
    TROUPE_CUDA_CHECK(cudaEventRecord(sl.done, stream));
    sl.pending = true;
    return;
  }
  const size_t params_bytes = R * sizeof(kc::sample_row_params);
  reserve(sl.in_host, sl.in_host_cap, params_bytes + 2 * max_entries * sizeof(int32_t), true, stream);
  auto* params = static_cast<kc::sample_row_params*>(sl.in_host);
  // Ids first, counts after all ids: entries are appended in one go, then the counts moved down.
  auto* pen_ids = reinterpret_cast<int32_t*>(static_cast<char*>(sl.in_host) + params_bytes);
  int32_t* pen_counts = pen_ids + max_entries;
  int32_t num_entries = 0, num_slots = 0;
  for (size_t r = 0; r < R; ++r) {
    const device_sample_row& row = rows[r];
    const sampling_params& p = *row.params;
    kc::sample_row_params& q = params[r];
    q.logits_row = row.logits_row;
    q.temperature = p.temperature;
    q.top_k = p.top_k;
    q.top_p = p.top_p;
    q.min_p = p.min_p;
    q.repetition_penalty = p.repetition_penalty;
    q.presence_penalty = p.presence_penalty;
    q.frequency_penalty = p.frequency_penalty;
    q.num_top = p.logprobs;
    q.seed = row.seed;
    q.step = row.step;
    q.penalty_begin = num_entries;
    // The distinct ids of prompt + output (output only without a repetition penalty), each with its count
    // among the outputs: what apply_penalties reads, once per id.
    const bool repetition = p.repetition_penalty != 1.0f;
    if (p.has_penalties()) {
      if (++epoch_ == 0) {  // wrapped: forget every stamp
        std::fill(seen_.begin(), seen_.end(), 0);
        epoch_ = 1;
      }
      auto add = [&](int32_t id, int32_t from_output) {
        TROUPE_CHECK(id >= 0 && id < vocab_) << "token id" << id << "outside vocab of" << vocab_;
        if (seen_[id] != epoch_) {
          seen_[id] = epoch_;
          entry_[id] = num_entries;
          pen_ids[num_entries] = id;
          pen_counts[num_entries] = 0;
          ++num_entries;
        }
        pen_counts[entry_[id]] += from_output;
      };
      if (repetition) {
        for (int32_t i = 0; i < row.num_prompt_ids; ++i) add(row.prompt_ids[i], 0);
      }
      for (int32_t i = 0; i < row.num_output_ids; ++i) add(row.output_ids[i], 1);
    }
    q.penalty_end = num_entries;
    const bool penalized = q.penalty_end > q.penalty_begin;
    q.work_slot = (!p.is_greedy() || penalized) ? num_slots++ : -1;
  }
  // Counts right after the ids: the upload is one contiguous range.
  if (num_entries > 0 && static_cast<size_t>(num_entries) < max_entries)
    std::memmove(pen_ids + num_entries, pen_counts, static_cast<size_t>(num_entries) * sizeof(int32_t));
  const size_t in_bytes = params_bytes + 2 * static_cast<size_t>(num_entries) * sizeof(int32_t);
  reserve(in_dev_, in_dev_cap_, in_bytes, false, stream);
  const size_t out_bytes = out_small + 2 * R * kc::kSampleMaxTop * sizeof(int32_t);
  reserve(out_dev_, out_dev_cap_, out_bytes, false, stream);
  reserve(sl.out_host, sl.out_host_cap, out_bytes, true, stream);
  reserve(work_dev_, work_cap_, kc::sample_workspace_floats(num_slots, vocab_) * sizeof(float), false,
          stream);
  TROUPE_CUDA_CHECK(cudaMemcpyAsync(in_dev_, sl.in_host, in_bytes, cudaMemcpyHostToDevice, stream));

  kc::sample_view v;
  v.logits = logits;
  v.rows = static_cast<const kc::sample_row_params*>(in_dev_);
  v.penalty_ids = reinterpret_cast<const int32_t*>(static_cast<const char*>(in_dev_) + params_bytes);
  v.penalty_counts = v.penalty_ids + num_entries;
  v.workspace = static_cast<float*>(work_dev_);
  v.ids = static_cast<int32_t*>(out_dev_);
  v.logprobs = reinterpret_cast<float*>(v.ids + R);
  v.top_ids = reinterpret_cast<int32_t*>(v.logprobs + R);
  v.top_logprobs = reinterpret_cast<float*>(v.top_ids + R * kc::kSampleMaxTop);
  v.num_rows = num_rows;
  v.vocab = vocab_;
  kc::sample_rows(v, stream);
  if (ids_copy != nullptr)
    TROUPE_CUDA_CHECK(
        cudaMemcpyAsync(ids_copy, v.ids, R * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream));
  TROUPE_CUDA_CHECK(cudaMemcpyAsync(sl.out_host, out_dev_, any_top ? out_bytes : out_small,
                                    cudaMemcpyDeviceToHost, stream));
  TROUPE_CUDA_CHECK(cudaEventRecord(sl.done, stream));
  sl.pending = true;  // only now: a row refused above leaves the slot free
}

void cuda_sampler::finish(int slot, int32_t* ids, float* logprobs, token_logprob* top) {
  TROUPE_CHECK(slot == 0 || slot == 1) << "sampler slot" << slot;
  slot_state& sl = slots_[slot];
  TROUPE_CHECK(sl.pending) << "sampler slot" << slot << "finished without a launch";
  sl.pending = false;
  TROUPE_CUDA_CHECK(cudaEventSynchronize(sl.done));
  const size_t R = static_cast<size_t>(sl.num_rows);
  if (R == 0) return;
  const auto* h_ids = static_cast<const int32_t*>(sl.out_host);
  const auto* h_lps = reinterpret_cast<const float*>(h_ids + R);
  const auto* h_top_ids = reinterpret_cast<const int32_t*>(h_lps + R);
  const auto* h_top_lps = reinterpret_cast<const float*>(h_top_ids + R * kc::kSampleMaxTop);
  std::memcpy(ids, h_ids, R * sizeof(int32_t));
  std::memcpy(logprobs, h_lps, R * sizeof(float));
  for (size_t r = 0; r < R; ++r) {
    for (int32_t j = 0; j < sl.num_top[r]; ++j) {
      const size_t at = r * kc::kSampleMaxTop + static_cast<size_t>(j);
      top[at] = token_logprob{h_top_ids[at], h_top_lps[at]};
    }
  }
}

}  // namespace troupe
