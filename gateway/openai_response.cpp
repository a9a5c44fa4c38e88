#include "gateway/openai_response.h"

#include <chrono>
#include <random>

#include "core/tokenizer.h"

namespace troupe::gateway {

std::string make_request_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string id = prefix;
  for (int half = 0; half < 2; ++half) {
    uint64_t x = rng();
    for (int i = 0; i < 16; ++i, x >>= 4) id += hex[x & 15];
  }
  return id;
}

response_builder::response_builder(const generation_request& req, std::string id, std::string model,
                                   const tokenizer* tok)
    : kind_(req.kind),
      want_logprobs_(req.logprobs),
      include_usage_(req.include_usage),
      id_(std::move(id)),
      model_(std::move(model)),
      created_(std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count()),
      tok_(tok),
      choices_(static_cast<size_t>(req.params.n)) {}

response_builder::choice& response_builder::at(int32_t index) {
  if (index < 0) index = 0;
  if (static_cast<size_t>(index) >= choices_.size()) choices_.resize(index + 1);
  return choices_[index];
}

json response_builder::usage_json(const request_usage& u) {
  json j = json::object();
  j["prompt_tokens"] = u.prompt_tokens;
  j["completion_tokens"] = u.completion_tokens;
  j["total_tokens"] = u.prompt_tokens + u.completion_tokens;
  if (u.cached_prompt_tokens > 0) j["prompt_tokens_details"] = {{"cached_tokens", u.cached_prompt_tokens}};
  return j;
}

// The logprobs of this delta's tokens, in the API's layout. text_offset: where the delta starts in the
// choice's text (completions report per-token offsets).
json response_builder::logprobs_for(const sequence_delta& d, size_t& text_offset) const {
  auto spell = [&](int32_t id) { return tok_ ? tok_->decode({id}, false) : std::string(); };
  auto bytes = [](const std::string& s) {
    json b = json::array();
    for (unsigned char c : s) b.push_back(static_cast<int>(c));
    return b;
  };
  json out = json::object();
  if (kind_ == api_kind::chat) {
    json content = json::array();
    for (size_t i = 0; i < d.token_ids.size(); ++i) {
      const std::string t = spell(d.token_ids[i]);
      json top = json::array();
      if (i < d.top_logprobs.size()) {
        for (const auto& tl : d.top_logprobs[i]) {
          const std::string s = spell(tl.id);
          top.push_back({{"token", s}, {"logprob", tl.logprob}, {"bytes", bytes(s)}});
        }
      }
      content.push_back({{"token", t},
                         {"logprob", i < d.token_logprobs.size() ? json(d.token_logprobs[i]) : json(nullptr)},
                         {"bytes", bytes(t)},
                         {"top_logprobs", std::move(top)}});
    }
    out["content"] = std::move(content);
    out["refusal"] = nullptr;
    return out;
  }
  json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  for (size_t i = 0; i < d.token_ids.size(); ++i) {
    const std::string t = spell(d.token_ids[i]);
    tokens.push_back(t);
    lps.push_back(i < d.token_logprobs.size() ? json(d.token_logprobs[i]) : json(nullptr));
    json top = json::object();
    if (i < d.top_logprobs.size()) {
      for (const auto& tl : d.top_logprobs[i]) {
        const std::string s = spell(tl.id);
        if (!top.contains(s)) top[s] = tl.logprob;  // two ids may spell alike; the better one stays
      }
    }
    // As OpenAI's legacy completions (and vLLM): the sampled token is always among its top_logprobs, so an
    // entry has up to logprobs + 1 elements.
    if (!top.contains(t) && i < d.token_logprobs.size()) top[t] = d.token_logprobs[i];
    tops.push_back(std::move(top));
    // Offsets count characters (code points) of the tokens' spellings so far, as OpenAI and vLLM do.
    offsets.push_back(text_offset);
    for (unsigned char c : t) text_offset += (c & 0xC0) != 0x80;
  }
  out["tokens"] = std::move(tokens);
  out["token_logprobs"] = std::move(lps);
  out["top_logprobs"] = std::move(tops);
  out["text_offset"] = std::move(offsets);
  return out;
}

