// Sampling on the device against the CPU sampler (core/sampling.cpp):
// - the argmax kernel on fresh random rows (ties, vocabularies that are not a multiple of 4, a NaN row);
// - the full sampler (cuda_sampler over kernels::cuda::sample_rows) on fresh random rows and parameters:
//   every temperature / top-k / top-p / min-p / penalty combination, several seeds and steps, four
//   vocabulary sizes, rows with ties and -inf, children sharing a logits row, bad rows;
// - the engine's step path (scheduler + step_executor over the CUDA runner, every draw on the device)
//   against the same path sampling on the host, and greedy rows against the offline engine.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/offline_engine.h"
#include "core/rng.h"
#include "core/sampling.h"
#include "core/sampling_weight.h"
#include "core/sched/scheduler.h"
#include "core/sched/step_executor.h"
#include "kernels/cuda/sampling.h"
#include "plugins/cuda/cuda_model_runner.h"
#include "plugins/cuda/cuda_sampler.h"
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
      EXPECT_NEAR(lps[r], want.logprob, 2e-4 + 1e-5 * std::fabs(want.logprob))
          << "vocab " << vocab << " row " << r;
    }
    if (vocab > 5) {
      EXPECT_EQ(ids[1], 3);
      EXPECT_EQ(ids[3], 0);
      EXPECT_NEAR(lps[3], -std::log(static_cast<double>(vocab)), 1e-4);
    }
  }
}

constexpr float kInf = std::numeric_limits<float>::infinity();
// Draws closer than this (relative) to a decision boundary may legitimately differ; see reference_draw.
constexpr double kBoundary = 1e-9;

// sampler::sample's draw recomputed with a plain full sort (the sampler selects instead), and how close it
// came to a decision: the smallest distance between top-p's needed mass or the walk's target and a
// cumulative sum compared with it, relative to the sum it is a share of. The device sums weights exactly;
// the CPU sums them in double, off by less than vocab * 2^-53 relatively (1.4e-11 at 128256). Weights are
// the same floats on both sides (sampling_weight) except where a double exp lands within a few double
// ulps of a float rounding midpoint: such a weight counts as uncertain by one float ulp (slack), and makes
// the draw inexact if that ulp straddles min_p.
struct reference_draw {
  int32_t id = -1;
  double margin = std::numeric_limits<double>::infinity();
  bool exact = true;
};

reference_draw reference_sample(const float* logits, int32_t V, const sampling_params& p,
                                const std::vector<int32_t>& prompt, const std::vector<int32_t>& output,
                                uint64_t seed, uint64_t step) {
  std::vector<float> adj(logits, logits + V), work(V);
  apply_penalties(adj.data(), V, p, prompt, output, work.data());
  reference_draw r;
  if (p.is_greedy()) {
    r.id = static_cast<int32_t>(std::max_element(adj.begin(), adj.end()) - adj.begin());  // the first maximum
    return r;
  }
  for (auto& a : adj) a /= p.temperature;
  const float mx = *std::max_element(adj.begin(), adj.end());
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return adj[a] > adj[b]; });
  const int32_t k = (p.top_k > 0 && p.top_k < V) ? p.top_k : V;
  std::vector<float> w(V, 0.0f);
  double slack = 0;
  for (int32_t j = 0; j < k; ++j) {
    const int32_t i = order[j];
    w[i] = sampling_weight(adj[i], mx);
    const double d = std::exp(static_cast<double>(adj[i] - mx));
    if (static_cast<float>(d * (1 - 4e-16)) != w[i] || static_cast<float>(d * (1 + 4e-16)) != w[i]) {
      const float up = std::nextafter(w[i], kInf), down = std::nextafter(w[i], 0.0f);
      slack += static_cast<double>(up) - w[i];
      if ((up >= p.min_p) != (down >= p.min_p)) r.exact = false;
    }
  }
  int32_t cut = k - 1;  // last kept position in rank order
  if (p.top_p < 1.0f) {
    double mass = 0;
    for (int32_t i = 0; i < V; ++i) mass += w[i];
    const double need = static_cast<double>(p.top_p) * mass;
    double cum = 0;
    for (int32_t j = 0; j < k; ++j) {
      cum += w[order[j]];
      r.margin = std::min(r.margin, (std::fabs(cum - need) - slack) / mass);
      if (cum >= need) {
        cut = j;
        break;
      }
    }
  }
  std::vector<char> in_rank(V, 0);
  for (int32_t j = 0; j <= cut; ++j) in_rank[order[j]] = 1;
  auto kept = [&](int32_t i) { return in_rank[i] && w[i] > 0.0f && w[i] >= p.min_p; };
  double total = 0;
  for (int32_t i = 0; i < V; ++i) {
    if (kept(i)) total += w[i];
  }
  const double target = rng::uniform_double(seed, step) * total;
  double cum = 0;
  for (int32_t i = 0; i < V; ++i) {
    if (!kept(i)) continue;
    cum += w[i];
    r.id = i;
    r.margin = std::min(r.margin, (std::fabs(cum - target) - slack) / total);
    if (cum > target) break;
  }
  return r;
}

