// Greedy sampling on the device: the argmax kernel against the CPU sampler on fresh random rows (ties,
// vocabularies that are not a multiple of 4, a NaN row), and the engine's step path (scheduler +
// step_executor over the CUDA runner, greedy rows reduced on the device) against the offline engine, which
// copies every logits row to the host and samples there.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>

#include "core/offline_engine.h"
#include "core/sampling.h"
#include "core/sched/scheduler.h"
#include "core/sched/step_executor.h"
#include "kernels/cuda/sampling.h"
#include "plugins/cuda/cuda_model_runner.h"
#include "tests/gpu/gpu_test_util.h"

namespace troupe {
namespace {

namespace kc = kernels::cuda;

TEST(CudaSampling, ArgmaxAndLogprobMatchTheCpuSampler) {
  TROUPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(20261122);
  for (int64_t vocab : {7, 1000, 1001, 32003, 128256}) {
    const int64_t rows = 37;
    std::normal_distribution<float> d(0.0f, 4.0f);
    std::vector<float> h(static_cast<size_t>(rows * vocab));
    for (auto& x : h) x = d(rng);
    // Row 1: the maximum twice (the lower id must win); row 2: a NaN; row 3: every logit equal.
    if (vocab > 5) {
      float* r1 = h.data() + vocab;
      r1[vocab - 2] = 1000.0f;
      r1[3] = 1000.0f;
      h[2 * vocab + vocab / 2] = NAN;
      std::fill(h.begin() + 3 * vocab, h.begin() + 4 * vocab, 0.25f);
    }
    gpu_test::device_buffer<float> dl(h.size());
    gpu_test::device_buffer<int32_t> di(rows);
    gpu_test::device_buffer<float> dp(rows);
    TROUPE_CUDA_CHECK(cudaMemcpy(dl.get(), h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
    kc::argmax_logprob(dl.get(), rows, vocab, di.get(), dp.get(), nullptr);
    std::vector<int32_t> ids(rows, -7);
    std::vector<float> lps(rows, -7.0f);
    TROUPE_CUDA_CHECK(cudaMemcpy(ids.data(), di.get(), rows * sizeof(int32_t), cudaMemcpyDeviceToHost));
    TROUPE_CUDA_CHECK(cudaMemcpy(lps.data(), dp.get(), rows * sizeof(float), cudaMemcpyDeviceToHost));
    sampler s;
    sampling_params p;
    p.temperature = 0;
    std::vector<float> scratch;
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = h.data() + r * vocab;
      if (vocab > 5 && r == 2) {
        EXPECT_EQ(ids[r], -1) << "a NaN row must be reported, vocab " << vocab;
        continue;
      }
      const sample_result want = s.sample(row, static_cast<int32_t>(vocab), p, {}, {}, 1, 0, scratch);
      EXPECT_EQ(ids[r], want.id) << "vocab " << vocab << " row " << r;
      EXPECT_NEAR(lps[r], want.logprob, 2e-4 + 1e-5 * std::fabs(want.logprob)) << "vocab " << vocab << " row " << r;
    }
    if (vocab > 5) {
      EXPECT_EQ(ids[1], 3);
      EXPECT_EQ(ids[3], 0);
      EXPECT_NEAR(lps[3], -std::log(static_cast<double>(vocab)), 1e-4);
    }
  }
}

std::string golden_dir(const std::string& name) {
  const char* env = std::getenv("TROUPE_SOURCE_DIR");
  return std::string(env != nullptr ? env : TROUPE_SOURCE_DIR) + "/tests/data/golden/" + name;
}

// The engine's path (device argmax) and the offline engine's (host sampler over copied logits) must pick
// the same tokens with the same logprobs, for greedy requests batched with a sampled one (host row).
TEST(CudaSampling, DeviceGreedyStepsEqualHostSampling) {
  TROUPE_SKIP_WITHOUT_GPU();
  cuda_runner_options opt;
  opt.num_kv_blocks = 64;
  auto runner = cuda_model_runner::load(golden_dir("llama_gqa"), opt);
  ASSERT_TRUE(runner->samples_greedy_on_device());
  std::vector<std::vector<int32_t>> prompts = {{1, 15, 27, 99, 3}, {1, 200, 201}, {1, 5, 6, 7, 8, 9, 10, 11, 12}};
  auto greedy = std::make_shared<sampling_params>();
  greedy->temperature = 0;
  greedy->max_tokens = 12;
  greedy->ignore_eos = true;
  auto sampled = std::make_shared<sampling_params>(*greedy);
  sampled->temperature = 0.8f;
  sampled->seed = 5;

  std::vector<std::vector<int32_t>> want_ids;
  std::vector<std::vector<float>> want_lps;
  {
    offline_engine off(*runner, nullptr, {});
    for (const auto& pr : prompts) {
      generate_request r;
      r.prompt_ids = pr;
      r.params = *greedy;
      const generate_output o = off.generate({r})[0];
      want_ids.push_back(o.ids);
      want_lps.push_back(o.token_logprobs);
    }
  }
  scheduler_config sc;
  sc.max_model_len = 256;
  scheduler sched(sc, runner->num_kv_blocks(), runner->block_size(), false);
  step_executor exec(*runner);
  for (size_t i = 0; i < prompts.size(); ++i) {
    sched_request_in in;
    in.rid = i + 1;
    in.prompt = prompts[i];
    in.params = greedy;
    ASSERT_TRUE(sched.add(std::move(in)));
  }
  sched_request_in noisy;  // a host-sampled row in the same steps
  noisy.rid = 99;
  noisy.prompt = {1, 42, 43};
  noisy.params = sampled;
  ASSERT_TRUE(sched.add(std::move(noisy)));
  std::map<uint64_t, std::vector<int32_t>> got_ids;
  std::map<uint64_t, std::vector<float>> got_lps;
  while (sched.has_work()) {
    step_plan plan = sched.plan();
    step_result res = exec.execute(plan);
    for (const auto& o : sched.update(res)) {
      got_ids[o.rid].push_back(o.token);
      got_lps[o.rid].push_back(o.logprob);
    }
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(got_ids[i + 1], want_ids[i]) << "prompt " << i;
    ASSERT_EQ(got_lps[i + 1].size(), want_lps[i].size());
    for (size_t t = 0; t < want_lps[i].size(); ++t) EXPECT_NEAR(got_lps[i + 1][t], want_lps[i][t], 1e-3) << t;
  }
  EXPECT_EQ(got_ids[99].size(), 12u);
}

}  // namespace
}  // namespace troupe
