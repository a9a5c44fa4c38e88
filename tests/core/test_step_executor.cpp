// step_executor's two sampling paths: a runner that samples on its device gets one device_sample_row per
// draw (n > 1 fork children share their parent's logits row with their own seeds) and must see exactly
// what the host path feeds sampler::sample. A fake runner emulates the device with sampler::sample itself,
// so any difference comes from the rows the executor builds (history, seed, step, logits row, logprobs).
// Asynchronous stepping (submit N+1, then collect N; placeholders for the draws of the step in flight)
// must give the same tokens, logprobs and finishes as one step at a time, over a runner that steps
// asynchronously (scheduler_test::async_runner: ids stay "on the device") and over every other runner.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/plugin_api/model_runner.h"
#include "core/sampling.h"
#include "core/sched/scheduler.h"
#include "core/sched/step_executor.h"
#include "tests/core/scheduler_harness.h"

namespace troupe {
namespace {

constexpr int32_t kVocab = 97;

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Logits that depend on the last token and its position only (the KV cache is not modelled), with ties.
class fake_runner final : public model_runner {
 public:
  explicit fake_runner(bool on_device) : on_device_(on_device) { cfg_.vocab_size = kVocab; }
  const model_config& config() const override { return cfg_; }
  int32_t block_size() const override { return 4; }
  int32_t num_kv_blocks() const override { return 256; }
  void forward(const forward_batch& b, float* logits) override {
    for (int32_t i = 0; i < b.num_logits; ++i) {
      const int32_t t = b.logits_rows[i];
      for (int32_t v = 0; v < kVocab; ++v) {
        const uint64_t h = mix64((static_cast<uint64_t>(b.token_ids[t]) << 32) ^ (b.positions[t] * 131u) ^ v);
        logits[static_cast<size_t>(i) * kVocab + v] = static_cast<float>(h % 64) * 0.125f;
      }
    }
  }
  bool samples_on_device() const override { return on_device_; }
  void forward_sample(const forward_batch& b, const device_sample_row* rows, int32_t num_rows, int32_t* ids,
                      float* logprobs, token_logprob* top) override {
    logits_.resize(static_cast<size_t>(b.num_logits) * kVocab);
    forward(b, logits_.data());
    for (int32_t r = 0; r < num_rows; ++r) {
      const device_sample_row& d = rows[r];
      ASSERT_GE(d.logits_row, 0);
      ASSERT_LT(d.logits_row, b.num_logits);
      const std::vector<int32_t> prompt(d.prompt_ids, d.prompt_ids + d.num_prompt_ids);
      const std::vector<int32_t> output(d.output_ids, d.output_ids + d.num_output_ids);
      // A device computes the logprob whatever need_logprob says; the executor must drop it.
      sampling_params p = *d.params;
      p.need_logprob = true;
      const sample_result s = sampler_.sample(logits_.data() + static_cast<size_t>(d.logits_row) * kVocab,
                                              kVocab, p, prompt, output, d.seed, d.step, scratch_);
      ids[r] = s.id;
      logprobs[r] = s.logprob;
      for (size_t j = 0; j < s.top.size(); ++j) top[r * sampling_max_logprobs + j] = s.top[j];
    }
    ++device_steps;
  }
  void copy_blocks(const int32_t*, const int32_t*, int32_t) override {}
  void reserve_host_blocks(int32_t) override {}
  void swap_out(const int32_t*, const int32_t*, int32_t) override {}
  void swap_in(const int32_t*, const int32_t*, int32_t) override {}

  int device_steps = 0;