struct sample_case {
  sampling_params p;
  std::vector<int32_t> prompt, output;
  uint64_t seed = 0, step = 0;
  int32_t logits_row = 0;
};

std::string describe(const sample_case& c, int32_t V, size_t row) {
  std::ostringstream os;
  os << "vocab " << V << " row " << row << " (logits row " << c.logits_row << "): temperature "
     << c.p.temperature << " top_k " << c.p.top_k << " top_p " << c.p.top_p << " min_p " << c.p.min_p
     << " repetition " << c.p.repetition_penalty << " frequency " << c.p.frequency_penalty << " presence "
     << c.p.presence_penalty << " logprobs " << c.p.logprobs << " seed " << c.seed << " step " << c.step
     << " prompt " << c.prompt.size() << " output " << c.output.size() << " ids";
  return os.str();
}

// Rows of several shapes: narrow, wide and very wide normals, a coarse grid (ties everywhere, also at the
// maximum), one flat row (a single group of ties), and -inf entries in every third row.
std::vector<float> random_logits(std::mt19937_64& g, int32_t rows, int32_t V) {
  std::vector<float> h(static_cast<size_t>(rows) * V);
  std::uniform_int_distribution<int32_t> at(0, V - 1);
  for (int32_t r = 0; r < rows; ++r) {
    float* row = h.data() + static_cast<size_t>(r) * V;
    const int style = r % 6;
    std::normal_distribution<float> d(0.0f, style == 0 ? 0.5f : style == 1 ? 2.0f : 6.0f);
    for (int32_t i = 0; i < V; ++i) row[i] = style == 5 ? 0.25f : d(g);
    if (style == 3) {
      for (int32_t i = 0; i < V; ++i) row[i] = std::round(row[i] * 0.5f) * 2.0f;
    }
    if (r % 3 == 0 && style != 5) {
      for (int32_t j = 0; j < std::max(1, V / 10); ++j) row[at(g)] = -kInf;
    }
  }
  return h;
}

