// Request bodies -> validated generation requests: OpenAI /v1/completions and /v1/chat/completions and the
// /v1/ws "generate" message share one parser for the sampling fields. Every failure is an api_error (400,
// naming the field in `param`); checks that need the model (vocabulary, context length, chat template) use
// the request_context.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/sampling.h"
#include "gateway/api_error.h"

namespace troupe {
class tokenizer;
}

namespace troupe::gateway {

// Turns chat messages into a prompt. messages: [{"role", "content": string}, ...] (content parts already
// joined); options: {"add_generation_prompt": bool, "tools": [...] (when sent), "chat_template_kwargs":
// {...}}. Throws (troupe::error or anything std::exception) to refuse the conversation; the gateway answers
// 400.
using prompt_renderer = std::function<std::string(const json& messages, const json& options)>;

enum class api_kind { completion, chat, websocket };

struct request_context {
  const tokenizer* tok = nullptr;  // null: only token-id prompts are accepted
  int32_t vocab_size = 0;
  int64_t max_model_len = 0;
  std::string model_name;                        // the served name; a request naming another model gets 404
  const prompt_renderer* render_chat = nullptr;  // null or empty: chat is refused with a 400
  // A "chat_template" in the request body replaces the model's only when the operator allows it
  // (server_options::allow_request_chat_template); otherwise such a request gets a 400.
  bool allow_request_chat_template = false;
};

struct generation_request {
  api_kind kind = api_kind::completion;
  std::vector<int32_t> prompt_ids;
  sampling_params params;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // return the sampled tokens' logprobs (top ones per params.logprobs)
  std::string client_id;       // websocket: the client's "id"
};

// Strict JSON (no NaN/Infinity literals, valid UTF-8); a top-level object is required.
json parse_json_object(std::string_view text);

generation_request parse_completion_request(const json& body, const request_context& ctx);
generation_request parse_chat_request(const json& body, const request_context& ctx);
// {"type": "generate", "id", "prompt" | "messages" | "prompt_ids", sampling fields...}
generation_request parse_ws_generate(const json& msg, const request_context& ctx);

}  // namespace troupe::gateway
