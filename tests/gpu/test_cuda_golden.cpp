// The CUDA runner end to end against Hugging Face (golden.json of every golden checkpoint), through the
// offline engine: teacher-forced logprobs, greedy tokens wherever HF's top two are not near-tied, and the
// flash and paged attention plugins agreeing.
//
// Tolerances are for bf16 activations against HF's fp32 forward. The golden models' logits are peaked on
// purpose (weights std 0.15, logits of magnitude ~10), so bf16's 2^-8 relative rounding shows up as
// logprob errors of a few 1e-2. Measured on an H200 (2026-11-22): worst teacher-forced error 0.12 (0.13 with
// a bf16 residual stream) (mistral), worst greedy-step logprob error 0.11, most positions under 5e-2 (all of
// qwen3); the one token that differed from HF did so at a step whose HF top-2 gap was 0.072 (llama_linear,
// chunked batch), and flash vs paged logprobs differed by up to 0.051. The 5e-2 targets hold only
// with fp32 activations; these bounds leave ~25 % margin over what was measured.
//
// HF run in bf16 ("hf_bf16" in each case, `scripts/make_golden.py --bf16-figures`) is the yardstick for
// what bf16 costs: on an H200 (2026-11-22) HF's own bf16 forward was up to 0.16 away from its fp32 one on
// these models, and this runner up to 0.12 (mistral; the others <= 0.085), so asserting 5e-2 against either
// measures the models' peakedness, not a bug. What is asserted: per prompt, this runner's worst
// teacher-forced error against HF fp32 exceeds HF-bf16's own worst error against HF fp32 by at most 5e-2
// (as accurate as HF in the same dtype, to the 5e-2).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/offline_engine.h"
#include "plugins/cuda/cuda_model_runner.h"
#include "tests/gpu/gpu_test_util.h"

namespace troupe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr double kLogprobTol = 0.15;    // |logprob - HF| at every teacher-forced position and greedy step
constexpr double kTieGap = 0.1;         // tokens must equal HF's up to the first step with a smaller gap
constexpr double kFlashPagedTol = 0.1;  // |logprob(flash) - logprob(paged)| of the same greedy token
constexpr double kBf16Slack = 5e-2;     // worst |logprob - HF fp32| minus HF-bf16's own, per prompt

// The GPU machine runs the binary from another checkout path: TROUPE_SOURCE_DIR in the environment wins.
std::string golden_root() {
  const char* env = std::getenv("TROUPE_SOURCE_DIR");
  return std::string(env != nullptr ? env : TROUPE_SOURCE_DIR) + "/tests/data/golden";
}

std::vector<std::string> golden_models() {
  std::vector<std::string> names;
  if (!fs::is_directory(golden_root())) return names;
  for (const auto& e : fs::directory_iterator(golden_root())) {
    if (fs::exists(e.path() / "golden.json")) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

engine_options long_context() {
  engine_options o;
  o.max_model_len = 256;
  return o;
}

std::unique_ptr<cuda_model_runner> load_runner(const std::string& dir, const std::string& attention) {
  cuda_runner_options opt;
  opt.num_kv_blocks = 64;
  opt.attention = attention;
  return cuda_model_runner::load(dir, opt);
}

generate_request greedy_request(const json& c) {
  generate_request r;
  r.prompt_ids = c["prompt_ids"].get<std::vector<int32_t>>();
  r.params.temperature = 0;
  r.params.max_tokens = 16;
  r.params.ignore_eos = true;
  return r;
}

// Tokens must match HF up to the first step where HF's own top-2 gap is under kTieGap.
void check_greedy(const json& c, const generate_output& out, const std::string& what) {
  const auto& want = c["greedy"];
  ASSERT_EQ(out.ids.size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    if (c["greedy_gaps"][i].get<double>() < kTieGap) return;
    ASSERT_EQ(out.ids[i], want[i].get<int32_t>()) << what << " step " << i;
    EXPECT_NEAR(out.token_logprobs[i], c["greedy_logprobs"][i].get<double>(), kLogprobTol)
        << what << " step " << i;
  }
}

// True when every case carries HF-bf16 figures; CudaGoldenData.EveryModelHasHfBf16Figures requires it.
bool has_hf_bf16(const json& golden) {
  for (const auto& c : golden["cases"]) {
    if (!c.contains("hf_bf16")) return false;
  }
  return !golden["cases"].empty();
}

class CudaGolden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    TROUPE_SKIP_WITHOUT_GPU();
    dir = golden_root() + "/" + GetParam();
    golden = read_json(dir + "/golden.json");
    bf16 = has_hf_bf16(golden);
    if (!bf16) {
      std::printf(
          "[ golden ] %s: golden.json has no hf_bf16 figures, HF-bf16 comparisons skipped (run "
          "scripts/make_golden.py --bf16-figures, see docs/golden-data.md)\n",
          GetParam().c_str());
    }
  }
  std::string dir;
  json golden;
  bool bf16 = false;  // every case has "hf_bf16"
};

