// The serving core end to end through real actors over the CPU worker: greedy output must not change with
// batching, chunked prefill, prefix-cache hits or preemption (recompute and swap); n > 1 shares blocks
// copy-on-write; aborts leak nothing; a killed worker is restarted and its requests still finish right.
// Asynchronous scheduling (the default) gives what one step at a time gives, over the CPU runner and over
// the same runner stepping asynchronously (scheduler_test::async_runner: drawn ids stay "on the device").
#include <gtest/gtest.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "actors/engine.h"
#include "core/error.h"
#include "core/offline_engine.h"
#include "core/tokenizer.h"
#include "plugins/cpu/cpu_model_runner.h"
#include "tests/common/test_seed.h"
#include "tests/core/scheduler_harness.h"

namespace troupe {
namespace {

std::string model_dir() { return std::string(TROUPE_SOURCE_DIR) + "/tests/data/golden/llama_gqa"; }

struct result {
  std::map<int32_t, std::vector<int32_t>> ids;
  std::map<int32_t, std::string> text;
  std::map<int32_t, std::string> finish;
  bool finished = false;
  std::optional<std::string> error;
  request_usage usage;
};

// Collects every request's events; wait() blocks until all submitted requests finished.
class collector {
 public:
  request_sink sink_for(const std::string& id) {
    std::lock_guard<std::mutex> lk(mu_);
    ++outstanding_;
    return [this, id](const request_event& ev) {
      std::lock_guard<std::mutex> lk(mu_);
      result& r = results_[id];
      EXPECT_FALSE(r.finished) << "event after the final one for " << id;
      for (const auto& d : ev.deltas) {
        auto& v = r.ids[d.index];
        v.insert(v.end(), d.token_ids.begin(), d.token_ids.end());
        r.text[d.index] += d.text;
        if (d.finish_reason) r.finish[d.index] = *d.finish_reason;
      }
      r.usage = ev.usage;
      if (ev.finished) {
        r.finished = true;
        r.error = ev.error;
        --outstanding_;
        cv_.notify_all();
      }
    };
  }
  bool wait(std::chrono::seconds timeout = std::chrono::seconds(300)) {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return outstanding_ == 0; });
  }
  result get(const std::string& id) {
    std::lock_guard<std::mutex> lk(mu_);
    return results_[id];
  }
  void cancel_one() {
    std::lock_guard<std::mutex> lk(mu_);
    --outstanding_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int outstanding_ = 0;
  std::map<std::string, result> results_;
};

class ServingCore : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tok_ = new tokenizer(tokenizer::load_dir(model_dir()));
    // The reference: the offline engine, itself checked token for token against HF.
    cpu_runner_options o;
    o.num_kv_blocks = 64;
    auto runner = cpu_model_runner::load(model_dir(), o);
    offline_engine ref(*runner, tok_);
    auto out = ref.generate({target_request()})[0];
    ref_ids_ = new std::vector<int32_t>(out.ids);
    ref_text_ = new std::string(out.text);
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete ref_ids_;
    delete ref_text_;
  }
  static generate_request target_request() {
    generate_request r;
    r.prompt_ids = tok_->encode("The serving core must not change a single greedy token, ever.", true);
    r.params.temperature = 0;
    r.params.max_tokens = 24;
    r.params.ignore_eos = true;
    return r;
  }
  static engine_request as_engine(const generate_request& g, const std::string& id) {
    engine_request e;
    e.id = id;
    e.prompt_ids = g.prompt_ids;
    e.params = g.params;
    return e;
  }
  std::unique_ptr<cpu_model_runner> runner(int32_t blocks) {
    cpu_runner_options o;
    o.num_kv_blocks = blocks;
    return cpu_model_runner::load(model_dir(), o);
  }
  // 31 other requests of mixed prompt lengths and output lengths, some sampled.
  static std::vector<engine_request> others(uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<engine_request> v;
    for (int i = 0; i < 31; ++i) {
      engine_request e;
      e.id = "other-" + std::to_string(i);
      const int len = 1 + static_cast<int>(rng() % 60);
      for (int j = 0; j < len; ++j) e.prompt_ids.push_back(4 + static_cast<int32_t>(rng() % 1000));
      e.params.max_tokens = 1 + static_cast<int32_t>(rng() % 30);
      e.params.temperature = (i % 3 == 0) ? 0.8f : 0.0f;
      e.params.seed = i;
      e.params.ignore_eos = true;
      v.push_back(e);
    }
    return v;
  }
  void expect_target(const result& r, const std::string& what) {
    ASSERT_TRUE(r.finished) << what;
    EXPECT_FALSE(r.error) << what << ": " << r.error.value_or("");
    EXPECT_EQ(r.ids.at(0), *ref_ids_) << what;
    EXPECT_EQ(r.text.at(0), *ref_text_) << what;
    EXPECT_EQ(r.finish.at(0), "length") << what;
  }
  static tokenizer* tok_;
  static std::vector<int32_t>* ref_ids_;
  static std::string* ref_text_;
};

