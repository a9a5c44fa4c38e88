// The CUDA runner's asynchronous steps (forward_sample_submit / forward_sample_collect) against its
// synchronous forward_sample: the same sequences, stepped once with every token fed back from the host and
// once with step N + 1 submitted before step N is collected, its decode tokens pending on step N's draws
// on the device. Ids, logprobs and top logprobs must be bit-identical: the same kernels run on the same
// inputs, only the token ids travel differently. Greedy and seeded sampled rows, a mixed step (a prompt
// joins while the others decode, so the eager path gathers pending ids too), with and without graphs.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "plugins/cuda/cuda_model_runner.h"
#include "tests/gpu/gpu_test_util.h"

namespace troupe {
namespace {

std::string golden_dir(const std::string& name) {
  const char* env = std::getenv("TROUPE_SOURCE_DIR");
  return std::string(env != nullptr ? env : TROUPE_SOURCE_DIR) + "/tests/data/golden/" + name;
}

struct seq {
  std::vector<int32_t> prompt;
  sampling_params params;
  uint64_t seed = 0;
  int32_t join_step = 0;  // the decode step whose batch also carries this prompt (0: the first prefill)
  std::vector<int32_t> out;
  int32_t in_flight = 0;  // draws submitted, not collected yet (async)
  std::vector<float> lps;
  std::vector<std::vector<token_logprob>> tops;
};

constexpr int32_t kBlock = 16;
constexpr int32_t kBlocksPerSeq = 8;  // 128 positions each

// One step's flattened batch: a sequence in prefill contributes its prompt, a decoding one its last token
// (pending on its row of the previous step when `async`).
struct step_builder {
  std::vector<int32_t> tokens, pending, positions, slots, qs, ctx, rows, tables;
  std::vector<device_sample_row> draws;
  std::vector<int> who;  // draw -> sequence
  forward_batch batch;

