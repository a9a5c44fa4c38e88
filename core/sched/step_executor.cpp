#include "core/sched/step_executor.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace troupe {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

step_executor::step_executor(model_runner& runner) : runner_(runner), async_(runner.samples_async()) {}

sampled_token step_executor::sample_one(const float* row, mirror& m, int64_t seq_id, uint64_t step) {
  const int32_t vocab = runner_.config().vocab_size;
  sample_result r = sampler_.sample(row, vocab, *m.params, m.prompt, m.outputs, m.seed, step, scratch_);
  m.outputs.push_back(r.id);
  sampled_token t;
  t.seq_id = seq_id;
  t.token = r.id;
  t.logprob = r.logprob;
  t.top = std::move(r.top);
  return t;
}

// Calls f(mirror, seq_id, logits_row, step) for every draw of the step, in order: each sampled sequence's
// fork children (n > 1: copies of the parent's state before its own token is appended, with their own
// seeds, drawing from the parent's logits row), then the sequence itself. The draw's index in this order
// is its row (device_sample_row, forward_batch::pending_rows); `step` is the plan's output_index, the RNG
// counter, which equals what the mirror's history says once every earlier draw is collected.
// std::unordered_map keeps its nodes in place when it rehashes, so the parent's reference stays valid
// while children are inserted.
template <class F>
void step_executor::for_each_draw(const step_plan& plan, F&& f) {
  int32_t logits_row = 0, draw = 0;
  const uint64_t this_submit = num_submits_ + 1;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const seq_step& st = plan.seqs[i];
    if (!st.sample) continue;
    mirror& m = *active_[i];
    TROUPE_CHECK_EQ(static_cast<int64_t>(m.outputs.size()) + m.pending, st.output_index)
        << "sequence" << st.seq_id << "(outputs + pending draws vs the plan's output index)";
    const uint64_t step = static_cast<uint64_t>(st.output_index);
    if (!st.fork_children.empty()) TROUPE_CHECK_EQ(m.pending, 0) << "sequence" << st.seq_id << "forks";
    for (size_t c = 0; c < st.fork_children.size(); ++c) {
      mirror child = m;
      child.seed = st.fork_seeds[c];
      child.gen = next_gen_++;
      auto [it, inserted] = mirrors_.insert_or_assign(st.fork_children[c], std::move(child));
      (void)inserted;
      it->second.draw_submit = this_submit;
      it->second.draw_row = draw++;
      f(it->second, st.fork_children[c], logits_row, step);
    }
    m.draw_submit = this_submit;
    m.draw_row = draw++;
    f(m, st.seq_id, logits_row, step);
    ++logits_row;
  }
}

