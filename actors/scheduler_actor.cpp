#include "actors/scheduler_actor.h"

#include <algorithm>
#include <deque>
#include <unordered_set>

#include "actors/messages.h"
#include "core/metrics.h"
#include "core/sched/output_processor.h"

namespace troupe::actors {

namespace {

// A step sent to the worker whose result has not come back.
struct sent_step {
  clock::time_point planned_at;
  std::vector<uint64_t> first_scheduled;
  std::vector<int32_t> first_cached;
};

struct sched_state {
  std::unique_ptr<scheduler> sched;
  caf::actor worker;
  uint64_t epoch = 0;
  std::deque<sent_step> sent;            // oldest first; as many as sched->num_in_flight()
  bool unflushed = false;                // the worker holds the newest plan until another plan or a flush_msg
  clock::time_point last_result_at;      // when the previous step_result came in
  std::unordered_set<uint64_t> started;  // requests scheduled at least once
  std::unordered_map<int64_t, uint64_t> seq_rid;
};

void publish(const scheduler& s, shared_state& st) {
  const scheduler_stats x = s.stats();
  st.num_running = x.num_running;
  st.num_waiting = x.num_waiting;
  st.num_blocks = x.num_blocks;
  st.num_blocks_used = x.num_blocks_used;
  st.num_sequences_in_kv = s.kv().num_sequences();
  auto& m = global_engine_metrics();
  const uint64_t dq = x.prefix_queries - st.prefix_queries.exchange(x.prefix_queries);
  const uint64_t dh = x.prefix_hits - st.prefix_hits.exchange(x.prefix_hits);
  const uint64_t dp = x.preemptions - st.preemptions.exchange(x.preemptions);
  if (dq) m.prefix_cache_queries.inc(dq);
  if (dh) m.prefix_cache_hits.inc(dh);
  if (dp) m.preemptions.inc(dp);
  m.requests_running.set(x.num_running);
  m.requests_waiting.set(x.num_waiting);
  m.kv_cache_usage.set(x.num_blocks ? static_cast<double>(x.num_blocks_used) / x.num_blocks : 0.0);
}

}  // namespace

caf::behavior scheduler_actor(caf::event_based_actor* self, scheduler_config cfg, int32_t num_blocks,
                              int32_t block_size, bool prefix_caching, std::vector<int32_t> eos_ids,
                              std::shared_ptr<shared_state> st, caf::actor output) {
  auto s = std::make_shared<sched_state>();
  s->sched = std::make_unique<scheduler>(cfg, num_blocks, block_size, prefix_caching);

  // Plans and sends steps while there is work and the scheduler allows it: with no step in flight, or
  // with one (asynchronous scheduling: the worker submits the new step, then reports the older one while
  // the device runs the new one). A plan is always followed by another plan or a flush: the worker
  // reports its held step only then.
  auto kick = std::make_shared<std::function<void()>>();
  // On shutdown, drop every actor handle we hold so the system can destroy the actors (no cycles).
  self->set_exit_handler([=](caf::exit_msg& m) {
    s->worker = caf::actor{};
    *kick = nullptr;
    self->quit(m.reason);
  });
  *kick = [=] {
    if (!s->worker) return;
    scheduler& sc = *s->sched;
    const int32_t n = sc.num_in_flight();
    bool may_plan = n == 0 || (n == 1 && sc.can_plan_ahead());
    while (may_plan && sc.has_work()) {
      sent_step sent;
      sent.planned_at = clock::now();
      plan_msg m;
      m.plan = sc.plan();
      sent.first_scheduled = sc.take_first_scheduled();
      sent.first_cached = sc.take_first_cached();
      publish(sc, *st);
      if (m.plan.empty()) break;
      s->sent.push_back(std::move(sent));
      // Will another plan follow this one at once? If not, the worker reports it right after submitting
      // it. With two in flight the worker reports the older one now and holds this one until the
      // older one's result is in and the next plan (or a flush) goes out.
      may_plan = sc.num_in_flight() == 1 && sc.has_work() && sc.can_plan_ahead();
      m.flush = sc.num_in_flight() == 1 && !may_plan;
      s->unflushed = !m.flush;
      self->send(s->worker, std::move(m));
    }
    if (s->unflushed && sc.num_in_flight() == 1) {
      self->send(s->worker, flush_msg{});
      s->unflushed = false;
    }
  };

  return {
      [=](step_result& res) {
        // From a worker that has been replaced since (its steps were recomputed): ignore.
        if (!s->worker || caf::actor_cast<caf::actor_addr>(self->current_sender()) != s->worker.address())
          return;
        if (s->sent.empty()) return;
        sent_step sent = std::move(s->sent.front());
        s->sent.pop_front();
        outputs_msg msg;
        msg.outs = s->sched->update(res);
        // The next step goes out before the outputs: the worker has it queued behind the running one.
        (*kick)();
        msg.first_scheduled = std::move(sent.first_scheduled);
        msg.first_cached = std::move(sent.first_cached);
        msg.scheduled_at = sent.planned_at;
        msg.now = clock::now();
        // A step planned ahead waited behind the previous one: its duration starts when that one ended.
        const clock::time_point began = std::max(sent.planned_at, s->last_result_at);
        s->last_result_at = msg.now;
        global_engine_metrics().step_duration.observe(std::chrono::duration<double>(msg.now - began).count());
        publish(*s->sched, *st);
        if (!msg.outs.empty() || !msg.first_scheduled.empty()) self->send(output, std::move(msg));
      },
      [=](submit_msg& m) {
        --st->num_pending;
        sched_request_in in;
        in.rid = m.rid;
        in.prompt = std::move(m.prompt);
        in.params = m.params;
        in.priority = m.priority;
        in.seed = m.seed;
        in.eos_ids = eos_ids;
        if (st->dead) {
          self->send(output, abort_msg{m.rid});
          return;
        }
        if (!s->sched->add(std::move(in))) {
          self->send(output, abort_msg{m.rid});
          return;
        }
        publish(*s->sched, *st);
        (*kick)();
      },
      [=](abort_msg& m) {
        s->sched->abort(m.rid);
        self->send(output, m);
        publish(*s->sched, *st);
      },
      [=](finish_seqs_msg& m) {
        for (int64_t id : m.seq_ids) s->sched->finish_sequence(id);
        publish(*s->sched, *st);
      },
      [=](worker_msg& m) {
        const bool restart = static_cast<bool>(s->worker) || s->sched->step_in_flight() || s->epoch > 0;
        s->epoch = m.epoch;
        s->worker = m.worker;
        s->sent.clear();
        s->unflushed = false;
        if (restart) s->sched->reset_worker(m.kv_lost);
        if (!s->worker) {
          // No worker any more: every live request fails.
          self->send(output, caf::close_atom::value);
          return;
        }
        publish(*s->sched, *st);
        (*kick)();
      },
      [=](caf::get_atom) { return s->sched->idle_and_clean(); },
  };
}

caf::behavior output_actor(caf::event_based_actor* self, const tokenizer* tok,
                           std::shared_ptr<shared_state> st) {
  auto proc = std::make_shared<output_processor>(tok);
  (void)self;
  return {
      [=](submit_msg& m) {
        auto sink = std::move(m.sink);
        std::string id = m.id;
        // Unregister the client id once the request has finished, so it can be reused.
        request_sink wrapped = [st, sink, id](const request_event& ev) {
          if (ev.finished) {
            {
              std::lock_guard<std::mutex> lk(st->ids_mu);
              st->ids.erase(id);
            }
            --st->num_requests;
          }
          sink(ev);
        };
        proc->add(m.rid, m.id, m.params, m.prompt, std::move(wrapped), m.arrival);
      },
      [=](outputs_msg& m) {
        for (size_t i = 0; i < m.first_scheduled.size(); ++i) {
          proc->mark_scheduled(m.first_scheduled[i], m.scheduled_at,
                               i < m.first_cached.size() ? m.first_cached[i] : 0);
        }
        auto stops = proc->process(m.outs, m.now);
        if (!stops.empty())
          self->send(caf::actor_cast<caf::actor>(self->current_sender()), finish_seqs_msg{stops});
      },
      [=](abort_msg& m) { proc->abort(m.rid, clock::now()); },
      [=](caf::close_atom) {
        // The engine is dead: fail every live request.
        proc->fail_all(clock::now(), "the model worker failed repeatedly and was not restarted");
      },
  };
}

}  // namespace troupe::actors