tokenizer* ServingCore::tok_ = nullptr;
std::vector<int32_t>* ServingCore::ref_ids_ = nullptr;
std::string* ServingCore::ref_text_ = nullptr;

TEST_F(ServingCore, GreedyAlone) {
  auto r = runner(64);
  actor_engine e(*r, tok_, {});
  collector c;
  ASSERT_EQ(e.submit(as_engine(target_request(), "t"), c.sink_for("t")).status, submit_status::accepted);
  ASSERT_TRUE(c.wait());
  expect_target(c.get("t"), "alone");
  auto res = c.get("t");
  EXPECT_EQ(res.usage.prompt_tokens, static_cast<int32_t>(target_request().prompt_ids.size()));
  EXPECT_EQ(res.usage.completion_tokens, 24);
  EXPECT_TRUE(e.wait_idle(std::chrono::seconds(10)));
}

TEST_F(ServingCore, GreedyBatchedWith31Others) {
  auto r = runner(256);
  actor_engine e(*r, tok_, {});
  collector c;
  auto rest = others(1);
  for (size_t i = 0; i < rest.size(); ++i) {
    if (i == 13) {
      ASSERT_EQ(e.submit(as_engine(target_request(), "t"), c.sink_for("t")).status, submit_status::accepted);
    }
    ASSERT_EQ(e.submit(rest[i], c.sink_for(rest[i].id)).status, submit_status::accepted);
  }
  ASSERT_TRUE(c.wait());
  expect_target(c.get("t"), "batched");
  for (const auto& o : rest)
    EXPECT_EQ(static_cast<int32_t>(c.get(o.id).ids.at(0).size()), o.params.max_tokens);
  EXPECT_TRUE(e.wait_idle(std::chrono::seconds(10)));
}

TEST_F(ServingCore, GreedyWithPrefixCacheHit) {
  auto r = runner(64);
  actor_engine e(*r, tok_, {});
  collector c;
  ASSERT_EQ(e.submit(as_engine(target_request(), "first"), c.sink_for("first")).status,
            submit_status::accepted);
  ASSERT_TRUE(c.wait());
  const uint64_t hits_before = e.stats().prefix_cache_hits;
  ASSERT_EQ(e.submit(as_engine(target_request(), "second"), c.sink_for("second")).status,
            submit_status::accepted);
  ASSERT_TRUE(c.wait());
  expect_target(c.get("first"), "cold");
  expect_target(c.get("second"), "prefix hit");
  const size_t prompt = target_request().prompt_ids.size();
  EXPECT_EQ(e.stats().prefix_cache_hits - hits_before, (prompt - 1) / 16 * 16)
      << "every full prompt block is reused";
  EXPECT_TRUE(e.wait_idle(std::chrono::seconds(10)));
}

TEST_F(ServingCore, GreedyWithPrefillChunkedAt7) {
  auto r = runner(256);
  actor_engine_options o;
  o.sched.max_num_batched_tokens = 7;
  actor_engine e(*r, tok_, o);
  collector c;
  auto rest = others(2);
  ASSERT_EQ(e.submit(as_engine(target_request(), "t"), c.sink_for("t")).status, submit_status::accepted);
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(e.submit(rest[i], c.sink_for(rest[i].id)).status, submit_status::accepted);
  ASSERT_TRUE(c.wait());
  expect_target(c.get("t"), "chunked at 7");
}