void step_executor::prepare(const step_plan& plan, forward_batch& b) {
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

  if (plan.seqs.empty()) return;
  const int32_t bs = runner_.block_size();
  const size_t num_seqs = plan.seqs.size();
  // Sized once, written by index: a steady step neither allocates nor pays push_back's checks.
  ids_.resize(plan.token_ids.size());
  pos_.resize(plan.token_ids.size());
  slots_map_.resize(plan.token_ids.size());
  pending_.resize(plan.token_ids.size());
  qs_.resize(num_seqs + 1);
  ctx_.resize(num_seqs);
  prompt_lens_.resize(num_seqs);
  active_.resize(num_seqs);
  rows_.clear();
  qs_[0] = 0;
  int32_t max_blocks = 0;
  int32_t t = 0;  // tokens so far
  bool any_pending = false;
  for (size_t q = 0; q < num_seqs; ++q) {
    const seq_step& st = plan.seqs[q];
    if (st.is_new) {
      mirror m;
      m.prompt = st.prompt;
      m.outputs = st.outputs;
      m.params = st.params;
      m.seed = st.seed;
      m.gen = next_gen_++;
      mirrors_[st.seq_id] = std::move(m);
    }
    auto it = mirrors_.find(st.seq_id);
    TROUPE_CHECK(it != mirrors_.end()) << "worker has no state for sequence" << st.seq_id;
    mirror& m = it->second;
    m.table.resize(st.table_size, -1);
    for (const auto& [i, blk] : st.table_diff) m.table[i] = blk;
    const int32_t n = st.num_tokens;
    const int32_t* tokens = plan.tokens_of(st);
    TROUPE_CHECK_EQ(st.token_offset, t) << st.seq_id;
    TROUPE_CHECK_LE(static_cast<int64_t>(st.start + n), static_cast<int64_t>(m.table.size()) * bs)
        << st.seq_id;
    for (int32_t i = 0; i < n; ++i, ++t) {
      const int32_t p = st.start + i;
      int32_t tok = tokens[i];
      pending_[t] = -1;
      if (tok == kTokenPending) {
        // The id this sequence drew in the previous submitted step: on the host already, or still on
        // the device of an asynchronous runner.
        TROUPE_CHECK(i == 0 && n == 1 && !st.is_new) << "sequence" << st.seq_id << ": a pending token"
                                                     << "must be a known sequence's only token";
        TROUPE_CHECK(m.draw_submit == num_submits_ && m.draw_row >= 0)
            << "sequence" << st.seq_id << "drew nothing in the previous step";
        if (prev_on_host_) {
          TROUPE_CHECK_LT(static_cast<size_t>(m.draw_row), prev_ids_.size()) << st.seq_id;
          tok = prev_ids_[m.draw_row];
        } else {
          pending_[t] = m.draw_row;
          any_pending = true;
        }
      }
      ids_[t] = tok;
      pos_[t] = p;
      const int32_t block = m.table[p / bs];
      TROUPE_CHECK_GE(block, 0) << "sequence" << st.seq_id << "has no block at" << p / bs;
      slots_map_[t] = block * bs + p % bs;
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
  b.token_ids = ids_.data();
  b.positions = pos_.data();
  b.slot_mapping = slots_map_.data();
  b.query_start = qs_.data();
  b.context_lens = ctx_.data();
  b.block_tables = tables_.data();
  b.logits_rows = rows_.data();
  b.prompt_lens = prompt_lens_.data();
  b.pending_rows = any_pending ? pending_.data() : nullptr;
  b.num_tokens = static_cast<int32_t>(ids_.size());
  b.num_seqs = static_cast<int32_t>(plan.seqs.size());
  b.max_blocks_per_seq = max_blocks;
  b.num_logits = static_cast<int32_t>(rows_.size());
}

void step_executor::submit(const step_plan& plan) {
  TROUPE_CHECK_LT(num_outstanding_, 2) << "collect a step before submitting a third";
  // model_runner does not promise that copy_blocks / swap_out / swap_in are ordered after a submitted
  // step, and what an outstanding step writes into their source blocks (a fork's shared last block, a
  // preempted sequence's last token) must be there first: with copies or swaps the outstanding steps are
  // collected before. Rare (n > 1 forks, preemption), so the lost overlap does not matter.
  if (async_ && (!plan.copies.empty() || !plan.swap_out.empty() || !plan.swap_in.empty())) {
    for (int32_t i = 0; i < num_outstanding_; ++i) finish_on_host(slot(i));
  }
  outstanding& o = slot(num_outstanding_);
  o.result = step_result{};
  o.result.step = plan.step;
  o.on_runner = false;
  o.targets.clear();
  o.t0 = now_s();
  forward_batch b;
  prepare(plan, b);
  if (plan.seqs.empty()) {
    prev_ids_.clear();
    prev_on_host_ = true;
  } else if (async_) {
    build_device_rows(plan, &o.targets);
    runner_.forward_sample_submit(b, dev_rows_.data(), static_cast<int32_t>(dev_rows_.size()));
    o.on_runner = true;
    prev_on_host_ = false;
  } else {
    run_now(plan, b, o.result);
    prev_on_host_ = true;
  }
  ++num_submits_;
  ++num_outstanding_;
}

step_result step_executor::collect() {
  TROUPE_CHECK_GT(num_outstanding_, 0) << "no step submitted";
  outstanding& o = slot(0);
  finish_on_host(o);
  head_ = (head_ + 1) % static_cast<int32_t>(slots_.size());
  --num_outstanding_;
  return std::move(o.result);
}

void step_executor::drain() {
  while (num_outstanding_ > 0) collect();
}

void step_executor::finish_on_host(outstanding& o) {
  if (!o.on_runner) return;
  const size_t n = o.targets.size();
  dev_ids_.resize(n);
  dev_logprobs_.resize(n);
  if (dev_top_.size() < n * sampling_max_logprobs) dev_top_.resize(n * sampling_max_logprobs);
  runner_.forward_sample_collect(dev_ids_.data(), dev_logprobs_.data(), dev_top_.data());
  o.on_runner = false;
  take_device_results(o.targets, o.result);
  // The newest submitted step: the next plan's placeholders can be resolved on the host now.
  if (&o == &slot(num_outstanding_ - 1)) {
    prev_ids_.assign(dev_ids_.begin(), dev_ids_.end());
    prev_on_host_ = true;
  }
  o.result.forward_s = now_s() - o.t0;
}

void step_executor::run_now(const step_plan& plan, const forward_batch& b, step_result& res) {
  prev_ids_.clear();
  if (runner_.samples_on_device()) {
    build_device_rows(plan, &sync_targets_);
    const size_t n = dev_rows_.size();
    dev_ids_.resize(n);
    dev_logprobs_.resize(n);
    if (dev_top_.size() < n * sampling_max_logprobs) dev_top_.resize(n * sampling_max_logprobs);
    runner_.forward_sample(b, dev_rows_.data(), static_cast<int32_t>(n), dev_ids_.data(),
                           dev_logprobs_.data(), dev_top_.data());
    take_device_results(sync_targets_, res);
    prev_ids_.assign(dev_ids_.begin(), dev_ids_.end());
  } else {
    const int32_t vocab = runner_.config().vocab_size;
    logits_.resize(rows_.size() * static_cast<size_t>(vocab));
    runner_.forward(b, logits_.data());
    for_each_draw(plan, [&](mirror& m, int64_t seq_id, int32_t row, uint64_t step) {
      res.samples.push_back(sample_one(logits_.data() + static_cast<size_t>(row) * vocab, m, seq_id, step));
      prev_ids_.push_back(res.samples.back().token);
    });
  }
  res.forward_s = now_s() - slot(num_outstanding_).t0;
}

void step_executor::build_device_rows(const step_plan& plan, std::vector<draw_target>* targets) {
  dev_rows_.clear();
  targets->clear();
  for_each_draw(plan, [&](mirror& m, int64_t seq_id, int32_t logits_row, uint64_t step) {
    // The device reads the history now: with a draw of this sequence still outstanding it would miss a
    // token. The scheduler does not plan ahead for sequences with penalties.
    if (m.pending > 0) TROUPE_CHECK(!m.params->has_penalties()) << "sequence" << seq_id << "has penalties";
    device_sample_row d;
    d.logits_row = logits_row;
    d.params = m.params.get();
    d.seed = m.seed;
    d.step = step;
    d.prompt_ids = m.prompt.data();
    d.output_ids = m.outputs.data();
    d.num_prompt_ids = static_cast<int32_t>(m.prompt.size());
    d.num_output_ids = static_cast<int32_t>(m.outputs.size());
    dev_rows_.push_back(d);
    targets->push_back({seq_id, m.gen});
    ++m.pending;
  });
}

void step_executor::take_device_results(const std::vector<draw_target>& targets, step_result& res) {
  const int32_t vocab = runner_.config().vocab_size;
  for (size_t k = 0; k < targets.size(); ++k) {
    // A sequence dropped since (ended or preempted while its draw was outstanding) gets no output: the
    // scheduler has no use for it.
    auto it = mirrors_.find(targets[k].seq_id);
    if (it == mirrors_.end() || it->second.gen != targets[k].gen) continue;
    mirror& m = it->second;
    const int64_t seq_id = targets[k].seq_id;
    const sampling_params& p = *m.params;
    TROUPE_CHECK_GE(dev_ids_[k], 0) << "sequence" << seq_id
                                    << ": a logit is NaN or +inf, or the scaled maximum is not finite";
    sampled_token t;
    t.seq_id = seq_id;
    t.token = dev_ids_[k];
    t.logprob = p.need_logprob || p.logprobs > 0 ? dev_logprobs_[k] : 0.0f;  // as sampler::sample
    const auto* top = dev_top_.data() + k * sampling_max_logprobs;
    t.top.assign(top, top + std::min(p.logprobs, vocab));
    m.outputs.push_back(t.token);
    TROUPE_CHECK_GT(m.pending, 0) << seq_id;
    --m.pending;
    res.samples.push_back(std::move(t));
  }
}

}  // namespace troupe
