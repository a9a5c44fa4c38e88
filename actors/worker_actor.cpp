#include "actors/worker_actor.h"

#include <stdexcept>

#include "actors/messages.h"
#include "core/sched/step_executor.h"

namespace troupe::actors {

caf::behavior worker_actor(caf::event_based_actor* self, model_runner* runner,
                           std::shared_ptr<shared_state> st) {
  auto exec = std::make_shared<step_executor>(*runner);
  // Leaving (shutdown, a replaced runner): collect what the runner still runs, so that it holds nothing
  // submitted when the next worker uses it. The scheduler recomputes what was never reported.
  self->set_exit_handler([=](caf::exit_msg& m) {
    exec->drain();
    self->quit(m.reason);
  });
  auto report_until = [=](int32_t keep) {
    auto to = caf::actor_cast<caf::actor>(self->current_sender());
    while (exec->num_outstanding() > keep) self->send(to, exec->collect());
  };
  return {
      [=](plan_msg& m) {
        if (st->crash_next_step.exchange(false)) {
          exec->drain();
          throw std::runtime_error("worker crash injected mid-step");
        }
        // Submit first: the device queues this step behind the one it runs, then the older one is
        // collected and reported while this one runs.
        try {
          exec->submit(m.plan);
          report_until(m.flush ? 0 : 1);
        } catch (...) {
          // This worker dies (the supervisor starts another on the same runner): leave the runner with
          // nothing outstanding if it can still be collected.
          try {
            exec->drain();
          } catch (...) {
          }
          throw;
        }
      },
      [=](flush_msg) { report_until(0); },
  };
}

caf::behavior supervisor_actor(caf::event_based_actor* self, model_runner* runner,
                               std::shared_ptr<shared_state> st, caf::actor scheduler, int32_t max_restarts) {
  auto epoch = std::make_shared<uint64_t>(1);
  auto current = std::make_shared<caf::actor>();
  auto model = std::make_shared<model_runner*>(runner);
  // A replacement in progress: the old worker was told to exit; its death starts one on the new runner.
  struct replacement {
    bool pending = false;
    caf::response_promise rp;
  };
  auto repl = std::make_shared<replacement>();
  auto spawn_worker = [=](bool kv_lost) {
    caf::actor w = self->system().spawn<caf::detached>(worker_actor, *model, st);
    *current = w;
    self->monitor(w);
    self->send(scheduler, worker_msg{w, *epoch, kv_lost});
  };
  spawn_worker(false);
  // Shutting down takes the worker along (it is monitored, not linked, so that its crashes do not kill us).
  self->set_exit_handler([=](caf::exit_msg& m) {
    if (*current) self->send_exit(*current, m.reason);
    *current = caf::actor{};
    if (repl->pending) repl->rp.deliver(false);
    repl->pending = false;
    self->quit(m.reason);
  });
  self->set_down_handler([=](caf::down_msg& m) {
    if (m.source != current->address()) return;  // an older worker
    if (repl->pending) {
      // Planned: the old worker finished its step and left; nothing of it uses the old runner any more.
      repl->pending = false;
      ++*epoch;
      spawn_worker(true);
      repl->rp.deliver(true);
      return;
    }
    if (st->dead) return;
    if (st->worker_restarts.load() >= max_restarts) {
      st->dead = true;
      self->send(scheduler, worker_msg{caf::actor{}, ++*epoch});  // no worker: fail what is live
      return;
    }
    ++st->worker_restarts;
    ++*epoch;
    spawn_worker(false);  // same runner: its KV memory, and so the prefix cache, is still valid
  });
  return {
      [=](caf::get_atom) { return st->worker_restarts.load(); },
      [=](replace_worker_msg& m) -> caf::result<bool> {
        if (repl->pending || !*current) return false;
        *model = m.runner;
        repl->pending = true;
        repl->rp = self->make_response_promise();
        // A step in progress completes first: the exit is handled between messages.
        self->send_exit(*current, caf::exit_reason::user_shutdown);
        return repl->rp;
      },
  };
}

}  // namespace troupe::actors
