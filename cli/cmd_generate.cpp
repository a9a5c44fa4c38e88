// troupe generate: one prompt through the offline engine on the CPU or CUDA backend.
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/command.h"
#include "cli/model_loading.h"
#include "core/error.h"
#include "core/offline_engine.h"

namespace troupe::cli {
namespace {

const char* kHelp = R"(usage: troupe generate --model DIR (--prompt TEXT | --prompt-ids 1,2,3) [options]

  --max-tokens N         tokens to generate (default 16)
  --temperature T        0 = greedy (default 1.0)
  --top-p P  --top-k K  --min-p P
  --repetition-penalty R  --presence-penalty P  --frequency-penalty F
  --seed S               same seed, same output
  --logprobs K           return the K best logprobs per token (raw model distribution)
  --stop STR             stop string (repeatable as --stop a --stop b is not supported; use one)
  --stop-ids 1,2         stop token ids
  --ignore-eos           keep going past the end-of-sequence token
  --num-kv-blocks N      KV cache size in blocks of 16 tokens
  --threads N            CPU threads (default: all cores)
  --device D             cpu, cuda or auto (default: cuda when built with it and a GPU is present)
  --attention A          cuda attention plugin: flash (default) or paged
  --json                 print {"prompt_ids","ids","text","logprobs","finish_reason"}
A text prompt is tokenized with the model's special tokens (BOS) added.
)";

int run(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    std::cout << kHelp;
    return 0;
  }
  arg_parser ap("generate",
                {"model", "prompt", "prompt-ids", "max-tokens", "temperature", "top-p", "top-k", "min-p",
                 "repetition-penalty", "presence-penalty", "frequency-penalty", "seed", "logprobs", "stop",
                 "stop-ids", "num-kv-blocks", "threads", "device", "attention"},
                {"json", "ignore-eos"});
  ap.parse(args);
  auto model = ap.get("model");
  if (!model) throw error("--model DIR is required");
  if (ap.has("prompt") == ap.has("prompt-ids"))
    throw error("give exactly one of --prompt TEXT or --prompt-ids 1,2,3");

  generate_request req;
  sampling_params& p = req.params;
  if (auto v = ap.get_int("max-tokens")) p.max_tokens = static_cast<int32_t>(*v);
  if (auto v = ap.get_double("temperature")) p.temperature = static_cast<float>(*v);
  if (auto v = ap.get_double("top-p")) p.top_p = static_cast<float>(*v);
  if (auto v = ap.get_int("top-k")) p.top_k = static_cast<int32_t>(*v);
  if (auto v = ap.get_double("min-p")) p.min_p = static_cast<float>(*v);
  if (auto v = ap.get_double("repetition-penalty")) p.repetition_penalty = static_cast<float>(*v);
  if (auto v = ap.get_double("presence-penalty")) p.presence_penalty = static_cast<float>(*v);
  if (auto v = ap.get_double("frequency-penalty")) p.frequency_penalty = static_cast<float>(*v);
  if (auto v = ap.get_int("seed")) {
    if (*v < 0) throw error("--seed must be a non-negative integer");
    p.seed = static_cast<uint64_t>(*v);
  }
  if (auto v = ap.get_int("logprobs")) p.logprobs = static_cast<int32_t>(*v);
  if (auto v = ap.get("stop")) p.stop = {*v};
  if (auto v = ap.get_ids("stop-ids")) p.stop_token_ids = *v;
  p.ignore_eos = ap.has("ignore-eos");

  model_load_options lo = model_load_options_from(ap);
  lo.num_kv_blocks = static_cast<int32_t>(ap.get_int("num-kv-blocks").value_or(0));
  lo.threads = static_cast<int32_t>(ap.get_int("threads").value_or(0));
  loaded_model m = load_model(*model, lo);
  if (ap.has("prompt")) {
    if (!m.tok) throw error(*model + ": no tokenizer.json, so --prompt cannot be used (give --prompt-ids)");
    req.prompt_ids = m.tok->encode(*ap.get("prompt"), true);
  } else {
    req.prompt_ids = *ap.get_ids("prompt-ids");
  }
  offline_engine engine(*m.runner, m.tok.get());
  generate_output out = engine.generate({req})[0];

  if (ap.has("json")) {
    nlohmann::json j;
    j["prompt_ids"] = req.prompt_ids;
    j["ids"] = out.ids;
    j["text"] = out.text;
    nlohmann::json lps = nlohmann::json::array();
    for (const auto& step : out.logprobs) {
      nlohmann::json row = nlohmann::json::array();
      for (const auto& t : step) row.push_back({{"id", t.id}, {"logprob", t.logprob}});
      lps.push_back(row);
    }
    j["logprobs"] = lps;
    j["finish_reason"] = out.finish_reason;
    j["seed"] = out.seed;
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    if (m.tok) {
      std::cout << out.text << "\n";
    } else {
      for (size_t i = 0; i < out.ids.size(); ++i) std::cout << (i ? "," : "") << out.ids[i];
      std::cout << "\n";
    }
  }
  return 0;
}

command_registrar reg("generate", "generate text from a prompt on the CPU engine", run);

}  // namespace
}  // namespace troupe::cli
