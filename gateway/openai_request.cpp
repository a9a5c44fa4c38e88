#include "gateway/openai_request.h"

#include <cmath>
#include <limits>

#include "core/tokenizer.h"

namespace troupe::gateway {

namespace {

const json* find(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;  // null means "not given", as the SDKs send it
  return &*it;
}

double get_number(const json& v, const char* key) {
  if (!v.is_number()) throw bad_request(std::string("'") + key + "' must be a number", key);
  const double d = v.get<double>();
  if (!std::isfinite(d)) throw bad_request(std::string("'") + key + "' must be a finite number", key);
  return d;
}

int64_t get_int(const json& v, const char* key) {
  if (!v.is_number_integer()) throw bad_request(std::string("'") + key + "' must be an integer", key);
  if (v.is_number_unsigned() &&
      v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    throw bad_request(std::string("'") + key + "' is out of range", key);
  }
  return v.get<int64_t>();
}

int32_t get_int32(const json& v, const char* key, int64_t lo, int64_t hi) {
  const int64_t x = get_int(v, key);
  if (x < lo || x > hi) {
    throw bad_request(std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "] (got " + std::to_string(x) + ")",
                      key);
  }
  return static_cast<int32_t>(x);
}

bool get_bool(const json& v, const char* key) {
  if (!v.is_boolean()) throw bad_request(std::string("'") + key + "' must be a boolean", key);
  return v.get<bool>();
}

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int32_t kMaxStops = 4;  // OpenAI's limit

void read_float(const json& body, const char* key, float& out) {
  if (const json* v = find(body, key)) out = static_cast<float>(get_number(*v, key));
}

std::vector<int32_t> get_ids(const json& v, const char* key, int32_t vocab_size) {
  if (!v.is_array()) throw bad_request(std::string("'") + key + "' must be an array of token ids", key);
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_integer()) throw bad_request(std::string("'") + key + "' must hold integers", key);
    const bool in_vocab = v[i].is_number_unsigned()
                              ? v[i].get<uint64_t>() < static_cast<uint64_t>(vocab_size)
                              : v[i].get<int64_t>() >= 0 && v[i].get<int64_t>() < vocab_size;
    if (!in_vocab) {
      throw bad_request(std::string(key) + "[" + std::to_string(i) + "] = " + v[i].dump() +
                            " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")",
                        key);
    }
    const int64_t id = v[i].get<int64_t>();
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

void check_model(const json& body, const request_context& ctx) {
  const json* m = find(body, "model");
  if (!m) return;  // optional, as in vLLM: the one served model
  if (!m->is_string()) throw bad_request("'model' must be a string", "model");
  if (m->get<std::string>() != ctx.model_name) {
    throw api_error(404, "The model `" + m->get<std::string>() + "` does not exist.", "invalid_request_error",
                    "model", "model_not_found");
  }
}

// Fields every entry point shares; max_tokens and logprobs differ per API and are read by the callers.
void read_sampling(const json& body, generation_request& r, int32_t vocab_size) {
  sampling_params& p = r.params;
  read_float(body, "temperature", p.temperature);
  read_float(body, "top_p", p.top_p);
  read_float(body, "min_p", p.min_p);
  read_float(body, "presence_penalty", p.presence_penalty);
  read_float(body, "frequency_penalty", p.frequency_penalty);
  read_float(body, "repetition_penalty", p.repetition_penalty);
  if (const json* v = find(body, "top_k")) p.top_k = get_int32(*v, "top_k", -1, kInt32Max);
  if (const json* v = find(body, "n")) p.n = get_int32(*v, "n", 1, sampling_max_n);
  if (const json* v = find(body, "seed")) {
    const int64_t s = get_int(*v, "seed");
    p.seed = static_cast<uint64_t>(s);  // negative seeds are as good as any (two's complement)
  }
  if (const json* v = find(body, "ignore_eos")) p.ignore_eos = get_bool(*v, "ignore_eos");
  if (const json* v = find(body, "stop")) {
    if (v->is_string()) {
      p.stop = {v->get<std::string>()};
    } else if (v->is_array()) {
      for (const auto& s : *v) {
        if (!s.is_string()) throw bad_request("'stop' must be a string or an array of strings", "stop");
        p.stop.push_back(s.get<std::string>());
      }
    } else {
      throw bad_request("'stop' must be a string or an array of strings", "stop");
    }
    if (p.stop.size() > static_cast<size_t>(kMaxStops)) {
      throw bad_request("'stop' may hold at most " + std::to_string(kMaxStops) + " sequences (got " +
                            std::to_string(p.stop.size()) + ")",
                        "stop");
    }
  }
  if (const json* v = find(body, "stop_token_ids"))
    p.stop_token_ids = get_ids(*v, "stop_token_ids", vocab_size);
  if (const json* v = find(body, "stream")) r.stream = get_bool(*v, "stream");
  if (const json* v = find(body, "stream_options")) {
    if (!v->is_object()) throw bad_request("'stream_options' must be an object", "stream_options");
    if (!r.stream) throw bad_request("'stream_options' is only allowed with stream=true", "stream_options");
    if (const json* u = find(*v, "include_usage"))
      r.include_usage = get_bool(*u, "stream_options.include_usage");
  }
  if (const json* v = find(body, "best_of")) {
    if (get_int(*v, "best_of") != p.n)
      throw bad_request("'best_of' other than n is not supported", "best_of");
  }
  if (const json* v = find(body, "logit_bias")) {
    if (!v->is_object() || !v->empty()) throw bad_request("'logit_bias' is not supported", "logit_bias");
  }
}

void read_max_tokens(const json& body, const char* key, generation_request& r, bool& given) {
  if (const json* v = find(body, key)) {
    r.params.max_tokens = get_int32(*v, key, 1, kInt32Max);
    given = true;
  }
}

std::vector<int32_t> tokenize(const std::string& text, const request_context& ctx, bool add_special,
                              const char* param) {
  if (!ctx.tok) throw bad_request("this model has no tokenizer: send token ids", param);
  return ctx.tok->encode(text, add_special);
}

// Checks that need the model and the prompt, shared by all entry points.
void finish(generation_request& r, const request_context& ctx, bool max_tokens_given, bool default_to_context,
            const char* prompt_param) {
  r.params.need_logprob = r.logprobs;  // skip the log-softmax per token unless the client asked
  if (r.prompt_ids.empty()) throw bad_request("the prompt must not be empty", prompt_param);
  const int64_t plen = static_cast<int64_t>(r.prompt_ids.size());
  if (ctx.max_model_len > 0) {
    if (plen >= ctx.max_model_len) {
      throw bad_request("This model's maximum context length is " + std::to_string(ctx.max_model_len) +
                            " tokens. However, your prompt has " + std::to_string(plen) +
                            " tokens, leaving no room for the completion.",
                        prompt_param);
    }
    if (!max_tokens_given && default_to_context) {
      r.params.max_tokens = static_cast<int32_t>(ctx.max_model_len - plen);
    }
    if (plen + r.params.max_tokens > ctx.max_model_len) {
      throw bad_request("This model's maximum context length is " + std::to_string(ctx.max_model_len) +
                            " tokens. However, you requested " + std::to_string(plen + r.params.max_tokens) +
                            " tokens (" + std::to_string(plen) + " in the prompt, " +
                            std::to_string(r.params.max_tokens) +
                            " in the completion). Please reduce the prompt or max_tokens.",
                        "max_tokens");
    }
  }
  std::vector<std::string> problems = r.params.validate(ctx.vocab_size);
  if (!problems.empty()) {
    std::string msg;
    for (const auto& p : problems) msg += (msg.empty() ? "" : "; ") + p;
    // The field named first is the param OpenAI clients show.
    throw bad_request(msg, problems[0].substr(0, problems[0].find(' ')));
  }
}

// A message's content: a string, null, or text parts joined (OpenAI's content-part array).
json normalize_messages(const json& messages) {
  if (!messages.is_array() || messages.empty()) {
    throw bad_request("'messages' must be a non-empty array", "messages");
  }
  json out = json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw bad_request(where + " must be an object", "messages");
    if (!m.contains("role") || !m["role"].is_string()) {
      throw bad_request(where + ".role must be a string", "messages");
    }
    json msg = m;
    auto c = m.find("content");
    if (c != m.end() && c->is_array()) {
      std::string text;
      for (const auto& part : *c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string()) {
          throw bad_request(
              where + ".content: only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
              "messages");
        }
        text += part["text"].get<std::string>();
      }
      msg["content"] = text;
    } else if (c != m.end() && !c->is_string() && !c->is_null()) {
      throw bad_request(where + ".content must be a string, an array of text parts or null", "messages");
    }
    out.push_back(std::move(msg));
  }
  return out;
}

