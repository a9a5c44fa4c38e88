#pragma once

#include <caf/all.hpp>
#include <memory>

#include "actors/shared_state.h"
#include "core/plugin_api/model_runner.h"

namespace troupe::actors {

// One per device; spawned detached because a step blocks on the model. Each incarnation starts with an
// empty step_executor (no sequence mirrors), so a restarted worker is fed every sequence anew. Takes
// plan_msg and flush_msg from the scheduler and sends it step_result messages, in step order; it holds
// at most one submitted step that it has not reported (see plan_msg).
caf::behavior worker_actor(caf::event_based_actor* self, model_runner* runner,
                           std::shared_ptr<shared_state> st);

// Spawns the worker, watches it, and on its death spawns another (up to a limit) and hands it to the
// scheduler.
caf::behavior supervisor_actor(caf::event_based_actor* self, model_runner* runner,
                               std::shared_ptr<shared_state> st, caf::actor scheduler, int32_t max_restarts);

}  // namespace troupe::actors
