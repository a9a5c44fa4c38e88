// `troupe serve` settings: one struct filled from a YAML (or JSON) file whose keys equal the command-line
// flags, then from the flags (flags win). Unknown keys and bad values are all reported at once.
#pragma once

#include <cstdint>
#include <string>
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
  bool allow_request_chat_template = false;  // accept "chat_template" in chat requests

  // Every key the file and the flags accept (flag --x-y is key x_y).
  static const std::vector<std::string>& keys();
};

// Reads a YAML/JSON mapping into cfg; throws troupe::error listing every problem (unknown keys with the
// closest valid name, wrong types).
void load_serve_config_file(const std::string& path, serve_config& cfg);
// Applies one key=value (from a flag); throws on an unknown key or a bad value.
void set_serve_config_value(serve_config& cfg, const std::string& key, const std::string& value);
// Cross-field checks; every problem at once.
std::vector<std::string> validate_serve_config(const serve_config& cfg);

}  // namespace troupe::cli
