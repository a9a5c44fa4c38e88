// troupe score: teacher-forced log-probabilities of a token sequence.
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/command.h"
#include "cli/model_loading.h"
#include "core/error.h"
#include "core/offline_engine.h"

namespace troupe::cli {
namespace {

const char* kHelp = R"(usage: troupe score --model DIR --ids 1,2,3,... [--top K] [--json] [--threads N]
                   [--device cpu|cuda|auto] [--attention flash|paged]

Prints log p(ids[t] | ids[:t]) for t >= 1, the K most likely next tokens at each of those positions, and
the perplexity. With --json: {"logprobs":[...],"top":[[{"id","logprob"},...],...],"perplexity":X}.
)";

int run(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    std::cout << kHelp;
    return 0;
  }
  arg_parser ap("score", {"model", "ids", "top", "threads", "num-kv-blocks", "device", "attention"},
                {"json"});
  ap.parse(args);
  auto model = ap.get("model");
  if (!model) throw error("--model DIR is required");
  auto ids = ap.get_ids("ids");
  if (!ids) throw error("--ids 1,2,3 is required");
  const int64_t top = ap.get_int("top").value_or(0);
  if (top < 0 || top > 1000) throw error("--top must be in 0..1000");
  int64_t blocks = ap.get_int("num-kv-blocks").value_or(0);
  if (blocks == 0) blocks = static_cast<int64_t>(ids->size() / 16 + 2);
  model_load_options lo = model_load_options_from(ap);
  lo.num_kv_blocks = static_cast<int32_t>(blocks);
  lo.threads = static_cast<int32_t>(ap.get_int("threads").value_or(0));
  loaded_model m = load_model(*model, lo);
  offline_engine engine(*m.runner, m.tok.get());
  score_output out = engine.score(*ids, static_cast<int32_t>(top));
  if (ap.has("json")) {
    nlohmann::json j;
    j["logprobs"] = out.logprobs;
    nlohmann::json tops = nlohmann::json::array();
    for (const auto& row : out.top) {
      nlohmann::json r = nlohmann::json::array();
      for (const auto& t : row) r.push_back({{"id", t.id}, {"logprob", t.logprob}});
      tops.push_back(r);
    }
    j["top"] = tops;
    j["perplexity"] = out.perplexity;
    std::cout << j.dump() << "\n";
  } else {
    for (size_t t = 0; t < out.logprobs.size(); ++t) {
      std::cout << "t=" << t + 1 << " id=" << (*ids)[t + 1] << " logprob=" << out.logprobs[t] << "\n";
    }
    std::cout << "perplexity " << out.perplexity << "\n";
  }
  return 0;
}

command_registrar reg("score", "teacher-forced log-probabilities of a token sequence", run);

}  // namespace
}  // namespace troupe::cli
