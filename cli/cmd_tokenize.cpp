// `troupe tokenize`: encode text or decode ids with a model's tokenizer, to check what the server
// will see (and to compare with Hugging Face tokenizers by hand).
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/command.h"
#include "core/error.h"
#include "core/tokenizer.h"

namespace troupe::cli {
namespace {

const char* k_help =
    R"(usage: troupe tokenize (--model DIR | --tokenizer FILE) (--text TEXT | --decode 1,2,3) [options]

Encodes TEXT to token ids, or decodes a comma-separated id list to text.

  --model DIR        model directory: tokenizer.json plus tokenizer_config.json when present
                     (bos/eos tokens, add_bos_token)
  --tokenizer FILE   a tokenizer.json on its own
  --text TEXT        text to encode; special-token text such as <|im_start|> becomes its id
  --decode IDS       ids to decode, e.g. --decode 9707,11,1879
  --add-special      with --text: add the special tokens the tokenizer's post-processor adds
                     (BOS and the like); without it none are added
  --skip-special     with --decode: drop special tokens from the text (they are kept by default)
  --json             print {"ids":[...]} or {"text":"..."} instead of plain output
                     (plain: ids separated by spaces, or the text itself)
)";

int run(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    std::cout << k_help;
    return 0;
  }
  arg_parser p("tokenize", {"model", "tokenizer", "text", "decode"}, {"add-special", "skip-special", "json"});
  p.parse(args);
  if (p.has("model") == p.has("tokenizer"))
    throw error("give exactly one of --model DIR or --tokenizer FILE");
  if (p.has("text") == p.has("decode")) throw error("give exactly one of --text TEXT or --decode IDS");
  if (p.has("add-special") && !p.has("text")) throw error("--add-special applies to --text only");
  if (p.has("skip-special") && !p.has("decode")) throw error("--skip-special applies to --decode only");

  tokenizer tok =
      p.has("model") ? tokenizer::load_dir(*p.get("model")) : tokenizer::load(*p.get("tokenizer"));
  bool json = p.has("json");
  if (p.has("text")) {
    std::vector<int32_t> ids = tok.encode(*p.get("text"), p.has("add-special"));
    if (json) {
      std::cout << nlohmann::json{{"ids", ids}}.dump() << "\n";
    } else {
      for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
      std::cout << "\n";
    }
    return 0;
  }
  std::vector<int32_t> ids = *p.get_ids("decode");
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) {
      throw error("--decode: id " + std::to_string(id) + " is outside the vocabulary (size " +
                  std::to_string(tok.vocab_size()) + ")");
    }
  }
  std::string text = tok.decode(ids, p.has("skip-special"));
  if (json) {
    // Decoded text is valid UTF-8 (invalid bytes became U+FFFD), so dump() cannot throw.
    std::cout << nlohmann::json{{"text", text}}.dump() << "\n";
  } else {
    std::cout << text << "\n";
  }
  return 0;
}

command_registrar reg("tokenize", "encode text to token ids or decode ids to text", run);

}  // namespace
}  // namespace troupe::cli