std::vector<int32_t> render_chat(const json& body, const json& messages, const request_context& ctx) {
  const json* custom = find(body, "chat_template");
  if (custom && !ctx.allow_request_chat_template) {
    throw api_error(400,
                    "'chat_template' in a request is refused: the operator has not enabled "
                    "allow_request_chat_template",
                    "invalid_request_error", "chat_template", "chat_template_not_allowed");
  }
  if (custom && !custom->is_string()) throw bad_request("'chat_template' must be a string", "chat_template");
  if (!ctx.render_chat || !*ctx.render_chat) {
    throw api_error(
        400,
        "model `" + ctx.model_name +
            "` has no chat template: chat requests cannot be rendered (use /v1/completions with a "
            "prompt, or give the model a chat template)",
        "invalid_request_error", "messages", "chat_template_missing");
  }
  json options = json::object();
  options["add_generation_prompt"] = true;
  if (const json* v = find(body, "add_generation_prompt")) {
    options["add_generation_prompt"] = get_bool(*v, "add_generation_prompt");
  }
  if (const json* v = find(body, "tools")) {
    if (!v->is_array()) throw bad_request("'tools' must be an array", "tools");
    options["tools"] = *v;
  }
  if (const json* v = find(body, "chat_template_kwargs")) {
    if (!v->is_object())
      throw bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs");
    options["chat_template_kwargs"] = *v;
  }
  if (custom) options["chat_template"] = *custom;
  std::string prompt;
  try {
    prompt = (*ctx.render_chat)(normalize_messages(messages), options);
  } catch (const api_error&) {
    throw;
  } catch (const std::exception& e) {
    throw bad_request(std::string("cannot apply the chat template: ") + e.what(), "messages");
  }
  // The template writes BOS and the like itself.
  return tokenize(prompt, ctx, false, "messages");
}

}  // namespace

