// Iteration-level (continuous) batching over a token budget: each step runs the running sequences first
// (one decode token each, or the next prefill chunk), then admits waiting ones (FCFS within a priority,
// chunked prefill), preempting the last-admitted running sequence when blocks run out. Prefill and decode
// tokens mix in one step. Owns the kv_manager; plans a step, then commits the worker's result.
//
// Asynchronous scheduling: while one step is in flight the next one may be planned (at most two in
// flight), so that the worker submits step N+1 before the device finishes step N. Each sequence that
// draws a token in the in-flight step then computes a placeholder (kTokenPending) at its next position;
// update() of the older step puts the real token in its place and runs the stop checks, and a sequence
// that stopped is ended: what the newer step computes for it is discarded. can_plan_ahead() says when
// planning ahead is safe (see there for what falls back to one step at a time).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/kv/kv_manager.h"
#include "core/sched/step.h"

namespace troupe {

enum class preemption_mode { recompute, swap };

struct scheduler_config {
  int32_t max_num_batched_tokens = 2048;
  int32_t max_num_seqs = 256;
  int32_t max_waiting_requests = 4096;  // admission refuses beyond this (queue full)
  int64_t max_model_len = 0;            // required
  preemption_mode preemption = preemption_mode::recompute;
  int32_t num_host_blocks = 0;   // swap space (blocks) for preemption_mode::swap
  bool async_scheduling = true;  // allow planning a step while the previous one is in flight
};

struct sched_request_in {
  uint64_t rid = 0;  // engine-internal id
  std::vector<int32_t> prompt;
  std::shared_ptr<const sampling_params> params;
  int32_t priority = 0;
  uint64_t seed = 0;
  std::vector<int32_t> eos_ids;  // model's eos ids (ignored when params->ignore_eos)
};

// What one step produced for one sequence.
struct seq_output {
  uint64_t rid = 0;
  int32_t index = 0;  // which of the request's n sequences
  int64_t seq_id = 0;
  int32_t token = 0;
  float logprob = 0;
  std::vector<token_logprob> top;
  std::optional<std::string> finish_reason;  // "stop" | "length" once this sequence ended
};

struct scheduler_stats {
  int32_t num_running = 0;
  int32_t num_waiting = 0;  // sequences
  int32_t num_requests = 0;
  int32_t num_blocks = 0;
  int32_t num_blocks_used = 0;
  uint64_t prefix_queries = 0;
  uint64_t prefix_hits = 0;
  uint64_t preemptions = 0;
};

class scheduler {
 public:
  scheduler(const scheduler_config& cfg, int32_t num_blocks, int32_t block_size, bool prefix_caching);

  // Queues a request (one sequence; n > 1 forks after its prompt). Returns false when the waiting queue
  // is full.
  bool add(sched_request_in req);
  // Ends every sequence of the request now; returns false for an unknown rid.
  bool abort(uint64_t rid);
  // Ends one sequence (e.g. a stop string seen by the detokenizer).
  void finish_sequence(int64_t seq_id);

  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  bool step_in_flight() const { return num_in_flight_ > 0; }
  int32_t num_in_flight() const { return num_in_flight_; }
  // True when exactly one step is in flight and the next may be planned now (async_scheduling). False
  // (wait for the result, then plan: one step at a time) when planning ahead would be unsafe or need more
  // than placeholders: a running sequence has penalties (the device reads a draw's history at submit,
  // which would miss the token drawn in flight); the last plan ahead found too few blocks for a running
  // sequence (preemption would free a sequence whose KV the in-flight step still writes and re-admit it
  // with tokens not known yet: the next plan, with nothing in flight, may preempt); swaps are pending or
  // the next waiting sequence comes back from swap space. Ended sequences (abort, finish_sequence, stop)
  // do not stop it: their mirrors are dropped with the next plan and what the in-flight steps computed
  // for them is discarded. O(1).
  bool can_plan_ahead() const;

  // Plans the next step: with no step in flight, or with one when can_plan_ahead(). An empty plan
  // (step_plan::empty) is not in flight and goes nowhere.
  step_plan plan();
  // Applies the worker's result for the oldest in-flight plan and returns per-sequence outputs.
  std::vector<seq_output> update(const step_result& result);
  // The worker lost its state (restarted): every running sequence is recomputed from its tokens.
  // kv_lost: the KV memory went too (a new runner): every block is freed and the prefix cache emptied,
  // since cached blocks would point at contents the new runner never computed.
  void reset_worker(bool kv_lost = false);