TEST_P(CudaGolden, TeacherForcedLogprobs) {
  for (const std::string attention : {"flash", "paged"}) {
    auto runner = load_runner(dir, attention);
    offline_engine engine(*runner, nullptr, long_context());
    for (const auto& c : golden["cases"]) {
      std::vector<int32_t> ids = c["prompt_ids"];
      score_output out = engine.score(ids, 5);
      const auto& want = c["logprobs"];
      ASSERT_EQ(out.logprobs.size(), want.size());
      double worst = 0;
      for (size_t t = 0; t < want.size(); ++t) {
        worst = std::max(worst, std::abs(out.logprobs[t] - want[t].get<double>()));
        EXPECT_NEAR(out.logprobs[t], want[t].get<double>(), kLogprobTol)
            << GetParam() << " " << attention << " position " << t + 1;
      }
      std::printf("[ golden ] %s %s prompt %zu: max |logprob error| %.4f\n", GetParam().c_str(),
                  attention.c_str(), ids.size(), worst);
      if (!bf16) continue;
      const auto& hf_bf16 = c.at("hf_bf16").at("logprobs");
      ASSERT_EQ(hf_bf16.size(), want.size());
      double worst_hf_bf16 = 0;  // HF's own bf16 forward against its fp32 one
      for (size_t t = 0; t < want.size(); ++t)
        worst_hf_bf16 = std::max(worst_hf_bf16, std::abs(hf_bf16[t].get<double>() - want[t].get<double>()));
      EXPECT_LE(worst, worst_hf_bf16 + kBf16Slack)
          << GetParam() << " " << attention << " prompt " << ids.size() << ": less accurate than HF in bf16";
      std::printf("[ golden ] %s %s prompt %zu: HF bf16's own max |logprob error| %.4f\n", GetParam().c_str(),
                  attention.c_str(), ids.size(), worst_hf_bf16);
    }
  }
}

TEST_P(CudaGolden, GreedyFlashAndPagedAgree) {
  std::vector<std::vector<generate_output>> outs;
  for (const std::string attention : {"flash", "paged"}) {
    auto runner = load_runner(dir, attention);
    offline_engine engine(*runner, nullptr, long_context());
    std::vector<generate_output> alone;
    for (const auto& c : golden["cases"]) {
      alone.push_back(engine.generate({greedy_request(c)})[0]);
      check_greedy(c, alone.back(), GetParam() + " " + attention + " alone");
    }
    // All cases in one batch with prefill chunked at 7 tokens per step: mixed prefill/decode steps and
    // chunks that attend to cached prefixes.
    engine_options opt = long_context();
    opt.max_num_batched_tokens = 7;
    offline_engine chunked(*runner, nullptr, opt);
    std::vector<generate_request> reqs;
    for (const auto& c : golden["cases"]) reqs.push_back(greedy_request(c));
    auto batched = chunked.generate(reqs);
    for (size_t i = 0; i < reqs.size(); ++i) {
      check_greedy(golden["cases"][i], batched[i], GetParam() + " " + attention + " batched");
    }
    outs.push_back(alone);
  }
  // flash and paged round differently (flash feeds P to the tensor cores in bf16), so past a step where
  // HF's own top two are within kTieGap they may legitimately part; up to there they must agree.
  for (size_t i = 0; i < outs[0].size(); ++i) {
    const auto& gaps = golden["cases"][i]["greedy_gaps"];
    for (size_t t = 0; t < outs[0][i].ids.size() && gaps[t].get<double>() >= kTieGap; ++t) {
      ASSERT_EQ(outs[0][i].ids[t], outs[1][i].ids[t]) << GetParam() << " case " << i << " step " << t;
      EXPECT_NEAR(outs[0][i].token_logprobs[t], outs[1][i].token_logprobs[t], kFlashPagedTol)
          << GetParam() << " case " << i << " step " << t << ": flash and paged logprobs";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Hf, CudaGolden, ::testing::ValuesIn(golden_models()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// The HF-bf16 figures are required once committed: a regeneration that drops them (the full
// make_golden.py run writes golden.json without them) must fail here, not skip quietly above.
TEST(CudaGoldenData, EveryModelHasHfBf16Figures) {
  TROUPE_SKIP_WITHOUT_GPU();
  const auto models = golden_models();
  ASSERT_FALSE(models.empty());
  for (const auto& name : models) {
    const json golden = read_json(golden_root() + "/" + name + "/golden.json");
    EXPECT_TRUE(golden.contains("hf_bf16_device")) << name << ": no hf_bf16 note";
    for (const auto& c : golden["cases"]) {
      const size_t n = c["prompt_ids"].size();
      if (!c.contains("hf_bf16")) {
        ADD_FAILURE()
            << name << " prompt " << n
            << ": no hf_bf16 figures; run scripts/make_golden.py --bf16-figures (docs/golden-data.md)";
        continue;
      }
      const auto& b = c["hf_bf16"];
      for (const char* key : {"logprobs", "greedy", "greedy_logprobs", "greedy_gaps"}) {
        if (!b.contains(key)) {
          ADD_FAILURE() << name << " prompt " << n << ": hf_bf16 lacks " << key;
          continue;
        }
        const size_t want = std::string(key) == "logprobs" ? n - 1 : c["greedy"].size();
        EXPECT_EQ(b[key].size(), want) << name << " prompt " << n << " hf_bf16 " << key;
      }
    }
  }
}

TEST(CudaRunner, RefusesUnknownAttention) {
  TROUPE_SKIP_WITHOUT_GPU();
  const auto models = golden_models();
  ASSERT_FALSE(models.empty());
  cuda_runner_options opt;
  opt.attention = "sparse";
  EXPECT_THROW(cuda_model_runner::load(golden_root() + "/" + models[0], opt), troupe::error);
}

}  // namespace
}  // namespace troupe