// Every combination of the listed temperature, top-k, top-p, min-p and penalties on/off, with random
// histories, top logprobs, seeds and steps; then a few extra rows reading an earlier row's logits (as
// the children of an n > 1 fork do), with other parameters and seeds.
std::vector<sample_case> random_cases(std::mt19937_64& g, int32_t V, int32_t num_logits_rows) {
  const float temps[] = {0.0f, 0.3f, 1.0f, 1.7f};
  const int32_t ks[] = {0, 1, 5, 50};
  const float tps[] = {1.0f, 0.1f, 0.9f};
  const float mps[] = {0.0f, 0.05f, 0.3f};
  const int32_t tops[] = {0, 0, 1, 5, 20};
  auto pick = [&g](auto& list) {
    return list[std::uniform_int_distribution<size_t>(0, std::size(list) - 1)(g)];
  };
  std::uniform_int_distribution<int32_t> id(0, V - 1);
  auto make = [&](int c) {
    sample_case s;
    s.p.temperature = temps[c % 4];
    s.p.top_k = ks[(c / 4) % 4];
    if (s.p.top_k == 0 && g() % 2 == 0) s.p.top_k = -1;  // the other "off"
    s.p.top_p = tps[(c / 16) % 3];
    s.p.min_p = mps[(c / 48) % 3];
    if ((c / 144) % 2 == 1) {
      const float reps[] = {1.0f, 1.3f, 0.7f}, freqs[] = {0.0f, 0.5f, -0.4f}, pres[] = {0.0f, 0.6f, -0.3f};
      s.p.repetition_penalty = pick(reps);
      s.p.frequency_penalty = pick(freqs);
      s.p.presence_penalty = pick(pres);
      if (s.p.repetition_penalty == 1.0f && s.p.frequency_penalty == 0.0f) s.p.presence_penalty = 0.6f;
    }
    s.p.logprobs = pick(tops);
    s.p.need_logprob = true;
    // Histories: repeats come from a small pool so that output counts go past 1.
    std::vector<int32_t> pool(8);
    for (auto& x : pool) x = id(g);
    s.prompt.resize(1 + g() % 40);
    for (auto& x : s.prompt) x = g() % 2 ? pool[g() % pool.size()] : id(g);
    s.output.resize(g() % 31);
    for (auto& x : s.output) x = g() % 2 ? pool[g() % pool.size()] : id(g);
    s.seed = g();
    s.step = g() % 5000;
    s.logits_row = c % num_logits_rows;
    return s;
  };
  std::vector<sample_case> cases;
  for (int c = 0; c < num_logits_rows; ++c) cases.push_back(make(c));
  for (int c = 0; c < num_logits_rows; c += 9) {
    sample_case s = make(static_cast<int>(g() % 288));
    s.logits_row = c;
    cases.push_back(s);
  }
  return cases;
}

struct device_draws {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  std::vector<token_logprob> top;  // [rows, sampling_max_logprobs]
};

device_draws sample_on_device(cuda_sampler& smp, const std::vector<float>& logits, int32_t V,
                              const std::vector<sample_case>& cases) {
  const auto num_logits = static_cast<int32_t>(logits.size() / V);
  gpu_test::device_buffer<float> d(logits);
  std::vector<device_sample_row> rows;
  for (const auto& c : cases) {
    device_sample_row r;
    r.logits_row = c.logits_row;
    r.params = &c.p;
    r.seed = c.seed;
    r.step = c.step;
    r.prompt_ids = c.prompt.data();
    r.output_ids = c.output.data();
    r.num_prompt_ids = static_cast<int32_t>(c.prompt.size());
    r.num_output_ids = static_cast<int32_t>(c.output.size());
    rows.push_back(r);
  }
  device_draws out;
  out.ids.assign(cases.size(), -7);
  out.logprobs.assign(cases.size(), NAN);
  out.top.assign(cases.size() * sampling_max_logprobs, token_logprob{-7, NAN});
  smp.sample(d.get(), num_logits, rows.data(), static_cast<int32_t>(rows.size()), out.ids.data(),
             out.logprobs.data(), out.top.data(), nullptr);
  return out;
}