TEST_F(ServingCore, GreedyUnderRecomputePreemption) {
  // 14 blocks of 16 tokens cannot hold 32 sequences of up to ~90 tokens: the scheduler must preempt.
  auto r = runner(14);
  actor_engine_options o;
  o.prefix_caching = false;
  actor_engine e(*r, tok_, o);
  collector c;
  auto rest = others(3);
  for (size_t i = 0; i < rest.size(); ++i) {
    if (i == 3) {
      ASSERT_EQ(e.submit(as_engine(target_request(), "t"), c.sink_for("t")).status, submit_status::accepted);
    }
    ASSERT_EQ(e.submit(rest[i], c.sink_for(rest[i].id)).status, submit_status::accepted);
  }
  ASSERT_TRUE(c.wait());
  expect_target(c.get("t"), "recompute preemption");
  EXPECT_GT(e.stats().preemptions, 0u);
  EXPECT_TRUE(e.wait_idle(std::chrono::seconds(10)));
}

TEST_F(ServingCore, GreedyUnderSwapPreemption) {
  auto r = runner(14);
  actor_engine_options o;
  o.sched.preemption = preemption_mode::swap;
  o.sched.num_host_blocks = 64;
  actor_engine e(*r, tok_, o);
  collector c;
  auto rest = others(4);
  for (size_t i = 0; i < rest.size(); ++i) {
    if (i == 5) {
      ASSERT_EQ(e.submit(as_engine(target_request(), "t"), c.sink_for("t")).status, submit_status::accepted);
    }
    ASSERT_EQ(e.submit(rest[i], c.sink_for(rest[i].id)).status, submit_status::accepted);
  }
  ASSERT_TRUE(c.wait());
  expect_target(c.get("t"), "swap preemption");
  EXPECT_GT(e.stats().preemptions, 0u);
  EXPECT_TRUE(e.wait_idle(std::chrono::seconds(10)));
}

TEST_F(ServingCore, SeededSamplingIsIndependentOfBatchingAndPreemption) {
  auto sampled = [&] {
    engine_request q = as_engine(target_request(), "s");
    q.params.temperature = 0.9f;
    q.params.top_p = 0.95f;
    q.params.seed = 77;
    return q;
  };
  std::vector<int32_t> alone;
  {
    auto r = runner(64);
    actor_engine e(*r, tok_, {});
    collector c;
    e.submit(sampled(), c.sink_for("s"));
    ASSERT_TRUE(c.wait());
    alone = c.get("s").ids.at(0);
  }
  auto r = runner(14);
  actor_engine e(*r, tok_, {});
  collector c;
  auto rest = others(5);
  for (size_t i = 0; i < rest.size(); ++i) {
    if (i == 7) e.submit(sampled(), c.sink_for("s"));
    e.submit(rest[i], c.sink_for(rest[i].id));
  }
  ASSERT_TRUE(c.wait());
  EXPECT_EQ(c.get("s").ids.at(0), alone);
}

TEST_F(ServingCore, NGreaterThanOneSharesThePrompt) {
  auto r = runner(64);
  actor_engine e(*r, tok_, {});
  collector c;
  engine_request q = as_engine(target_request(), "n");
  q.params.n = 4;
  ASSERT_EQ(e.submit(q, c.sink_for("n")).status, submit_status::accepted);
  ASSERT_TRUE(c.wait());
  auto res = c.get("n");
  ASSERT_EQ(res.ids.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(res.ids.at(i), *ref_ids_) << "greedy sample " << i;
  EXPECT_EQ(res.usage.completion_tokens, 4 * 24);
  // Sampled: distinct children, reproducible with the seed.
  q.id = "n2";
  q.params.temperature = 1.0f;
  q.params.seed = 5;
  e.submit(q, c.sink_for("n2"));
  ASSERT_TRUE(c.wait());
  q.id = "n3";
  e.submit(q, c.sink_for("n3"));
  ASSERT_TRUE(c.wait());
  auto a = c.get("n2"), b = c.get("n3");
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_NE(a.ids.at(0), a.ids.at(1));
  EXPECT_TRUE(e.wait_idle(std::chrono::seconds(10)));
}

TEST_F(ServingCore, AbortStormOf500LeaksNothing) {
  auto r = runner(96);
  actor_engine_options o;
  o.sched.max_num_seqs = 64;
  actor_engine e(*r, tok_, o);
  collector c;
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  std::vector<std::string> ids;
  for (int i = 0; i < 500; ++i) {
    engine_request q;
    q.id = "a" + std::to_string(i);
    const int len = 1 + static_cast<int>(rng() % 40);
    for (int j = 0; j < len; ++j) q.prompt_ids.push_back(4 + static_cast<int32_t>(rng() % 1000));
    q.params.max_tokens = 1 + static_cast<int32_t>(rng() % 40);
    q.params.temperature = 0.7f;
    q.params.n = 1 + static_cast<int32_t>(rng() % 3);
    q.params.ignore_eos = true;
    ASSERT_EQ(e.submit(q, c.sink_for(q.id)).status, submit_status::accepted);
    ids.push_back(q.id);
    if (rng() % 3 == 0) e.abort(ids[rng() % ids.size()]);  // at random points: queued, running, done
    if (rng() % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 20));
  }
  for (int i = 0; i < 100; ++i) e.abort(ids[rng() % ids.size()]);
  ASSERT_TRUE(c.wait());
  int aborted = 0;
  for (const auto& id : ids) {
    auto res = c.get(id);
    EXPECT_TRUE(res.finished) << id;
    for (const auto& [i, f] : res.finish) aborted += f == "abort";
  }
  EXPECT_GT(aborted, 0);
  EXPECT_TRUE(e.wait_idle(std::chrono::seconds(30))) << "blocks leaked after the abort storm";
  EXPECT_EQ(e.stats().num_kv_blocks_used, 0);
}

