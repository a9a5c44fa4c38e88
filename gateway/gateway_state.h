// What every connection shares with the server: options, the engine, readiness and in-flight counts.
// Internal to the gateway.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "core/engine_api.h"
#include "core/tokenizer.h"
#include "gateway/auth.h"
#include "gateway/gateway_metrics.h"
#include "gateway/server.h"

namespace troupe::gateway {

struct gateway_state {
  explicit gateway_state(server_options o)
      : opts(std::move(o)),
        auth_(std::make_shared<const authenticator>(opts.api_keys, opts.public_routes)),
        metrics(global_gateway_metrics()) {}

  // The keys and public routes in force; a reload swaps them while requests are being checked.
  std::shared_ptr<const authenticator> auth() const { return std::atomic_load(&auth_); }
  void set_auth(std::shared_ptr<const authenticator> a) { std::atomic_store(&auth_, std::move(a)); }

  server_options opts;
  std::shared_ptr<const authenticator> auth_;
  gateway_metrics& metrics;
  std::atomic<engine*> eng{nullptr};
  std::atomic<bool> draining{false};
  std::atomic<int64_t> in_flight{0};  // accepted by the engine, final event not yet seen
  std::atomic<uint64_t> next_connection{1};
  // The io_contexts. Engine sinks lock it around their post(): a sink that outlives the server drops its
  // event instead of posting to a destroyed io_context. Weak, so queued handlers (which hold sessions, which
  // hold this state) do not keep the pool alive in a cycle.
  std::weak_ptr<void> io_pool;

  std::string model_name() const {
    if (!opts.served_model_name.empty()) return opts.served_model_name;
    engine* e = eng.load();
    return e ? e->info().name : std::string();
  }

  // Why generation is refused right now ("" when it is not): 503 while loading or draining.
  const char* unavailable_reason() const {
    if (draining.load()) return "the server is shutting down";
    engine* e = eng.load();
    if (!e) return "the model is still loading";
    if (!e->healthy()) return "the engine is not healthy";
    return "";
  }

  request_context make_context() const {
    request_context c;
    engine* e = eng.load();
    if (e) {
      const model_info info = e->info();
      c.tok = e->get_tokenizer();
      c.vocab_size = info.vocab_size;
      c.max_model_len = info.max_model_len;
    }
    c.model_name = model_name();
    c.render_chat = &opts.chat_renderer;
    c.allow_request_chat_template = opts.allow_request_chat_template;
    return c;
  }
};

}  // namespace troupe::gateway