TEST(CudaSampling, SampleRowsMatchTheCpuSamplerTokenForToken) {
  TROUPE_SKIP_WITHOUT_GPU();
  std::mt19937_64 g(20261123);
  size_t checked = 0, near_boundary = 0, sampled = 0;
  for (const int32_t V : {7, 1000, 32000, 128256}) {
    cuda_sampler smp(V);  // reused across rounds, as the runner reuses it across steps
    const int rounds = V <= 1000 ? 4 : V <= 32000 ? 2 : 1;
    for (int round = 0; round < rounds; ++round) {
      constexpr int32_t kRows = 288;  // one per parameter combination
      const std::vector<float> logits = random_logits(g, kRows, V);
      const std::vector<sample_case> cases = random_cases(g, V, kRows);
      const device_draws got = sample_on_device(smp, logits, V, cases);
      sampler cpu;
      std::vector<float> scratch;
      for (size_t r = 0; r < cases.size(); ++r) {
        const sample_case& c = cases[r];
        const float* row = logits.data() + static_cast<size_t>(c.logits_row) * V;
        const sample_result want = cpu.sample(row, V, c.p, c.prompt, c.output, c.seed, c.step, scratch);
        const reference_draw ref = reference_sample(row, V, c.p, c.prompt, c.output, c.seed, c.step);
        ASSERT_EQ(ref.id, want.id) << "the test's reference disagrees with sampler::sample: "
                                   << describe(c, V, r);
        ++checked;
        sampled += !c.p.is_greedy();
        if (!ref.exact || ref.margin < kBoundary) {
          ++near_boundary;  // the draw sits on a CDF boundary: either side is right
          std::printf("near a boundary (margin %.3g, exact %d): %s; cpu %d, device %d\n", ref.margin,
                      static_cast<int>(ref.exact), describe(c, V, r).c_str(), want.id, got.ids[r]);
        } else {
          EXPECT_EQ(got.ids[r], want.id) << describe(c, V, r) << "; margin " << ref.margin;
          EXPECT_NEAR(got.logprobs[r], want.logprob, 1e-4) << describe(c, V, r);
        }
        ASSERT_EQ(want.top.size(), static_cast<size_t>(std::min(c.p.logprobs, V)));
        for (size_t j = 0; j < want.top.size(); ++j) {
          const token_logprob& t = got.top[r * sampling_max_logprobs + j];
          EXPECT_EQ(t.id, want.top[j].id) << describe(c, V, r) << " top " << j;
          if (std::isinf(want.top[j].logprob)) {  // a -inf logit (masked) is -inf on both sides
            EXPECT_EQ(t.logprob, want.top[j].logprob) << describe(c, V, r) << " top " << j;
          } else {
            EXPECT_NEAR(t.logprob, want.top[j].logprob, 1e-4) << describe(c, V, r) << " top " << j;
          }
        }
      }
    }
  }
  std::printf("%zu rows checked (%zu sampled, the rest greedy), %zu within %.0e of a CDF boundary\n", checked,
              sampled, near_boundary, kBoundary);
}

// Rows the CPU sampler refuses (a NaN or +inf logit, every logit -inf, a scaled maximum that overflows)
// come back as -1, greedy or sampled, and leave the rows around them alone. A greedy row does not divide by
// the temperature, so the overflowing logits are fine there.
TEST(CudaSampling, BadRowsReportMinusOneAndLeaveTheOthersAlone) {
  TROUPE_SKIP_WITHOUT_GPU();
  constexpr int32_t V = 1000;
  std::mt19937_64 g(7);
  std::vector<float> logits = random_logits(g, 6, V);
  logits[1 * V + 17] = NAN;
  logits[2 * V + 999] = kInf;
  std::fill(logits.begin() + 3 * V, logits.begin() + 4 * V, -kInf);
  logits[4 * V + 5] = 3e38f;  // / 0.5 overflows
  sampling_params greedy, sampled;
  greedy.temperature = 0;
  sampled.temperature = 0.5f;
  sampled.top_p = 0.9f;
  sampled.repetition_penalty = 1.2f;
  std::vector<sample_case> cases;
  for (int32_t row = 0; row < 6; ++row) {
    for (const sampling_params* p : {&greedy, &sampled}) {
      sample_case c;
      c.p = *p;
      c.prompt = {1, 2, 3};
      c.seed = 99;
      c.step = static_cast<uint64_t>(row);
      c.logits_row = row;
      cases.push_back(c);
    }
  }
  cuda_sampler smp(V);
  const device_draws got = sample_on_device(smp, logits, V, cases);
  sampler cpu;
  std::vector<float> scratch;
  for (size_t r = 0; r < cases.size(); ++r) {
    const sample_case& c = cases[r];
    const int32_t row = c.logits_row;
    const float* lg = logits.data() + static_cast<size_t>(row) * V;
    const bool bad = row == 1 || row == 2 || row == 3 || (row == 4 && !c.p.is_greedy());
    if (bad) {
      EXPECT_EQ(got.ids[r], -1) << "logits row " << row << " greedy " << c.p.is_greedy();
      EXPECT_THROW(cpu.sample(lg, V, c.p, c.prompt, c.output, c.seed, c.step, scratch), troupe::error) << row;
    } else {
      const sample_result want = cpu.sample(lg, V, c.p, c.prompt, c.output, c.seed, c.step, scratch);
      EXPECT_EQ(got.ids[r], want.id) << "logits row " << row << " greedy " << c.p.is_greedy();
    }
  }
  EXPECT_EQ(got.ids[8], 5);  // the greedy row over the huge logit
}

