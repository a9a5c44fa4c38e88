// The offline engine's request semantics on a real (golden) checkpoint: seeds, stop ids and strings,
// max tokens, logprobs, validation, and that nothing leaks.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/offline_engine.h"
#include "core/tokenizer.h"
#include "plugins/cpu/cpu_model_runner.h"

namespace troupe {
namespace {

class Engine : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = std::string(TROUPE_SOURCE_DIR) + "/tests/data/golden/llama_gqa";
    cpu_runner_options opt;
    opt.num_kv_blocks = 32;
    runner = cpu_model_runner::load(dir, opt);
    tok = std::make_unique<tokenizer>(tokenizer::load_dir(dir));
  }
  generate_request req(const std::string& prompt, float temperature, int max_tokens) {
    generate_request r;
    r.prompt_ids = tok->encode(prompt, true);
    r.params.temperature = temperature;
    r.params.max_tokens = max_tokens;
    r.params.ignore_eos = true;
    return r;
  }
  std::string dir;
  std::unique_ptr<cpu_model_runner> runner;
  std::unique_ptr<tokenizer> tok;
};

TEST_F(Engine, SameSeedSameOutputDifferentSeedsDiffer) {
  offline_engine e(*runner, tok.get());
  auto r = req("def main(", 1.0f, 12);
  r.params.seed = 1234;
  auto a = e.generate({r})[0], b = e.generate({r})[0];
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.seed, 1234u);
  int differing = 0;
  for (uint64_t s = 1; s <= 5; ++s) {
    r.params.seed = s;
    differing += e.generate({r})[0].ids != a.ids;
  }
  EXPECT_GE(differing, 4);
  // A seeded request gives the same tokens alone and in a batch with others.
  r.params.seed = 99;
  auto alone = e.generate({r})[0];
  auto other = req("import os", 0.7f, 9);
  auto batch = e.generate({other, r, other});
  EXPECT_EQ(batch[1].ids, alone.ids);
}

TEST_F(Engine, StopTokenIdEndsWithStop) {
  offline_engine e(*runner, tok.get());
  auto r = req("The quick brown fox", 0.0f, 16);
  auto full = e.generate({r})[0];
  ASSERT_EQ(full.ids.size(), 16u);
  const int32_t stop = full.ids[5];
  size_t first = std::find(full.ids.begin(), full.ids.end(), stop) - full.ids.begin();
  r.params.stop_token_ids = {stop};
  auto out = e.generate({r})[0];
  EXPECT_EQ(out.finish_reason, "stop");
  EXPECT_EQ(out.ids, std::vector<int32_t>(full.ids.begin(), full.ids.begin() + first + 1));
  EXPECT_EQ(full.finish_reason, "length");
}

TEST_F(Engine, StopStringCutsTextBeforeIt) {
  offline_engine e(*runner, tok.get());
  auto r = req("for i in range(", 0.0f, 16);
  auto full = e.generate({r})[0];
  ASSERT_GE(full.text.size(), 6u);
  // A stop string from the middle of the greedy text (printable ASCII to stay on character boundaries).
  size_t at = full.text.size() / 2;
  std::string stop = full.text.substr(at, 2);
  size_t first = full.text.find(stop);
  r.params.stop = {stop};
  auto out = e.generate({r})[0];
  EXPECT_EQ(out.finish_reason, "stop");
  EXPECT_EQ(out.text, full.text.substr(0, first));
  EXPECT_LE(out.ids.size(), full.ids.size());
}

TEST_F(Engine, TextEqualsDecodeOfIds) {
  offline_engine e(*runner, tok.get());
  auto out = e.generate({req("Hello, world", 0.0f, 16)})[0];
  EXPECT_EQ(out.text, tok->decode(out.ids, true));
}

TEST_F(Engine, LogprobsAreSortedAndIncludeTheSampledToken) {
  offline_engine e(*runner, tok.get());
  auto r = req("import numpy as", 0.8f, 6);
  r.params.logprobs = 4;
  r.params.seed = 7;
  auto out = e.generate({r})[0];
  ASSERT_EQ(out.logprobs.size(), out.ids.size());
  for (size_t i = 0; i < out.ids.size(); ++i) {
    const auto& top = out.logprobs[i];
    ASSERT_GE(top.size(), 4u);
    ASSERT_LE(top.size(), 5u);
    for (size_t j = 1; j < 4; ++j) EXPECT_GE(top[j - 1].logprob, top[j].logprob);
    auto it =
        std::find_if(top.begin(), top.end(), [&](const token_logprob& t) { return t.id == out.ids[i]; });
    ASSERT_NE(it, top.end());
    EXPECT_FLOAT_EQ(it->logprob, out.token_logprobs[i]);
    EXPECT_LE(out.token_logprobs[i], 0.0f);
  }
}

TEST_F(Engine, EveryProblemReportedAtOnce) {
  offline_engine e(*runner, tok.get());
  auto bad = req("x", -1.0f, 0);
  bad.prompt_ids.push_back(5000);
  try {
    e.generate({req("fine", 0, 2), bad});
    FAIL();
  } catch (const error& err) {
    std::string m = err.what();
    EXPECT_NE(m.find("request 1"), std::string::npos) << m;
    EXPECT_NE(m.find("temperature"), std::string::npos) << m;
    EXPECT_NE(m.find("max_tokens"), std::string::npos) << m;
    EXPECT_NE(m.find("5000"), std::string::npos) << m;
    EXPECT_EQ(m.find("request 0"), std::string::npos) << m;
  }
}

TEST_F(Engine, PromptOverContextRefused) {
  offline_engine e(*runner, tok.get());
  generate_request r;
  r.prompt_ids.assign(runner->config().max_model_len(), 5);
  EXPECT_THROW(e.generate({r}), error);
}

TEST_F(Engine, KvCacheTooSmallIsAnErrorAndLeaksNothing) {
  offline_engine e(*runner, tok.get());
  std::vector<generate_request> many(40, req("a long enough prompt to take a block or two of cache", 0, 8));
  EXPECT_THROW(e.generate(many), error);
  EXPECT_EQ(e.num_blocks_free(), runner->num_kv_blocks());
  auto ok = e.generate({req("still works", 0, 4)});
  EXPECT_EQ(ok[0].ids.size(), 4u);
}

TEST_F(Engine, ScoreAgreesWithGreedyLogprobs) {
  offline_engine e(*runner, tok.get());
  auto r = req("while True:", 0.0f, 8);
  auto out = e.generate({r})[0];
  std::vector<int32_t> all = r.prompt_ids;
  all.insert(all.end(), out.ids.begin(), out.ids.end());
  auto s = e.score(all, 1);
  for (size_t i = 0; i < out.ids.size(); ++i) {
    const size_t t = r.prompt_ids.size() - 1 + i;
    EXPECT_NEAR(s.logprobs[t], out.token_logprobs[i], 1e-4);
    EXPECT_EQ(s.top[t][0].id, out.ids[i]);  // greedy = top-1
  }
  EXPECT_GT(s.perplexity, 1.0);
}

}  // namespace
}  // namespace troupe