TEST_F(ServingCore, KilledWorkerIsRestartedAndRequestsFinishCorrectly) {
  auto r = runner(256);
  actor_engine e(*r, tok_, {});
  collector c;
  auto rest = others(6);
  ASSERT_EQ(e.submit(as_engine(target_request(), "t"), c.sink_for("t")).status, submit_status::accepted);
  for (int i = 0; i < 10; ++i) e.submit(rest[i], c.sink_for(rest[i].id));
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  e.crash_worker_next_step();
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  e.crash_worker_next_step();
  ASSERT_TRUE(c.wait());
  EXPECT_GE(e.worker_restarts(), 1);
  expect_target(c.get("t"), "after worker restarts");
  for (int i = 0; i < 10; ++i) {
    auto res = c.get(rest[i].id);
    EXPECT_FALSE(res.error) << rest[i].id;
    EXPECT_EQ(static_cast<int32_t>(res.ids.at(0).size()), rest[i].params.max_tokens) << rest[i].id;
  }
  EXPECT_TRUE(e.healthy());
  EXPECT_TRUE(e.wait_idle(std::chrono::seconds(10)));
}

// A configuration reload that changes plugins swaps the runner under live traffic: every request still
// finishes with the right output, the old runner can be destroyed right after, and nothing leaks.
TEST_F(ServingCore, ReplacedRunnerServesInFlightRequestsCorrectly) {
  auto r = runner(256);
  actor_engine e(*r, tok_, {});
  collector c;
  auto rest = others(7);
  ASSERT_EQ(e.submit(as_engine(target_request(), "t"), c.sink_for("t")).status, submit_status::accepted);
  for (int i = 0; i < 10; ++i) e.submit(rest[i], c.sink_for(rest[i].id));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto r2 = runner(256);
  e.replace_runner(*r2);
  r.reset();  // the engine no longer uses it: a use after this would fault under the sanitizers
  auto r3 = runner(256);
  e.replace_runner(*r3);  // and once more, while requests may still be running on r2
  r2.reset();
  ASSERT_TRUE(c.wait());
  expect_target(c.get("t"), "after runner replacements");
  for (int i = 0; i < 10; ++i) {
    auto res = c.get(rest[i].id);
    EXPECT_FALSE(res.error) << rest[i].id;
    EXPECT_EQ(static_cast<int32_t>(res.ids.at(0).size()), rest[i].params.max_tokens) << rest[i].id;
  }
  EXPECT_EQ(e.worker_restarts(), 0);  // planned replacements are not crashes
  EXPECT_TRUE(e.healthy());
  EXPECT_TRUE(e.wait_idle(std::chrono::seconds(10)));
  // A runner with another KV geometry cannot take over the engine's cache.
  auto small = runner(64);
  EXPECT_THROW(e.replace_runner(*small), troupe::error);
  // The engine still serves after the refusal.
  collector c2;
  ASSERT_EQ(e.submit(as_engine(target_request(), "t2"), c2.sink_for("t2")).status, submit_status::accepted);
  ASSERT_TRUE(c2.wait());
  expect_target(c2.get("t2"), "after a refused replacement");
}

