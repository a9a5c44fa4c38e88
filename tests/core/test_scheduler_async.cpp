// Asynchronous scheduling (SchedulerAsync.*): the scheduler plans a step while the previous one is in
// flight. The harness and the workloads shared with test_scheduler.cpp are in scheduler_harness.h.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/sched/scheduler.h"
#include "tests/common/test_seed.h"
#include "tests/core/scheduler_harness.h"

namespace troupe {
namespace {

using namespace scheduler_test;

// ---- Asynchronous scheduling: a step planned while the previous one is in flight ----

// Outputs of `add`'s requests run to the end one step at a time, and planning ahead.
std::map<seq_key, ids> outputs_of(void (*add)(harness&), scheduler_config c, int32_t num_blocks, bool prefix,
                                  bool async, int64_t* planned_ahead = nullptr, harness** keep = nullptr) {
  static std::unique_ptr<harness> last;
  last = std::make_unique<harness>(c, num_blocks, 4, prefix);
  harness& h = *last;
  h.async = async;
  h.check_seq_cap = false;
  add(h);
  h.run_until_idle();
  EXPECT_TRUE(h.sched.idle_and_clean());
  EXPECT_EQ(h.worker.num_known(), 0u);
  if (planned_ahead) *planned_ahead = h.planned_ahead;
  if (keep) *keep = &h;
  return h.outputs;
}

TEST(SchedulerAsync, PlansAheadWithAPlaceholderForTheInFlightDraw) {
  harness h(config(64), 64, 4, false);
  const ids prompt = iota_tokens(6);
  ASSERT_TRUE(h.sched.add(request(1, prompt, params(4), 0, 77)));
  h.plan_ahead();
  ASSERT_EQ(h.queue.size(), 2u);
  EXPECT_FALSE(h.sched.can_plan_ahead());  // two in flight
  EXPECT_THROW(h.sched.plan(), error);
  const step_plan& s1 = h.queue[0].first;
  const step_plan& s2 = h.queue[1].first;
  EXPECT_EQ(s1.step + 1, s2.step);
  ASSERT_EQ(s2.seqs.size(), 1u);
  EXPECT_EQ(s2.seqs[0].start, 6);
  EXPECT_EQ(toks(s2, s2.seqs[0]), (ids{kTokenPending}));
  EXPECT_TRUE(s2.seqs[0].sample);
  EXPECT_EQ(s2.seqs[0].output_index, 1);
  EXPECT_FALSE(s2.seqs[0].is_new);
  EXPECT_EQ(s2.seqs[0].table_size, 2);

  const int32_t t0 = model_token(rng::derive_seed(77, 0), prompt, 0);
  auto outs = h.finish_oldest();  // step 1's token takes the placeholder's place
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].token, t0);
  EXPECT_FALSE(outs[0].finish_reason);
  h.plan_ahead();  // step 3, while step 2 runs: a placeholder for step 2's draw
  ASSERT_EQ(h.queue.size(), 2u);
  EXPECT_EQ(h.queue[1].first.seqs.at(0).start, 7);
  EXPECT_EQ(toks(h.queue[1].first, h.queue[1].first.seqs[0]), (ids{kTokenPending}));
  EXPECT_EQ(h.queue[1].first.seqs[0].output_index, 2);
  EXPECT_TRUE(h.queue[1].first.seqs[0].table_diff.empty());
  h.finish_oldest();
  h.plan_ahead();  // step 4 draws output 3, the last one (max_tokens 4)
  ASSERT_EQ(h.queue.size(), 2u);
  EXPECT_EQ(h.queue[1].first.seqs.at(0).start, 8);
  EXPECT_EQ(h.queue[1].first.seqs.at(0).output_index, 3);
  EXPECT_EQ(h.queue[1].first.seqs[0].table_diff, diff({{2, 2}}));  // position 8 starts block 2
  h.finish_oldest();
  h.plan_ahead();  // nothing: the token step 4 draws ends the sequence whatever it is
  EXPECT_EQ(h.queue.size(), 1u);
  EXPECT_TRUE(h.last.empty());
  outs = h.finish_oldest();
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].finish_reason, std::optional<std::string>("length"));
  EXPECT_EQ(h.worker.placeholders, 3);
  h.run_until_idle();
  EXPECT_TRUE(h.sched.idle_and_clean());
  harness ref(config(64), 64, 4, false);
  ASSERT_TRUE(ref.sched.add(request(1, prompt, params(4), 0, 77)));
  ref.run_until_idle();
  EXPECT_EQ(h.outputs, ref.outputs);
  EXPECT_EQ(h.outputs[seq_key(1, 0)].size(), 4u);
}

