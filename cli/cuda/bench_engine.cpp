// `troupe bench latency|throughput`: the CUDA model runner on a model shape (a checkpoint, or
// --random-weights with a config.json such as configs/models/llama-3.1-8b/config.json), driven step by step
// the way the engine drives it: one prefill pass (chunked to --max-batched-tokens) then --output-len decode
// steps of the whole batch. Decode inputs are random ids (timing does not depend on which token was
// sampled). Each step samples greedily on the device and returns one id and logprob per sequence, as the
// engine does for greedy requests; --host-logits copies every fp32 logits row to the host instead (what a
// step with host-sampled rows pays). --async drives the decode steps the way asynchronous scheduling does:
// step N + 1 is submitted (its tokens pending on step N's draws, on the device) before step N is collected,
// so the host's work overlaps the device's; every row then goes through the device sampler, greedy unless
// --temperature says otherwise.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/bench.h"
#include "cli/cuda/gpu_monitor.h"
#include "core/sampling.h"
#include "plugins/cuda/cuda_model_runner.h"

namespace troupe::cli {
namespace {

struct step_inputs {
  std::vector<int32_t> tokens, positions, slots, query_start, context_lens, logits_rows;
};

int run_engine_bench(const std::string& mode, int default_batch, int default_input, int default_output,
                     const std::vector<std::string>& args) {
  arg_parser ap("bench " + mode,
                {"model", "batch", "input-len", "output-len", "attention", "max-batched-tokens", "block-size",
                 "max-graph-batch", "temperature", "top-p", "top-k"},
                {"random-weights", "json", "host-logits", "enforce-eager", "async"});
  ap.parse(args);
  const std::string model = ap.get_or("model", "configs/models/llama-3.1-8b/config.json");
  const int B = static_cast<int>(ap.get_int("batch").value_or(default_batch));
  const int P = static_cast<int>(ap.get_int("input-len").value_or(default_input));
  const int G = static_cast<int>(ap.get_int("output-len").value_or(default_output));
  const int max_batched = static_cast<int>(ap.get_int("max-batched-tokens").value_or(8192));
  cuda_runner_options opt;
  opt.attention = ap.get_or("attention", "flash");
  opt.random_weights = ap.has("random-weights");
  opt.cuda_graphs = !ap.has("enforce-eager");
  opt.max_graph_batch = static_cast<int32_t>(ap.get_int("max-graph-batch").value_or(opt.max_graph_batch));
  opt.block_size = static_cast<int32_t>(ap.get_int("block-size").value_or(16));
  const bool async = ap.has("async") && !ap.has("host-logits");
  opt.async_steps = async;
  const int bs = opt.block_size;
  const int blocks_per_seq = (P + G + bs - 1) / bs;
  opt.num_kv_blocks = B * blocks_per_seq;

  const auto t_load = std::chrono::steady_clock::now();
  auto runner = cuda_model_runner::load(model, opt);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const model_config& c = runner->config();
  std::vector<int32_t> tables(static_cast<size_t>(B) * blocks_per_seq);
  for (size_t i = 0; i < tables.size(); ++i)
    tables[i] = static_cast<int32_t>(i);  // seq s owns its own blocks
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, c.vocab_size - 1);
  const bool host_logits = ap.has("host-logits");
  std::vector<float> logits(host_logits ? static_cast<size_t>(B) * c.vocab_size : 0);
  std::vector<uint8_t> greedy(B, 1);
  std::vector<int32_t> ids(B);
  std::vector<float> lps(B);
  // --temperature (with --top-p / --top-k): every row is drawn by the device sampler (forward_sample) with
  // these parameters, a seed per sequence and the step as the RNG counter; otherwise the device argmax.
  const double temperature = ap.get_double("temperature").value_or(0.0);
  sampling_params sp;
  sp.temperature = static_cast<float>(temperature);
  sp.top_p = static_cast<float>(ap.get_double("top-p").value_or(1.0));
  sp.top_k = static_cast<int32_t>(ap.get_int("top-k").value_or(0));
  const bool device_sampled = (ap.has("temperature") || async) && !host_logits;
  std::vector<device_sample_row> sample_rows(B);
  std::vector<token_logprob> top(static_cast<size_t>(B) * sampling_max_logprobs);

