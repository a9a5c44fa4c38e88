// The engine as the gateway sees it: submit a request with a sink for its events, abort it, read stats.
// Implemented by the actor system (actors/engine.*); the gateway depends only on this header, so it can be
// tested against a fake. Events for one request are delivered in order, batched per engine step, from an
// engine thread: a sink must not block (post to your own executor).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/sampling.h"

namespace troupe {

class tokenizer;

struct engine_request {
  std::string id;                   // unique among live requests (the gateway prefixes it per connection)
  std::vector<int32_t> prompt_ids;  // already tokenized (the gateway applies chat templates and tokenizes)
  sampling_params params;           // validated again by the engine
  int32_t priority = 0;             // lower runs first; FCFS within a priority
};

// New output of one of the request's n sequences in one step.
struct sequence_delta {
  int32_t index = 0;                  // 0..n-1
  std::vector<int32_t> token_ids;     // tokens sampled this step (usually one)
  std::string text;                   // newly safe text (held back while a stop string may start)
  std::vector<float> token_logprobs;  // per token: the sampled token's raw logprob
  std::vector<std::vector<token_logprob>> top_logprobs;  // per token, when params.logprobs > 0
  std::optional<std::string> finish_reason;  // "stop" | "length" | "abort" once this sequence ended
};

struct request_usage {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;  // over all n sequences
  int32_t cached_prompt_tokens = 0;
};

struct request_timing {
  double queue_s = 0;  // arrival -> first scheduled
  double ttft_s = 0;   // arrival -> first token
  double total_s = 0;  // arrival -> finished
};

struct request_event {
  std::string id;
  std::vector<sequence_delta> deltas;  // only sequences with news this step
  bool finished = false;               // every sequence ended; nothing follows
  request_usage usage;                 // running totals
  request_timing timing;               // filled when finished
  std::optional<std::string> error;    // set with finished=true when the engine failed the request
};

using request_sink = std::function<void(const request_event&)>;

enum class submit_status { accepted, invalid, queue_full, unavailable };

struct submit_result {
  submit_status status = submit_status::accepted;
  std::string message;  // every problem, for invalid; the reason otherwise
};

struct engine_stats {
  int32_t num_running = 0;
  int32_t num_waiting = 0;
  int32_t num_kv_blocks = 0;
  int32_t num_kv_blocks_used = 0;
  double kv_usage = 0;                // 0..1
  uint64_t prefix_cache_queries = 0;  // tokens looked up
  uint64_t prefix_cache_hits = 0;     // tokens found
  uint64_t preemptions = 0;
};

struct model_info {
  std::string name;  // served model name (the directory name unless configured)
  int32_t vocab_size = 0;
  int64_t max_model_len = 0;
};

class engine {
 public:
  virtual ~engine() = default;
  // Validates and admits (or refuses with a reason); never blocks on the model.
  virtual submit_result submit(engine_request req, request_sink sink) = 0;
  // Frees the request's resources within one step; its sink gets a final event with finish_reason "abort".
  // Unknown ids are ignored.
  virtual void abort(const std::string& id) = 0;
  virtual engine_stats stats() const = 0;
  virtual model_info info() const = 0;
  virtual const tokenizer* get_tokenizer() const = 0;
  virtual bool healthy() const = 0;
};

}  // namespace troupe
