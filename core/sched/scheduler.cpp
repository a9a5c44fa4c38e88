#include "core/sched/scheduler.h"

#include <algorithm>

#include "core/error.h"
#include "core/rng.h"

namespace troupe {

scheduler::scheduler(const scheduler_config& cfg, int32_t num_blocks, int32_t block_size, bool prefix_caching)
    : cfg_(cfg), kv_(num_blocks, block_size, prefix_caching) {
  TROUPE_CHECK_GT(cfg_.max_model_len, 0);
  TROUPE_CHECK_GT(cfg_.max_num_batched_tokens, 0);
  TROUPE_CHECK_GT(cfg_.max_num_seqs, 0);
  if (cfg_.preemption == preemption_mode::swap && cfg_.num_host_blocks > 0) {
    host_pool_ = std::make_unique<block_pool>(cfg_.num_host_blocks);
  }
}

bool scheduler::add(sched_request_in in) {
  TROUPE_CHECK(in.params != nullptr);
  TROUPE_CHECK(!requests_.count(in.rid)) << "request" << in.rid << "already queued";
  if (static_cast<int32_t>(waiting_.size()) >= cfg_.max_waiting_requests) return false;
  auto req = std::make_unique<request>();
  req->in = std::move(in);
  auto seq = std::make_unique<sequence>();
  seq->id = next_seq_id_++;
  seq->req = req.get();
  seq->index = 0;
  seq->tokens = req->in.prompt;
  seq->seed = rng::derive_seed(req->in.seed, 0);
  seq->order = next_order_++;
  req->seq_ids.push_back(seq->id);
  req->num_live = 1;
  waiting_[key_of(*seq)] = seq.get();
  seqs_[seq->id] = std::move(seq);
  requests_[req->in.rid] = std::move(req);
  return true;
}

void scheduler::end_sequence(sequence& s) {
  if (s.finished) return;
  s.finished = true;
  if (s.running)
    leave_running(s);
  else
    waiting_.erase(key_of(s));
  if (s.in_kv) kv_.free(s.id);
  s.in_kv = false;
  if (host_pool_) {
    for (int32_t slot : s.host_slots) host_pool_->release(slot);
  }
  s.host_slots.clear();
  if (s.worker_knows) dropped_.push_back(s.id);
  s.worker_knows = false;
  request* r = s.req;
  // A prompt that ends before its fork (abort, stop) will never have children.
  if (!r->forked && r->in.params->n > 1) r->forked = true;
  if (--r->num_live == 0) {
    // Every sequence ended: forget the request (sequences go with it).
    const uint64_t rid = r->in.rid;
    for (int64_t id : r->seq_ids) seqs_.erase(id);
    requests_.erase(rid);
  }
}

bool scheduler::abort(uint64_t rid) {
  auto it = requests_.find(rid);
  if (it == requests_.end()) return false;
  request* r = it->second.get();
  r->forked = r->in.params->n > 1;  // no children will be created any more
  const std::vector<int64_t> ids = r->seq_ids;
  r->num_live = 0;
  for (int64_t id : ids) {
    auto s = seqs_.find(id);
    if (s != seqs_.end() && !s->second->finished) ++r->num_live;
  }
  if (r->num_live == 0) {
    requests_.erase(it);
    return true;
  }
  for (int64_t id : ids) {
    auto s = seqs_.find(id);
    if (s != seqs_.end()) end_sequence(*s->second);  // the last one erases the request
  }
  return true;
}

void scheduler::finish_sequence(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it != seqs_.end()) end_sequence(*it->second);
}

