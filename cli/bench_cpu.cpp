// troupe bench cpu: prefill and decode throughput of the CPU engine on a model directory.
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/args.h"
#include "cli/bench.h"
#include "cli/model_loading.h"
#include "core/error.h"
#include "core/offline_engine.h"
#include "kernels/cpu/thread_pool.h"

namespace troupe::cli {
namespace {

int run(const std::vector<std::string>& args) {
  arg_parser ap("bench cpu", {"model", "batch", "input-len", "output-len", "threads", "repeat"}, {"json"});
  ap.parse(args);
  auto model = ap.get("model");
  if (!model) throw error("--model DIR is required");
  const int batch = static_cast<int>(ap.get_int("batch").value_or(1));
  const int in_len = static_cast<int>(ap.get_int("input-len").value_or(32));
  const int out_len = static_cast<int>(ap.get_int("output-len").value_or(64));
  const int repeat = static_cast<int>(ap.get_int("repeat").value_or(3));
  if (batch < 1 || in_len < 1 || out_len < 2 || repeat < 1)
    throw error("batch, input-len, repeat >= 1; output-len >= 2");
  const int64_t tokens = static_cast<int64_t>(batch) * (in_len + out_len);
  loaded_model m = load_model(*model, static_cast<int32_t>(tokens / 16 + batch + 1),
                              static_cast<int32_t>(ap.get_int("threads").value_or(0)));
  offline_engine engine(*m.runner, nullptr);
  std::mt19937 rng(0);
  std::uniform_int_distribution<int32_t> id(0, m.runner->config().vocab_size - 1);
  std::vector<generate_request> reqs(batch);
  for (auto& r : reqs) {
    for (int i = 0; i < in_len; ++i) r.prompt_ids.push_back(id(rng));
    r.params.temperature = 0;
    r.params.ignore_eos = true;
  }
  auto time_with = [&](int max_tokens) {
    double best = 1e30;
    for (int i = 0; i < repeat; ++i) {
      for (auto& r : reqs) r.params.max_tokens = max_tokens;
      auto t0 = std::chrono::steady_clock::now();
      engine.generate(reqs);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  const double t_prefill = time_with(1);
  const double t_all = time_with(out_len);
  const double decode_tps = batch * (out_len - 1) / std::max(1e-9, t_all - t_prefill);
  nlohmann::json j = {{"model", *model},
                      {"threads", kernels::cpu::num_threads()},
                      {"batch", batch},
                      {"input_len", in_len},
                      {"output_len", out_len},
                      {"prefill_s", t_prefill},
                      {"prefill_tokens_per_s", batch * in_len / t_prefill},
                      {"decode_tokens_per_s", decode_tps},
                      {"ms_per_decode_step", 1000.0 * (t_all - t_prefill) / (out_len - 1)},
                      {"total_s", t_all}};
  if (ap.has("json")) {
    std::cout << j.dump() << "\n";
  } else {
    std::cout << j.dump(2) << "\n";
  }
  return 0;
}

bench_registrar reg(
    "cpu", "CPU engine prefill/decode throughput (--model DIR --batch B --input-len P --output-len G)", run);

}  // namespace
}  // namespace troupe::cli
