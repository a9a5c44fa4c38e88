#include "tests/gateway/fake_engine.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/metrics.h"

namespace troupe::testing {

namespace {

// GPT-2's byte -> printable code point map, so the byte-level tokenizer.json can name every byte.
std::string byte_symbol(int b) {
  int cp = b;
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  if (!printable) {
    int n = 0;
    for (int x = 0; x < b; ++x) {
      const bool p = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
      if (!p) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

double seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

std::string fake_engine::tokenizer_json() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_symbol(b)] = b;
  nlohmann::json j = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"added_tokens", nlohmann::json::array({{{"id", eos_id},
                                               {"content", "<|endoftext|>"},
                                               {"special", true},
                                               {"single_word", false},
                                               {"lstrip", false},
                                               {"rstrip", false},
                                               {"normalized", false}}})},
  };
  return j.dump();
}

std::string fake_engine::expected_text(uint64_t seed, int32_t index, int32_t n) {
  const size_t len = std::strlen(phrase);
  std::string out;
  for (int32_t k = 0; k < n; ++k) out += phrase[(seed + 7 * static_cast<uint64_t>(index) + k) % len];
  return out;
}

fake_engine::fake_engine(fake_engine_options o)
    : opts_(std::move(o)), tok_(tokenizer::from_json(tokenizer_json(), "fake tokenizer.json")) {
  thread_ = std::thread([this] { loop(); });
}

fake_engine::~fake_engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

submit_result fake_engine::submit(engine_request req, request_sink sink) {
  if (!healthy_) return {submit_status::unavailable, "the fake engine is marked unhealthy"};
  std::vector<std::string> problems = req.params.validate(257);
  for (int32_t id : req.prompt_ids) {
    if (id < 0 || id >= 257)
      problems.push_back("prompt token id " + std::to_string(id) + " outside the vocabulary");
  }
  if (static_cast<int64_t>(req.prompt_ids.size()) + req.params.max_tokens > opts_.max_model_len) {
    problems.push_back("prompt + max_tokens exceeds the context");
  }
  if (!problems.empty()) {
    std::string msg;
    for (const auto& p : problems) msg += (msg.empty() ? "" : "; ") + p;
    return {submit_status::invalid, msg};
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<int32_t>(live_.size()) >= opts_.max_live) {
    return {submit_status::queue_full, std::to_string(live_.size()) + " requests running"};
  }
  if (live_.count(req.id)) return {submit_status::invalid, "duplicate request id " + req.id};
  live_request r;
  r.seqs.resize(static_cast<size_t>(req.params.n));
  r.arrival = std::chrono::steady_clock::now();
  r.sink = std::move(sink);
  const std::string id = req.id;
  r.req = std::move(req);
  live_.emplace(id, std::move(r));
  cv_.notify_all();
  return {submit_status::accepted, ""};
}

void fake_engine::abort(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(id);
  if (it != live_.end()) it->second.aborted = true;
}

engine_stats fake_engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  engine_stats s;
  s.num_running = static_cast<int32_t>(live_.size());
  s.num_kv_blocks = 1024;
  s.num_kv_blocks_used = static_cast<int32_t>(live_.size());
  s.kv_usage = static_cast<double>(live_.size()) / 1024.0;
  return s;
}

size_t fake_engine::num_live() const {
  std::lock_guard<std::mutex> lock(mu_);
  return live_.size();
}

