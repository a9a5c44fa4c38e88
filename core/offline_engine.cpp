#include "core/offline_engine.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>

#include "core/error.h"
#include "core/stop_checker.h"
#include "core/tokenizer.h"

namespace troupe {

struct offline_engine::sequence {
  size_t index = 0;
  const sampling_params* params = nullptr;
  std::vector<int32_t> prompt;
  std::vector<int32_t> tokens;  // prompt + output
  int32_t num_computed = 0;     // tokens whose K/V are in the cache
  std::vector<int32_t> blocks;
  uint64_t seed = 0;
  bool finished = false;
  std::unique_ptr<incremental_detokenizer> detok;
  std::unique_ptr<stop_checker> stops;
  generate_output out;
};

offline_engine::offline_engine(model_runner& runner, const tokenizer* tok, engine_options opt)
    : runner_(runner), tok_(tok), opt_(opt), pool_(runner.num_kv_blocks()) {
  eos_ids_ = runner.config().eos_token_ids;
  if (tok_ && tok_->eos_id() &&
      std::find(eos_ids_.begin(), eos_ids_.end(), *tok_->eos_id()) == eos_ids_.end()) {
    eos_ids_.push_back(*tok_->eos_id());
  }
  TROUPE_CHECK_GT(opt_.max_num_batched_tokens, 0);
  max_len_ = opt_.max_model_len > 0 ? opt_.max_model_len : runner.config().max_model_len();
}

void offline_engine::ensure_blocks(sequence& s, int32_t num_tokens) {
  const int32_t bs = runner_.block_size();
  const size_t need = static_cast<size_t>((num_tokens + bs - 1) / bs);
  while (s.blocks.size() < need) {
    int32_t id = pool_.allocate();
    if (id < 0) {
      throw error("KV cache too small: " + std::to_string(pool_.num_blocks()) + " blocks of " +
                  std::to_string(bs) + " tokens cannot hold this batch (raise --num-kv-blocks)");
    }
    s.blocks.push_back(id);
  }
}

void offline_engine::free_blocks(sequence& s) {
  for (int32_t b : s.blocks) pool_.release(b);
  s.blocks.clear();
}

// One forward over the given sequences, computing n_compute[i] new tokens of each; logits come back for
// every sequence's last computed token.
void offline_engine::run_step(std::vector<sequence*>& seqs, std::vector<int32_t>& n_compute,
                              std::vector<float>& logits) {
  const int32_t bs = runner_.block_size();
  std::vector<int32_t> ids, pos, slots, qs{0}, ctx, rows, prompt_lens;
  int32_t max_blocks = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    sequence& s = *seqs[i];
    const int32_t end = s.num_computed + n_compute[i];
    ensure_blocks(s, end);
    for (int32_t p = s.num_computed; p < end; ++p) {
      ids.push_back(s.tokens[p]);
      pos.push_back(p);
      slots.push_back(s.blocks[p / bs] * bs + p % bs);
    }
    qs.push_back(static_cast<int32_t>(ids.size()));
    ctx.push_back(end);
    prompt_lens.push_back(static_cast<int32_t>(s.prompt.size()));
    rows.push_back(static_cast<int32_t>(ids.size()) - 1);
    max_blocks = std::max<int32_t>(max_blocks, static_cast<int32_t>(s.blocks.size()));
  }
  std::vector<int32_t> tables(seqs.size() * max_blocks, 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    std::copy(seqs[i]->blocks.begin(), seqs[i]->blocks.end(), tables.begin() + i * max_blocks);
  }
  forward_batch b;
  b.token_ids = ids.data();
  b.positions = pos.data();
  b.slot_mapping = slots.data();
  b.query_start = qs.data();
  b.context_lens = ctx.data();
  b.block_tables = tables.data();
  b.logits_rows = rows.data();
  b.prompt_lens = prompt_lens.data();
  b.num_tokens = static_cast<int32_t>(ids.size());
  b.num_seqs = static_cast<int32_t>(seqs.size());
  b.max_blocks_per_seq = max_blocks;
  b.num_logits = static_cast<int32_t>(rows.size());
  logits.resize(static_cast<size_t>(rows.size()) * runner_.config().vocab_size);
  runner_.forward(b, logits.data());
  for (size_t i = 0; i < seqs.size(); ++i) seqs[i]->num_computed += n_compute[i];
}

