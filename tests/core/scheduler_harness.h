// The scheduler tests' fixtures: a deterministic fake model, request builders, and a fake worker that
// keeps the token written at every KV slot so a test can check what each step reads and writes; the
// harness runs the scheduler against it step by step, one step at a time or planning ahead (asynchronous
// scheduling: two steps in flight). async_runner turns any model_runner into one that steps
// asynchronously, the way a device does, for the step executor's and the engine's tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/plugin_api/model_runner.h"
#include "core/rng.h"
#include "core/sampling.h"
#include "core/sched/scheduler.h"
#include "tests/common/test_seed.h"

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

// What the KV manager said when a step was planned: the worker checks a step against it when it runs the
// step, which (planning ahead) may be after the next step was planned.
struct kv_snapshot {
  std::unordered_map<int64_t, ids> tables;  // the plan's sequences' block tables
  ids ref_counts;                           // [num_blocks]
};

inline kv_snapshot snapshot(const scheduler& sched, const step_plan& plan) {
  kv_snapshot k;
  for (const seq_step& st : plan.seqs) k.tables[st.seq_id] = sched.kv().block_table(st.seq_id);
  const block_pool& pool = sched.kv().pool();
  k.ref_counts.resize(pool.num_blocks());
  for (int32_t b = 0; b < pool.num_blocks(); ++b) k.ref_counts[b] = pool.ref_count(b);
  return k;
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

  step_result run(const step_plan& plan, const scheduler& sched) { return run(plan, snapshot(sched, plan)); }

  // Runs the steps in the order planned; a plan's kTokenPending must be the token this worker drew for
  // that sequence in the step it ran just before.
  step_result run(const step_plan& plan, const kv_snapshot& kv) {
    const int64_t this_run = runs_++;
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
      EXPECT_EQ(m.table, kv.tables.at(st.seq_id)) << "seq " << st.seq_id;
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
        const int32_t tok = plan.tokens_of(st)[p - st.start];
        if (tok == kTokenPending) {
          ++placeholders;
          EXPECT_EQ(n, 1) << "seq " << st.seq_id << ": a placeholder in a chunk";
          EXPECT_EQ(p, static_cast<int32_t>(m.tokens.size()) - 1) << "seq " << st.seq_id;
          EXPECT_EQ(m.drawn_in, this_run - 1) << "seq " << st.seq_id << ": a placeholder not one step back";
        } else {
          EXPECT_EQ(tok, m.tokens[p]) << "seq " << st.seq_id << " position " << p;
        }
        const int32_t b = m.table[p / bs_];
        // Children forked by this very step already share what it writes (they copy its state after it).
        EXPECT_EQ(kv.ref_counts.at(b), 1 + static_cast<int32_t>(st.fork_children.size()))
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
        c.drawn_in = this_run;
        children.push_back(std::move(c));
      }
      const int32_t tok = next_token(m.seed, m.tokens, out_index);
      m.tokens.push_back(tok);
      m.drawn_in = this_run;
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

  int64_t placeholders = 0;  // kTokenPending tokens seen

 private:
  struct mirror {
    ids tokens;  // prompt + outputs as the worker knows them
    int32_t prompt_len = 0;
    int32_t computed = 0;
    ids table;
    uint64_t seed = 0;
    int64_t drawn_in = -1;  // the run that drew its last token
  };
  int64_t runs_ = 0;
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
    if (sched.num_in_flight() == 2) ++planned_ahead;
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
  // Asynchronous scheduling as the actors do it: plans while the scheduler allows it (a second step while
  // one is in flight), then the worker runs the oldest step and the scheduler applies its result.
  std::vector<seq_output> async_step() {
    plan_ahead();
    if (queue.empty()) return {};
    auto outs = finish_oldest();
    EXPECT_NO_THROW(sched.kv().pool().check_invariants());
    return outs;
  }
  void plan_ahead() {
    while (sched.has_work() &&
           (sched.num_in_flight() == 0 || (sched.num_in_flight() == 1 && sched.can_plan_ahead()))) {
      plan();
      if (last.empty()) break;
      queue.emplace_back(last, snapshot(sched, last));
    }
    EXPECT_EQ(static_cast<int32_t>(queue.size()), sched.num_in_flight());
  }
  std::vector<seq_output> finish_oldest() {
    const step_result r = worker.run(queue.front().first, queue.front().second);
    queue.pop_front();
    auto outs = sched.update(r);
    record(outs);
    return outs;
  }
  int run_until_idle(int max_steps = 10000) {
    int steps = 0;
    while (sched.has_work() || sched.step_in_flight()) {
      if (async)
        async_step();
      else
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
  bool async = false;                                   // run_until_idle plans ahead
  std::deque<std::pair<step_plan, kv_snapshot>> queue;  // async: the steps in flight, oldest first
  int64_t planned_ahead = 0;                            // plans made with a step in flight
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

// ---- Workloads shared by test_scheduler.cpp and test_scheduler_async.cpp ----

// Two 4-token prompts, 4 blocks of 4: both decode until position 8 needs a third block for A.
inline void add_preemption_pair(harness& h) {
  ASSERT_TRUE(h.sched.add(request(1, iota_tokens(4), params(6))));
  ASSERT_TRUE(h.sched.add(request(2, iota_tokens(4, 200), params(8))));
}

inline std::map<seq_key, ids> reference_outputs(void (*add)(harness&)) {
  harness ref(config(64), 64, 4, false);
  add(ref);
  ref.run_until_idle();
  EXPECT_EQ(ref.sched.stats().preemptions, 0u);
  return ref.outputs;
}

// Outputs of one request whose worker plays `script` (output i -> script[i]).
inline std::pair<ids, std::string> run_scripted(std::shared_ptr<const sampling_params> p,
                                                int64_t max_model_len = 4096, bool async = false) {
  harness h(config(64, 256, max_model_len), 64, 4, false);
  h.async = async;
  const ids script = {5, 6, 7, kEos, 8, 9, 10, 11, 12, 13};
  h.worker.next_token = [script](uint64_t, const ids&, int32_t i) { return script.at(i); };
  EXPECT_TRUE(h.sched.add(request(1, iota_tokens(4), std::move(p))));
  h.run_until_idle();
  EXPECT_TRUE(h.sched.idle_and_clean());
  return {h.outputs[seq_key(1, 0)], h.finish[seq_key(1, 0)]};
}

inline void add_reset_pair(harness& h) {
  ASSERT_TRUE(h.sched.add(request(1, iota_tokens(6), params(6))));
  ASSERT_TRUE(h.sched.add(request(2, iota_tokens(5, 40), params(5))));
}

// Random workload: arrivals over time, random n, priorities, lengths, shared prefixes (prefix hits),
// aborts at random points, a pool small enough to preempt.
struct workload_item {
  int32_t arrive_step;
  sched_request_in req;
};

inline std::vector<workload_item> make_workload(std::mt19937_64& rng, int32_t num_requests) {
  std::vector<ids> prefixes;
  for (int i = 0; i < 4; ++i)
    prefixes.push_back(iota_tokens(4 + static_cast<int32_t>(rng() % 12), 1000 * (i + 1)));
  std::vector<workload_item> w;
  for (int32_t i = 0; i < num_requests; ++i) {
    ids prompt;
    if (rng() % 2) prompt = prefixes[rng() % prefixes.size()];
    const int32_t extra = 1 + static_cast<int32_t>(rng() % 20);
    for (int32_t k = 0; k < extra; ++k) prompt.push_back(3 + static_cast<int32_t>(rng() % 40));
    auto p = std::make_shared<sampling_params>();
    p->max_tokens = 1 + static_cast<int32_t>(rng() % 24);
    p->n = rng() % 5 == 0 ? 2 + static_cast<int32_t>(rng() % 2) : 1;
    p->ignore_eos = rng() % 3 == 0;
    if (rng() % 4 == 0) p->stop_token_ids = {3 + static_cast<int32_t>(rng() % 40)};
    workload_item it;
    it.arrive_step = static_cast<int32_t>(rng() % (num_requests / 2));
    it.req = request(static_cast<uint64_t>(i + 1), prompt, p, static_cast<int32_t>(rng() % 3), rng() | 1);
    w.push_back(std::move(it));
  }
  std::stable_sort(w.begin(), w.end(),
                   [](const auto& a, const auto& b) { return a.arrive_step < b.arrive_step; });
  return w;
}

// Runs the workload; with aborts, random requests are aborted between steps and while a step runs.
inline std::map<seq_key, ids> run_workload(const std::vector<workload_item>& w, const scheduler_config& c,
                                           int32_t num_blocks, bool prefix, std::mt19937_64* abort_rng,
                                           scheduler_stats* stats = nullptr, bool async = false,
                                           int64_t* planned_ahead = nullptr) {
  harness h(c, num_blocks, 4, prefix);
  h.check_seq_cap = false;  // n > 1 children join without passing admission
  // Tokens in [2, 42): EOS (2) sometimes ends a sequence.
  h.worker.next_token = [](uint64_t seed, const ids& tokens, int32_t) {
    return 2 + (model_token(seed, tokens, 0) - 3);
  };
  size_t next = 0;
  int32_t step = 0;
  std::vector<uint64_t> live;
  while (next < w.size() || h.sched.has_work() || h.sched.step_in_flight()) {
    while (next < w.size() && w[next].arrive_step <= step) {
      EXPECT_TRUE(h.sched.add(w[next].req));
      live.push_back(w[next].req.rid);
      ++next;
    }
    if (abort_rng && !live.empty() && (*abort_rng)() % 4 == 0) {
      const size_t i = (*abort_rng)() % live.size();
      h.sched.abort(live[i]);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    }
    if (async) {
      h.plan_ahead();  // up to two steps in flight
    } else {
      h.plan();
      if (h.sched.step_in_flight()) h.queue.emplace_back(h.last, snapshot(h.sched, h.last));
    }
    if (!h.queue.empty()) {
      const step_result r = h.worker.run(h.queue.front().first, h.queue.front().second);
      h.queue.pop_front();
      if (abort_rng && !live.empty() && (*abort_rng)() % 8 == 0) {
        const size_t i = (*abort_rng)() % live.size();
        h.sched.abort(live[i]);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      }
      h.record(h.sched.update(r));
    }
    EXPECT_NO_THROW(h.sched.kv().pool().check_invariants());
    if (::testing::Test::HasFailure() || ++step > 200000) {
      ADD_FAILURE() << "stopped at step " << step;
      break;
    }
  }
  h.step();  // flush the last dropped ids
  if (stats) *stats = h.sched.stats();
  if (planned_ahead) *planned_ahead = h.planned_ahead;
  EXPECT_TRUE(h.sched.idle_and_clean());
  EXPECT_EQ(h.sched.stats().num_requests, 0);
  EXPECT_EQ(h.sched.kv().num_sequences(), 0);
  EXPECT_EQ(h.sched.kv().pool().num_blocks_used(), 0);
  EXPECT_EQ(h.worker.num_known(), 0u);
  if (!abort_rng) {
    for (const auto& item : w) {
      for (int32_t i = 0; i < item.req.params->n; ++i) {
        EXPECT_EQ(h.finish.count(seq_key(item.req.rid, i)), 1u) << "rid " << item.req.rid << " seq " << i;
      }
    }
  }
  return h.outputs;
}

inline scheduler_config random_config(std::mt19937_64& rng) {
  scheduler_config c = config(8 + static_cast<int32_t>(rng() % 57), 4 + static_cast<int32_t>(rng() % 29), 64);
  if (rng() % 2) {
    c.preemption = preemption_mode::swap;
    c.num_host_blocks = static_cast<int32_t>(rng() % 40);
  }
  return c;
}

// One round of a random abort storm: a fresh seed (tests print it on failure), the generator it seeds, a
// 300-request workload, a random config and a pool of 20..60 blocks (64-token contexts need at most 16
// blocks of 4 each, so it preempts often); the generator goes on to drive run_workload's aborts.
struct storm_round {
  uint64_t seed;
  std::mt19937_64 rng;
  std::vector<workload_item> workload;
  scheduler_config config;
  int32_t num_blocks;
};
inline storm_round make_storm_round() {
  storm_round s{};
  s.seed = test::fresh_seed64();  // TROUPE_TEST_SEED: every round replays it
  s.rng.seed(s.seed);
  s.workload = make_workload(s.rng, 300);
  s.config = random_config(s.rng);
  s.num_blocks = 20 + static_cast<int32_t>(s.rng() % 41);
  return s;
}

// A runner that steps asynchronously over any other runner, the way a device does: forward_sample_submit
// copies the step (its views are valid during the call only) and returns; the step runs (the inner
// runner's forward, then sampler::sample for every row) only when forward_sample_collect asks for it, so
// that the executor submits step N+1 before step N has run. Drawn ids stay inside (the "device"): a
// pending row reads the id drawn by the previous submit. Breaks of the contract throw: a third
// outstanding step, a collect with nothing submitted, copies or swaps while a step has not run, a
// pending row that is not one step back.
class async_runner final : public model_runner {
 public:
  explicit async_runner(model_runner& inner) : inner_(inner) {}
  const model_config& config() const override { return inner_.config(); }
  int32_t block_size() const override { return inner_.block_size(); }
  int32_t num_kv_blocks() const override { return inner_.num_kv_blocks(); }
  void forward(const forward_batch& b, float* logits) override {
    idle("forward");
    inner_.forward(b, logits);
  }
  bool samples_on_device() const override { return true; }
  bool samples_async() const override { return true; }
  void forward_sample(const forward_batch& b, const device_sample_row* rows, int32_t num_rows, int32_t* ids,
                      float* logprobs, token_logprob* top) override {
    idle("forward_sample");
    forward_sample_submit(b, rows, num_rows);
    forward_sample_collect(ids, logprobs, top);
  }
  void forward_sample_submit(const forward_batch& b, const device_sample_row* rows,
                             int32_t num_rows) override {
    if (jobs_.size() >= 2) throw std::logic_error("async_runner: a third outstanding step");
    job j;
    j.tokens.assign(b.token_ids, b.token_ids + b.num_tokens);
    j.positions.assign(b.positions, b.positions + b.num_tokens);
    j.slots.assign(b.slot_mapping, b.slot_mapping + b.num_tokens);
    j.qs.assign(b.query_start, b.query_start + b.num_seqs + 1);
    j.ctx.assign(b.context_lens, b.context_lens + b.num_seqs);
    j.tables.assign(b.block_tables, b.block_tables + static_cast<size_t>(b.num_seqs) * b.max_blocks_per_seq);
    j.logits_rows.assign(b.logits_rows, b.logits_rows + b.num_logits);
    if (b.prompt_lens) j.prompt_lens.assign(b.prompt_lens, b.prompt_lens + b.num_seqs);
    if (b.pending_rows) j.pending.assign(b.pending_rows, b.pending_rows + b.num_tokens);
    j.max_blocks = b.max_blocks_per_seq;
    for (int32_t i = 0; i < num_rows; ++i) {
      row r;
      r.logits_row = rows[i].logits_row;
      r.params = *rows[i].params;
      r.params.need_logprob = true;  // a device computes it whatever need_logprob says
      r.seed = rows[i].seed;
      r.step = rows[i].step;
      r.prompt.assign(rows[i].prompt_ids, rows[i].prompt_ids + rows[i].num_prompt_ids);
      r.outputs.assign(rows[i].output_ids, rows[i].output_ids + rows[i].num_output_ids);
      j.rows.push_back(std::move(r));
    }
    j.prev_rows = last_submit_rows_;
    last_submit_rows_ = num_rows;
    jobs_.push_back(std::move(j));
    ++submits;
  }
  void forward_sample_collect(int32_t* ids, float* logprobs, token_logprob* top) override {
    if (jobs_.empty()) throw std::logic_error("async_runner: collect with nothing submitted");
    job& j = jobs_.front();
    run(j);
    for (size_t i = 0; i < j.rows.size(); ++i) {
      ids[i] = j.out[i].id;
      logprobs[i] = j.out[i].logprob;
      for (size_t k = 0; k < j.out[i].top.size(); ++k) top[i * sampling_max_logprobs + k] = j.out[i].top[k];
    }
    jobs_.pop_front();
  }
  void copy_blocks(const int32_t* s, const int32_t* d, int32_t n) override {
    idle("copy_blocks");
    inner_.copy_blocks(s, d, n);
  }
  void reserve_host_blocks(int32_t n) override { inner_.reserve_host_blocks(n); }
  void swap_out(const int32_t* s, const int32_t* d, int32_t n) override {
    idle("swap_out");
    inner_.swap_out(s, d, n);
  }
  void swap_in(const int32_t* s, const int32_t* d, int32_t n) override {
    idle("swap_in");
    inner_.swap_in(s, d, n);
  }

  int64_t submits = 0;
  int64_t pending_tokens = 0;  // tokens read from the previous step's draws "on the device"
  int64_t overlapped = 0;      // submits made while an earlier step had not run

 private:
  struct row {
    int32_t logits_row = 0;
    sampling_params params;
    uint64_t seed = 0, step = 0;
    std::vector<int32_t> prompt, outputs;
  };
  struct job {
    std::vector<int32_t> tokens, positions, slots, qs, ctx, tables, logits_rows, prompt_lens, pending;
    int32_t max_blocks = 0;
    std::vector<row> rows;
    int32_t prev_rows = 0;  // rows of the submit before this one
    bool done = false;
    std::vector<sample_result> out;
  };
  // Runs every step up to j, in submit order.
  void run(job& j) {
    for (job& k : jobs_) {
      if (!k.done) run_one(k);
      if (&k == &j) break;
    }
  }
  void run_one(job& j) {
    if (jobs_.size() == 2 && &j == &jobs_.front()) ++overlapped;
    for (size_t t = 0; t < j.pending.size(); ++t) {
      if (j.pending[t] < 0) continue;
      if (j.pending[t] >= j.prev_rows || last_ids_.size() != static_cast<size_t>(j.prev_rows))
        throw std::logic_error("async_runner: a pending row outside the previous step's draws");
      j.tokens[t] = last_ids_[j.pending[t]];
      ++pending_tokens;
    }
    forward_batch b;
    b.token_ids = j.tokens.data();
    b.positions = j.positions.data();
    b.slot_mapping = j.slots.data();
    b.query_start = j.qs.data();
    b.context_lens = j.ctx.data();
    b.block_tables = j.tables.data();
    b.logits_rows = j.logits_rows.data();
    b.prompt_lens = j.prompt_lens.empty() ? nullptr : j.prompt_lens.data();
    b.num_tokens = static_cast<int32_t>(j.tokens.size());
    b.num_seqs = static_cast<int32_t>(j.ctx.size());
    b.max_blocks_per_seq = j.max_blocks;
    b.num_logits = static_cast<int32_t>(j.logits_rows.size());
    const int32_t vocab = inner_.config().vocab_size;
    logits_.resize(static_cast<size_t>(b.num_logits) * vocab);
    inner_.forward(b, logits_.data());
    last_ids_.clear();
    for (const row& r : j.rows) {
      j.out.push_back(sampler_.sample(logits_.data() + static_cast<size_t>(r.logits_row) * vocab, vocab,
                                      r.params, r.prompt, r.outputs, r.seed, r.step, scratch_));
      last_ids_.push_back(j.out.back().id);
    }
    j.done = true;
  }
  void idle(const char* what) {
    for (const job& j : jobs_) {
      if (!j.done) throw std::logic_error(std::string("async_runner: ") + what + " while a step has not run");
    }
  }

  model_runner& inner_;
  std::deque<job> jobs_;
  int32_t last_submit_rows_ = 0;
  std::vector<int32_t> last_ids_;  // the ids of the last step run ("on the device")
  sampler sampler_;
  std::vector<float> logits_, scratch_;
};

}  // namespace troupe::scheduler_test
