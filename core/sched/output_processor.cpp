#include "core/sched/output_processor.h"

#include "core/error.h"
#include "core/metrics.h"
#include "core/stop_checker.h"
#include "core/tokenizer.h"

namespace troupe {

struct output_processor::seq_state {
  std::unique_ptr<incremental_detokenizer> detok;
  std::unique_ptr<stop_checker> stops;
  bool finished = false;
  int32_t num_tokens = 0;
};

struct output_processor::req_state {
  uint64_t rid = 0;
  std::string id;
  std::shared_ptr<const sampling_params> params;
  std::vector<int32_t> prompt;
  request_sink sink;
  engine_clock::time_point arrival, scheduled, first_token, last_token;
  bool has_scheduled = false, has_first = false;
  std::vector<seq_state> seqs;
  int32_t live = 0;
  request_usage usage;
  uint64_t event_step = 0;  // the last process() call that gave this request an event slot
  size_t event_slot = 0;
};

output_processor::output_processor(const tokenizer* tok) : tok_(tok) {}
output_processor::~output_processor() = default;

void output_processor::add(uint64_t rid, std::string id, std::shared_ptr<const sampling_params> params,
                           const std::vector<int32_t>& prompt, request_sink sink,
                           engine_clock::time_point arrival) {
  auto r = std::make_unique<req_state>();
  r->rid = rid;
  r->id = std::move(id);
  r->params = std::move(params);
  r->prompt = prompt;
  r->sink = std::move(sink);
  r->arrival = arrival;
  r->seqs.resize(r->params->n);
  for (auto& s : r->seqs) {
    if (tok_) {
      s.detok = std::make_unique<incremental_detokenizer>(*tok_, true);
      s.detok->set_prompt(prompt);
    }
    s.stops = std::make_unique<stop_checker>(r->params->stop);
  }
  r->live = r->params->n;
  r->usage.prompt_tokens = static_cast<int32_t>(prompt.size());
  global_engine_metrics().prompt_tokens.inc(prompt.size());
  reqs_[rid] = std::move(r);
}

void output_processor::mark_scheduled(uint64_t rid, engine_clock::time_point when, int32_t cached_tokens) {
  auto it = reqs_.find(rid);
  if (it == reqs_.end() || it->second->has_scheduled) return;
  it->second->has_scheduled = true;
  it->second->scheduled = when;
  it->second->usage.cached_prompt_tokens = cached_tokens;
  global_engine_metrics().queue_time.observe(
      std::chrono::duration<double>(when - it->second->arrival).count());
}

void output_processor::finish_request(req_state& r, request_event& ev, engine_clock::time_point now) {
  ev.finished = true;
  auto secs = [](engine_clock::duration d) { return std::chrono::duration<double>(d).count(); };
  ev.timing.queue_s = r.has_scheduled ? secs(r.scheduled - r.arrival) : secs(now - r.arrival);
  ev.timing.ttft_s = r.has_first ? secs(r.first_token - r.arrival) : 0;
  ev.timing.total_s = secs(now - r.arrival);
  global_engine_metrics().e2e_latency.observe(ev.timing.total_s);
}

std::vector<int64_t> output_processor::process(const std::vector<seq_output>& outs,
                                               engine_clock::time_point now) {
  std::vector<int64_t> to_finish;
  auto& m = global_engine_metrics();
  // Group by request while keeping the step's order: one event per request. Events live in slots reused
  // from step to step (their vectors keep their capacity), so a steady decode step allocates nothing here.
  ++step_;
  size_t used = 0;
  for (const auto& o : outs) {
    auto it = reqs_.find(o.rid);
    if (it == reqs_.end()) continue;
    req_state& r = *it->second;
    seq_state& s = r.seqs.at(o.index);
    if (s.finished) continue;
    if (r.event_step != step_) {
      r.event_step = step_;
      r.event_slot = used++;
      if (slots_.size() < used) slots_.emplace_back();
      event_slot& slot = slots_[r.event_slot];
      slot.req = &r;
      slot.ndeltas = 0;
      slot.ev.id = r.id;
      slot.ev.finished = false;
      slot.ev.error.reset();
      slot.ev.timing = {};
    }
    event_slot& slot = slots_[r.event_slot];
    request_event& ev = slot.ev;
    sequence_delta* d = nullptr;
    for (size_t k = 0; k < slot.ndeltas; ++k) {
      if (ev.deltas[k].index == o.index) d = &ev.deltas[k];
    }
    if (!d) {
      if (ev.deltas.size() <= slot.ndeltas) ev.deltas.emplace_back();
      d = &ev.deltas[slot.ndeltas++];
      d->index = o.index;
      d->token_ids.clear();
      d->text.clear();
      d->token_logprobs.clear();
      d->top_logprobs.clear();
      d->finish_reason.reset();
    }
    if (!r.has_first) {
      r.has_first = true;
      r.first_token = now;
      m.ttft.observe(std::chrono::duration<double>(now - r.arrival).count());
    } else if (o.index == 0) {
      m.inter_token_latency.observe(std::chrono::duration<double>(now - r.last_token).count());
    }
    if (o.index == 0) r.last_token = now;
    d->token_ids.push_back(o.token);
    if (r.params->need_logprob || r.params->logprobs > 0) d->token_logprobs.push_back(o.logprob);
    if (r.params->logprobs > 0) d->top_logprobs.push_back(o.top);
    ++s.num_tokens;
    ++r.usage.completion_tokens;
    const std::string* reason = o.finish_reason ? &*o.finish_reason : nullptr;
    static const std::string kStop = "stop";
    const bool is_eos_stop = reason && *reason == kStop && tok_ && tok_->is_special(o.token);
    if (s.detok && !is_eos_stop) {
      auto u = s.stops->push(s.detok->push(o.token));
      d->text += u.emit;
      if (u.stopped) {
        if (!reason) to_finish.push_back(o.seq_id);  // the scheduler still thinks it is running
        reason = &kStop;
      }
    }
    if (reason) {
      if (s.detok && !s.stops->stopped()) {
        auto u = s.stops->push(s.detok->flush());
        d->text += u.emit;
        if (!u.stopped) d->text += s.stops->flush();
      }
      d->finish_reason = *reason;
      s.finished = true;
      --r.live;
      m.requests.with({*reason}).inc();
    }
  }
  uint64_t generated = 0;
  for (size_t i = 0; i < used; ++i) {
    event_slot& slot = slots_[i];
    req_state& r = *slot.req;
    request_event& ev = slot.ev;
    // A slot last used by a request with more sequences keeps extra deltas: drop them (rare: n > 1).
    if (ev.deltas.size() > slot.ndeltas) ev.deltas.resize(slot.ndeltas);
    for (const auto& d : ev.deltas) generated += d.token_ids.size();
    ev.usage = r.usage;
    const bool done = r.live == 0;
    if (done) finish_request(r, ev, now);
    r.sink(ev);
    if (done) reqs_.erase(r.rid);
  }
  if (generated) m.generation_tokens.inc(generated);
  return to_finish;
}

void output_processor::abort(uint64_t rid, engine_clock::time_point now, const std::string& err) {
  auto it = reqs_.find(rid);
  if (it == reqs_.end()) return;
  req_state& r = *it->second;
  request_event ev;
  ev.id = r.id;
  const std::string reason = err.empty() ? "abort" : "error";
  for (size_t i = 0; i < r.seqs.size(); ++i) {
    if (r.seqs[i].finished) continue;
    sequence_delta d;
    d.index = static_cast<int32_t>(i);
    d.finish_reason = reason;
    ev.deltas.push_back(std::move(d));
    global_engine_metrics().requests.with({reason}).inc();
  }
  if (!err.empty()) ev.error = err;
  ev.usage = r.usage;
  finish_request(r, ev, now);
  request_sink sink = r.sink;
  reqs_.erase(it);
  sink(ev);
}

}  // namespace troupe

namespace troupe {
void output_processor::fail_all(engine_clock::time_point now, const std::string& error) {
  std::vector<uint64_t> rids;
  for (const auto& [rid, r] : reqs_) rids.push_back(rid);
  for (uint64_t rid : rids) abort(rid, now, error);
}
}  // namespace troupe