void scheduler::preempt(sequence& s) {
  TROUPE_CHECK(s.running) << "sequence" << s.id;
  // Only a plan with nothing in flight preempts (can_plan_ahead): every token is known.
  TROUPE_CHECK_EQ(s.placeholder_at, -1) << "sequence" << s.id;
  leave_running(s);
  ++preemptions_;
  const auto& table = kv_.block_table(s.id);
  bool swapped = false;
  if (cfg_.preemption == preemption_mode::swap && host_pool_ &&
      host_pool_->num_blocks_free() >= static_cast<int32_t>(table.size()) && s.num_computed > 0) {
    // Keep the computed KV on the host; the sequence resumes where it stopped.
    for (int32_t b : table) {
      const int32_t slot = host_pool_->allocate();
      s.host_slots.push_back(slot);
      pending_swap_out_.push_back({b, slot});
    }
    swapped = true;
  }
  kv_.free(s.id);
  s.in_kv = false;
  if (!swapped) s.num_computed = 0;  // recompute: prompt and outputs so far are prefilled again
  s.prefix_counted = false;          // a recompute looks its tokens up again (and counts)
  if (s.worker_knows) dropped_.push_back(s.id);
  s.worker_knows = false;
  s.sent_table.clear();
  waiting_[key_of(s)] = &s;
}

void scheduler::schedule(sequence& s, int32_t n, step_plan& plan) {
  seq_step st;
  st.seq_id = s.id;
  st.start = s.num_computed;
  st.token_offset = static_cast<int32_t>(plan.token_ids.size());
  st.num_tokens = n;
  plan.token_ids.insert(plan.token_ids.end(), s.tokens.begin() + s.num_computed,
                        s.tokens.begin() + s.num_computed + n);
  const int32_t prompt_len = static_cast<int32_t>(s.req->in.prompt.size());
  st.sample = s.num_computed + n == static_cast<int32_t>(s.tokens.size());
  st.output_index = static_cast<int32_t>(s.tokens.size()) - prompt_len;
  if (st.sample) s.draw_step = plan.step;
  if (!s.worker_knows) {
    TROUPE_CHECK_EQ(s.placeholder_at, -1) << "sequence" << s.id;
    st.is_new = true;
    st.prompt = s.req->in.prompt;
    st.outputs.assign(s.tokens.begin() + prompt_len, s.tokens.end());
    st.params = s.req->in.params;
    st.seed = s.seed;
    s.worker_knows = true;
  }
  const auto& table = kv_.block_table(s.id);
  const size_t from = std::min(s.sent_table.size(), static_cast<size_t>(s.num_computed / kv_.block_size()));
  s.sent_table.resize(table.size(), -1);
  for (size_t i = from; i < table.size(); ++i) {
    if (s.sent_table[i] != table[i]) {
      st.table_diff.push_back({static_cast<int32_t>(i), table[i]});
      s.sent_table[i] = table[i];
    }
  }
  st.table_size = static_cast<int32_t>(table.size());
  s.num_computed += n;
  plan.num_tokens += n;
  if (!s.req->started) {
    s.req->started = true;
    first_scheduled_.push_back(s.req->in.rid);
    first_cached_.push_back(st.start);  // a first scheduling starts right after its prefix-cache hit
  }
  // n > 1: the step that finishes the prompt forks the children, which share every block.
  request* r = s.req;
  if (st.sample && !r->forked && r->in.params->n > 1) {
    r->forked = true;
    for (int32_t i = 1; i < r->in.params->n; ++i) {
      auto child = std::make_unique<sequence>();
      child->id = next_seq_id_++;
      child->req = r;
      child->index = i;
      child->tokens = s.tokens;
      child->num_computed = s.num_computed;
      child->seed = rng::derive_seed(r->in.seed, static_cast<uint64_t>(i));
      child->order = s.order;
      child->in_kv = true;
      child->worker_knows = true;
      child->sent_table = s.sent_table;
      child->draw_step = plan.step;
      kv_.fork(s.id, child->id);
      st.fork_children.push_back(child->id);
      st.fork_seeds.push_back(child->seed);
      r->seq_ids.push_back(child->id);
      ++r->num_live;
      enter_running(*child);
      seqs_[child->id] = std::move(child);
    }
  }
  plan.seqs.push_back(std::move(st));
}

