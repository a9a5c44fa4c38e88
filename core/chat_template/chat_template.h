// Chat templates: the Jinja programs checkpoints ship to turn a conversation into a prompt.
//
// Our own interpreter for the Jinja subset Hugging Face chat templates use, matching the reference
// renderer @huggingface/jinja byte for byte (trim_blocks and lstrip_blocks on, as transformers.js uses it).
// Sandboxed: no file, environment or network access from a template, and each render is bounded
// (jinja::render_limits). Every failure is a troupe::error whose message names the template line
// ("chat template line 12: ..."); the gateway answers it with a 400.
//
//   auto t = troupe::chat_template::parse(source);
//   std::string prompt = t.render(context);   // context: {"messages": [...], "add_generation_prompt": true,
//   ...}
#pragma once

#include <ctime>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/chat_template/interpreter.h"
#include "core/chat_template/parser.h"
#include "core/error.h"

namespace troupe {

struct chat_template_render_options {
  jinja::render_limits limits;
  // What strftime_now() reads (seconds since the epoch, shown in local time); the clock when unset.
  std::optional<std::time_t> now;
};

class chat_template {
 public:
  static constexpr size_t kMaxSourceBytes = 4u << 20;
  static constexpr int kMaxNestingDepth = 256;

  // Throws troupe::error naming the line on a syntax error.
  static chat_template parse(std::string source);

  // context must be a JSON object; its keys become the template's variables. Object key order is kept
  // (it shows in `tojson`), which is why the context is an ordered_json.
  std::string render(const nlohmann::ordered_json& context,
                     const chat_template_render_options& options = {}) const;
  // Same, for a std::map-backed json: keys reach the template sorted alphabetically.
  std::string render(const nlohmann::json& context, const chat_template_render_options& options = {}) const;

  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::shared_ptr<const jinja::program> program_;
};

// A model's chat template with the special tokens templates refer to, as a checkpoint directory ships
// them: chat_template.jinja when present (newer checkpoints), else tokenizer_config.json's chat_template
// (a string, or a list of {name, template} of which "default" is used); bos_token/eos_token from
// tokenizer_config.json (a string or {"content": ...}).
struct model_chat_template {
  chat_template tmpl;
  std::optional<std::string> bos_token, eos_token;
  std::string origin;  // the file the template came from

  static model_chat_template load(const std::string& model_dir);

  // The context transformers builds: bos_token/eos_token, then extra_kwargs (the request's
  // chat_template_kwargs, e.g. enable_thinking; they may override the tokens), then messages, tools
  // (when given) and add_generation_prompt. extra_kwargs may not name those last three.
  nlohmann::ordered_json make_context(
      const nlohmann::ordered_json& messages, const nlohmann::ordered_json* tools, bool add_generation_prompt,
      const nlohmann::ordered_json& extra_kwargs = nlohmann::ordered_json::object()) const;

  std::string apply(const nlohmann::ordered_json& messages, const nlohmann::ordered_json* tools,
                    bool add_generation_prompt,
                    const nlohmann::ordered_json& extra_kwargs = nlohmann::ordered_json::object(),
                    const chat_template_render_options& options = {}) const {
    return tmpl.render(make_context(messages, tools, add_generation_prompt, extra_kwargs), options);
  }
};

}  // namespace troupe
