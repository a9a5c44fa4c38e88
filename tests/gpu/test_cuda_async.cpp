// The CUDA runner's asynchronous steps (forward_sample_submit / forward_sample_collect) against its
// synchronous forward_sample: the same sequences, stepped once with every token fed back from the host and
// once with step N + 1 submitted before step N is collected, its decode tokens pending on step N's draws
// on the device. Ids, logprobs and top logprobs must be bit-identical: the same kernels run on the same
// inputs, only the token ids travel differently. Greedy and seeded sampled rows, a mixed step (a prompt
// joins while the others decode, so the eager path gathers pending ids too), with and without graphs.
// Then the serving path: core::scheduler and step_executor over the CUDA runner, planning step N + 1 while
// step N runs (as the scheduler actor does) against one step at a time.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/sched/scheduler.h"
#include "core/sched/step_executor.h"
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

// One request's sequences as the scheduler reports them: tokens, logprobs and the finish reason.
struct served {
  std::vector<int32_t> ids;
  std::vector<float> lps;
  std::string finish;
};

std::map<std::pair<uint64_t, int32_t>, served> serve(bool async_scheduling, int32_t* planned_ahead) {
  cuda_runner_options opt;
  opt.num_kv_blocks = 256;
  auto runner = cuda_model_runner::load(golden_dir("llama_gqa"), opt);
  scheduler_config cfg;
  cfg.max_num_batched_tokens = 96;  // the 150-token prompt is prefilled in chunks
  cfg.max_num_seqs = 16;
  cfg.max_model_len = 256;
  cfg.async_scheduling = async_scheduling;
  scheduler sched(cfg, runner->num_kv_blocks(), runner->block_size(), true);
  step_executor exec(*runner);
  std::mt19937 rng(31);
  std::uniform_int_distribution<int32_t> tok(3, 1000);
  auto prompt = [&](int n) {
    std::vector<int32_t> p(n);
    for (auto& x : p) x = tok(rng);
    return p;
  };
  const std::vector<int32_t> shared = prompt(40);  // two requests share it: a prefix-cache hit
  for (uint64_t rid = 1; rid <= 7; ++rid) {
    sched_request_in in;
    in.rid = rid;
    in.prompt = rid == 5 ? prompt(150) : prompt(3 + 9 * static_cast<int>(rid));
    if (rid == 2 || rid == 3) {
      in.prompt = shared;
      in.prompt.push_back(static_cast<int32_t>(rid));
    }
    auto p = std::make_shared<sampling_params>();
    p->max_tokens = 12 + static_cast<int32_t>(rid);
    p->ignore_eos = true;
    p->temperature = rid % 2 == 0 ? 0.0f : 0.8f;
    p->top_p = 0.9f;
    if (rid == 3) p->logprobs = 2;
    if (rid == 4) p->n = 2;  // forks after its prompt
    in.seed = 1000 + rid;
    in.params = p;
    EXPECT_TRUE(sched.add(std::move(in)));
  }
  std::map<std::pair<uint64_t, int32_t>, served> out;
  int32_t in_flight = 0;
  for (int guard = 0; (sched.has_work() || in_flight > 0) && guard < 1000; ++guard) {
    while (sched.has_work() &&
           (sched.num_in_flight() == 0 || (sched.num_in_flight() == 1 && sched.can_plan_ahead()))) {
      step_plan plan = sched.plan();
      if (plan.empty()) break;
      if (sched.num_in_flight() == 2) ++*planned_ahead;
      exec.submit(plan);
    }
    in_flight = sched.num_in_flight();
    if (in_flight == 0) break;
    for (const seq_output& o : sched.update(exec.collect())) {
      served& s = out[{o.rid, o.index}];
      s.ids.push_back(o.token);
      s.lps.push_back(o.logprob);
      if (o.finish_reason) s.finish = *o.finish_reason;
    }
    in_flight = sched.num_in_flight();
  }
  EXPECT_FALSE(sched.has_work());
  return out;
}

TEST(CudaAsync, PlannedAheadStepsServeTheSameTokens) {
  TROUPE_SKIP_WITHOUT_GPU();
  int32_t ahead_sync = 0, ahead_async = 0;
  const auto sync = serve(false, &ahead_sync);
  const auto async = serve(true, &ahead_async);
  EXPECT_EQ(ahead_sync, 0);
  EXPECT_GT(ahead_async, 10) << "the scheduler should have planned ahead on most decode steps";
  ASSERT_EQ(async.size(), sync.size());
  EXPECT_EQ(sync.size(), 8u);  // 7 requests, one with n = 2
  for (const auto& [key, s] : sync) {
    const std::string what = "rid " + std::to_string(key.first) + " seq " + std::to_string(key.second);
    auto it = async.find(key);
    ASSERT_NE(it, async.end()) << what;
    EXPECT_EQ(s.finish, "length") << what;
    EXPECT_EQ(it->second.ids, s.ids) << what;
    EXPECT_EQ(it->second.lps, s.lps) << what;
    EXPECT_EQ(it->second.finish, s.finish) << what;
  }
}

}  // namespace
}  // namespace troupe
