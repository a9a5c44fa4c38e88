// troupe serve: the composition root of the server. Loads the model behind the actor engine and serves
// it through the gateway; SIGINT/SIGTERM drain (readiness 503, in-flight requests finish) and exit.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>

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
  enable_prefix_caching, preemption (recompute|swap), swap_space_blocks, async_scheduling,
  allow_request_chat_template
  device (auto|cpu|cuda; auto: the GPU when there is one), attention (auto|flash|paged), quantization (none),
  kv_cache_dtype (auto), gpu_memory_utilization, enforce_eager (no CUDA graphs),
  tensor/pipeline/data_parallel_size (1)

SIGHUP or POST /admin/reload (API keys required) re-read the config file with the same flags on top: a
change of device, attention or gpu_memory_utilization rebuilds the model worker (in-flight requests resume
by recompute), a change of api_keys, api_key_file or public_routes applies to new requests; any other
change needs a restart and makes the reload refused (the old configuration keeps serving).
`troupe check-config FILE` validates a file without serving.
)";

// The command line, kept so that a reload re-reads the file and applies the same flags on top.
struct serve_args {
  std::string config_path;
  std::vector<std::pair<std::string, std::string>> flags;  // key (underscores), value
};

serve_args parse_args(const std::vector<std::string>& args) {
  serve_args a;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg.rfind("--", 0) != 0) throw error("unexpected argument '" + arg + "'");
    std::string name = arg.substr(2), value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= args.size()) throw error("flag --" + name + " needs a value");
      value = args[++i];
    }
    if (name == "config") {
      a.config_path = value;
      continue;
    }
    std::replace(name.begin(), name.end(), '-', '_');
    a.flags.emplace_back(name, value);
  }
  return a;
}

// The file (when given), then the flags, then the key file and TROUPE_API_KEY; every problem at once.
serve_config effective_config(const serve_args& a, std::vector<std::string>& problems, bool check_files) {
  serve_config cfg;
  if (!a.config_path.empty()) {
    for (auto& p : read_serve_config_file(a.config_path, cfg)) problems.push_back(a.config_path + ": " + p);
  }
  for (const auto& [k, v] : a.flags) {
    try {
      set_serve_config_value(cfg, k, v);
    } catch (const error& e) {
      problems.push_back(std::string("--") + k + ": " + e.what());
    }
  }
  for (auto& p : validate_serve_config(cfg, check_files)) problems.push_back(std::move(p));
  if (!cfg.api_key_file.empty()) {
    std::ifstream in(cfg.api_key_file);
    if (!in) problems.push_back(cfg.api_key_file + ": cannot open the API key file");
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line[0] != '#') cfg.api_keys.push_back(line);
    }
  }
  if (const char* env = std::getenv("TROUPE_API_KEY")) {
    if (*env) cfg.api_keys.push_back(env);
  }
  return cfg;
}

model_load_options load_options(const serve_config& cfg) {
  model_load_options lo;
  lo.device = cfg.device;
  lo.attention = cfg.attention == "auto" ? "flash" : cfg.attention;
  lo.gpu_memory_utilization = cfg.gpu_memory_utilization;
  lo.show_progress = true;
  lo.cuda_graphs = !cfg.enforce_eager;
  lo.threads = static_cast<int32_t>(cfg.cpu_threads);
  lo.num_kv_blocks = static_cast<int32_t>(cfg.num_kv_blocks);
  if (lo.num_kv_blocks == 0 && cfg.device != "cuda") {
    lo.num_kv_blocks = static_cast<int32_t>((cfg.max_kv_tokens + 15) / 16);
  }
  return lo;
}

// Settings a reload applies: the plugins (the workers are rebuilt) and authentication (swapped in the
// gateway). Anything else needs a restart, and a reload that changes it is refused.
bool plugin_setting(const std::string& k) {
  return k == "device" || k == "attention" || k == "gpu_memory_utilization" || k == "enforce_eager";
}
bool auth_setting(const std::string& k) {
  return k == "api_keys" || k == "api_key_file" || k == "public_routes";
}

// Serializes reloads (SIGHUP and POST /admin/reload may race) and owns what they replace.
class reloader {
 public:
  reloader(serve_args args, serve_config cfg, loaded_model& model, actor_engine& eng, gateway::server& srv)
      : args_(std::move(args)), cfg_(std::move(cfg)), model_(model), eng_(eng), srv_(srv) {}

  // Returns once no reload is running.
  void wait() { std::lock_guard<std::mutex> lk(mu_); }

  gateway::reload_outcome reload() {
    std::lock_guard<std::mutex> lk(mu_);
    gateway::reload_outcome out;
    try {
      out = reload_locked();
    } catch (const std::exception& e) {
      out.ok = false;
      out.changed.clear();
      out.problems = {std::string("reload failed: ") + e.what()};
    }
    std::cerr << "troupe serve: reload "
              << (out.ok ? "applied" : "refused, the old configuration keeps serving");
    for (const auto& c : out.changed) std::cerr << "\n  changed " << c;
    for (const auto& p : out.problems) std::cerr << "\n  - " << p;
    std::cerr << std::endl;
    return out;
  }

