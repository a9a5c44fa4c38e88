#include "core/chat_template/chat_template.h"

#include <fstream>
#include <sstream>

#include "core/chat_template/lexer.h"
#include "core/error.h"

namespace troupe {

namespace {

bool read_file(const std::string& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

std::optional<std::string> token_text(const nlohmann::ordered_json& config, const char* key,
                                      const std::string& path) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  throw troupe::error(path + ": " + key + " must be a string or an object with a string \"content\"");
}

}  // namespace

chat_template chat_template::parse(std::string source) {
  if (source.size() > kMaxSourceBytes) {
    throw troupe::error("chat template of " + std::to_string(source.size()) + " bytes exceeds the limit of " +
                        std::to_string(kMaxSourceBytes) + " bytes");
  }
  chat_template t;
  auto tokens = jinja::tokenize(source);
  t.program_ = std::make_shared<const jinja::program>(jinja::parse(tokens, kMaxNestingDepth));
  t.source_ = std::move(source);
  return t;
}

std::string chat_template::render(const nlohmann::ordered_json& context,
                                  const chat_template_render_options& options) const {
  if (!context.is_object()) throw troupe::error("chat template: the context must be a JSON object");
  if (!program_) throw troupe::error("chat template: rendering a template that was never parsed");
  jinja::interpreter in(options.limits, options.now ? *options.now : std::time(nullptr));
  return in.run(*program_, jinja::from_json(context));
}

std::string chat_template::render(const nlohmann::json& context,
                                  const chat_template_render_options& options) const {
  nlohmann::ordered_json ordered;
  try {
    ordered = nlohmann::ordered_json::parse(context.dump());
  } catch (const nlohmann::json::exception& e) {
    throw troupe::error(std::string("chat template: the context is not valid JSON: ") + e.what());
  }
  return render(ordered, options);
}

model_chat_template model_chat_template::load(const std::string& model_dir) {
  model_chat_template m;
  const std::string config_path = model_dir + "/tokenizer_config.json";
  const std::string jinja_path = model_dir + "/chat_template.jinja";
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  std::string text;
  bool have_config = read_file(config_path, text);
  if (have_config) {
    try {
      config = nlohmann::ordered_json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw troupe::error(config_path + ": not valid JSON: " + e.what());
    }
    if (!config.is_object()) throw troupe::error(config_path + ": expected a JSON object");
    m.bos_token = token_text(config, "bos_token", config_path);
    m.eos_token = token_text(config, "eos_token", config_path);
  }
  std::string source;
  if (read_file(jinja_path, source)) {
    m.origin = jinja_path;
  } else {
    if (!have_config)
      throw troupe::error(model_dir + ": no chat_template.jinja and no tokenizer_config.json");
    auto it = config.find("chat_template");
    if (it == config.end() || it->is_null()) {
      throw troupe::error(config_path + ": no chat_template (and no chat_template.jinja beside it)");
    }
    if (it->is_string()) {
      source = it->get<std::string>();
    } else if (it->is_array()) {
      std::string names;
      bool found = false;
      for (const auto& entry : *it) {
        if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") ||
            !entry["name"].is_string() || !entry["template"].is_string()) {
          throw troupe::error(config_path +
                              ": chat_template entries must be {\"name\": ..., \"template\": ...}");
        }
        names += (names.empty() ? "" : ", ") + entry["name"].get<std::string>();
        if (entry["name"] == "default") {
          source = entry["template"].get<std::string>();
          found = true;
        }
      }
      if (!found)
        throw troupe::error(config_path + ": chat_template lists no \"default\" template (has: " + names +
                            ")");
    } else {
      throw troupe::error(config_path + ": chat_template must be a string or a list of {name, template}");
    }
    m.origin = config_path;
  }
  try {
    m.tmpl = chat_template::parse(std::move(source));
  } catch (const troupe::error& e) {
    throw troupe::error(m.origin + ": " + e.what());
  }
  return m;
}

nlohmann::ordered_json model_chat_template::make_context(const nlohmann::ordered_json& messages,
                                                         const nlohmann::ordered_json* tools,
                                                         bool add_generation_prompt,
                                                         const nlohmann::ordered_json& extra_kwargs) const {
  if (!messages.is_array()) throw troupe::error("chat template: messages must be a JSON array");
  if (!extra_kwargs.is_object())
    throw troupe::error("chat template: extra template arguments must be a JSON object");
  nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
  if (bos_token) ctx["bos_token"] = *bos_token;
  if (eos_token) ctx["eos_token"] = *eos_token;
  for (auto it = extra_kwargs.begin(); it != extra_kwargs.end(); ++it) {
    if (it.key() == "messages" || it.key() == "tools" || it.key() == "add_generation_prompt") {
      throw troupe::error("chat template: extra template arguments may not set '" + it.key() + "'");
    }
    ctx[it.key()] = it.value();
  }
  ctx["messages"] = messages;
  if (tools) ctx["tools"] = *tools;
  ctx["add_generation_prompt"] = add_generation_prompt;
  return ctx;
}

}  // namespace troupe
