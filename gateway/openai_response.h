// Engine events -> OpenAI response JSON for one request: SSE chunks while streaming (one chunk per
// sequence delta, as OpenAI sends them), or one body at the end. Completions and chat differ only in
// shape: text vs delta/message, and the two logprobs layouts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/engine_api.h"
#include "gateway/api_error.h"
#include "gateway/openai_request.h"

namespace troupe::gateway {

// "cmpl-" / "chatcmpl-" followed by 32 random hex digits.
std::string make_request_id(const char* prefix);

class response_builder {
 public:
  // tok (may be null) spells out tokens for logprobs.
  response_builder(const generation_request& req, std::string id, std::string model, const tokenizer* tok);

  const std::string& id() const { return id_; }

  // Streaming: appends the "data: {...}\n\n" records this event produces.
  void stream_event(const request_event& ev, std::string& out);
  // Streaming, after the final event: the usage chunk (with stream_options.include_usage), then [DONE].
  void stream_end(const request_usage& usage, std::string& out) const;

  // Non-streaming: folds the event in; body() once the request finished.
  void accumulate(const request_event& ev);
  json body(const request_usage& usage) const;

  static json usage_json(const request_usage& usage);

 private:
  struct choice {
    std::string text;
    std::string finish_reason;
    bool role_sent = false;
    json logprobs;        // the accumulated logprobs object (non-streaming)
    size_t lp_chars = 0;  // completions text_offset: characters of the token spellings so far
  };

  // text_offset: in, where this delta's tokens start (characters); out, past them.
  json logprobs_for(const sequence_delta& d, size_t& text_offset) const;
  void append_logprobs(json& into, const json& part) const;
  json chunk_base() const;
  choice& at(int32_t index);

  api_kind kind_;
  bool want_logprobs_;
  bool include_usage_;
  std::string id_, model_;
  int64_t created_;
  const tokenizer* tok_;
  std::vector<choice> choices_;
};

}  // namespace troupe::gateway
