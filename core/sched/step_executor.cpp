#include "core/sched/step_executor.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace troupe {

sampled_token step_executor::sample_one(const float* row, mirror& m, int64_t seq_id) {
  const int32_t vocab = runner_.config().vocab_size;
  sample_result r =
      sampler_.sample(row, vocab, *m.params, m.prompt, m.outputs, m.seed, m.outputs.size(), scratch_);
  m.outputs.push_back(r.id);
  sampled_token t;
  t.seq_id = seq_id;
  t.token = r.id;
  t.logprob = r.logprob;
  t.top = std::move(r.top);
  return t;
}

// Calls f(mirror, seq_id, logits_row) for every draw of the step, in order: each sampled sequence's fork
// children (n > 1: copies of the parent's state before its own token is appended, with their own seeds,
// drawing from the parent's logits row), then the sequence itself. std::unordered_map keeps its nodes in
// place when it rehashes, so the parent's reference stays valid while children are inserted.
template <class F>
void step_executor::for_each_draw(const step_plan& plan, F&& f) {
  int32_t row = 0;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const seq_step& st = plan.seqs[i];
    if (!st.sample) continue;
    mirror& m = *active_[i];
    TROUPE_CHECK_EQ(static_cast<int32_t>(m.outputs.size()), st.output_index) << "sequence" << st.seq_id;
    for (size_t c = 0; c < st.fork_children.size(); ++c) {
      mirror child = m;
      child.seed = st.fork_seeds[c];
      auto [it, inserted] = mirrors_.insert_or_assign(st.fork_children[c], std::move(child));
      (void)inserted;
      f(it->second, st.fork_children[c], row);
    }
    f(m, st.seq_id, row);
    ++row;
  }
}

