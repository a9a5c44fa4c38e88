#pragma once

#include <caf/all.hpp>
#include <memory>

#include "actors/shared_state.h"
#include "core/sched/scheduler.h"

namespace troupe {
class tokenizer;
}

namespace troupe::actors {

// Prefill and decode around one core::scheduler (which owns the KV manager): admits submitted requests,
// plans a step, sends it to the worker, applies the result, and forwards the outputs to the output actor
// (one message per step). With cfg.async_scheduling it plans the next step while one is in flight
// (plan_msg / flush_msg protocol: actors/messages.h, docs/serving-core.md). A dead worker's in-flight
// steps are dropped and every running sequence is recomputed on the new worker.
caf::behavior scheduler_actor(caf::event_based_actor* self, scheduler_config cfg, int32_t num_blocks,
                              int32_t block_size, bool prefix_caching, std::vector<int32_t> eos_ids,
                              std::shared_ptr<shared_state> st, caf::actor output);

// Owns the output_processor: detokenizes, applies stop strings, calls the request sinks.
caf::behavior output_actor(caf::event_based_actor* self, const tokenizer* tok,
                           std::shared_ptr<shared_state> st);

}  // namespace troupe::actors
