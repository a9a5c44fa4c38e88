// `troupe chat-template`: prints the prompt a model's chat template makes of a conversation, exactly as
// the model will see it (nothing added, no trailing newline), for operators debugging a model.
//
// TROUPE_CHAT_TEMPLATE_NOW (seconds since the epoch) pins what strftime_now() sees, so scripted
// comparisons (tests/chat_template) are reproducible; otherwise it reads the clock.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/args.h"
#include "cli/command.h"
#include "core/chat_template/chat_template.h"
#include "core/error.h"

namespace troupe::cli {
namespace {

const char* kUsage =
    "usage: troupe chat-template --model DIR --messages FILE [--add-generation-prompt] [--tools FILE]\n"
    "                            [--kwargs JSON-FILE]\n"
    "  --model DIR              checkpoint directory (chat_template.jinja or tokenizer_config.json)\n"
    "  --messages FILE          JSON array of {role, content, ...} messages\n"
    "  --add-generation-prompt  end with the assistant header, as a chat request does\n"
    "  --tools FILE             JSON array of tool definitions\n"
    "  --kwargs FILE            JSON object of extra template variables (e.g. {\"enable_thinking\": "
    "false})\n";

nlohmann::ordered_json read_json(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw troupe::error("--" + flag + ": cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::ordered_json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw troupe::error("--" + flag + ": " + path + " is not valid JSON: " + e.what());
  }
}

std::optional<std::time_t> fixed_now() {
  const char* env = std::getenv("TROUPE_CHAT_TEMPLATE_NOW");
  if (!env || !*env) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  long long t = std::strtoll(env, &end, 10);
  if (*end != '\0' || errno != 0) {
    throw troupe::error(std::string("TROUPE_CHAT_TEMPLATE_NOW: '") + env + "' is not a number of seconds");
  }
  return static_cast<std::time_t>(t);
}

int run_chat_template(const std::vector<std::string>& args) {
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    }
  }
  arg_parser p("chat-template", {"model", "messages", "tools", "kwargs"}, {"add-generation-prompt"});
  p.parse(args);
  if (!p.has("model") || !p.has("messages")) {
    std::cerr << kUsage;
    return 2;
  }
  auto model = model_chat_template::load(*p.get("model"));
  auto messages = read_json("messages", *p.get("messages"));
  std::optional<nlohmann::ordered_json> tools;
  if (auto path = p.get("tools")) tools = read_json("tools", *path);
  nlohmann::ordered_json kwargs = nlohmann::ordered_json::object();
  if (auto path = p.get("kwargs")) kwargs = read_json("kwargs", *path);
  chat_template_render_options options;
  options.now = fixed_now();
  std::string prompt =
      model.apply(messages, tools ? &*tools : nullptr, p.has("add-generation-prompt"), kwargs, options);
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::fflush(stdout);
  return 0;
}

command_registrar reg("chat-template", "render a model's chat template for a conversation",
                      run_chat_template);

}  // namespace
}  // namespace troupe::cli