  void build(std::vector<seq>& seqs, int32_t step, bool async, const std::vector<int>& prev_row) {
    tokens.clear(), pending.clear(), positions.clear(), slots.clear(), qs.assign(1, 0), ctx.clear();
    rows.clear(), tables.clear(), draws.clear(), who.clear();
    for (size_t i = 0; i < seqs.size(); ++i) {
      seq& s = seqs[i];
      if (s.join_step > step) continue;
      const bool prefill = s.join_step == step;
      const int32_t n = prefill ? static_cast<int32_t>(s.prompt.size()) : 1;
      const int32_t n_out = static_cast<int32_t>(s.out.size()) + s.in_flight;
      const int32_t start = prefill ? 0 : static_cast<int32_t>(s.prompt.size()) + n_out - 1;
      for (int32_t j = 0; j < n; ++j) {
        const int32_t p = start + j;
        const bool from_device = async && !prefill && prev_row[i] >= 0;
        tokens.push_back(prefill ? s.prompt[j] : (from_device ? -1 : s.out.back()));
        pending.push_back(from_device ? prev_row[i] : -1);
        positions.push_back(p);
        slots.push_back((static_cast<int32_t>(i) * kBlocksPerSeq + p / kBlock) * kBlock + p % kBlock);
      }
      qs.push_back(static_cast<int32_t>(tokens.size()));
      ctx.push_back(start + n);
      for (int32_t b = 0; b < kBlocksPerSeq; ++b)
        tables.push_back(static_cast<int32_t>(i) * kBlocksPerSeq + b);
      rows.push_back(static_cast<int32_t>(tokens.size()) - 1);
      device_sample_row d;
      d.logits_row = static_cast<int32_t>(rows.size()) - 1;
      d.params = &s.params;
      d.seed = s.seed;
      d.step = static_cast<uint64_t>(n_out);
      d.prompt_ids = s.prompt.data();
      d.num_prompt_ids = static_cast<int32_t>(s.prompt.size());
      draws.push_back(d);
      who.push_back(static_cast<int>(i));
    }
    batch = forward_batch{};
    batch.token_ids = tokens.data();
    batch.pending_rows = async ? pending.data() : nullptr;
    batch.positions = positions.data();
    batch.slot_mapping = slots.data();
    batch.query_start = qs.data();
    batch.context_lens = ctx.data();
    batch.block_tables = tables.data();
    batch.logits_rows = rows.data();
    batch.num_tokens = static_cast<int32_t>(tokens.size());
    batch.num_seqs = static_cast<int32_t>(ctx.size());
    batch.max_blocks_per_seq = kBlocksPerSeq;
    batch.num_logits = static_cast<int32_t>(rows.size());
  }
};

std::vector<seq> make_seqs() {
  std::mt19937 rng(21);
  std::uniform_int_distribution<int32_t> tok(3, 1000);
  auto prompt = [&](int n) {
    std::vector<int32_t> p(n);
    for (auto& x : p) x = tok(rng);
    return p;
  };
  std::vector<seq> s(4);
  s[0].prompt = prompt(5);
  s[0].params.temperature = 0;
  s[1].prompt = prompt(37);
  s[1].params.temperature = 0.8f;
  s[1].params.top_p = 0.9f;
  s[1].seed = 1234;
  s[2].prompt = prompt(20);
  s[2].params.temperature = 0;
  s[2].params.logprobs = 3;
  s[3].prompt = prompt(11);  // joins at decode step 4: a mixed step
  s[3].params.temperature = 1.0f;
  s[3].params.top_k = 20;
  s[3].params.logprobs = 2;
  s[3].seed = 99;
  s[3].join_step = 4;
  return s;
}

constexpr int32_t kSteps = 14;

void record(std::vector<seq>& seqs, const step_builder& sb, const std::vector<int32_t>& ids,
            const std::vector<float>& lps, const std::vector<token_logprob>& top) {
  for (size_t d = 0; d < sb.who.size(); ++d) {
    seq& s = seqs[sb.who[d]];
    ASSERT_GE(ids[d], 0);
    if (s.in_flight > 0) --s.in_flight;
    s.out.push_back(ids[d]);
    s.lps.push_back(lps[d]);
    const auto* t = top.data() + d * sampling_max_logprobs;
    s.tops.emplace_back(t, t + s.params.logprobs);
  }
}

std::vector<seq> run(bool graphs, bool async) {
  cuda_runner_options opt;
  opt.num_kv_blocks = 4 * kBlocksPerSeq;
  opt.cuda_graphs = graphs;
  opt.async_steps = async;
  auto runner = cuda_model_runner::load(golden_dir("llama_gqa"), opt);
  EXPECT_EQ(runner->samples_async(), async);
  std::vector<seq> seqs = make_seqs();
  std::vector<int32_t> ids(8);
  std::vector<float> lps(8);
  std::vector<token_logprob> top(8 * sampling_max_logprobs);
  std::vector<int> prev_row(seqs.size(), -1);
  step_builder cur, prev;
  for (int32_t step = 0; step < kSteps; ++step) {
    // Histories for penalties are not used here (no penalties), so the draws read the prompt only.
    cur.build(seqs, step, async, prev_row);
    if (!async) {
      runner->forward_sample(cur.batch, cur.draws.data(), static_cast<int32_t>(cur.draws.size()), ids.data(),
                             lps.data(), top.data());
      record(seqs, cur, ids, lps, top);
      continue;
    }
    // The host does not know step - 1's ids yet: they are appended when it is collected, below; until then
    // in_flight counts them (positions and RNG steps).
    runner->forward_sample_submit(cur.batch, cur.draws.data(), static_cast<int32_t>(cur.draws.size()));
    if (step > 0) {
      runner->forward_sample_collect(ids.data(), lps.data(), top.data());
      record(seqs, prev, ids, lps, top);
    }
    std::fill(prev_row.begin(), prev_row.end(), -1);
    for (size_t d = 0; d < cur.who.size(); ++d) prev_row[cur.who[d]] = static_cast<int>(d);
    for (int w : cur.who) ++seqs[w].in_flight;
    std::swap(cur, prev);
  }
  if (async) {
    runner->forward_sample_collect(ids.data(), lps.data(), top.data());
    record(seqs, prev, ids, lps, top);
  }
  return seqs;
}

TEST(CudaAsync, SubmittedStepsEqualSynchronousSteps) {
  TROUPE_SKIP_WITHOUT_GPU();
  for (bool graphs : {true, false}) {
    const auto sync = run(graphs, false);
    const auto async = run(graphs, true);
    for (size_t i = 0; i < sync.size(); ++i) {
      const std::string what = std::string(graphs ? "graphs" : "eager") + " seq " + std::to_string(i);
      EXPECT_FALSE(sync[i].out.empty()) << what;
      EXPECT_EQ(async[i].out, sync[i].out) << what;
      EXPECT_EQ(async[i].lps, sync[i].lps) << what;
      ASSERT_EQ(async[i].tops.size(), sync[i].tops.size()) << what;
      for (size_t t = 0; t < sync[i].tops.size(); ++t) {
        ASSERT_EQ(async[i].tops[t].size(), sync[i].tops[t].size()) << what;
        for (size_t j = 0; j < sync[i].tops[t].size(); ++j) {
          EXPECT_EQ(async[i].tops[t][j].id, sync[i].tops[t][j].id) << what << " step " << t;
          EXPECT_EQ(async[i].tops[t][j].logprob, sync[i].tops[t][j].logprob) << what << " step " << t;
        }
      }
    }
  }
}

}  // namespace
}  // namespace troupe
