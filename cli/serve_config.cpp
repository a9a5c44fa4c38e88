#include "cli/serve_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/model_loading.h"
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

double parse_double(const std::string& key, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno || !std::isfinite(x))
    throw error(key + ": '" + v + "' is not a number");
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
                                             "async_scheduling",
                                             "allow_request_chat_template",
                                             "device",
                                             "attention",
                                             "quantization",
                                             "kv_cache_dtype",
                                             "gpu_memory_utilization",
                                             "tensor_parallel_size",
                                             "pipeline_parallel_size",
                                             "data_parallel_size",
                                             "enforce_eager"};
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
  else if (key == "async_scheduling")
    c.async_scheduling = parse_bool(key, v);
  else if (key == "allow_request_chat_template")
    c.allow_request_chat_template = parse_bool(key, v);
  else if (key == "device")
    c.device = v;
  else if (key == "attention")
    c.attention = v;
  else if (key == "quantization")
    c.quantization = v;
  else if (key == "kv_cache_dtype")
    c.kv_cache_dtype = v;
  else if (key == "gpu_memory_utilization")
    c.gpu_memory_utilization = parse_double(key, v);
  else if (key == "tensor_parallel_size")
    c.tensor_parallel_size = parse_int(key, v);
  else if (key == "pipeline_parallel_size")
    c.pipeline_parallel_size = parse_int(key, v);
  else if (key == "data_parallel_size")
    c.data_parallel_size = parse_int(key, v);
  else if (key == "enforce_eager")
    c.enforce_eager = parse_bool(key, v);
  else
    throw error("unknown setting '" + key + "' (did you mean '" + closest(key) + "'?)");
}

std::vector<std::string> read_serve_config_file(const std::string& path, serve_config& cfg) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return {path + ": cannot open"};
  } catch (const YAML::Exception& e) {
    return {path + ": not valid YAML/JSON: " + e.what()};
  }
  if (root.IsNull()) return {};
  if (!root.IsMap()) return {path + ": expected a mapping of settings"};
  std::vector<std::string> problems;
  for (const auto& kv : root) {
    std::string key;
    try {
      key = kv.first.as<std::string>();
      const YAML::Node& v = kv.second;
      std::string value;
      if (v.IsSequence()) {
        for (const auto& item : v) {
          if (!item.IsScalar()) throw error(key + ": expected a list of values");
          value += (value.empty() ? "" : ",") + item.as<std::string>();
        }
      } else if (v.IsScalar()) {
        value = v.as<std::string>();
      } else if (v.IsNull()) {
        continue;
      } else {
        throw error(key + ": expected a value or a list");
      }
      set_serve_config_value(cfg, key, value);
    } catch (const error& e) {
      problems.push_back(e.what());
    } catch (const YAML::Exception& e) {
      problems.push_back((key.empty() ? std::string("a key") : key) + ": " + e.what());
    }
  }
  return problems;
}

void load_serve_config_file(const std::string& path, serve_config& cfg) {
  const auto problems = read_serve_config_file(path, cfg);
  if (problems.empty()) return;
  std::string all;
  for (const auto& p : problems) all += (all.empty() ? "" : "; ") + p;
  throw error(path + ": " + all);
}