  // One step over sequences [s0, s1): tokens [from, to) of each. submit_only (--async decode): the tokens
  // are pending on the previous step's rows, and the step is submitted, not collected.
  std::vector<int32_t> pending;
  auto step = [&](int s0, int s1, int from, int to, bool submit_only = false) {
    step_inputs in;
    in.query_start.push_back(0);
    for (int s = s0; s < s1; ++s) {
      for (int p = from; p < to; ++p) {
        in.tokens.push_back(tok(rng));
        in.positions.push_back(p);
        in.slots.push_back(tables[static_cast<size_t>(s) * blocks_per_seq + p / bs] * bs + p % bs);
      }
      in.query_start.push_back(static_cast<int32_t>(in.tokens.size()));
      in.context_lens.push_back(to);
      in.logits_rows.push_back(static_cast<int32_t>(in.tokens.size()) - 1);
    }
    forward_batch b;
    b.token_ids = in.tokens.data();
    b.positions = in.positions.data();
    b.slot_mapping = in.slots.data();
    b.query_start = in.query_start.data();
    b.context_lens = in.context_lens.data();
    b.block_tables = tables.data() + static_cast<size_t>(s0) * blocks_per_seq;
    b.logits_rows = in.logits_rows.data();
    b.num_tokens = static_cast<int32_t>(in.tokens.size());
    b.num_seqs = s1 - s0;
    b.max_blocks_per_seq = blocks_per_seq;
    b.num_logits = static_cast<int32_t>(in.logits_rows.size());
    if (submit_only) {
      pending.resize(in.tokens.size());
      for (size_t t = 0; t < pending.size(); ++t) pending[t] = static_cast<int32_t>(t);  // one token a row
      b.pending_rows = from > P ? pending.data() : nullptr;  // the first decode step's tokens are known
    }
    const auto t0 = std::chrono::steady_clock::now();
    if (host_logits) {
      runner->forward(b, logits.data());  // returns after the logits reached the host
    } else if (device_sampled) {
      for (int i = 0; i < b.num_logits; ++i) {
        device_sample_row& r = sample_rows[i];
        r.logits_row = i;
        r.params = &sp;
        r.seed = static_cast<uint64_t>(s0 + i) + 1;
        r.step = static_cast<uint64_t>(from);
      }
      if (submit_only) {
        runner->forward_sample_submit(b, sample_rows.data(), b.num_logits);
      } else {
        runner->forward_sample(b, sample_rows.data(), b.num_logits, ids.data(), lps.data(), top.data());
      }
    } else {
      runner->forward_greedy(b, greedy.data(), logits.data(), ids.data(), lps.data());
    }
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };

