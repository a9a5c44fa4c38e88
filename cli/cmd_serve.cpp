// troupe serve: the composition root of the server. Loads the model behind the actor engine and serves
// it through the gateway; SIGINT/SIGTERM drain (readiness 503, in-flight requests finish) and exit.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "actors/engine.h"
#include "cli/command.h"
#include "cli/model_loading.h"
#include "cli/serve_config.h"
#include "core/chat_template/chat_template.h"
#include "core/error.h"
#include "gateway/chat_prompt.h"
#include "gateway/server.h"

namespace troupe::cli {
namespace {

const char* kHelp =
    R"(usage: troupe serve [--config FILE] [--model DIR] [--host H] [--port P] [--<setting> VALUE ...]

Serves a model over the OpenAI-compatible HTTP API (with SSE), WebSocket streaming (/v1/ws), /metrics,
/health, /ready and /version. Every setting of the config file (YAML or JSON) is also a flag with dashes
for underscores; flags win. Settings:
  model, served_model_name, host, port, threads, cpu_threads, api_keys (list), api_key_file,
  public_routes (list), max_body_bytes, tls_cert_file, tls_key_file, block_size, num_kv_blocks,
  max_kv_tokens, max_num_batched_tokens, max_num_seqs, max_waiting_requests, max_model_len,
  enable_prefix_caching, preemption (recompute|swap), swap_space_blocks, allow_request_chat_template
  --device cpu|cuda|auto (default auto: the GPU when there is one), --attention flash|paged
)";

int run(const std::vector<std::string>& args) {
  serve_config cfg;
  std::string device = "auto", attention = "flash";
  // --config first, so that flags override the file wherever they appear.
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      std::cout << kHelp;
      return 0;
    }
    if (args[i] == "--config") {
      if (i + 1 >= args.size()) throw error("--config needs a file");
      load_serve_config_file(args[i + 1], cfg);
    }
  }
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (a.rfind("--", 0) != 0) throw error("unexpected argument '" + a + "'");
    std::string name = a.substr(2), value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= args.size()) throw error("flag --" + name + " needs a value");
      value = args[++i];
    }
    if (name == "config") continue;
    if (name == "device") {
      device = value;
      continue;
    }
    if (name == "attention") {
      attention = value;
      continue;
    }
    std::string key = name;
    std::replace(key.begin(), key.end(), '-', '_');
    set_serve_config_value(cfg, key, value);
  }
  auto problems = validate_serve_config(cfg);
  if (!problems.empty()) {
    std::string all;
    for (const auto& p : problems) all += (all.empty() ? "" : "; ") + p;
    throw error("bad settings: " + all);
  }
  if (!cfg.api_key_file.empty()) {
    std::ifstream in(cfg.api_key_file);
    if (!in) throw error(cfg.api_key_file + ": cannot open the API key file");
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line[0] != '#') cfg.api_keys.push_back(line);
    }
  }
  if (const char* env = std::getenv("TROUPE_API_KEY")) {
    if (*env) cfg.api_keys.push_back(env);
  }

  // Signals are taken synchronously by this thread; block them before any other thread starts.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  gateway::server_options so;
  so.host = cfg.host;
  so.port = static_cast<uint16_t>(cfg.port);
  so.threads = static_cast<int>(cfg.threads);
  so.api_keys = cfg.api_keys;
  so.public_routes = cfg.public_routes;
  so.max_body_bytes = static_cast<size_t>(cfg.max_body_bytes);
  so.tls_cert_file = cfg.tls_cert_file;
  so.tls_key_file = cfg.tls_key_file;
  std::string name = cfg.served_model_name.empty() ? std::filesystem::path(cfg.model).filename().string()
                                                   : cfg.served_model_name;
  if (name.empty()) name = cfg.model;
  so.served_model_name = name;
  so.allow_request_chat_template = cfg.allow_request_chat_template;
  try {
    so.chat_renderer = gateway::make_chat_renderer(
        std::make_shared<model_chat_template>(model_chat_template::load(cfg.model)));
  } catch (const error& e) {
    std::cerr << "troupe serve: no chat template (" << e.what() << "); chat requests will be refused\n";
  }

  // Listen first: /health answers and /ready says 503 while the model loads.
  gateway::server server(so, nullptr);
  server.start();
  std::cerr << "troupe serve: listening on " << (cfg.tls_cert_file.empty() ? "http://" : "https://")
            << cfg.host << ":" << server.port() << " (model '" << name << "')" << std::endl;
  std::cout << "listening on " << cfg.host << ":" << server.port() << std::endl;

  const auto t0 = std::chrono::steady_clock::now();
  std::cerr << "troupe serve: loading " << cfg.model << " ..." << std::endl;
  model_load_options lo;
  lo.device = device;
  lo.attention = attention;
  lo.threads = static_cast<int32_t>(cfg.cpu_threads);
  lo.num_kv_blocks = static_cast<int32_t>(cfg.num_kv_blocks);
  if (lo.num_kv_blocks == 0 && device != "cuda") {
    lo.num_kv_blocks = static_cast<int32_t>((cfg.max_kv_tokens + 15) / 16);
  }
  loaded_model m = load_model(cfg.model, lo);
  actor_engine_options eo;
  eo.model_name = name;
  eo.prefix_caching = cfg.enable_prefix_caching;
  eo.sched.max_num_batched_tokens = static_cast<int32_t>(cfg.max_num_batched_tokens);
  eo.sched.max_num_seqs = static_cast<int32_t>(cfg.max_num_seqs);
  eo.sched.max_waiting_requests = static_cast<int32_t>(cfg.max_waiting_requests);
  eo.sched.max_model_len = cfg.max_model_len;
  eo.sched.preemption = cfg.preemption == "swap" ? preemption_mode::swap : preemption_mode::recompute;
  eo.sched.num_host_blocks = static_cast<int32_t>(cfg.swap_space_blocks);
  actor_engine engine(*m.runner, m.tok.get(), eo);
  server.set_engine(&engine);
  std::cerr << "troupe serve: " << m.device << " engine ready in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s ("
            << m.runner->num_kv_blocks() << " KV blocks of " << m.runner->block_size() << " tokens)"
            << std::endl;

  int sig = 0;
  sigwait(&sigs, &sig);
  std::cerr << "troupe serve: " << (sig == SIGINT ? "SIGINT" : "SIGTERM")
            << ": draining (in-flight requests finish, new ones get 503)" << std::endl;
  server.stop();
  std::cerr << "troupe serve: stopped" << std::endl;
  return 0;
}

command_registrar reg("serve", "serve a model over HTTP (OpenAI API, SSE), WebSocket and /metrics", run);

}  // namespace
}  // namespace troupe::cli