void response_builder::append_logprobs(json& into, const json& part) const {
  if (into.is_null()) {
    into = part;
    return;
  }
  for (auto it = part.begin(); it != part.end(); ++it) {
    if (!it.value().is_array()) continue;
    for (const auto& v : it.value()) into[it.key()].push_back(v);
  }
}

json response_builder::chunk_base() const {
  json c = json::object();
  c["id"] = id_;
  c["object"] = kind_ == api_kind::chat ? "chat.completion.chunk" : "text_completion";
  c["created"] = created_;
  c["model"] = model_;
  return c;
}

void response_builder::stream_event(const request_event& ev, std::string& out) {
  for (const sequence_delta& d : ev.deltas) {
    choice& ch = at(d.index);
    const bool first = !ch.role_sent;
    const bool has_news = !d.text.empty() || d.finish_reason || (want_logprobs_ && !d.token_ids.empty()) ||
                          (kind_ == api_kind::chat && first);
    ch.text += d.text;
    if (d.finish_reason) ch.finish_reason = *d.finish_reason;
    if (!has_news) continue;
    json c = chunk_base();
    json choice = json::object();
    choice["index"] = d.index;
    if (kind_ == api_kind::chat) {
      json delta = json::object();
      if (first) delta["role"] = "assistant";
      if (!d.text.empty() || first) delta["content"] = d.text;
      choice["delta"] = std::move(delta);
      ch.role_sent = true;
    } else {
      choice["text"] = d.text;
    }
    choice["logprobs"] = want_logprobs_ ? logprobs_for(d, ch.lp_chars) : json(nullptr);
    choice["finish_reason"] = d.finish_reason ? json(*d.finish_reason) : json(nullptr);
    c["choices"] = json::array({std::move(choice)});
    if (include_usage_) c["usage"] = nullptr;
    out += "data: ";
    out += c.dump(-1, ' ', false, json::error_handler_t::replace);
    out += "\n\n";
  }
}

void response_builder::stream_end(const request_usage& usage, std::string& out) const {
  if (include_usage_) {
    json c = chunk_base();
    c["choices"] = json::array();
    c["usage"] = usage_json(usage);
    out += "data: ";
    out += c.dump(-1, ' ', false, json::error_handler_t::replace);
    out += "\n\n";
  }
  out += "data: [DONE]\n\n";
}

void response_builder::accumulate(const request_event& ev) {
  for (const sequence_delta& d : ev.deltas) {
    choice& ch = at(d.index);
    if (want_logprobs_) append_logprobs(ch.logprobs, logprobs_for(d, ch.lp_chars));
    ch.text += d.text;
    if (d.finish_reason) ch.finish_reason = *d.finish_reason;
  }
}

json response_builder::body(const request_usage& usage) const {
  json b = json::object();
  b["id"] = id_;
  b["object"] = kind_ == api_kind::chat ? "chat.completion" : "text_completion";
  b["created"] = created_;
  b["model"] = model_;
  json choices = json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const choice& ch = choices_[i];
    json c = json::object();
    c["index"] = i;
    if (kind_ == api_kind::chat) {
      c["message"] = {{"role", "assistant"}, {"content", ch.text}};
    } else {
      c["text"] = ch.text;
    }
    json lp = ch.logprobs;
    size_t none = 0;
    if (want_logprobs_ && lp.is_null()) lp = logprobs_for(sequence_delta{}, none);
    c["logprobs"] = want_logprobs_ ? lp : json(nullptr);
    c["finish_reason"] = ch.finish_reason.empty() ? json(nullptr) : json(ch.finish_reason);
    choices.push_back(std::move(c));
  }
  b["choices"] = std::move(choices);
  b["usage"] = usage_json(usage);
  return b;
}

}  // namespace troupe::gateway