  // Requests whose first sequence was scheduled for the first time by the last plan (for queue time).
  std::vector<uint64_t> take_first_scheduled() { return std::move(first_scheduled_); }
  // For the same requests, in the same order: prompt tokens served from the prefix cache at that first
  // scheduling (usage.prompt_tokens_details.cached_tokens).
  std::vector<int32_t> take_first_cached() { return std::move(first_cached_); }

  scheduler_stats stats() const;
  const kv_manager& kv() const { return kv_; }
  // True when no sequence holds blocks: every block is free or cached-evictable.
  bool idle_and_clean() const;

 private:
  struct request;
  struct sequence {
    int64_t id = 0;
    request* req = nullptr;
    int32_t index = 0;
    std::vector<int32_t> tokens;
    int32_t num_computed = 0;
    bool in_kv = false;
    bool worker_knows = false;        // the worker holds this sequence's mirror
    std::vector<int32_t> sent_table;  // the table the worker holds
    uint64_t seed = 0;
    bool running = false;
    bool finished = false;
    uint64_t order = 0;               // arrival order; preempted sequences keep theirs
    std::vector<int32_t> host_slots;  // swapped out: where its blocks wait (one per table entry)
    bool prefix_counted = false;      // its last prefix lookup is in the hit/query counters
    uint64_t draw_step = 0;           // the last step planned to draw a token for it
    int32_t placeholder_at = -1;      // tokens[placeholder_at] is kTokenPending (-1: none; always last)
  };
  struct request {
    sched_request_in in;
    std::vector<int64_t> seq_ids;
    bool forked = false;
    bool started = false;
    int32_t num_live = 0;
  };
  using wait_key = std::tuple<int32_t, uint64_t, int64_t>;  // priority, order, seq id

  wait_key key_of(const sequence& s) const { return {s.req->in.priority, s.order, s.id}; }
  void preempt(sequence& s);
  void end_sequence(sequence& s);
  void schedule(sequence& s, int32_t n, step_plan& plan);
  std::optional<std::string> check_stop(const sequence& s, int32_t token) const;
  // The token s draws in the in-flight step ends it by length whatever it is: nothing follows it.
  bool last_draw_in_flight(const sequence& s) const;
  // running_ and the counter of running sequences with penalties, together.
  void enter_running(sequence& s);
  void leave_running(sequence& s);
  // A step planned and not yet updated, with the sequences it computes and their num_computed after it
  // (what update() commits to the prefix cache: a later in-flight step has moved num_computed on).
  struct flight {
    uint64_t step = 0;
    std::vector<std::pair<int64_t, int32_t>> computed;
  };
  flight& flight_at(int32_t i) { return flights_[(flight_head_ + i) % 2]; }
  const flight& flight_at(int32_t i) const { return flights_[(flight_head_ + i) % 2]; }

  scheduler_config cfg_;
  kv_manager kv_;
  std::unique_ptr<block_pool> host_pool_;  // swap space slots
  std::vector<block_copy> pending_swap_out_, pending_swap_in_;
  std::unordered_map<uint64_t, std::unique_ptr<request>> requests_;
  std::unordered_map<int64_t, std::unique_ptr<sequence>> seqs_;
  std::map<wait_key, sequence*> waiting_;
  std::map<wait_key, sequence*> running_;
  std::vector<int64_t> dropped_;  // for the next plan
  int64_t next_seq_id_ = 1;
  uint64_t next_order_ = 1;
  uint64_t step_ = 0;
  flight flights_[2];  // a ring: the oldest at flight_head_
  int32_t flight_head_ = 0, num_in_flight_ = 0;
  int32_t num_running_penalized_ = 0;  // running sequences with repetition/presence/frequency penalties
  bool memory_short_ = false;          // a plan ahead could not allocate: plan the next one in step
  uint64_t preemptions_ = 0;
  std::vector<uint64_t> first_scheduled_;
  std::vector<int32_t> first_cached_;
  std::vector<sequence*> order_;  // plan(): the running sequences in order
};

}  // namespace troupe