void scheduler::enter_running(sequence& s) {
  s.running = true;
  running_[key_of(s)] = &s;
  if (s.req->in.params->has_penalties()) ++num_running_penalized_;
}

void scheduler::leave_running(sequence& s) {
  running_.erase(key_of(s));
  s.running = false;
  if (s.req->in.params->has_penalties()) --num_running_penalized_;
}

bool scheduler::last_draw_in_flight(const sequence& s) const {
  const int32_t outputs = static_cast<int32_t>(s.tokens.size() - s.req->in.prompt.size()) + 1;
  return outputs >= s.req->in.params->max_tokens ||
         static_cast<int64_t>(s.tokens.size()) + 1 >= cfg_.max_model_len;
}

bool scheduler::can_plan_ahead() const {
  // O(1): called once per step. Allocation is not checked here: plan() finds out (memory_short_).
  return cfg_.async_scheduling && num_in_flight_ == 1 && num_running_penalized_ == 0 && !memory_short_ &&
         pending_swap_out_.empty() && pending_swap_in_.empty() &&
         (waiting_.empty() || waiting_.begin()->second->host_slots.empty());
}

step_plan scheduler::plan() {
  // can_plan_ahead() is the caller's policy; what plan() itself needs is at most one step in flight.
  // Planning ahead it never preempts and skips what it cannot do (a sequence whose allocation fails,
  // one with penalties), so a plan is correct even where the policy would have waited.
  TROUPE_CHECK(num_in_flight_ == 0 || (num_in_flight_ == 1 && cfg_.async_scheduling))
      << num_in_flight_ << "steps in flight: wait for a result before planning";
  const bool ahead = num_in_flight_ == 1;
  const uint64_t in_flight = ahead ? flight_at(0).step : 0;
  if (!ahead) memory_short_ = false;
  step_plan plan;
  plan.step = ++step_;
  plan.seqs.reserve(running_.size() + 8);
  int32_t budget = cfg_.max_num_batched_tokens;
  bool preempted = false;

  // 1. Running sequences, highest priority / earliest first. Preemption victims come from the back.
  std::vector<sequence*>& order = order_;  // a member, so that a steady step does not allocate it
  order.clear();
  for (auto& [k, s] : running_) order.push_back(s);
  for (sequence* s : order) {
    if (!s->running || budget <= 0) continue;
    if (ahead && s->draw_step == in_flight) {
      // It draws its next token in the in-flight step: compute that token (a placeholder) at the next
      // position, unless the token ends it by length anyway (never schedule past max_tokens).
      if (last_draw_in_flight(*s) || s->req->in.params->has_penalties()) continue;
      TROUPE_CHECK_EQ(s->placeholder_at, -1) << "sequence" << s->id;
      TROUPE_CHECK_EQ(static_cast<size_t>(s->num_computed), s->tokens.size()) << "sequence" << s->id;
      s->placeholder_at = static_cast<int32_t>(s->tokens.size());
      s->tokens.push_back(kTokenPending);
    }
    int32_t n = std::min<int32_t>(static_cast<int32_t>(s->tokens.size()) - s->num_computed, budget);
    if (n <= 0) continue;
    if (ahead) {
      // No preemption with a step in flight: it would free a sequence whose KV the in-flight step still
      // writes and re-admit it with tokens not known yet.
      if (!kv_.allocate(s->id, s->num_computed, s->num_computed + n, plan.copies)) {
        if (s->placeholder_at >= 0) {
          s->tokens.pop_back();
          s->placeholder_at = -1;
        }
        // Memory is short: admit nobody, and plan the next step with nothing in flight, which may
        // preempt (a sequence skipped here waits one step, not until blocks come back by themselves).
        preempted = true;
        memory_short_ = true;
        continue;
      }
      budget -= n;
      schedule(*s, n, plan);
      continue;
    }
    bool ok = false;
    while (s->running) {
      if (kv_.allocate(s->id, s->num_computed, s->num_computed + n, plan.copies)) {
        ok = true;
        break;
      }
      sequence* victim = std::prev(running_.end())->second;
      preempted = true;
      preempt(*victim);
    }
    if (!ok) continue;
    budget -= n;
    schedule(*s, n, plan);
  }

  // 2. Waiting sequences, unless this step had to preempt (then memory is short: let running ones drain).
  while (!preempted && budget > 0 && !waiting_.empty() &&
         static_cast<int32_t>(running_.size()) < cfg_.max_num_seqs) {
    sequence* s = waiting_.begin()->second;
    const bool resuming_swap = !s->host_slots.empty();
    if (!s->in_kv) {
      if (resuming_swap) {
        kv_.add_sequence(s->id, {});
      } else {
        // A sequence that waits for blocks retries every step: count its prefix lookup once.
        s->num_computed = kv_.add_sequence(s->id, s->tokens, !s->prefix_counted);
        s->prefix_counted = true;
      }
      s->in_kv = true;
    }
    int32_t n = std::min<int32_t>(static_cast<int32_t>(s->tokens.size()) - s->num_computed, budget);
    const int32_t swap_blocks = resuming_swap ? static_cast<int32_t>(s->host_slots.size()) : 0;
    bool ok;
    if (resuming_swap) {
      // Blocks for the swapped-in KV plus this step's tokens.
      ok = kv_.blocks_needed(s->id, 0, s->num_computed + n) <= kv_.pool().num_blocks_free();
      if (ok) {
        std::vector<block_copy> none;
        ok = kv_.allocate(s->id, 0, s->num_computed + n, none);
        const auto& table = kv_.block_table(s->id);
        for (int32_t i = 0; i < swap_blocks; ++i) {
          pending_swap_in_.push_back({s->host_slots[i], table[i]});
          host_pool_->release(s->host_slots[i]);
        }
        s->host_slots.clear();
      }
    } else {
      ok = kv_.allocate(s->id, s->num_computed, s->num_computed + n, plan.copies);
    }
    if (!ok) {
      // Not enough blocks: give back what a prefix lookup took and wait (FCFS: nobody overtakes).
      if (!resuming_swap) {
        kv_.free(s->id);
        s->in_kv = false;
        s->num_computed = 0;
      } else {
        kv_.free(s->id);
        s->in_kv = false;
      }
      break;
    }
    waiting_.erase(waiting_.begin());
    enter_running(*s);
    if (n > 0) {
      budget -= n;
      schedule(*s, n, plan);
    }
  }

  plan.dropped = std::move(dropped_);
  dropped_.clear();
  plan.swap_out = std::move(pending_swap_out_);
  pending_swap_out_.clear();
  plan.swap_in = std::move(pending_swap_in_);
  pending_swap_in_.clear();
  if (!plan.empty()) {
    flight& f = flight_at(num_in_flight_++);
    f.step = plan.step;
    f.computed.clear();
    for (const auto& q : plan.seqs) f.computed.emplace_back(q.seq_id, q.start + q.num_tokens);
  }
  return plan;
}