// A stop token seen by update() ends the sequence; what the newer in-flight step computed after it (a
// token past the stop) never reaches the outputs, and the sequence is dropped with the next plan.
TEST(SchedulerAsync, StopConditionsAreTheSynchronousOnes) {
  using result = std::pair<ids, std::string>;
  EXPECT_EQ(run_scripted(params(100, 1, false), 4096, true), result({5, 6, 7, kEos}, "stop"));
  EXPECT_EQ(run_scripted(params(6, 1, true), 4096, true), result({5, 6, 7, kEos, 8, 9}, "length"));
  EXPECT_EQ(run_scripted(params(100, 1, false, {6}), 4096, true), result({5, 6}, "stop"));
  EXPECT_EQ(run_scripted(params(100, 1, true, {kEos}), 4096, true), result({5, 6, 7, kEos}, "stop"));
  EXPECT_EQ(run_scripted(params(100, 1, true, {9, 8}), 4096, true), result({5, 6, 7, kEos, 8}, "stop"));
  EXPECT_EQ(run_scripted(params(1, 1, false), 4096, true), result({5}, "length"));
  EXPECT_EQ(run_scripted(params(100, 1, true), 6, true), result({5, 6}, "length"));
  EXPECT_EQ(run_scripted(params(3, 1, false), 6, true), result({5, 6}, "length"));

  // The token after the stop was computed (a placeholder step) and then discarded.
  harness h(config(64), 64, 4, false);
  const ids script = {5, 6, kEos, 8, 9};
  h.worker.next_token = [script](uint64_t, const ids&, int32_t i) { return script.at(i); };
  ASSERT_TRUE(h.sched.add(request(1, iota_tokens(4), params(100, 1, false))));
  for (int i = 0; i < 3; ++i) h.async_step();
  EXPECT_EQ(h.outputs[seq_key(1, 0)], (ids{5, 6, kEos}));
  EXPECT_EQ(h.finish[seq_key(1, 0)], "stop");
  EXPECT_EQ(h.queue.size(), 1u);  // the step that draws after the stop token is still in flight
  EXPECT_EQ(h.sched.kv().pool().num_blocks_used(), 0);
  auto outs = h.finish_oldest();
  EXPECT_TRUE(outs.empty());
  h.step();  // dropped ids go with the next plan
  EXPECT_EQ(h.last.dropped, (std::vector<int64_t>{1}));
  h.run_until_idle();
  EXPECT_EQ(h.outputs[seq_key(1, 0)], (ids{5, 6, kEos}));
  EXPECT_TRUE(h.sched.idle_and_clean());
  EXPECT_EQ(h.worker.num_known(), 0u);
}

void add_mixed_four(harness& h) {
  ASSERT_TRUE(h.sched.add(request(1, iota_tokens(9), params(7))));
  ASSERT_TRUE(h.sched.add(request(2, iota_tokens(5, 40), params(5, 3), 0, 11)));  // n = 3
  ASSERT_TRUE(h.sched.add(request(3, iota_tokens(14, 70), params(9, 1, true, {17, 23}))));
  ASSERT_TRUE(h.sched.add(request(4, iota_tokens(3, 90), params(1))));
}

TEST(SchedulerAsync, OutputsEqualSynchronousWithForksChunksAndStops) {
  for (int32_t budget : {64, 7, 3}) {
    SCOPED_TRACE("budget " + std::to_string(budget));
    int64_t ahead = 0;
    const auto want = outputs_of(add_mixed_four, config(budget), 64, false, false);
    const auto got = outputs_of(add_mixed_four, config(budget), 64, false, true, &ahead);
    EXPECT_EQ(got, want);
    EXPECT_EQ(got.size(), 6u);
    EXPECT_GT(ahead, 3);
  }
}

