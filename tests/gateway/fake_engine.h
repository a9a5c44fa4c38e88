// A deterministic stand-in for the engine behind core/engine_api.h, for gateway tests.
//
// Tokens are bytes (a byte-level tokenizer: id b is byte b, id 256 is <|endoftext|>). Sequence i of a
// request writes the phrase "the quick brown fox jumps over the lazy dog " over and over, starting
// (seed + 7 * i) characters in, one token per step. A step thread ticks every step_delay and delivers
// one event per live request per step, from its own thread, as the real engine does. It honours
// max_tokens, stop strings (held back while one may be starting), stop_token_ids, ignore_eos (with
// eos_after), n, logprobs and abort (within one step), refuses beyond max_live with queue_full, and
// records into global_engine_metrics() as the real engine will.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "core/engine_api.h"
#include "core/tokenizer.h"

namespace troupe::testing {

struct fake_engine_options {
  std::chrono::milliseconds step_delay{5};
  int32_t max_live = 256;  // requests admitted at once; more: queue_full
  int64_t max_model_len = 4096;
  std::string model_name = "fake-model";
  int32_t eos_after = 0;  // > 0: each sequence emits EOS after this many tokens unless ignore_eos
};

class fake_engine : public engine {
 public:
  static constexpr const char* phrase = "the quick brown fox jumps over the lazy dog ";
  static constexpr int32_t eos_id = 256;

  explicit fake_engine(fake_engine_options o = {});
  ~fake_engine() override;

  submit_result submit(engine_request req, request_sink sink) override;
  void abort(const std::string& id) override;
  engine_stats stats() const override;
  model_info info() const override { return {opts_.model_name, 257, opts_.max_model_len}; }
  const tokenizer* get_tokenizer() const override { return &tok_; }
  bool healthy() const override { return healthy_.load(); }

  void set_healthy(bool h) { healthy_.store(h); }
  size_t num_live() const;
  uint64_t num_aborted() const { return aborted_.load(); }

  // The text sequence `index` produces in its first `n` tokens (no stop strings), for assertions.
  static std::string expected_text(uint64_t seed, int32_t index, int32_t n);
  // The byte-level tokenizer.json the fake uses.
  static std::string tokenizer_json();

 private:
  struct sequence {
    std::string text;       // everything generated
    size_t emitted = 0;     // text[0, emitted) went out
    int32_t generated = 0;  // tokens
    bool done = false;
    std::chrono::steady_clock::time_point last_token;
  };
  struct live_request {
    engine_request req;
    request_sink sink;
    std::vector<sequence> seqs;
    std::chrono::steady_clock::time_point arrival;
    bool started = false, aborted = false;
    double queue_s = 0, ttft_s = -1;
    int32_t completion_tokens = 0;
  };

  void loop();
  // One step of one request: its event (finished once every sequence is done).
  request_event step(live_request& r, std::chrono::steady_clock::time_point now);

  fake_engine_options opts_;
  tokenizer tok_;
  std::atomic<bool> healthy_{true};
  std::atomic<uint64_t> aborted_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::map<std::string, live_request> live_;
  std::thread thread_;
};

}  // namespace troupe::testing