TEST_F(ServingCore, RefusesBadRequestsWithEveryReason) {
  auto r = runner(64);
  actor_engine_options o;
  o.sched.max_waiting_requests = 2;
  actor_engine e(*r, tok_, o);
  collector c;
  engine_request bad;
  bad.id = "bad";
  bad.prompt_ids = {5, 100000};
  bad.params.temperature = -3;
  bad.params.top_p = 0;
  auto res = e.submit(bad, nullptr);
  EXPECT_EQ(res.status, submit_status::invalid);
  EXPECT_NE(res.message.find("temperature"), std::string::npos) << res.message;
  EXPECT_NE(res.message.find("top_p"), std::string::npos) << res.message;
  EXPECT_NE(res.message.find("100000"), std::string::npos) << res.message;
  engine_request longp = as_engine(target_request(), "long");
  longp.params.max_tokens = 100000;
  EXPECT_EQ(e.submit(longp, nullptr).status, submit_status::invalid);
  // Duplicate live id.
  engine_request slow = as_engine(target_request(), "dup");
  ASSERT_EQ(e.submit(slow, c.sink_for("dup")).status, submit_status::accepted);
  EXPECT_EQ(e.submit(slow, nullptr).status, submit_status::invalid);
  ASSERT_TRUE(c.wait());
  expect_target(c.get("dup"), "next to refusals");
}

// The requests of the async tests: the target, 31 mixed others (some seeded sampled), n = 3 sampled,
// a stop string and a stop token taken from the target's reference output.
std::vector<engine_request> async_workload(const std::vector<int32_t>& ref_ids, const std::string& ref_text,
                                           const engine_request& target, std::vector<engine_request> rest) {
  std::vector<engine_request> v;
  v.push_back(target);
  for (size_t i = 0; i < rest.size(); ++i) v.push_back(rest[i]);
  engine_request n3 = target;
  n3.id = "n3";
  n3.params.n = 3;
  n3.params.temperature = 0.9f;
  n3.params.seed = 12;
  v.push_back(n3);
  engine_request stop_str = target;
  stop_str.id = "stop-string";
  stop_str.params.stop = {ref_text.substr(ref_text.size() / 2, 3)};
  v.push_back(stop_str);
  engine_request stop_tok = target;
  stop_tok.id = "stop-token";
  stop_tok.params.stop_token_ids = {ref_ids.at(ref_ids.size() / 3)};
  v.push_back(stop_tok);
  engine_request short_one = target;
  short_one.id = "max-tokens-2";
  short_one.params.max_tokens = 2;
  v.push_back(short_one);
  return v;
}

std::map<std::string, result> serve_all(model_runner& runner, const tokenizer* tok, actor_engine_options o,
                                        const std::vector<engine_request>& reqs, int crash_after = -1) {
  actor_engine e(runner, tok, o);
  collector c;
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(e.submit(reqs[i], c.sink_for(reqs[i].id)).status, submit_status::accepted) << reqs[i].id;
    if (static_cast<int>(i) == crash_after) e.crash_worker_next_step();
  }
  EXPECT_TRUE(c.wait());
  EXPECT_TRUE(e.wait_idle(std::chrono::seconds(10)));
  EXPECT_TRUE(e.healthy());
  if (crash_after >= 0) {
    EXPECT_GE(e.worker_restarts(), 1);
  }
  std::map<std::string, result> out;
  for (const auto& r : reqs) out[r.id] = c.get(r.id);
  return out;
}

void expect_same_results(const std::map<std::string, result>& got, const std::map<std::string, result>& want,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [id, w] : want) {
    const result& g = got.at(id);
    EXPECT_TRUE(g.finished) << what << " " << id;
    EXPECT_FALSE(g.error) << what << " " << id;
    EXPECT_EQ(g.ids, w.ids) << what << " " << id;
    EXPECT_EQ(g.text, w.text) << what << " " << id;
    EXPECT_EQ(g.finish, w.finish) << what << " " << id;
  }
}