std::optional<std::string> scheduler::check_stop(const sequence& s, int32_t token) const {
  const sampling_params& p = *s.req->in.params;
  if (!p.ignore_eos) {
    const auto& eos = s.req->in.eos_ids;
    if (std::find(eos.begin(), eos.end(), token) != eos.end()) return std::string("stop");
  }
  if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) != p.stop_token_ids.end()) {
    return std::string("stop");
  }
  const int32_t outputs = static_cast<int32_t>(s.tokens.size() - s.req->in.prompt.size());
  if (outputs >= p.max_tokens) return std::string("length");
  if (static_cast<int64_t>(s.tokens.size()) >= cfg_.max_model_len) return std::string("length");
  return std::nullopt;
}

std::vector<seq_output> scheduler::update(const step_result& result) {
  TROUPE_CHECK_GT(num_in_flight_, 0) << "no step in flight";
  const flight& f = flight_at(0);
  TROUPE_CHECK_EQ(result.step, f.step);
  flight_head_ = (flight_head_ + 1) % 2;
  --num_in_flight_;
  // Tokens before a placeholder are all known: a newer in-flight step may have moved num_computed on,
  // so commit what this step computed.
  for (const auto& [id, computed] : f.computed) {
    auto it = seqs_.find(id);
    if (it == seqs_.end() || it->second->finished || !it->second->in_kv) continue;
    kv_.commit(id, it->second->tokens, computed);
  }
  std::vector<seq_output> outs;
  outs.reserve(result.samples.size());
  for (const auto& smp : result.samples) {
    auto it = seqs_.find(smp.seq_id);
    if (it == seqs_.end()) continue;  // aborted while the step ran
    sequence& s = *it->second;
    if (s.finished || !s.running) continue;
    // The draw of this step; a newer in-flight step computed it as a placeholder (always the older
    // in-flight step's draw: a sequence gets its next placeholder only after this update).
    if (s.placeholder_at >= 0) {
      s.tokens[s.placeholder_at] = smp.token;
      s.placeholder_at = -1;
    } else {
      s.tokens.push_back(smp.token);
    }
    seq_output o;
    o.rid = s.req->in.rid;
    o.index = s.index;
    o.seq_id = s.id;
    o.token = smp.token;
    o.logprob = smp.logprob;
    o.top = smp.top;
    o.finish_reason = check_stop(s, smp.token);
    outs.push_back(std::move(o));
    if (outs.back().finish_reason) end_sequence(s);
  }
  return outs;
}