json parse_json_object(std::string_view text) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {  // parse_error, or out_of_range for numbers like 1e999
    throw bad_request(std::string("the body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw bad_request("the body must be a JSON object");
  return j;
}

generation_request parse_completion_request(const json& body, const request_context& ctx) {
  generation_request r;
  r.kind = api_kind::completion;
  check_model(body, ctx);
  read_sampling(body, r, ctx.vocab_size);
  bool max_given = false;
  read_max_tokens(body, "max_tokens", r, max_given);
  if (const json* v = find(body, "logprobs")) {
    r.params.logprobs = get_int32(*v, "logprobs", 0, sampling_max_logprobs);
    r.logprobs = true;
  }
  if (const json* v = find(body, "echo"); v && get_bool(*v, "echo")) {
    throw bad_request("'echo' is not supported", "echo");
  }
  if (const json* v = find(body, "suffix"); v && !(v->is_string() && v->get<std::string>().empty())) {
    throw bad_request("'suffix' is not supported", "suffix");
  }
  const json* prompt = find(body, "prompt");
  if (!prompt) throw bad_request("'prompt' is required", "prompt");
  const json* one = prompt;
  if (prompt->is_array() && !prompt->empty() && (prompt->front().is_string() || prompt->front().is_array())) {
    if (prompt->size() != 1)
      throw bad_request("batched prompts are not supported: send one prompt", "prompt");
    one = &prompt->front();
  }
  if (one->is_string()) {
    r.prompt_ids = tokenize(one->get<std::string>(), ctx, true, "prompt");
  } else if (one->is_array()) {
    r.prompt_ids = get_ids(*one, "prompt", ctx.vocab_size);
  } else {
    throw bad_request("'prompt' must be a string, an array of token ids, or a one-element array of either",
                      "prompt");
  }
  finish(r, ctx, max_given, false, "prompt");
  return r;
}

generation_request parse_chat_request(const json& body, const request_context& ctx) {
  generation_request r;
  r.kind = api_kind::chat;
  check_model(body, ctx);
  read_sampling(body, r, ctx.vocab_size);
  bool max_given = false;
  read_max_tokens(body, "max_tokens", r, max_given);
  read_max_tokens(body, "max_completion_tokens", r, max_given);  // the newer name wins
  if (const json* v = find(body, "logprobs")) r.logprobs = get_bool(*v, "logprobs");
  if (const json* v = find(body, "top_logprobs")) {
    r.params.logprobs = get_int32(*v, "top_logprobs", 0, sampling_max_logprobs);
    if (!r.logprobs) throw bad_request("'top_logprobs' requires 'logprobs': true", "top_logprobs");
  }
  const json* messages = find(body, "messages");
  if (!messages) throw bad_request("'messages' is required", "messages");
  r.prompt_ids = render_chat(body, *messages, ctx);
  finish(r, ctx, max_given, true, "messages");
  return r;
}

generation_request parse_ws_generate(const json& msg, const request_context& ctx) {
  generation_request r;
  r.kind = api_kind::websocket;
  r.stream = true;
  check_model(msg, ctx);
  read_sampling(msg, r, ctx.vocab_size);
  r.stream = true;  // always streamed; a "stream" field is accepted and ignored
  bool max_given = false;
  read_max_tokens(msg, "max_tokens", r, max_given);
  if (const json* v = find(msg, "logprobs")) {
    r.params.logprobs = get_int32(*v, "logprobs", 0, sampling_max_logprobs);
    r.logprobs = true;
  }
  const json* prompt = find(msg, "prompt");
  const json* messages = find(msg, "messages");
  const json* ids = find(msg, "prompt_ids");
  if ((prompt != nullptr) + (messages != nullptr) + (ids != nullptr) != 1) {
    throw bad_request("give exactly one of 'prompt', 'messages' or 'prompt_ids'", "prompt");
  }
  if (prompt) {
    if (!prompt->is_string()) throw bad_request("'prompt' must be a string", "prompt");
    r.prompt_ids = tokenize(prompt->get<std::string>(), ctx, true, "prompt");
  } else if (ids) {
    r.prompt_ids = get_ids(*ids, "prompt_ids", ctx.vocab_size);
  } else {
    r.prompt_ids = render_chat(msg, *messages, ctx);
  }
  finish(r, ctx, max_given, false, prompt ? "prompt" : ids ? "prompt_ids" : "messages");
  return r;
}

}  // namespace troupe::gateway