step_result step_executor::execute(const step_plan& plan) {
  const auto t0 = std::chrono::steady_clock::now();
  step_result res;
  res.step = plan.step;
  for (int64_t id : plan.dropped) mirrors_.erase(id);

  auto run_pairs = [&](const std::vector<block_copy>& v, auto fn) {
    if (v.empty()) return;
    src_.clear();
    dst_.clear();
    for (const auto& c : v) {
      src_.push_back(c.src);
      dst_.push_back(c.dst);
    }
    fn(src_.data(), dst_.data(), static_cast<int32_t>(v.size()));
  };
  // Order matters: swapped-out blocks may be reused by this very step.
  run_pairs(plan.swap_out, [&](const int32_t* s, const int32_t* d, int32_t n) { runner_.swap_out(s, d, n); });
  run_pairs(plan.swap_in, [&](const int32_t* s, const int32_t* d, int32_t n) { runner_.swap_in(s, d, n); });
  run_pairs(plan.copies,
            [&](const int32_t* s, const int32_t* d, int32_t n) { runner_.copy_blocks(s, d, n); });

  if (plan.seqs.empty()) return res;
  const int32_t bs = runner_.block_size();
  const size_t num_seqs = plan.seqs.size();
  // Sized once, written by index: a steady step neither allocates nor pays push_back's checks.
  ids_.resize(plan.token_ids.size());
  pos_.resize(plan.token_ids.size());
  slots_.resize(plan.token_ids.size());
  qs_.resize(num_seqs + 1);
  ctx_.resize(num_seqs);
  prompt_lens_.resize(num_seqs);
  active_.resize(num_seqs);
  rows_.clear();
  qs_[0] = 0;
  int32_t max_blocks = 0;
  int32_t t = 0;  // tokens so far
  for (size_t q = 0; q < num_seqs; ++q) {
    const seq_step& st = plan.seqs[q];
    if (st.is_new) {
      mirror m;
      m.prompt = st.prompt;
      m.outputs = st.outputs;
      m.params = st.params;
      m.seed = st.seed;
      mirrors_[st.seq_id] = std::move(m);
    }
    auto it = mirrors_.find(st.seq_id);
    TROUPE_CHECK(it != mirrors_.end()) << "worker has no state for sequence" << st.seq_id;
    mirror& m = it->second;
    m.table.resize(st.table_size, -1);
    for (const auto& [i, b] : st.table_diff) m.table[i] = b;
    const int32_t n = st.num_tokens;
    const int32_t* tokens = plan.tokens_of(st);
    TROUPE_CHECK_EQ(st.token_offset, t) << st.seq_id;
    TROUPE_CHECK_LE(static_cast<int64_t>(st.start + n), static_cast<int64_t>(m.table.size()) * bs)
        << st.seq_id;
    for (int32_t i = 0; i < n; ++i, ++t) {
      const int32_t p = st.start + i;
      ids_[t] = tokens[i];
      pos_[t] = p;
      const int32_t block = m.table[p / bs];
      TROUPE_CHECK_GE(block, 0) << "sequence" << st.seq_id << "has no block at" << p / bs;
      slots_[t] = block * bs + p % bs;
    }
    qs_[q + 1] = t;
    ctx_[q] = st.start + n;
    prompt_lens_[q] = static_cast<int32_t>(m.prompt.size());
    if (st.sample) rows_.push_back(t - 1);
    max_blocks = std::max<int32_t>(max_blocks, static_cast<int32_t>(m.table.size()));
    active_[q] = &m;
  }
  TROUPE_CHECK_EQ(static_cast<size_t>(t), plan.token_ids.size());
  tables_.assign(static_cast<size_t>(plan.seqs.size()) * max_blocks, 0);
  for (size_t i = 0; i < active_.size(); ++i) {
    std::copy(active_[i]->table.begin(), active_[i]->table.end(), tables_.begin() + i * max_blocks);
  }
  forward_batch b;
  b.token_ids = ids_.data();
  b.positions = pos_.data();
  b.slot_mapping = slots_.data();
  b.query_start = qs_.data();
  b.context_lens = ctx_.data();
  b.block_tables = tables_.data();
  b.logits_rows = rows_.data();
  b.prompt_lens = prompt_lens_.data();
  b.num_tokens = static_cast<int32_t>(ids_.size());
  b.num_seqs = static_cast<int32_t>(plan.seqs.size());
  b.max_blocks_per_seq = max_blocks;
  b.num_logits = static_cast<int32_t>(rows_.size());
  if (runner_.samples_on_device()) {
    forward_and_sample_on_device(plan, b, res);
  } else {
    const int32_t vocab = runner_.config().vocab_size;
    logits_.resize(rows_.size() * static_cast<size_t>(vocab));
    runner_.forward(b, logits_.data());
    for_each_draw(plan, [&](mirror& m, int64_t seq_id, int32_t row) {
      res.samples.push_back(sample_one(logits_.data() + static_cast<size_t>(row) * vocab, m, seq_id));
    });
  }
  res.forward_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

void step_executor::forward_and_sample_on_device(const step_plan& plan, const forward_batch& b,
                                                 step_result& res) {
  dev_rows_.clear();
  dev_targets_.clear();
  auto add = [&](mirror& m, int64_t seq_id, int32_t logits_row) {
    device_sample_row d;
    d.logits_row = logits_row;
    d.params = m.params.get();
    d.seed = m.seed;
    d.step = m.outputs.size();
    d.prompt_ids = m.prompt.data();
    d.output_ids = m.outputs.data();
    d.num_prompt_ids = static_cast<int32_t>(m.prompt.size());
    d.num_output_ids = static_cast<int32_t>(m.outputs.size());
    dev_rows_.push_back(d);
    dev_targets_.emplace_back(&m, seq_id);
  };
  for_each_draw(plan, add);
  const size_t n = dev_rows_.size();
  dev_ids_.resize(n);
  dev_logprobs_.resize(n);
  if (dev_top_.size() < n * sampling_max_logprobs) dev_top_.resize(n * sampling_max_logprobs);
  runner_.forward_sample(b, dev_rows_.data(), static_cast<int32_t>(n), dev_ids_.data(), dev_logprobs_.data(),
                         dev_top_.data());
  const int32_t vocab = runner_.config().vocab_size;
  for (size_t k = 0; k < n; ++k) {
    auto [m, seq_id] = dev_targets_[k];
    const sampling_params& p = *m->params;
    TROUPE_CHECK_GE(dev_ids_[k], 0) << "sequence" << seq_id
                                    << ": a logit is NaN or +inf, or the scaled maximum is not finite";
    sampled_token t;
    t.seq_id = seq_id;
    t.token = dev_ids_[k];
    t.logprob = p.need_logprob || p.logprobs > 0 ? dev_logprobs_[k] : 0.0f;  // as sampler::sample
    const auto* top = dev_top_.data() + k * sampling_max_logprobs;
    t.top.assign(top, top + std::min(p.logprobs, vocab));
    m->outputs.push_back(t.token);
    res.samples.push_back(std::move(t));
  }
}

}  // namespace troupe
