// The "decode" side of a step's results: appends each sequence's new tokens, detokenizes incrementally,
// applies stop strings (holding back text that may begin one), keeps per-request timings and usage,
// records the request metrics, and turns one step's outputs into one event per request for its sink.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/engine_api.h"
#include "core/sched/scheduler.h"

namespace troupe {

class tokenizer;
class incremental_detokenizer;
class stop_checker;

using engine_clock = std::chrono::steady_clock;

class output_processor {
 public:
  explicit output_processor(const tokenizer* tok);
  ~output_processor();

  void add(uint64_t rid, std::string id, std::shared_ptr<const sampling_params> params,
           const std::vector<int32_t>& prompt, request_sink sink, engine_clock::time_point arrival);
  // The scheduler first scheduled the request (for queue time).
  // cached_tokens: its prompt tokens served from the prefix cache (reported in usage).
  void mark_scheduled(uint64_t rid, engine_clock::time_point when, int32_t cached_tokens = 0);

  // Applies one step's outputs, calls sinks (one event per request with news), and returns the sequences
  // the scheduler must end because a stop string matched.
  std::vector<int64_t> process(const std::vector<seq_output>& outs, engine_clock::time_point now);

  // Ends the request with finish_reason "abort" for every live sequence (or with `error`).
  void abort(uint64_t rid, engine_clock::time_point now, const std::string& error = "");

  // Fails every live request with `error` (the engine lost its worker for good).
  void fail_all(engine_clock::time_point now, const std::string& error);

  bool has(uint64_t rid) const { return reqs_.count(rid) > 0; }
  int32_t num_requests() const { return static_cast<int32_t>(reqs_.size()); }

 private:
  struct seq_state;
  struct req_state;
  void finish_request(req_state& r, request_event& ev, engine_clock::time_point now);

  struct event_slot {
    req_state* req = nullptr;
    size_t ndeltas = 0;  // ev.deltas[0, ndeltas) belong to this step
    request_event ev;
  };

  const tokenizer* tok_;
  std::unordered_map<uint64_t, std::unique_ptr<req_state>> reqs_;
  std::vector<event_slot> slots_;  // one per request with news this step, reused across steps
  uint64_t step_ = 0;
};

}  // namespace troupe
