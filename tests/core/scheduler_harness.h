// The scheduler tests' fixtures: a deterministic fake model, request builders, and a fake worker that
// keeps the token written at every KV slot so a test can check what each step reads and writes; the
// harness runs the scheduler against it step by step.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/sched/scheduler.h"

namespace troupe::scheduler_test {

using ids = std::vector<int32_t>;
inline constexpr int32_t kEos = 2;

// The tokens a plan carries for one of its sequences.
inline ids toks(const step_plan& p, const seq_step& s) {
  return ids(p.tokens_of(s), p.tokens_of(s) + s.num_tokens);
}

inline ids iota_tokens(int32_t n, int32_t first = 100) {
  ids t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The fake model: the next token depends only on the sequence's seed and every token before it, so any
// correct schedule (chunked, cached, preempted, swapped, restarted) produces the same outputs. Never EOS.
inline int32_t model_token(uint64_t seed, const ids& tokens, int32_t /*output_index*/) {
  uint64_t h = mix64(seed);
  for (int32_t t : tokens) h = mix64(h ^ static_cast<uint32_t>(t));
  return 3 + static_cast<int32_t>(h % 40);
}

inline std::shared_ptr<const sampling_params> params(int32_t max_tokens, int32_t n = 1,
                                                     bool ignore_eos = true, ids stop_ids = {}) {
  auto p = std::make_shared<sampling_params>();
  p->max_tokens = max_tokens;
  p->n = n;
  p->ignore_eos = ignore_eos;
  p->stop_token_ids = std::move(stop_ids);
  return p;
}

inline sched_request_in request(uint64_t rid, ids prompt, std::shared_ptr<const sampling_params> p,
                                int32_t priority = 0, uint64_t seed = 0) {
  sched_request_in r;
  r.rid = rid;
  r.prompt = std::move(prompt);
  r.params = std::move(p);
  r.priority = priority;
  r.seed = seed == 0 ? 1000 + rid : seed;
  r.eos_ids = {kEos};
  return r;
}

// A worker that keeps the token id written at every KV slot, so it can check that every position a step
// reads (prefix hits, copies, swaps included) holds the right token, and that every block a step writes is
// owned by that sequence alone.
class fake_worker {
 public:
  fake_worker(int32_t num_blocks, int32_t block_size, int32_t num_host_blocks)
      : bs_(block_size),
        device_(num_blocks, ids(block_size, -1)),
        host_(std::max(num_host_blocks, 1), ids(block_size, -1)) {}

  std::function<int32_t(uint64_t seed, const ids& tokens, int32_t output_index)> next_token = model_token;

  void reset() { seqs_.clear(); }  // the worker died: it forgets every sequence (device memory stays)
  size_t num_known() const { return seqs_.size(); }

  step_result run(const step_plan& plan, const scheduler& sched) {
    step_result r;
    r.step = plan.step;
    for (int64_t id : plan.dropped) EXPECT_EQ(seqs_.erase(id), 1u) << "dropped unknown seq " << id;
    for (const auto& c : plan.swap_out) host_.at(c.dst) = device_.at(c.src);
    for (const auto& c : plan.swap_in) device_.at(c.dst) = host_.at(c.src);
    for (const auto& c : plan.copies) device_.at(c.dst) = device_.at(c.src);
    int32_t total = 0;
    bool seen_new = false;
    for (const seq_step& st : plan.seqs) {
      const int32_t n = st.num_tokens;
      total += n;
      EXPECT_GT(n, 0) << "seq " << st.seq_id;
      if (st.is_new) {
        seen_new = true;
        EXPECT_EQ(seqs_.count(st.seq_id), 0u) << "seq " << st.seq_id;
        EXPECT_NE(st.params, nullptr);
        mirror m;
        m.tokens = st.prompt;
        m.tokens.insert(m.tokens.end(), st.outputs.begin(), st.outputs.end());
        m.prompt_len = static_cast<int32_t>(st.prompt.size());
        m.computed = st.start;
        m.seed = st.seed;
        seqs_[st.seq_id] = std::move(m);
      } else {
        // Running sequences (already known) are all scheduled before any admission.
        EXPECT_FALSE(seen_new) << "seq " << st.seq_id << " scheduled after an admission";
        if (!seqs_.count(st.seq_id)) {
          ADD_FAILURE() << "seq " << st.seq_id << " not new but unknown to the worker";
          continue;
        }
      }
      mirror& m = seqs_[st.seq_id];
      EXPECT_EQ(st.start, m.computed) << "seq " << st.seq_id;
      for (const auto& [i, b] : st.table_diff) {
        if (i >= static_cast<int32_t>(m.table.size())) m.table.resize(i + 1, -1);
        m.table[i] = b;
      }
      m.table.resize(st.table_size, -1);
      EXPECT_EQ(m.table, sched.kv().block_table(st.seq_id)) << "seq " << st.seq_id;
      const int32_t end = st.start + n;
      if (end > static_cast<int32_t>(m.tokens.size())) {
        ADD_FAILURE() << "seq " << st.seq_id << " computes past its tokens";
        continue;
      }
      EXPECT_EQ(st.table_size, (end + bs_ - 1) / bs_) << "seq " << st.seq_id;
      for (int32_t p = 0; p < st.start; ++p) {
        const int32_t b = m.table[p / bs_];
        if (device_.at(b)[p % bs_] != m.tokens[p]) {
          ADD_FAILURE() << "seq " << st.seq_id << " reads a wrong cached token at position " << p
                        << " (block " << b << ")";
          break;
        }
      }
      for (int32_t p = st.start; p < end; ++p) {
        EXPECT_EQ(plan.tokens_of(st)[p - st.start], m.tokens[p]) << "seq " << st.seq_id << " position " << p;
        const int32_t b = m.table[p / bs_];
        // Children forked by this very step already share what it writes (they copy its state after it).
        EXPECT_EQ(sched.kv().pool().ref_count(b), 1 + static_cast<int32_t>(st.fork_children.size()))
            << "seq " << st.seq_id << " writes shared block " << b;
        device_.at(b)[p % bs_] = m.tokens[p];
      }
      m.computed = end;
      EXPECT_EQ(st.sample, end == static_cast<int32_t>(m.tokens.size())) << "seq " << st.seq_id;
      EXPECT_EQ(st.fork_children.size(), st.fork_seeds.size());
      if (!st.sample) {
        EXPECT_TRUE(st.fork_children.empty());
        continue;
      }
      const int32_t out_index = static_cast<int32_t>(m.tokens.size()) - m.prompt_len;
      EXPECT_EQ(st.output_index, out_index) << "seq " << st.seq_id;
      std::vector<mirror> children;
      for (size_t i = 0; i < st.fork_children.size(); ++i) {
        mirror c = m;
        c.seed = st.fork_seeds[i];
        children.push_back(std::move(c));
      }
      const int32_t tok = next_token(m.seed, m.tokens, out_index);
      m.tokens.push_back(tok);
      r.samples.push_back({st.seq_id, tok, -0.5f, {}});
      for (size_t i = 0; i < children.size(); ++i) {
        EXPECT_EQ(seqs_.count(st.fork_children[i]), 0u);
        mirror& c = seqs_[st.fork_children[i]] = std::move(children[i]);
        const int32_t ctok = next_token(c.seed, c.tokens, out_index);
        c.tokens.push_back(ctok);
        r.samples.push_back({st.fork_children[i], ctok, -0.5f, {}});
      }
    }
    EXPECT_EQ(total, plan.num_tokens);
    return r;
  }

 private:
  struct mirror {
    ids tokens;  // prompt + outputs as the worker knows them
    int32_t prompt_len = 0;
    int32_t computed = 0;
    ids table;
    uint64_t seed = 0;
  };
  int32_t bs_;
  std::vector<ids> device_;  // [num_blocks][block_size] token id stored at each slot
  std::vector<ids> host_;    // [num_host_blocks][block_size]
  std::unordered_map<int64_t, mirror> seqs_;
};

using seq_key = std::pair<uint64_t, int32_t>;  // rid, index

// Drives a scheduler against the fake worker one synchronous step at a time.
struct harness {
  harness(const scheduler_config& c, int32_t num_blocks, int32_t block_size, bool prefix_caching)
      : cfg(c),
        sched(c, num_blocks, block_size, prefix_caching),
        worker(num_blocks, block_size, c.num_host_blocks) {}

  step_plan plan() {
    last = sched.plan();
    EXPECT_LE(last.num_tokens, cfg.max_num_batched_tokens);
    if (check_seq_cap) {
      EXPECT_LE(sched.stats().num_running, cfg.max_num_seqs);
    }
    return last;
  }
  void record(const std::vector<seq_output>& outs) {
    for (const auto& o : outs) {
      const seq_key k{o.rid, o.index};
      EXPECT_EQ(finish.count(k), 0u) << "output after the finish of rid " << o.rid;
      outputs[k].push_back(o.token);
      if (o.finish_reason) finish[k] = *o.finish_reason;
    }
  }
  // plan -> worker -> update; returns the outputs.
  std::vector<seq_output> step() {
    plan();
    if (!sched.step_in_flight()) {
      EXPECT_TRUE(last.seqs.empty());
      return {};
    }
    const step_result r = worker.run(last, sched);
    auto outs = sched.update(r);
    record(outs);
    EXPECT_NO_THROW(sched.kv().pool().check_invariants());
    return outs;
  }
  int run_until_idle(int max_steps = 10000) {
    int steps = 0;
    while (sched.has_work() || sched.step_in_flight()) {
      step();
      if (++steps > max_steps || ::testing::Test::HasFatalFailure()) {
        ADD_FAILURE() << "no progress after " << steps << " steps";
        break;
      }
    }
    step();  // flush dropped ids
    EXPECT_FALSE(sched.step_in_flight());
    return steps;
  }

  scheduler_config cfg;
  scheduler sched;
  fake_worker worker;
  step_plan last;
  bool check_seq_cap = true;
  std::map<seq_key, ids> outputs;
  std::map<seq_key, std::string> finish;
};

inline scheduler_config config(int32_t budget, int32_t max_seqs = 256, int64_t max_model_len = 4096) {
  scheduler_config c;
  c.max_num_batched_tokens = budget;
  c.max_num_seqs = max_seqs;
  c.max_model_len = max_model_len;
  return c;
}

inline std::vector<std::pair<int32_t, int32_t>> diff(std::initializer_list<std::pair<int32_t, int32_t>> l) {
  return l;
}

}  // namespace troupe::scheduler_test
