#include "cli/serve_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>

#include "core/error.h"

namespace troupe::cli {

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closest(const std::string& key) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& k : serve_config::keys()) {
    size_t d = edit_distance(key, k);
    if (d < best_d) {
      best_d = d;
      best = k;
    }
  }
  return best;
}

int64_t parse_int(const std::string& key, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno) throw error(key + ": '" + v + "' is not an integer");
  return x;
}

bool parse_bool(const std::string& key, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  throw error(key + ": '" + v + "' is not true or false");
}

std::vector<std::string> parse_list(const std::string& v) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= v.size()) {
    size_t c = v.find(',', pos);
    std::string item = v.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
    if (!item.empty()) out.push_back(item);
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  return out;
}

}  // namespace

const std::vector<std::string>& serve_config::keys() {
  static const std::vector<std::string> k = {"model",
                                             "served_model_name",
                                             "host",
                                             "port",
                                             "threads",
                                             "cpu_threads",
                                             "api_keys",
                                             "api_key_file",
                                             "public_routes",
                                             "max_body_bytes",
                                             "tls_cert_file",
                                             "tls_key_file",
                                             "block_size",
                                             "num_kv_blocks",
                                             "max_kv_tokens",
                                             "max_num_batched_tokens",
                                             "max_num_seqs",
                                             "max_waiting_requests",
                                             "max_model_len",
                                             "enable_prefix_caching",
                                             "preemption",
                                             "swap_space_blocks",
                                             "allow_request_chat_template"};
  return k;
}

void set_serve_config_value(serve_config& c, const std::string& key, const std::string& v) {
  if (key == "model")
    c.model = v;
  else if (key == "served_model_name")
    c.served_model_name = v;
  else if (key == "host")
    c.host = v;
  else if (key == "port")
    c.port = parse_int(key, v);
  else if (key == "threads")
    c.threads = parse_int(key, v);
  else if (key == "cpu_threads")
    c.cpu_threads = parse_int(key, v);
  else if (key == "api_keys")
    c.api_keys = parse_list(v);
  else if (key == "api_key_file")
    c.api_key_file = v;
  else if (key == "public_routes")
    c.public_routes = parse_list(v);
  else if (key == "max_body_bytes")
    c.max_body_bytes = parse_int(key, v);
  else if (key == "tls_cert_file")
    c.tls_cert_file = v;
  else if (key == "tls_key_file")
    c.tls_key_file = v;
  else if (key == "block_size")
    c.block_size = parse_int(key, v);
  else if (key == "num_kv_blocks")
    c.num_kv_blocks = parse_int(key, v);
  else if (key == "max_kv_tokens")
    c.max_kv_tokens = parse_int(key, v);
  else if (key == "max_num_batched_tokens")
    c.max_num_batched_tokens = parse_int(key, v);
  else if (key == "max_num_seqs")
    c.max_num_seqs = parse_int(key, v);
  else if (key == "max_waiting_requests")
    c.max_waiting_requests = parse_int(key, v);
  else if (key == "max_model_len")
    c.max_model_len = parse_int(key, v);
  else if (key == "enable_prefix_caching")
    c.enable_prefix_caching = parse_bool(key, v);
  else if (key == "preemption")
    c.preemption = v;
  else if (key == "swap_space_blocks")
    c.swap_space_blocks = parse_int(key, v);
  else if (key == "allow_request_chat_template")
    c.allow_request_chat_template = parse_bool(key, v);
  else
    throw error("unknown setting '" + key + "' (did you mean '" + closest(key) + "'?)");
}

void load_serve_config_file(const std::string& path, serve_config& cfg) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw error(path + ": cannot open");
  } catch (const YAML::Exception& e) {
    throw error(path + ": not valid YAML/JSON: " + e.what());
  }
  if (root.IsNull()) return;
  if (!root.IsMap()) throw error(path + ": expected a mapping of settings");
  std::string problems;
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    try {
      const YAML::Node& v = kv.second;
      std::string value;
      if (v.IsSequence()) {
        for (const auto& item : v) value += (value.empty() ? "" : ",") + item.as<std::string>();
      } else if (v.IsScalar()) {
        value = v.as<std::string>();
      } else if (v.IsNull()) {
        continue;
      } else {
        throw error(key + ": expected a value or a list");
      }
      set_serve_config_value(cfg, key, value);
    } catch (const error& e) {
      problems += std::string(problems.empty() ? "" : "; ") + e.what();
    }
  }
  if (!problems.empty()) throw error(path + ": " + problems);
}

std::vector<std::string> validate_serve_config(const serve_config& c) {
  std::vector<std::string> p;
  if (c.port < 0 || c.port > 65535) p.push_back("port must be in 0..65535");
  if (c.threads < 0 || c.cpu_threads < 0) p.push_back("threads and cpu_threads must be >= 0");
  // The runners are built with 16-token blocks (the CUDA kernels' layout); other sizes are refused rather
  // than silently ignored.
  if (c.block_size != 16) p.push_back("block_size must be 16 (the only block size the backends support)");
  if (c.num_kv_blocks < 0) p.push_back("num_kv_blocks must be >= 0");
  if (c.max_kv_tokens < 1) p.push_back("max_kv_tokens must be >= 1");
  if (c.max_num_batched_tokens < 1) p.push_back("max_num_batched_tokens must be >= 1");
  if (c.max_num_seqs < 1) p.push_back("max_num_seqs must be >= 1");
  if (c.max_waiting_requests < 1) p.push_back("max_waiting_requests must be >= 1");
  if (c.max_model_len < 0) p.push_back("max_model_len must be >= 0");
  if (c.max_body_bytes < 1024) p.push_back("max_body_bytes must be >= 1024");
  if (c.preemption != "recompute" && c.preemption != "swap")
    p.push_back("preemption must be recompute or swap");
  if (c.tls_cert_file.empty() != c.tls_key_file.empty())
    p.push_back("tls_cert_file and tls_key_file go together");
  return p;
}

}  // namespace troupe::cli
