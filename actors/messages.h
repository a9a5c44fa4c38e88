// Every message type the actors exchange. Messages are per step, never per token per request.
#pragma once

#include <caf/all.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/engine_api.h"
#include "core/plugin_api/model_runner.h"
#include "core/sched/scheduler.h"
#include "core/sched/step.h"

namespace troupe::actors {

using clock = std::chrono::steady_clock;

// intake -> output actor (register) and -> scheduler (add)
struct submit_msg {
  uint64_t rid = 0;
  std::string id;
  std::vector<int32_t> prompt;
  std::shared_ptr<const sampling_params> params;
  int32_t priority = 0;
  uint64_t seed = 0;
  request_sink sink;
  clock::time_point arrival;
};

// scheduler -> output actor, once per step
struct outputs_msg {
  std::vector<seq_output> outs;
  std::vector<uint64_t> first_scheduled;  // requests scheduled for the first time this step
  std::vector<int32_t> first_cached;      // and their prompt tokens found in the prefix cache
  clock::time_point scheduled_at;         // when this step was planned
  clock::time_point now;
};

// output actor -> scheduler: sequences that hit a stop string
struct finish_seqs_msg {
  std::vector<int64_t> seq_ids;
};

// facade -> scheduler; scheduler -> output actor
struct abort_msg {
  uint64_t rid = 0;
};

// supervisor -> scheduler: a (re)started worker
struct worker_msg {
  caf::actor worker;
  uint64_t epoch = 0;
  bool kv_lost = false;  // a new runner: the KV cache's contents (prefix cache included) are gone
};

// facade -> supervisor: run the model on this runner from now on (answered with true once the old worker
// is gone and the new one started)
struct replace_worker_msg {
  model_runner* runner = nullptr;
};

// test hook: the worker throws during its next step (a crash mid-step)
struct crash_msg {};

// scheduler -> worker: one step. The worker submits it, then reports (sends the step_result of) the step
// it held from before, if any, and holds this one: its result comes back when the next plan or a
// flush_msg arrives, so that the device runs this step while the scheduler plans the next. flush: report
// this one at once too (the scheduler plans nothing before its result).
struct plan_msg {
  step_plan plan;
  bool flush = false;
};

// scheduler -> worker: report the held step now (no plan follows it before its result).
struct flush_msg {};

}  // namespace troupe::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::submit_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::outputs_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::finish_seqs_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::abort_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::worker_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::crash_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::replace_worker_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::plan_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::actors::flush_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::step_plan)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::step_result)