std::vector<generate_output> offline_engine::generate(const std::vector<generate_request>& requests) {
  const model_config& c = runner_.config();
  const int64_t max_len = max_len_;
  std::string problems;
  for (size_t r = 0; r < requests.size(); ++r) {
    const auto& req = requests[r];
    std::vector<std::string> errs = req.params.validate(c.vocab_size);
    if (req.prompt_ids.empty()) errs.push_back("the prompt is empty");
    if (static_cast<int64_t>(req.prompt_ids.size()) >= max_len) {
      errs.push_back("the prompt has " + std::to_string(req.prompt_ids.size()) +
                     " tokens but the model's context is " + std::to_string(max_len));
    }
    for (int32_t id : req.prompt_ids) {
      if (id < 0 || id >= c.vocab_size) {
        errs.push_back("prompt token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                       std::to_string(c.vocab_size - 1) + ")");
        break;
      }
    }
    if (!tok_ && !req.params.stop.empty()) errs.push_back("stop strings need a tokenizer");
    for (const auto& e : errs)
      problems += (problems.empty() ? "" : "; ") + ("request " + std::to_string(r) + ": " + e);
  }
  if (!problems.empty()) throw error(problems);

  std::vector<std::unique_ptr<sequence>> all;
  std::random_device rd;
  for (size_t r = 0; r < requests.size(); ++r) {
    auto s = std::make_unique<sequence>();
    s->index = r;
    s->params = &requests[r].params;
    s->prompt = requests[r].prompt_ids;
    s->tokens = s->prompt;
    s->seed = s->params->seed ? *s->params->seed : (static_cast<uint64_t>(rd()) << 32) ^ rd();
    s->out.seed = s->seed;
    if (tok_) {
      s->detok = std::make_unique<incremental_detokenizer>(*tok_, true);
      s->detok->set_prompt(s->prompt);
      s->stops = std::make_unique<stop_checker>(s->params->stop);
    }
    all.push_back(std::move(s));
  }

  // Whatever happens (an error mid-batch), every block goes back to the pool.
  struct release_all {
    offline_engine* e;
    std::vector<std::unique_ptr<sequence>>* seqs;
    ~release_all() {
      for (auto& s : *seqs) e->free_blocks(*s);
    }
  } guard{this, &all};

  const sampler smp;
  std::vector<float> logits, scratch;
  auto finish = [&](sequence& s, const std::string& reason) {
    s.finished = true;
    s.out.finish_reason = reason;
    if (s.detok && reason != "stop_string") {
      std::string tail = s.detok->flush();
      auto u = s.stops->push(tail);
      s.out.text += u.emit;
      if (u.stopped) {
        s.out.finish_reason = "stop";
      } else {
        s.out.text += s.stops->flush();
      }
    }
    if (s.out.finish_reason == "stop_string") s.out.finish_reason = "stop";
    free_blocks(s);
  };
  auto accept = [&](sequence& s, const float* row) {
    const sampling_params& p = *s.params;
    std::vector<int32_t> output(s.tokens.begin() + static_cast<std::ptrdiff_t>(s.prompt.size()),
                                s.tokens.end());
    sample_result res = smp.sample(row, c.vocab_size, p, s.prompt, output, s.seed, output.size(), scratch);
    s.tokens.push_back(res.id);
    s.out.ids.push_back(res.id);
    s.out.token_logprobs.push_back(res.logprob);
    if (p.logprobs > 0) {
      auto top = res.top;
      bool found =
          std::any_of(top.begin(), top.end(), [&](const token_logprob& t) { return t.id == res.id; });
      if (!found) top.push_back({res.id, res.logprob});
      s.out.logprobs.push_back(std::move(top));
    }
    const bool is_eos =
        !p.ignore_eos && std::find(eos_ids_.begin(), eos_ids_.end(), res.id) != eos_ids_.end();
    const bool is_stop_id =
        std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), res.id) != p.stop_token_ids.end();
    if (s.detok && !is_eos) {
      auto u = s.stops->push(s.detok->push(res.id));
      s.out.text += u.emit;
      if (u.stopped) return finish(s, "stop_string");
    }
    if (is_eos || is_stop_id) return finish(s, "stop");
    if (static_cast<int32_t>(s.out.ids.size()) >= p.max_tokens) return finish(s, "length");
    if (static_cast<int64_t>(s.tokens.size()) >= max_len) return finish(s, "length");
  };

  for (;;) {
    std::vector<sequence*> step;
    std::vector<int32_t> n_compute;
    int32_t budget = opt_.max_num_batched_tokens;
    // Decodes first (one token each), then prefill chunks with what is left of the budget.
    for (auto& s : all) {
      if (s->finished) continue;
      const int32_t pending = static_cast<int32_t>(s->tokens.size()) - s->num_computed;
      if (pending == 1) {
        step.push_back(s.get());
        n_compute.push_back(1);
        --budget;
      }
    }
    for (auto& s : all) {
      if (s->finished || budget <= 0) continue;
      const int32_t pending = static_cast<int32_t>(s->tokens.size()) - s->num_computed;
      if (pending > 1) {
        const int32_t n = std::min(pending, budget);
        step.push_back(s.get());
        n_compute.push_back(n);
        budget -= n;
      }
    }
    if (step.empty()) break;
    run_step(step, n_compute, logits);
    for (size_t i = 0; i < step.size(); ++i) {
      sequence& s = *step[i];
      if (s.num_computed < static_cast<int32_t>(s.tokens.size())) continue;  // prompt not done yet
      accept(s, logits.data() + i * static_cast<size_t>(c.vocab_size));
    }
  }

  std::vector<generate_output> outs;
  for (auto& s : all) outs.push_back(std::move(s->out));
  return outs;
}