std::string golden_dir(const std::string& name) {
  const char* env = std::getenv("TROUPE_SOURCE_DIR");
  return std::string(env != nullptr ? env : TROUPE_SOURCE_DIR) + "/tests/data/golden/" + name;
}

// The same runner with its device sampling hidden: step_executor then copies the logits rows to the host
// and runs sampler::sample there (the CPU runner's path).
class host_sampling_runner final : public model_runner {
 public:
  explicit host_sampling_runner(model_runner& r) : r_(r) {}
  const model_config& config() const override { return r_.config(); }
  int32_t block_size() const override { return r_.block_size(); }
  int32_t num_kv_blocks() const override { return r_.num_kv_blocks(); }
  void forward(const forward_batch& b, float* logits) override { r_.forward(b, logits); }
  void copy_blocks(const int32_t* s, const int32_t* d, int32_t n) override { r_.copy_blocks(s, d, n); }
  void reserve_host_blocks(int32_t n) override { r_.reserve_host_blocks(n); }
  void swap_out(const int32_t* s, const int32_t* d, int32_t n) override { r_.swap_out(s, d, n); }
  void swap_in(const int32_t* s, const int32_t* d, int32_t n) override { r_.swap_in(s, d, n); }

 private:
  model_runner& r_;
};

struct engine_request {
  std::vector<int32_t> prompt;
  std::shared_ptr<sampling_params> params;
};

// Per (request, choice): the tokens, their logprobs and top logprobs, through scheduler + step_executor.
struct engine_outputs {
  std::map<std::pair<uint64_t, int32_t>, std::vector<int32_t>> ids;
  std::map<std::pair<uint64_t, int32_t>, std::vector<float>> logprobs;
  std::map<std::pair<uint64_t, int32_t>, std::vector<std::vector<token_logprob>>> top;
};