TEST(SchedulerAsync, AbortAndFinishSequenceWithTwoStepsInFlight) {
  harness h(config(64), 64, 4, false);
  h.async = true;
  h.check_seq_cap = false;
  ASSERT_TRUE(h.sched.add(request(1, iota_tokens(5), params(10))));
  ASSERT_TRUE(h.sched.add(request(2, iota_tokens(6, 50), params(10, 2))));
  ASSERT_TRUE(h.sched.add(request(3, iota_tokens(7, 80), params(10))));
  h.async_step();
  h.async_step();
  h.plan_ahead();
  ASSERT_EQ(h.queue.size(), 2u);
  const size_t got1 = h.outputs[seq_key(1, 0)].size();
  const size_t got21 = h.outputs[seq_key(2, 1)].size();
  EXPECT_GT(got1, 0u);
  EXPECT_TRUE(h.sched.abort(1));
  h.sched.finish_sequence(4);  // request 2's second sequence, forked by step 1 (a stop string, say)
  EXPECT_EQ(h.sched.stats().num_running, 2);
  h.finish_oldest();
  h.finish_oldest();
  EXPECT_EQ(h.outputs[seq_key(1, 0)].size(), got1);       // nothing after the abort
  EXPECT_EQ(h.outputs[seq_key(2, 1)].size(), got21);      // nor after the finish
  EXPECT_EQ(h.outputs[seq_key(2, 0)].size(), got21 + 2);  // its sibling goes on
  h.plan_ahead();
  EXPECT_EQ(h.queue.front().first.dropped, (std::vector<int64_t>{1, 4}));
  h.run_until_idle();
  EXPECT_TRUE(h.sched.idle_and_clean());
  EXPECT_EQ(h.worker.num_known(), 0u);
  EXPECT_EQ(h.outputs[seq_key(2, 0)].size(), 10u);
  EXPECT_EQ(h.outputs[seq_key(3, 0)].size(), 10u);
}

TEST(SchedulerAsync, PenaltiesFallBackToOneStepAtATime) {
  auto add = [](harness& h) {
    auto p = std::make_shared<sampling_params>(*params(6));
    p->repetition_penalty = 1.2f;
    ASSERT_TRUE(h.sched.add(request(1, iota_tokens(5), p)));
  };
  int64_t ahead = -1;
  const auto want = outputs_of(+add, config(64), 64, false, false);
  EXPECT_EQ(outputs_of(+add, config(64), 64, false, true, &ahead), want);
  EXPECT_EQ(ahead, 0);  // a sequence with penalties draws in every step
  auto add_presence = [](harness& h) {
    auto p = std::make_shared<sampling_params>(*params(6));
    p->presence_penalty = 0.5f;
    ASSERT_TRUE(h.sched.add(request(1, iota_tokens(5), p)));
    ASSERT_TRUE(h.sched.add(request(2, iota_tokens(5, 30), params(6))));
  };
  EXPECT_EQ(outputs_of(+add_presence, config(64), 64, false, true, &ahead),
            outputs_of(+add_presence, config(64), 64, false, false));
  EXPECT_EQ(ahead, 0);
  scheduler_config off = config(64);
  off.async_scheduling = false;
  harness h(off, 64, 4, false);
  ASSERT_TRUE(h.sched.add(request(1, iota_tokens(5), params(6))));
  h.plan();
  EXPECT_FALSE(h.sched.can_plan_ahead());
}

TEST(SchedulerAsync, PreemptionFallsBackAndKeepsOutputs) {
  int64_t ahead = 0;
  harness* h = nullptr;
  EXPECT_EQ(outputs_of(add_preemption_pair, config(64), 4, false, true, &ahead, &h),
            reference_outputs(add_preemption_pair));
  EXPECT_GE(h->sched.stats().preemptions, 1u);
  EXPECT_GT(ahead, 0);
  scheduler_config c = config(64);
  c.preemption = preemption_mode::swap;
  c.num_host_blocks = 4;
  EXPECT_EQ(outputs_of(add_preemption_pair, c, 4, false, true, &ahead, &h),
            reference_outputs(add_preemption_pair));
  EXPECT_GE(h->sched.stats().preemptions, 1u);
}