 private:
  bool on_device_;
  model_config cfg_;
  sampler sampler_;
  std::vector<float> logits_, scratch_;
};

struct outputs {
  std::map<std::pair<uint64_t, int32_t>, std::vector<int32_t>> ids;
  std::map<std::pair<uint64_t, int32_t>, std::vector<float>> logprobs;
  std::map<std::pair<uint64_t, int32_t>, std::vector<std::vector<token_logprob>>> top;
  std::map<std::pair<uint64_t, int32_t>, std::string> finish;
  int64_t planned_ahead = 0;
};

// Runs the requests through scheduler + executor. pipelined: as the actors do with asynchronous
// scheduling, a step is planned and submitted while the previous one is outstanding whenever the
// scheduler allows it, and only then is the previous one collected.
outputs drive(model_runner& runner, const std::vector<sched_request_in>& reqs, bool pipelined,
              int32_t budget = 16) {
  scheduler_config sc;
  sc.max_model_len = 128;
  sc.max_num_batched_tokens = budget;
  scheduler sched(sc, runner.num_kv_blocks(), runner.block_size(), false);
  step_executor exec(runner);
  for (const auto& r : reqs) EXPECT_TRUE(sched.add(r));
  outputs out;
  while (sched.has_work() || sched.step_in_flight()) {
    while (sched.has_work() && (sched.num_in_flight() == 0 || (pipelined && sched.can_plan_ahead()))) {
      const bool ahead = sched.num_in_flight() == 1;
      step_plan plan = sched.plan();
      if (plan.empty()) break;
      exec.submit(plan);
      out.planned_ahead += ahead;
    }
    EXPECT_EQ(exec.num_outstanding(), sched.num_in_flight());
    if (!sched.step_in_flight()) break;
    for (const auto& o : sched.update(exec.collect())) {
      const auto key = std::make_pair(o.rid, o.index);
      EXPECT_EQ(out.finish.count(key), 0u) << "output after the finish of " << o.rid;
      out.ids[key].push_back(o.token);
      out.logprobs[key].push_back(o.logprob);
      out.top[key].push_back(o.top);
      if (o.finish_reason) out.finish[key] = *o.finish_reason;
    }
  }
  EXPECT_EQ(exec.num_outstanding(), 0);
  EXPECT_TRUE(sched.idle_and_clean());
  return out;
}

void expect_same(const outputs& got, const outputs& want) {
  EXPECT_EQ(got.ids, want.ids);
  EXPECT_EQ(got.logprobs, want.logprobs);
  EXPECT_EQ(got.finish, want.finish);
  for (const auto& [key, tops] : want.top) {
    const auto& g = got.top.at(key);
    ASSERT_EQ(g.size(), tops.size());
    for (size_t t = 0; t < tops.size(); ++t) {
      ASSERT_EQ(g[t].size(), tops[t].size()) << key.first;
      for (size_t j = 0; j < tops[t].size(); ++j) {
        EXPECT_EQ(g[t][j].id, tops[t][j].id);
        EXPECT_EQ(g[t][j].logprob, tops[t][j].logprob);
      }
    }
  }
}

std::vector<sched_request_in> penalty_requests() {
  std::vector<std::shared_ptr<sampling_params>> ps;
  auto add = [&](auto set) {
    auto p = std::make_shared<sampling_params>();
    p->max_tokens = 10;
    p->ignore_eos = true;
    set(*p);
    ps.push_back(p);
  };
  add([](sampling_params& p) { p.temperature = 0.9f; });
  add([](sampling_params& p) {
    p.top_k = 7;
    p.repetition_penalty = 1.3f;
    p.frequency_penalty = 0.4f;
    p.presence_penalty = 0.2f;
    p.logprobs = 3;
  });
  add([](sampling_params& p) {
    p.n = 3;  // a fork: three draws from one logits row with three seeds
    p.top_p = 0.8f;
    p.repetition_penalty = 0.8f;
  });
  add([](sampling_params& p) {
    p.temperature = 0;
    p.logprobs = 2;
    p.need_logprob = false;
  });
  add([](sampling_params& p) {
    p.min_p = 0.1f;
    p.need_logprob = false;  // no logprobs asked: 0 on both paths
  });
  std::vector<sched_request_in> reqs;
  for (size_t i = 0; i < ps.size(); ++i) {
    sched_request_in in;
    in.rid = i + 1;
    for (int32_t t = 0; t < 5 + static_cast<int32_t>(i) * 4; ++t) in.prompt.push_back((t * 13 + 5) % kVocab);
    in.params = ps[i];
    in.seed = 500 + i;
    reqs.push_back(std::move(in));
  }
  return reqs;
}

// Prompts in chunks of a 16-token budget: steps that sample some sequences only.
outputs run(fake_runner& runner) { return drive(runner, penalty_requests(), false); }

// No penalties (the scheduler plans ahead), with n > 1, stop tokens, eos and max_tokens ends.
std::vector<sched_request_in> plain_requests() {
  std::vector<sched_request_in> reqs;
  for (int32_t i = 0; i < 8; ++i) {
    auto p = std::make_shared<sampling_params>();
    p->max_tokens = 6 + 3 * i;
    p->temperature = i % 3 == 0 ? 0.0f : 0.7f + 0.1f * static_cast<float>(i);
    p->top_k = i % 2 ? 11 : 0;
    p->logprobs = i % 4;
    p->n = i == 2 || i == 5 ? 3 : 1;
    p->ignore_eos = i % 2 == 0;
    if (i % 3 == 1) p->stop_token_ids = {3, 10, 17, 40};
    sched_request_in in;
    in.rid = static_cast<uint64_t>(i + 1);
    for (int32_t t = 0; t < 3 + 5 * i; ++t) in.prompt.push_back((t * 29 + 7 * i + 1) % kVocab);
    in.params = p;
    in.seed = 900 + static_cast<uint64_t>(i);
    in.eos_ids = {5};
    reqs.push_back(std::move(in));
  }
  return reqs;
}

TEST(StepExecutor, DeviceSamplingRowsGiveTheHostSamplersTokens) {
  fake_runner host(false), device(true);
  const outputs want = run(host);
  const outputs got = run(device);
  EXPECT_EQ(host.device_steps, 0);
  EXPECT_GT(device.device_steps, 10);
  ASSERT_EQ(want.ids.size(), 7u);  // five requests, one of them with n = 3
  EXPECT_EQ(got.ids, want.ids);
  EXPECT_EQ(got.logprobs, want.logprobs);
  for (const auto& [key, tops] : want.top) {
    const auto& g = got.top.at(key);
    ASSERT_EQ(g.size(), tops.size());
    for (size_t t = 0; t < tops.size(); ++t) {
      ASSERT_EQ(g[t].size(), tops[t].size()) << key.first;
      for (size_t j = 0; j < tops[t].size(); ++j) {
        EXPECT_EQ(g[t][j].id, tops[t][j].id);
        EXPECT_EQ(g[t][j].logprob, tops[t][j].logprob);
      }
    }
  }
  for (const auto& [key, ids] : got.ids) EXPECT_EQ(ids.size(), 10u) << key.first;
  // The fork's three choices drew with their own seeds: not all the same.
  const auto& f0 = got.ids.at({3, 0});
  EXPECT_FALSE(f0 == got.ids.at({3, 1}) && f0 == got.ids.at({3, 2}));
  // need_logprob off and no top logprobs: 0, as sampler::sample reports.
  for (float lp : got.logprobs.at({5, 0})) EXPECT_EQ(lp, 0.0f);
}

// The pipeline over every kind of runner gives the tokens of one step at a time. The asynchronous runner
// reads the placeholders' ids from its previous step ("on the device"); the others get them resolved on
// the host. With penalties the scheduler does not plan ahead, and nothing changes either.
TEST(StepExecutor, PipelinedStepsGiveTheSynchronousTokensOnEveryRunner) {
  for (int set = 0; set < 2; ++set) {
    const auto reqs = set == 0 ? plain_requests() : penalty_requests();
    for (int32_t budget : {16, 64}) {
      SCOPED_TRACE("set " + std::to_string(set) + " budget " + std::to_string(budget));
      fake_runner host(false), device(true), inner(false);
      const outputs want = drive(host, reqs, false, budget);
      scheduler_test::async_runner async(inner);
      const outputs got_async = drive(async, reqs, true, budget);
      expect_same(got_async, want);
      expect_same(drive(host, reqs, true, budget), want);
      expect_same(drive(device, reqs, true, budget), want);
      if (set == 0) {
        EXPECT_GT(got_async.planned_ahead, 20);
        EXPECT_GT(async.pending_tokens, 20);  // placeholders read on the device
        EXPECT_GT(async.overlapped, 20);      // step N ran after step N+1 was submitted
        int stops = 0, lengths = 0;
        for (const auto& [key, f] : want.finish) (f == "stop" ? stops : lengths) += 1;
        EXPECT_GT(stops, 0);
        EXPECT_GT(lengths, 0);
        EXPECT_EQ(want.ids.size(), 12u);  // eight requests, two of them with n = 3
      }
      // With penalties the scheduler plans ahead only while no sequence with them draws in the step in
      // flight; a pending draw of one would have failed the executor's check.
    }
  }
}

// The executor's side of the contract, checked on entry.
TEST(StepExecutor, PendingTokensNeedADrawOneStepBack) {
  fake_runner inner(false);
  scheduler_test::async_runner async(inner);
  step_executor exec(async);
  EXPECT_TRUE(exec.steps_async());
  EXPECT_THROW(exec.collect(), error);
  auto p = std::make_shared<sampling_params>();
  p->max_tokens = 4;
  step_plan a;
  a.step = 1;
  seq_step s;
  s.seq_id = 7;
  s.num_tokens = 3;
  s.sample = true;
  s.is_new = true;
  s.prompt = {1, 2, 3};
  s.params = p;
  s.table_diff = {{0, 0}};
  s.table_size = 1;
  a.seqs.push_back(s);
  a.token_ids = {1, 2, 3};
  a.num_tokens = 3;
  step_plan b;
  b.step = 2;
  seq_step d;
  d.seq_id = 7;
  d.start = 3;
  d.num_tokens = 1;
  d.sample = true;
  d.output_index = 1;
  d.table_diff = {{1, 1}};
  d.table_size = 2;
  b.seqs.push_back(d);
  b.token_ids = {kTokenPending};
  b.num_tokens = 1;
  EXPECT_THROW(exec.submit(b), error);  // sequence 7 is unknown
  exec.submit(a);
  exec.submit(b);                       // its placeholder reads a's draw on the device
  EXPECT_THROW(exec.submit(b), error);  // a third outstanding step
  const step_result ra = exec.collect();
  const step_result rb = exec.collect();
  ASSERT_EQ(ra.samples.size(), 1u);
  ASSERT_EQ(rb.samples.size(), 1u);
  EXPECT_EQ(async.pending_tokens, 1);
  // The same two steps one at a time, with the first id written into the second plan.
  fake_runner host(false);
  step_executor sync(host);
  const step_result sa = sync.execute(a);
  b.token_ids = {sa.samples.at(0).token};
  const step_result sb = sync.execute(b);
  EXPECT_EQ(ra.samples[0].token, sa.samples[0].token);
  EXPECT_EQ(rb.samples[0].token, sb.samples[0].token);
  // A placeholder two steps back is refused.
  step_plan c = b;
  c.step = 3;
  c.seqs[0].start = 4;
  c.seqs[0].output_index = 2;
  c.seqs[0].table_diff.clear();
  c.token_ids = {kTokenPending};
  step_plan none;
  none.step = 4;
  none.dropped = {99};
  exec.submit(none);
  exec.collect();
  EXPECT_THROW(exec.submit(c), error);
}

}  // namespace
}  // namespace troupe