engine_outputs run_steps(model_runner& runner, const std::vector<engine_request>& reqs) {
  scheduler_config sc;
  sc.max_model_len = 256;
  scheduler sched(sc, runner.num_kv_blocks(), runner.block_size(), false);
  step_executor exec(runner);
  for (size_t i = 0; i < reqs.size(); ++i) {
    sched_request_in in;
    in.rid = i + 1;
    in.prompt = reqs[i].prompt;
    in.params = reqs[i].params;
    in.seed = 1000 + i;
    EXPECT_TRUE(sched.add(std::move(in)));
  }
  engine_outputs out;
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

// Seeded sampling with every parameter (top-k/p, min-p, penalties, top logprobs, an n = 2 fork) drawn on
// the device gives the tokens the host sampler draws from the same logits in the same steps.
TEST(CudaSampling, DeviceSampledStepsEqualHostSampling) {
  TROUPE_SKIP_WITHOUT_GPU();
  cuda_runner_options opt;
  opt.num_kv_blocks = 64;
  auto runner = cuda_model_runner::load(golden_dir("llama_gqa"), opt);
  ASSERT_TRUE(runner->samples_on_device());
  std::mt19937 rng(31);
  std::uniform_int_distribution<int32_t> tok(2, runner->config().vocab_size - 1);
  auto request = [&](auto set) {
    engine_request r;
    r.prompt.resize(3 + rng() % 18);
    for (auto& x : r.prompt) x = tok(rng);
    r.params = std::make_shared<sampling_params>();
    r.params->max_tokens = 16;
    r.params->ignore_eos = true;
    set(*r.params);
    return r;
  };
  const std::vector<engine_request> reqs = {
      request([](sampling_params& p) {
        p.temperature = 0.8f;
        p.top_p = 0.9f;
      }),
      request([](sampling_params& p) {
        p.top_k = 20;
        p.min_p = 0.05f;
        p.repetition_penalty = 1.2f;
        p.frequency_penalty = 0.3f;
        p.presence_penalty = 0.2f;
        p.logprobs = 3;
      }),
      request([](sampling_params& p) {
        p.temperature = 0;
        p.logprobs = 2;
      }),
      request([](sampling_params& p) {
        p.temperature = 0.7f;
        p.n = 2;
      }),
      request([](sampling_params& p) {
        p.temperature = 0;
        p.repetition_penalty = 1.5f;
      }),
      request([](sampling_params& p) {
        p.temperature = 1.3f;
        p.top_k = 5;
        p.top_p = 0.5f;
        p.logprobs = 1;
        p.need_logprob = false;
      }),
  };
  const engine_outputs dev = run_steps(*runner, reqs);
  host_sampling_runner host_runner(*runner);
  const engine_outputs host = run_steps(host_runner, reqs);
  ASSERT_EQ(dev.ids.size(), reqs.size() + 1);  // the fork's second choice
  EXPECT_EQ(dev.ids, host.ids);
  for (const auto& [key, lps] : host.logprobs) {
    const auto& got = dev.logprobs.at(key);
    ASSERT_EQ(got.size(), lps.size());
    for (size_t t = 0; t < lps.size(); ++t) EXPECT_NEAR(got[t], lps[t], 1e-4) << key.first << " " << t;
    const auto& want_top = host.top.at(key);
    const auto& got_top = dev.top.at(key);
    ASSERT_EQ(got_top.size(), want_top.size());
    for (size_t t = 0; t < want_top.size(); ++t) {
      ASSERT_EQ(got_top[t].size(), want_top[t].size()) << key.first << " " << t;
      for (size_t j = 0; j < want_top[t].size(); ++j) {
        EXPECT_EQ(got_top[t][j].id, want_top[t][j].id);
        EXPECT_NEAR(got_top[t][j].logprob, want_top[t][j].logprob, 1e-4);
      }
    }
  }
  for (const auto& [key, ids] : dev.ids) EXPECT_EQ(ids.size(), 16u) << key.first;
}

// The engine's path (every draw on the device) and the offline engine's (host sampler over copied logits)
// pick the same greedy tokens with the same logprobs, batched with a sampled request.
TEST(CudaSampling, DeviceGreedyStepsEqualHostSampling) {
  TROUPE_SKIP_WITHOUT_GPU();
  cuda_runner_options opt;
  opt.num_kv_blocks = 64;
  auto runner = cuda_model_runner::load(golden_dir("llama_gqa"), opt);
  ASSERT_TRUE(runner->samples_on_device());
  std::vector<std::vector<int32_t>> prompts = {
      {1, 15, 27, 99, 3}, {1, 200, 201}, {1, 5, 6, 7, 8, 9, 10, 11, 12}};
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
  sched_request_in noisy;  // a sampled row in the same steps
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
