// step_executor's two sampling paths: a runner that samples on its device gets one device_sample_row per
// draw (n > 1 fork children share their parent's logits row with their own seeds) and must see exactly
// what the host path feeds sampler::sample. A fake runner emulates the device with sampler::sample itself,
// so any difference comes from the rows the executor builds (history, seed, step, logits row, logprobs).
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "core/plugin_api/model_runner.h"
#include "core/sampling.h"
#include "core/sched/scheduler.h"
#include "core/sched/step_executor.h"

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
};

outputs run(fake_runner& runner) {
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
  scheduler_config sc;
  sc.max_model_len = 128;
  sc.max_num_batched_tokens = 16;  // prompts in chunks: steps that sample some sequences only
  scheduler sched(sc, runner.num_kv_blocks(), runner.block_size(), false);
  step_executor exec(runner);
  for (size_t i = 0; i < ps.size(); ++i) {
    sched_request_in in;
    in.rid = i + 1;
    for (int32_t t = 0; t < 5 + static_cast<int32_t>(i) * 4; ++t) in.prompt.push_back((t * 13 + 5) % kVocab);
    in.params = ps[i];
    in.seed = 500 + i;
    EXPECT_TRUE(sched.add(std::move(in)));
  }
  outputs out;
  while (sched.has_work()) {
    step_plan plan = sched.plan();
    step_result res = exec.execute(plan);
    for (const auto& o : sched.update(res)) {
      const auto key = std::make_pair(o.rid, o.index);
      out.ids[key].push_back(o.token);
      out.logprobs[key].push_back(o.logprob);
      out.top[key].push_back(o.top);
    }
  }
  return out;
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

}  // namespace
}  // namespace troupe