score_output offline_engine::score(const std::vector<int32_t>& ids, int32_t top_k) {
  const model_config& c = runner_.config();
  if (ids.size() < 2) throw error("score needs at least two token ids");
  if (static_cast<int64_t>(ids.size()) > max_len_) {
    throw error("score: " + std::to_string(ids.size()) + " ids exceed the model's context of " +
                std::to_string(max_len_));
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= c.vocab_size) {
      throw error("token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                  std::to_string(c.vocab_size - 1) + ")");
    }
  }
  if (top_k < 0 || top_k > c.vocab_size) throw error("--top must be in 0.." + std::to_string(c.vocab_size));
  sequence s;
  s.tokens = ids;
  const int32_t n = static_cast<int32_t>(ids.size());
  const int32_t bs = runner_.block_size();
  score_output out;
  std::vector<float> logits;
  struct guard {
    offline_engine* e;
    sequence* s;
    ~guard() { e->free_blocks(*s); }
  } g{this, &s};
  // Whole sequence (chunked by the token budget), logits at every position.
  while (s.num_computed < n) {
    const int32_t chunk = std::min(n - s.num_computed, opt_.max_num_batched_tokens);
    const int32_t end = s.num_computed + chunk;
    ensure_blocks(s, end);
    std::vector<int32_t> pos, slots, rows, toks(ids.begin() + s.num_computed, ids.begin() + end);
    for (int32_t p = s.num_computed; p < end; ++p) {
      pos.push_back(p);
      slots.push_back(s.blocks[p / bs] * bs + p % bs);
      rows.push_back(p - s.num_computed);
    }
    int32_t qs[2] = {0, chunk};
    int32_t ctx = end;
    int32_t prompt_len = n;  // teacher forcing: the whole sequence is the prompt
    forward_batch b;
    b.prompt_lens = &prompt_len;
    b.token_ids = toks.data();
    b.positions = pos.data();
    b.slot_mapping = slots.data();
    b.query_start = qs;
    b.context_lens = &ctx;
    b.block_tables = s.blocks.data();
    b.logits_rows = rows.data();
    b.num_tokens = chunk;
    b.num_seqs = 1;
    b.max_blocks_per_seq = static_cast<int32_t>(s.blocks.size());
    b.num_logits = chunk;
    logits.resize(static_cast<size_t>(chunk) * c.vocab_size);
    runner_.forward(b, logits.data());
    for (int32_t r = 0; r < chunk; ++r) {
      const int32_t t = s.num_computed + r;  // this row predicts ids[t + 1]
      if (t + 1 >= n) break;
      std::vector<float> lp =
          log_softmax(logits.data() + static_cast<size_t>(r) * c.vocab_size, c.vocab_size);
      out.logprobs.push_back(lp[ids[t + 1]]);
      if (top_k > 0) {
        std::vector<int32_t> idx(lp.size());
        for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int32_t>(i);
        std::partial_sort(idx.begin(), idx.begin() + top_k, idx.end(),
                          [&](int32_t a, int32_t b2) { return lp[a] != lp[b2] ? lp[a] > lp[b2] : a < b2; });
        std::vector<token_logprob> top;
        for (int32_t i = 0; i < top_k; ++i) top.push_back({idx[i], lp[idx[i]]});
        out.top.push_back(std::move(top));
      }
    }
    s.num_computed = end;
  }
  double sum = 0;
  for (float x : out.logprobs) sum += x;
  out.perplexity = std::exp(-sum / static_cast<double>(out.logprobs.size()));
  return out;
}

}  // namespace troupe
