#include "actors/engine.h"

#include <random>
#include <thread>

#include "actors/messages.h"
#include "actors/scheduler_actor.h"
#include "actors/shared_state.h"
#include "actors/worker_actor.h"
#include "core/error.h"
#include "core/tokenizer.h"

namespace troupe {

using namespace actors;

namespace {

// Intake: registers the request with the output actor, then queues it in the scheduler. Both sends come
// from here, so the output actor always knows a request before its first output, and an abort (also
// routed through here) never overtakes its submit.
caf::behavior intake_actor(caf::event_based_actor* self, caf::actor scheduler, caf::actor output) {
  return {
      [=](submit_msg& m) {
        submit_msg for_sched = m;
        for_sched.sink = nullptr;
        self->send(output, std::move(m));
        self->send(scheduler, std::move(for_sched));
      },
      [=](abort_msg& m) { self->send(scheduler, m); },
  };
}

}  // namespace

struct actor_engine::system {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::actor output, scheduler, intake, supervisor;
};

actor_engine::actor_engine(model_runner& runner, const tokenizer* tok, actor_engine_options opt)
    : cfg_(runner.config()),
      num_kv_blocks_(runner.num_kv_blocks()),
      block_size_(runner.block_size()),
      tok_(tok),
      opt_(std::move(opt)),
      state_(std::make_shared<shared_state>()),
      sys_(std::make_unique<system>()) {
  const model_config& c = runner.config();
  if (opt_.sched.max_model_len <= 0) opt_.sched.max_model_len = c.max_model_len();
  // A sequence longer than the whole KV cache could never be scheduled and would block the queue behind
  // it: the context the engine serves is at most what the cache holds (vLLM refuses to start instead).
  const int64_t kv_tokens = static_cast<int64_t>(runner.num_kv_blocks()) * runner.block_size();
  if (opt_.sched.max_model_len > kv_tokens) opt_.sched.max_model_len = kv_tokens;
  if (opt_.model_name.empty()) opt_.model_name = "troupe";
  eos_ids_ = c.eos_token_ids;
  if (tok_ && tok_->eos_id() &&
      std::find(eos_ids_.begin(), eos_ids_.end(), *tok_->eos_id()) == eos_ids_.end()) {
    eos_ids_.push_back(*tok_->eos_id());
  }
  if (opt_.sched.preemption == preemption_mode::swap) {
    if (opt_.sched.num_host_blocks <= 0) opt_.sched.num_host_blocks = runner.num_kv_blocks();
    runner.reserve_host_blocks(opt_.sched.num_host_blocks);
  }
  if (opt_.actor_threads > 0) sys_->cfg.set("scheduler.max-threads", static_cast<size_t>(opt_.actor_threads));
  sys_->sys = std::make_unique<caf::actor_system>(sys_->cfg);
  auto& sys = *sys_->sys;
  state_->num_blocks = runner.num_kv_blocks();
  sys_->output = sys.spawn(output_actor, tok_, state_);
  sys_->scheduler =
      sys.spawn<caf::detached>(scheduler_actor, opt_.sched, runner.num_kv_blocks(), runner.block_size(),
                               opt_.prefix_caching, eos_ids_, state_, sys_->output);
  sys_->intake = sys.spawn(intake_actor, sys_->scheduler, sys_->output);
  sys_->supervisor = sys.spawn(supervisor_actor, &runner, state_, sys_->scheduler, opt_.max_worker_restarts);
}

actor_engine::~actor_engine() {
  state_->dead = true;
  for (auto* a : {&sys_->supervisor, &sys_->intake, &sys_->scheduler, &sys_->output}) {
    caf::anon_send_exit(*a, caf::exit_reason::user_shutdown);
  }
  // Drop our strong handles first: the system's destructor waits for every actor object to be destroyed.
  sys_->supervisor = sys_->intake = sys_->scheduler = sys_->output = caf::actor{};
  sys_->sys.reset();  // joins the actor threads (the detached worker finishes its step first)
}

submit_result actor_engine::submit(engine_request req, request_sink sink) {
  const model_config& c = cfg_;
  submit_result res;
  if (state_->dead) return {submit_status::unavailable, "the engine has no working model worker"};
  std::vector<std::string> problems = req.params.validate(c.vocab_size);
  const int64_t max_len = opt_.sched.max_model_len;
  if (req.id.empty()) problems.push_back("the request id is empty");
  if (req.prompt_ids.empty()) problems.push_back("the prompt is empty");
  for (int32_t id : req.prompt_ids) {
    if (id < 0 || id >= c.vocab_size) {
      problems.push_back("prompt token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                         std::to_string(c.vocab_size - 1) + ")");
      break;
    }
  }
  const int64_t plen = static_cast<int64_t>(req.prompt_ids.size());
  if (plen >= max_len) {
    problems.push_back("the prompt has " + std::to_string(plen) + " tokens; the model's context is " +
                       std::to_string(max_len));
  } else if (plen + req.params.max_tokens > max_len) {
    problems.push_back("prompt (" + std::to_string(plen) + " tokens) + max_tokens (" +
                       std::to_string(req.params.max_tokens) + ") exceeds the model's context of " +
                       std::to_string(max_len));
  }
  if (!problems.empty()) {
    res.status = submit_status::invalid;
    for (const auto& p : problems) res.message += (res.message.empty() ? "" : "; ") + p;
    return res;
  }
  if (state_->num_waiting + state_->num_pending >= opt_.sched.max_waiting_requests) {
    return {submit_status::queue_full,
            "the waiting queue is full (" + std::to_string(opt_.sched.max_waiting_requests) + " requests)"};
  }
  const uint64_t rid = state_->next_rid++;
  {
    std::lock_guard<std::mutex> lk(state_->ids_mu);
    if (!state_->ids.emplace(req.id, rid).second) {
      return {submit_status::invalid, "a request with id '" + req.id + "' is already running"};
    }
  }
  ++state_->num_pending;
  ++state_->num_requests;
  submit_msg m;
  m.rid = rid;
  m.id = req.id;
  m.prompt = std::move(req.prompt_ids);
  m.priority = req.priority;
  if (req.params.seed) {
    m.seed = *req.params.seed;
  } else {
    static thread_local std::mt19937_64 rng(std::random_device{}());
    m.seed = rng();
  }
  m.params = std::make_shared<const sampling_params>(std::move(req.params));
  m.sink = std::move(sink);
  m.arrival = clock::now();
  caf::anon_send(sys_->intake, std::move(m));
  return res;
}

void actor_engine::abort(const std::string& id) {
  uint64_t rid = 0;
  {
    std::lock_guard<std::mutex> lk(state_->ids_mu);
    auto it = state_->ids.find(id);
    if (it == state_->ids.end()) return;
    rid = it->second;
  }
  caf::anon_send(sys_->intake, abort_msg{rid});
}

engine_stats actor_engine::stats() const {
  engine_stats s;
  s.num_running = state_->num_running;
  s.num_waiting = state_->num_waiting + state_->num_pending;
  s.num_kv_blocks = state_->num_blocks;
  s.num_kv_blocks_used = state_->num_blocks_used;
  s.kv_usage = s.num_kv_blocks ? static_cast<double>(s.num_kv_blocks_used) / s.num_kv_blocks : 0.0;
  s.prefix_cache_queries = state_->prefix_queries;
  s.prefix_cache_hits = state_->prefix_hits;
  s.preemptions = state_->preemptions;
  return s;
}

model_info actor_engine::info() const {
  model_info i;
  i.name = opt_.model_name;
  i.vocab_size = cfg_.vocab_size;
  i.max_model_len = opt_.sched.max_model_len;
  return i;
}

bool actor_engine::healthy() const { return !state_->dead; }

void actor_engine::crash_worker_next_step() { state_->crash_next_step = true; }

int32_t actor_engine::worker_restarts() const { return state_->worker_restarts; }

void actor_engine::replace_runner(model_runner& runner) {
  const model_config& c = runner.config();
  if (c.vocab_size != cfg_.vocab_size || c.num_layers != cfg_.num_layers || c.hidden_size != cfg_.hidden_size)
    throw error("replace_runner: the new runner serves a different model");
  if (runner.num_kv_blocks() != num_kv_blocks_ || runner.block_size() != block_size_) {
    throw error("replace_runner: the new runner has " + std::to_string(runner.num_kv_blocks()) +
                " KV blocks of " + std::to_string(runner.block_size()) + " tokens; the engine's cache has " +
                std::to_string(num_kv_blocks_) + " of " + std::to_string(block_size_));
  }
  caf::scoped_actor self{*sys_->sys};
  bool done = false;
  std::string why;
  self->request(sys_->supervisor, caf::infinite, actors::replace_worker_msg{&runner})
      .receive([&](bool ok) { done = ok; }, [&](caf::error& e) { why = caf::to_string(e); });
  if (!done)
    throw error("replace_runner: the supervisor did not replace the worker" +
                (why.empty() ? "" : ": " + why));
}

bool actor_engine::wait_idle(std::chrono::milliseconds timeout) const {
  const auto deadline = clock::now() + timeout;
  caf::scoped_actor self{*sys_->sys};
  while (clock::now() < deadline) {
    if (state_->num_requests == 0 && state_->num_pending == 0) {
      bool clean = false;
      self->request(sys_->scheduler, std::chrono::seconds(10), caf::get_atom::value)
          .receive([&](bool ok) { clean = ok; }, [&](caf::error&) { clean = false; });
      if (clean) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

}  // namespace troupe