 private:
  gateway::reload_outcome reload_locked() {
    gateway::reload_outcome out;
    serve_config next = effective_config(args_, out.problems, true);
    if (!out.problems.empty()) return out;
    const auto before = serve_config_values(cfg_), after = serve_config_values(next);
    bool plugins = false, auth = false;
    for (size_t i = 0; i < before.size(); ++i) {
      const std::string& k = before[i].first;
      const bool differs =
          before[i].second != after[i].second || (k == "api_keys" && cfg_.api_keys != next.api_keys);
      if (!differs) continue;
      if (plugin_setting(k)) {
        plugins = true;
      } else if (auth_setting(k)) {
        auth = true;
      } else {
        out.problems.push_back("'" + k + "' changed (" + before[i].second + " -> " + after[i].second +
                               "): it takes effect only after a restart");
        continue;
      }
      out.changed.push_back(k + ": " + (k == "api_keys" ? std::string("<hidden>") : after[i].second));
    }
    if (!out.problems.empty()) {
      out.changed.clear();
      return out;
    }
    if (plugins) {
      // The new workers keep the KV geometry, so the scheduler's block tables stay meaningful.
      model_load_options lo = load_options(next);
      lo.num_kv_blocks = model_.runner->num_kv_blocks();
      std::cerr << "troupe serve: reload: loading " << next.model << " with the new plugins ..." << std::endl;
      loaded_model fresh = load_model(next.model, lo);
      eng_.replace_runner(*fresh.runner);  // the old worker finishes its step; requests resume by recompute
      model_.runner = std::move(fresh.runner);  // the old runner is no longer used: free it now
      model_.device = fresh.device;
    }
    if (auth) srv_.set_auth(next.api_keys, next.public_routes);
    cfg_ = std::move(next);
    out.ok = true;
    return out;
  }

  std::mutex mu_;
  serve_args args_;
  serve_config cfg_;
  loaded_model& model_;
  actor_engine& eng_;
  gateway::server& srv_;
};

int run(const std::vector<std::string>& args) {
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kHelp;
      return 0;
    }
  }
  const serve_args sargs = parse_args(args);
  std::vector<std::string> problems;
  serve_config cfg = effective_config(sargs, problems, false);
  if (!problems.empty()) {
    std::string all;
    for (const auto& p : problems) all += (all.empty() ? "" : "; ") + p;
    throw error("bad settings: " + all);
  }

  // Signals are taken synchronously by this thread; block them before any other thread starts.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
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
  // POST /admin/reload runs the same reload as SIGHUP once the engine is up.
  auto active = std::make_shared<std::atomic<reloader*>>(nullptr);
  so.reload = [active] {
    if (reloader* r = active->load()) return r->reload();
    gateway::reload_outcome out;
    out.problems = {"the model is still loading (or the server is stopping)"};
    return out;
  };

  // Listen first: /health answers and /ready says 503 while the model loads.
  gateway::server server(so, nullptr);
  server.start();
  std::cerr << "troupe serve: listening on " << (cfg.tls_cert_file.empty() ? "http://" : "https://")
            << cfg.host << ":" << server.port() << " (model '" << name << "')" << std::endl;
  std::cout << "listening on " << cfg.host << ":" << server.port() << std::endl;

  const auto t0 = std::chrono::steady_clock::now();
  std::cerr << "troupe serve: loading " << cfg.model << " ..." << std::endl;
  loaded_model m = load_model(cfg.model, load_options(cfg));
  actor_engine_options eo;
  eo.model_name = name;
  eo.prefix_caching = cfg.enable_prefix_caching;
  eo.sched.max_num_batched_tokens = static_cast<int32_t>(cfg.max_num_batched_tokens);
  eo.sched.max_num_seqs = static_cast<int32_t>(cfg.max_num_seqs);
  eo.sched.max_waiting_requests = static_cast<int32_t>(cfg.max_waiting_requests);
  eo.sched.max_model_len = cfg.max_model_len;
  eo.sched.preemption = cfg.preemption == "swap" ? preemption_mode::swap : preemption_mode::recompute;
  eo.sched.num_host_blocks = static_cast<int32_t>(cfg.swap_space_blocks);
  eo.sched.async_scheduling = cfg.async_scheduling;
  actor_engine engine(*m.runner, m.tok.get(), eo);
  reloader rel(sargs, cfg, m, engine, server);
  active->store(&rel);
  server.set_engine(&engine);
  std::cerr << "troupe serve: " << m.device << " engine ready in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s ("
            << m.runner->num_kv_blocks() << " KV blocks of " << m.runner->block_size()
            << " tokens, max model len " << engine.info().max_model_len << ")" << std::endl;

  int sig = 0;
  for (;;) {
    sigwait(&sigs, &sig);
    if (sig != SIGHUP) break;
    if (sargs.config_path.empty()) {
      std::cerr << "troupe serve: SIGHUP: no --config file to re-read" << std::endl;
      continue;
    }
    std::cerr << "troupe serve: SIGHUP: re-reading " << sargs.config_path << std::endl;
    rel.reload();
  }
  std::cerr << "troupe serve: " << (sig == SIGINT ? "SIGINT" : "SIGTERM")
            << ": draining (in-flight requests finish, new ones get 503)" << std::endl;
  active->store(nullptr);
  server.stop();
  rel.wait();  // a reload still running on the admin thread finishes before the engine goes
  std::cerr << "troupe serve: stopped" << std::endl;
  return 0;
}

command_registrar reg("serve", "serve a model over HTTP (OpenAI API, SSE), WebSocket and /metrics", run);

}  // namespace
}  // namespace troupe::cli