  // Warm-up at the timed shapes (cuBLASLt heuristics per GEMM shape, step-buffer growth): one prefill
  // step of the first group and one decode step of the whole batch; the timed passes rewrite those slots.
  const int seqs_per_prefill = std::max(1, std::min(B, max_batched / std::max(1, P)));
  step(0, std::min(B, seqs_per_prefill), 0, P);
  if (G > 0) step(0, B, P, P + 1);
  // Prefill: the median of 5 passes when a pass is short (batch-1 latency), one pass otherwise.
  const int prefill_reps = static_cast<int64_t>(B) * P <= 16384 ? 5 : 1;
  std::vector<double> prefill_passes;
  for (int rep = 0; rep < prefill_reps; ++rep) {
    double ms = 0;
    for (int s = 0; s < B; s += seqs_per_prefill) ms += step(s, std::min(B, s + seqs_per_prefill), 0, P);
    prefill_passes.push_back(ms);
  }
  std::sort(prefill_passes.begin(), prefill_passes.end());
  const double prefill_ms = prefill_passes[prefill_passes.size() / 2];
  // The SM clock and board power through the decode steps: at batch 256 an H200 sits at its power limit
  // with the clock well below its maximum, which the figure depends on.
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) device = 0;  // the runner already runs on it
  gpu_monitor monitor(device);
  monitor.start();
  std::vector<double> decode_ms;
  if (async && G > 0) {
    // Submit step g + 1, then collect step g: a step's time is the time between two collects.
    step(0, B, P, P + 1, true);
    auto last = std::chrono::steady_clock::now();
    for (int g = 0; g < G; ++g) {
      if (g + 1 < G) step(0, B, P + g + 1, P + g + 2, true);
      runner->forward_sample_collect(ids.data(), lps.data(), top.data());
      const auto now = std::chrono::steady_clock::now();
      decode_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
      last = now;
    }
  } else {
    for (int g = 0; g < G; ++g) decode_ms.push_back(step(0, B, P + g, P + g + 1));
  }
  const gpu_monitor::summary clocks = monitor.stop();
  std::vector<double> sorted = decode_ms;
  std::sort(sorted.begin(), sorted.end());
  const double med = sorted.empty() ? 0 : sorted[sorted.size() / 2];
  double total = 0;
  for (double v : decode_ms) total += v;
  const double tok_s = total > 0 ? 1000.0 * B * G / total : 0;

  if (ap.has("json")) {
    std::printf(
        "{\"mode\": \"%s\", \"model\": \"%s\", \"random_weights\": %s, \"attention\": \"%s\", "
        "\"sampling\": \"%s\", \"cuda_graphs\": %s, \"batch\": %d, "
        "\"input_len\": %d, \"output_len\": %d, \"load_s\": %.2f, \"prefill_ms\": %.3f, "
        "\"decode_ms_per_step_median\": %.4f, \"decode_tokens_per_s\": %.1f, %s}\n",
        mode.c_str(), model.c_str(), opt.random_weights ? "true" : "false", opt.attention.c_str(),
        host_logits
            ? "host_logits"
            : (async ? "device_sampled_async" : (device_sampled ? "device_sampled" : "device_greedy")),
        opt.cuda_graphs ? "true" : "false", B, P, G, load_s, prefill_ms, med, tok_s,
        gpu_monitor_json_fields(clocks).c_str());
  } else {
    std::printf("%s: %s (%s attention), batch %d, %d in / %d out\n", mode.c_str(), model.c_str(),
                opt.attention.c_str(), B, P, G);
    std::printf("  load %.2f s, prefill %.2f ms, decode %.3f ms/step (median), %.1f tokens/s\n", load_s,
                prefill_ms, med, tok_s);
    if (clocks.samples > 0) {
      std::printf("  during decode: SM clock %.0f MHz (%.0f-%.0f), board power %.0f W\n",
                  clocks.sm_clock_mhz_mean, clocks.sm_clock_mhz_min, clocks.sm_clock_mhz_max,
                  clocks.power_w_mean);
    } else {
      std::printf("  during decode: no clock or power figures (%s)\n",
                  monitor.available() ? "no sample" : monitor.unavailable_reason().c_str());
    }
  }
  return 0;
}

bench_registrar reg_latency("latency",
                            "CUDA runner: prefill time and per-token decode latency (default batch 1)",
                            [](const std::vector<std::string>& a) {
                              return run_engine_bench("latency", 1, 128, 128, a);
                            });
bench_registrar reg_throughput(
    "throughput", "CUDA runner: decode tokens/s at a large batch (default 256, 512-token prompts)",
    [](const std::vector<std::string>& a) { return run_engine_bench("throughput", 256, 512, 128, a); });

}  // namespace
}  // namespace troupe::cli