TEST_F(ServingCore, AsyncSchedulingGivesTheSynchronousOutputs) {
  const auto reqs = async_workload(*ref_ids_, *ref_text_, as_engine(target_request(), "t"), others(8));
  for (int32_t budget : {2048, 7}) {
    SCOPED_TRACE("budget " + std::to_string(budget));
    actor_engine_options sync_o;
    sync_o.sched.max_num_batched_tokens = budget;
    sync_o.sched.async_scheduling = false;
    actor_engine_options async_o = sync_o;
    async_o.sched.async_scheduling = true;
    auto r = runner(256);
    const auto want = serve_all(*r, tok_, sync_o, reqs);
    expect_target(want.at("t"), "synchronous");
    EXPECT_EQ(want.at("stop-string").finish.at(0), "stop");
    EXPECT_EQ(want.at("stop-token").finish.at(0), "stop");
    EXPECT_LT(want.at("stop-token").ids.at(0).size(), ref_ids_->size());
    EXPECT_EQ(want.at("max-tokens-2").ids.at(0).size(), 2u);
    EXPECT_EQ(want.at("n3").ids.size(), 3u);
    expect_same_results(serve_all(*r, tok_, async_o, reqs), want, "async, host-resolved placeholders");
    scheduler_test::async_runner dev(*r);
    expect_same_results(serve_all(dev, tok_, async_o, reqs), want, "async runner");
    EXPECT_GT(dev.pending_tokens, 50);
    EXPECT_GT(dev.overlapped, 10);
  }
}

TEST_F(ServingCore, AsyncRunnerUnderPreemptionAndWorkerCrash) {
  const auto reqs = async_workload(*ref_ids_, *ref_text_, as_engine(target_request(), "t"), others(9));
  actor_engine_options sync_o;
  sync_o.sched.async_scheduling = false;
  auto big = runner(256);
  const auto want = serve_all(*big, tok_, sync_o, reqs);
  // 14 blocks: preemption by recompute and by swap, one step at a time while memory is short.
  for (auto mode : {preemption_mode::recompute, preemption_mode::swap}) {
    auto small = runner(14);
    scheduler_test::async_runner dev(*small);
    actor_engine_options o;
    o.prefix_caching = mode == preemption_mode::swap;
    o.sched.preemption = mode;
    o.sched.num_host_blocks = 64;
    expect_same_results(serve_all(dev, tok_, o, reqs), want, "preemption");
    EXPECT_GT(dev.overlapped, 0);
  }
  // A worker crash with two steps in flight: the new worker recomputes, nothing is lost or doubled.
  for (int crash_after : {0, 20}) {
    auto r = runner(256);
    scheduler_test::async_runner dev(*r);
    expect_same_results(serve_all(dev, tok_, {}, reqs, crash_after), want, "crash");
  }
}

TEST_F(ServingCore, AsyncRunnerAbortStormLeaksNothing) {
  auto r = runner(96);
  scheduler_test::async_runner dev(*r);
  actor_engine_options o;
  o.sched.max_num_seqs = 64;
  actor_engine e(dev, tok_, o);
  collector c;
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  std::vector<std::string> ids;
  for (int i = 0; i < 200; ++i) {
    engine_request q;
    q.id = "a" + std::to_string(i);
    const int len = 1 + static_cast<int>(rng() % 40);
    for (int j = 0; j < len; ++j) q.prompt_ids.push_back(4 + static_cast<int32_t>(rng() % 1000));
    q.params.max_tokens = 1 + static_cast<int32_t>(rng() % 40);
    q.params.temperature = 0.7f;
    q.params.n = 1 + static_cast<int32_t>(rng() % 3);
    q.params.ignore_eos = true;
    if (rng() % 4 == 0) q.params.stop = {"e"};
    ASSERT_EQ(e.submit(q, c.sink_for(q.id)).status, submit_status::accepted);
    ids.push_back(q.id);
    if (rng() % 3 == 0) e.abort(ids[rng() % ids.size()]);
    if (rng() % 20 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 10));
  }
  for (int i = 0; i < 50; ++i) e.abort(ids[rng() % ids.size()]);
  ASSERT_TRUE(c.wait());
  for (const auto& id : ids) EXPECT_TRUE(c.get(id).finished) << id;
  EXPECT_TRUE(e.wait_idle(std::chrono::seconds(30))) << "blocks leaked after the abort storm";
  EXPECT_EQ(e.stats().num_kv_blocks_used, 0);
}

}  // namespace
}  // namespace troupe