TEST(SchedulerAsync, ResetWorkerWithTwoStepsInFlightDropsThePlaceholders) {
  for (bool prefix : {false, true}) {
    harness h(config(64), 64, 4, prefix);
    h.async = true;
    add_reset_pair(h);
    h.async_step();
    h.async_step();
    h.plan_ahead();
    ASSERT_EQ(h.queue.size(), 2u);
    ASSERT_EQ(h.sched.num_in_flight(), 2);
    h.sched.reset_worker();
    h.worker.reset();
    h.queue.clear();
    EXPECT_FALSE(h.sched.step_in_flight());
    h.plan_ahead();
    ASSERT_GE(h.queue.size(), 1u);
    const step_plan& p = h.queue.front().first;
    ASSERT_EQ(p.seqs.size(), 2u);
    for (const seq_step& st : p.seqs) {
      EXPECT_TRUE(st.is_new);
      EXPECT_EQ(st.outputs.size(), 2u);  // two results were in, the two steps in flight are lost
      for (int32_t t : toks(p, st)) EXPECT_NE(t, kTokenPending);
      EXPECT_EQ(st.output_index, 2);
    }
    h.run_until_idle();
    EXPECT_TRUE(h.sched.idle_and_clean());
    EXPECT_EQ(h.outputs, reference_outputs(add_reset_pair)) << "prefix " << prefix;
  }
}

// Prefix-cache hits planned ahead never see a block whose hash is not committed, and the hashes that are
// committed are those of real tokens: a second run of the same requests hits every full block.
TEST(SchedulerAsync, PrefixCacheCommitsOnlyKnownTokens) {
  harness h(config(64), 64, 4, true);
  h.async = true;
  const ids prompt = iota_tokens(10);
  ASSERT_TRUE(h.sched.add(request(1, prompt, params(7), 0, 9)));
  h.run_until_idle();
  const ids first = h.outputs[seq_key(1, 0)];
  ASSERT_EQ(first.size(), 7u);
  EXPECT_EQ(h.sched.kv().pool().num_blocks_cached(), 4);  // 16 of 17 tokens: four full blocks
  ids all = prompt;
  all.insert(all.end(), first.begin(), first.end());
  ASSERT_TRUE(h.sched.add(request(2, all, params(2), 0, 9)));
  h.async_step();
  EXPECT_EQ(h.sched.stats().prefix_hits, 16u);
  h.run_until_idle();
  EXPECT_TRUE(h.sched.idle_and_clean());
}

TEST(SchedulerAsync, RandomWorkloadEqualsSynchronous) {
  const uint64_t seed = test::fresh_seed64();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const auto w = make_workload(rng, 200);
  const auto reference = run_workload(w, config(4096, 1024, 64), 4096, false, nullptr);
  int64_t ahead_total = 0;
  for (int round = 0; round < 4 && !HasFailure(); ++round) {
    const scheduler_config c = random_config(rng);
    const int32_t num_blocks = 20 + static_cast<int32_t>(rng() % 41);
    int64_t ahead = 0;
    const auto got = run_workload(w, c, num_blocks, round % 2 == 0, nullptr, nullptr, true, &ahead);
    EXPECT_EQ(got, reference) << "round " << round;
    ahead_total += ahead;
  }
  EXPECT_GT(ahead_total, 100);
  if (HasFailure()) {
    std::printf("RandomWorkloadEqualsSynchronous failed with seed %llu\n",
                static_cast<unsigned long long>(seed));
  }
}

TEST(SchedulerAsync, RandomAbortStormLeavesNoLeakedBlocks) {
  uint64_t preemptions = 0;
  int64_t ahead_total = 0;
  for (int round = 0; round < 6; ++round) {
    storm_round r = make_storm_round();
    const uint64_t seed = r.seed;
    SCOPED_TRACE("seed " + std::to_string(seed));
    scheduler_stats st;
    int64_t ahead = 0;
    run_workload(r.workload, r.config, r.num_blocks, round % 2 == 0, &r.rng, &st, true, &ahead);
    preemptions += st.preemptions;
    ahead_total += ahead;
    if (HasFailure()) {
      std::printf("SchedulerAsync.RandomAbortStormLeavesNoLeakedBlocks failed with seed %llu\n",
                  static_cast<unsigned long long>(seed));
      break;
    }
  }
  EXPECT_GT(preemptions, 0u);
  EXPECT_GT(ahead_total, 100);
}

}  // namespace
}  // namespace troupe
