// `troupe serve` settings: one struct filled from a YAML (or JSON) file whose keys equal the command-line
// flags, then from the flags (flags win). Unknown keys and bad values are all reported at once.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace troupe::cli {

struct serve_config {
  std::string model = "models/default";
  std::string served_model_name;
  std::string host = "127.0.0.1";
  int64_t port = 8000;
  int64_t threads = 0;      // gateway io threads; 0: one per core
  int64_t cpu_threads = 0;  // CPU engine threads; 0: all cores
  std::vector<std::string> api_keys;
  std::string api_key_file;  // one key per line
  std::vector<std::string> public_routes = {"/health", "/ready", "/metrics"};
  int64_t max_body_bytes = 8 << 20;
  std::string tls_cert_file, tls_key_file;
  int64_t block_size = 16;
  int64_t num_kv_blocks = 0;  // 0: sized from max_kv_tokens
  int64_t max_kv_tokens = 65536;
  int64_t max_num_batched_tokens = 2048;
  int64_t max_num_seqs = 256;
  int64_t max_waiting_requests = 4096;
  int64_t max_model_len = 0;  // 0: the model's
  bool enable_prefix_caching = true;
  std::string preemption = "recompute";  // recompute | swap
  int64_t swap_space_blocks = 0;
  bool async_scheduling = true;  // plan step N+1 while the device runs step N (vLLM --async-scheduling)
  bool allow_request_chat_template = false;  // accept "chat_template" in chat requests

  // Plugins and layout
  std::string device = "auto";          // auto | cpu | cuda
  std::string attention = "auto";       // auto (flash on cuda) | flash | paged; cuda plugins
  std::string quantization = "none";    // weight quantization plugin: none (fp32 on cpu, bf16 on cuda)
  std::string kv_cache_dtype = "auto";  // auto: the model's compute dtype
  double gpu_memory_utilization = 0.9;  // cuda: share of device memory for weights + KV cache
  bool enforce_eager = false;           // cuda: launch every step (no CUDA graphs for decode)
  int64_t tensor_parallel_size = 1;     // parallel layout: one device per process in this build
  int64_t pipeline_parallel_size = 1;
  int64_t data_parallel_size = 1;

  // Every key the file and the flags accept (flag --x-y is key x_y).
  static const std::vector<std::string>& keys();
};

// Reads a YAML/JSON mapping into cfg and returns every problem (unknown keys with the closest valid name,
// wrong types, an unreadable file); settings that parsed are applied even when others did not.
std::vector<std::string> read_serve_config_file(const std::string& path, serve_config& cfg);
// The same, throwing troupe::error with every problem.
void load_serve_config_file(const std::string& path, serve_config& cfg);
// The value of every setting, as a YAML/JSON file would spell it (for check-config and reload reports).
std::vector<std::pair<std::string, std::string>> serve_config_values(const serve_config& cfg);
// Applies one key=value (from a flag); throws on an unknown key or a bad value.
void set_serve_config_value(serve_config& cfg, const std::string& key, const std::string& value);
// Value ranges, plugin names and plugin combinations that cannot work together (with this build: a cuda
// device without the CUDA backend); every problem at once. check_files also checks that the model
// directory, the key file and the TLS files exist.
std::vector<std::string> validate_serve_config(const serve_config& cfg, bool check_files = false);

}  // namespace troupe::cli