void scheduler::reset_worker(bool kv_lost) {
  num_in_flight_ = 0;
  flight_head_ = 0;
  // The in-flight steps are lost: their draws are computed again from the known tokens.
  for (auto& [id, s] : seqs_) {
    if (s->placeholder_at >= 0) s->tokens.resize(s->placeholder_at);
    s->placeholder_at = -1;
    s->draw_step = 0;
  }
  std::vector<sequence*> victims;
  for (auto& [k, s] : running_) victims.push_back(s);
  for (auto it = victims.rbegin(); it != victims.rend(); ++it) {
    sequence& s = **it;
    leave_running(s);
    kv_.free(s.id);
    s.in_kv = false;
    s.num_computed = 0;
    s.prefix_counted = false;
    s.worker_knows = false;
    s.sent_table.clear();
    waiting_[key_of(s)] = &s;
  }
  for (auto& [k, s] : waiting_) {
    // Swapped KV lives in the worker's host memory, which died with it.
    if (host_pool_) {
      for (int32_t slot : s->host_slots) host_pool_->release(slot);
    }
    s->host_slots.clear();
    if (kv_lost && s->in_kv) {
      kv_.free(s->id);  // its prefix hits point at blocks the new runner never computed
      s->in_kv = false;
    }
    if (!s->in_kv) {
      s->num_computed = 0;
      s->prefix_counted = false;
    }
  }
  if (kv_lost) kv_.pool().reset_prefix_cache();
  dropped_.clear();
  pending_swap_out_.clear();
  pending_swap_in_.clear();
}

scheduler_stats scheduler::stats() const {
  scheduler_stats st;
  st.num_running = static_cast<int32_t>(running_.size());
  st.num_waiting = static_cast<int32_t>(waiting_.size());
  st.num_requests = static_cast<int32_t>(requests_.size());
  st.num_blocks = kv_.pool().num_blocks();
  st.num_blocks_used = kv_.pool().num_blocks_used();
  st.prefix_queries = kv_.prefix_queries();
  st.prefix_hits = kv_.prefix_hits();
  st.preemptions = preemptions_;
  return st;
}

bool scheduler::idle_and_clean() const {
  kv_.pool().check_invariants();
  return running_.empty() && waiting_.empty() && kv_.num_sequences() == 0 &&
         kv_.pool().num_blocks_used() == 0;
}

}  // namespace troupe