std::vector<std::pair<std::string, std::string>> serve_config_values(const serve_config& c) {
  auto list = [](const std::vector<std::string>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
    return s + "]";
  };
  auto num = [](double x) {
    std::ostringstream o;
    o << x;
    return o.str();
  };
  auto b = [](bool x) { return std::string(x ? "true" : "false"); };
  std::vector<std::string> masked(c.api_keys.size(), "<hidden>");
  return {{"model", c.model},
          {"served_model_name", c.served_model_name},
          {"device", c.device},
          {"attention", c.attention},
          {"quantization", c.quantization},
          {"kv_cache_dtype", c.kv_cache_dtype},
          {"gpu_memory_utilization", num(c.gpu_memory_utilization)},
          {"tensor_parallel_size", std::to_string(c.tensor_parallel_size)},
          {"pipeline_parallel_size", std::to_string(c.pipeline_parallel_size)},
          {"data_parallel_size", std::to_string(c.data_parallel_size)},
          {"enforce_eager", b(c.enforce_eager)},
          {"host", c.host},
          {"port", std::to_string(c.port)},
          {"threads", std::to_string(c.threads)},
          {"cpu_threads", std::to_string(c.cpu_threads)},
          {"api_keys", list(masked)},
          {"api_key_file", c.api_key_file},
          {"public_routes", list(c.public_routes)},
          {"max_body_bytes", std::to_string(c.max_body_bytes)},
          {"tls_cert_file", c.tls_cert_file},
          {"tls_key_file", c.tls_key_file},
          {"block_size", std::to_string(c.block_size)},
          {"num_kv_blocks", std::to_string(c.num_kv_blocks)},
          {"max_kv_tokens", std::to_string(c.max_kv_tokens)},
          {"max_num_batched_tokens", std::to_string(c.max_num_batched_tokens)},
          {"max_num_seqs", std::to_string(c.max_num_seqs)},
          {"max_waiting_requests", std::to_string(c.max_waiting_requests)},
          {"max_model_len", std::to_string(c.max_model_len)},
          {"enable_prefix_caching", b(c.enable_prefix_caching)},
          {"preemption", c.preemption},
          {"swap_space_blocks", std::to_string(c.swap_space_blocks)},
          {"async_scheduling", b(c.async_scheduling)},
          {"allow_request_chat_template", b(c.allow_request_chat_template)}};
}

std::vector<std::string> validate_serve_config(const serve_config& c, bool check_files) {
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
  if (c.max_num_seqs > c.max_num_batched_tokens)
    p.push_back("max_num_seqs (" + std::to_string(c.max_num_seqs) +
                ") must not exceed max_num_batched_tokens (" + std::to_string(c.max_num_batched_tokens) +
                "): every running sequence needs a token each step");

  // Plugins: unknown names list the valid ones; combinations that cannot work together are refused.
  if (c.device != "auto" && c.device != "cpu" && c.device != "cuda")
    p.push_back("device: unknown device '" + c.device + "' (valid: auto, cpu, cuda)");
  if (c.device == "cuda" && !cuda_built())
    p.push_back(
        "device: cuda, but this troupe was built without the CUDA backend (configure with -DTROUPE_CUDA=ON)");
  if (c.attention != "auto" && c.attention != "flash" && c.attention != "paged")
    p.push_back("attention: unknown plugin '" + c.attention + "' (valid: auto, flash, paged)");
  else if (c.device == "cpu" && c.attention != "auto")
    p.push_back("attention: '" + c.attention +
                "' is a CUDA plugin, but device is cpu (the CPU engine has its own attention; use auto)");
  if (c.quantization != "none")
    p.push_back(
        "quantization: '" + c.quantization +
        "' is not available in this build (valid: none; weights run in fp32 on cpu and bf16 on cuda)");
  if (c.kv_cache_dtype != "auto")
    p.push_back("kv_cache_dtype: '" + c.kv_cache_dtype + "' is not available in this build (valid: auto)");
  if (!(c.gpu_memory_utilization > 0.0 && c.gpu_memory_utilization <= 1.0))
    p.push_back("gpu_memory_utilization must be in (0, 1]");
  for (const auto& [name, v] :
       {std::pair<const char*, int64_t>{"tensor_parallel_size", c.tensor_parallel_size},
        {"pipeline_parallel_size", c.pipeline_parallel_size},
        {"data_parallel_size", c.data_parallel_size}}) {
    if (v < 1) {
      p.push_back(std::string(name) + " must be >= 1");
    } else if (v != 1) {
      p.push_back(std::string(name) + ": " + std::to_string(v) +
                  " is not available in this build (one device per process; valid: 1)");
    }
  }

  if (check_files) {
    namespace fs = std::filesystem;
    if (!fs::exists(fs::path(c.model) / "config.json"))
      p.push_back("model: '" + c.model + "' has no config.json (not a Hugging Face model directory)");
    for (const auto& [name, f] : {std::pair<const char*, std::string>{"api_key_file", c.api_key_file},
                                  {"tls_cert_file", c.tls_cert_file},
                                  {"tls_key_file", c.tls_key_file}}) {
      if (!f.empty() && !fs::is_regular_file(f))
        p.push_back(std::string(name) + ": '" + f + "' is not a readable file");
    }
  }
  return p;
}

}  // namespace troupe::cli
