#include "actors/worker_actor.h"

#include <stdexcept>

#include "actors/messages.h"
#include "core/sched/step_executor.h"

namespace troupe::actors {

caf::behavior worker_actor(caf::event_based_actor* self, model_runner* runner, std::shared_ptr<shared_state> st) {
  auto exec = std::make_shared<step_executor>(*runner);
  (void)self;
  return {
      [=](const step_plan& plan) -> step_result {
        if (st->crash_next_step.exchange(false)) throw std::runtime_error("worker crash injected mid-step");
        return exec->execute(plan);
      },
  };
}

caf::behavior supervisor_actor(caf::event_based_actor* self, model_runner* runner, std::shared_ptr<shared_state> st,
                               caf::actor scheduler, int32_t max_restarts) {
  auto epoch = std::make_shared<uint64_t>(1);
  auto current = std::make_shared<caf::actor>();
  auto spawn_worker = [=] {
    caf::actor w = self->system().spawn<caf::detached>(worker_actor, runner, st);
    *current = w;
    self->monitor(w);
    self->send(scheduler, worker_msg{w, *epoch});
  };
  spawn_worker();
  // Shutting down takes the worker along (it is monitored, not linked, so that its crashes do not kill us).
  self->set_exit_handler([=](caf::exit_msg& m) {
    if (*current) self->send_exit(*current, m.reason);
    *current = caf::actor{};
    self->quit(m.reason);
  });
  self->set_down_handler([=](caf::down_msg& m) {
    (void)m;
    if (st->dead) return;
    if (st->worker_restarts.load() >= max_restarts) {
      st->dead = true;
      self->send(scheduler, worker_msg{caf::actor{}, ++*epoch});  // no worker: fail what is live
      return;
    }
    ++st->worker_restarts;
    ++*epoch;
    spawn_worker();
  });
  return {[=](caf::get_atom) { return st->worker_restarts.load(); }};
}

}  // namespace troupe::actors