request_event fake_engine::step(live_request& r, std::chrono::steady_clock::time_point now) {
  auto& m = global_engine_metrics();
  const sampling_params& p = r.req.params;
  request_event ev;
  ev.id = r.req.id;
  if (!r.started) {
    r.started = true;
    r.queue_s = seconds(now - r.arrival);
    m.queue_time.observe(r.queue_s);
    m.prompt_tokens.inc(r.req.prompt_ids.size());
  }
  const size_t len = std::strlen(phrase);
  size_t max_stop = 0;
  for (const auto& s : p.stop) max_stop = std::max(max_stop, s.size());
  for (size_t i = 0; i < r.seqs.size(); ++i) {
    sequence& s = r.seqs[i];
    if (s.done) continue;
    sequence_delta d;
    d.index = static_cast<int32_t>(i);
    if (r.aborted) {
      d.text = s.text.substr(s.emitted);
      s.done = true;
      d.finish_reason = "abort";
      ev.deltas.push_back(std::move(d));
      continue;
    }
    const bool eos = opts_.eos_after > 0 && !p.ignore_eos && s.generated == opts_.eos_after;
    const uint64_t seed = p.seed.value_or(0);
    const int32_t tok = eos ? eos_id : static_cast<unsigned char>(phrase[(seed + 7 * i + s.generated) % len]);
    ++s.generated;
    ++r.completion_tokens;
    m.generation_tokens.inc();
    if (r.ttft_s < 0) {
      r.ttft_s = seconds(now - r.arrival);
      m.ttft.observe(r.ttft_s);
    } else {
      m.inter_token_latency.observe(seconds(now - s.last_token));
    }
    s.last_token = now;
    d.token_ids.push_back(tok);
    d.token_logprobs.push_back(-0.5f);
    if (p.logprobs > 0) {
      std::vector<token_logprob> top{{tok, -0.5f}};
      for (int32_t k = 1; k < p.logprobs; ++k) top.push_back({(tok + k) % 256, -0.5f - k});
      d.top_logprobs.push_back(std::move(top));
    }
    if (!eos) s.text += static_cast<char>(tok);
    const bool stop_id =
        std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), tok) != p.stop_token_ids.end();
    size_t stop_at = std::string::npos;
    for (const auto& st : p.stop) {
      const size_t from = s.text.size() >= st.size() + 1 ? s.text.size() - st.size() - 1 : 0;
      const size_t pos = s.text.find(st, from);
      if (pos != std::string::npos && pos < stop_at) stop_at = pos;
    }
    if (stop_at != std::string::npos) {
      s.text.resize(stop_at);  // the stop string itself is not returned
      d.finish_reason = "stop";
    } else if (eos || stop_id) {
      d.finish_reason = "stop";
    } else if (s.generated >= p.max_tokens) {
      d.finish_reason = "length";
    }
    size_t safe = s.text.size();
    if (!d.finish_reason) {
      // Hold back the longest tail that could start a stop string.
      for (size_t k = std::min(max_stop, s.text.size()); k > 0; --k) {
        bool prefix = false;
        for (const auto& st : p.stop)
          prefix |= st.compare(0, k, s.text, s.text.size() - k, k) == 0 && k < st.size();
        if (prefix) {
          safe = s.text.size() - k;
          break;
        }
      }
    }
    if (safe > s.emitted) {
      d.text = s.text.substr(s.emitted, safe - s.emitted);
      s.emitted = safe;
    }
    if (d.finish_reason) s.done = true;
    ev.deltas.push_back(std::move(d));
  }
  ev.usage.prompt_tokens = static_cast<int32_t>(r.req.prompt_ids.size());
  ev.usage.completion_tokens = r.completion_tokens;
  ev.finished = std::all_of(r.seqs.begin(), r.seqs.end(), [](const sequence& s) { return s.done; });
  if (ev.finished) {
    ev.timing.queue_s = r.queue_s;
    ev.timing.ttft_s = std::max(0.0, r.ttft_s);
    ev.timing.total_s = seconds(now - r.arrival);
    m.e2e_latency.observe(ev.timing.total_s);
    std::string reason = r.aborted ? "abort" : "stop";
    for (const auto& d : ev.deltas) {
      if (!r.aborted && d.finish_reason == std::optional<std::string>("length")) reason = "length";
    }
    m.requests_finished(reason).inc();
    if (r.aborted) aborted_.fetch_add(1);
  }
  return ev;
}

void fake_engine::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stopping_ || !live_.empty(); });
    if (stopping_) return;
    lock.unlock();
    std::this_thread::sleep_for(opts_.step_delay);
    lock.lock();
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::pair<request_sink, request_event>> out;
    for (auto it = live_.begin(); it != live_.end();) {
      request_event ev = step(it->second, start);
      const bool finished = ev.finished;
      out.emplace_back(it->second.sink, std::move(ev));
      it = finished ? live_.erase(it) : std::next(it);
    }
    auto& m = global_engine_metrics();
    m.requests_running.set(static_cast<double>(live_.size()));
    m.step_duration.observe(seconds(std::chrono::steady_clock::now() - start));
    lock.unlock();
    for (auto& [sink, ev] : out) sink(ev);  // outside the lock, as the engine's sinks are
    lock.lock();
  }
}

}  // namespace troupe::testing
