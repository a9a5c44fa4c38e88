#include "core/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/json_file.h"

namespace troupe {

const char* arch_name(model_arch a) {
  switch (a) {
    case model_arch::llama:
      return "llama";
    case model_arch::mistral:
      return "mistral";
    case model_arch::qwen2:
      return "qwen2";
    case model_arch::qwen3:
      return "qwen3";
  }
  return "?";
}

const char* rope_type_name(rope_type t) {
  switch (t) {
    case rope_type::none:
      return "default";
    case rope_type::linear:
      return "linear";
    case rope_type::dynamic:
      return "dynamic";
    case rope_type::llama3:
      return "llama3";
  }
  return "?";
}

namespace {

using json = nlohmann::json;

struct field_reader {
  const json& j;
  const std::string& source;

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw error(source + ": field '" + key + "' " + why);
  }
  bool present(const std::string& key) const { return j.contains(key) && !j.at(key).is_null(); }
  int64_t get_int(const std::string& key) const {
    if (!present(key)) fail(key, "is missing");
    const json& v = j.at(key);
    if (!v.is_number_integer()) fail(key, "must be an integer, got " + v.dump());
    return v.get<int64_t>();
  }
  int64_t get_int_or(const std::string& key, int64_t def) const { return present(key) ? get_int(key) : def; }
  int32_t get_positive(const std::string& key) const {
    int64_t v = get_int(key);
    if (v <= 0 || v > (int64_t{1} << 30)) fail(key, "must be a positive integer, got " + std::to_string(v));
    return static_cast<int32_t>(v);
  }
  double get_double_or(const std::string& key, double def) const {
    if (!present(key)) return def;
    const json& v = j.at(key);
    if (!v.is_number()) fail(key, "must be a number, got " + v.dump());
    return v.get<double>();
  }
  bool get_bool_or(const std::string& key, bool def) const {
    if (!present(key)) return def;
    const json& v = j.at(key);
    if (!v.is_boolean()) fail(key, "must be true or false, got " + v.dump());
    return v.get<bool>();
  }
};

std::vector<int32_t> read_id_list(const json& j, const std::string& key, const std::string& source) {
  std::vector<int32_t> ids;
  if (!j.contains(key) || j.at(key).is_null()) return ids;
  const json& v = j.at(key);
  auto one = [&](const json& x) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0) {
      throw error(source + ": field '" + key + "' must hold token ids, got " + v.dump());
    }
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
  };
  if (v.is_array()) {
    for (const auto& x : v) one(x);
  } else {
    one(v);
  }
  return ids;
}

rope_type parse_rope_type(const std::string& name, const std::string& source) {
  if (name == "default" || name == "none") return rope_type::none;
  if (name == "linear") return rope_type::linear;
  if (name == "dynamic") return rope_type::dynamic;
  if (name == "llama3") return rope_type::llama3;
  throw error(source + ": unsupported rope type '" + name +
              "' (supported: default, linear, dynamic, llama3)");
}

// Both spellings Hugging Face has used: top-level rope_theta + rope_scaling{type|rope_type,...} (before
// transformers 5) and rope_parameters{rope_type, rope_theta, ...} (transformers 5).
rope_config parse_rope(const json& j, const std::string& source) {
  rope_config r;
  field_reader top{j, source};
  r.theta = top.get_double_or("rope_theta", 10000.0);
  const json* params = nullptr;
  std::string key;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    params = &j["rope_parameters"];
    key = "rope_parameters";
  } else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    params = &j["rope_scaling"];
    key = "rope_scaling";
  } else if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    throw error(source + ": field 'rope_scaling' must be an object or null");
  }
  if (!params) return r;
  const json& p = *params;
  std::string type_name = "default";
  if (p.contains("rope_type") && p["rope_type"].is_string()) {
    type_name = p["rope_type"].get<std::string>();
  } else if (p.contains("type") && p["type"].is_string()) {
    type_name = p["type"].get<std::string>();
  }
  r.type = parse_rope_type(type_name, source);
  std::string src = source + " (" + key + ")";
  field_reader f{p, src};
  r.theta = f.get_double_or("rope_theta", r.theta);
  r.factor = f.get_double_or("factor", 1.0);
  if (r.type != rope_type::none && !(r.factor >= 1.0)) {
    // HF warns below 1 for linear/dynamic/llama3; we refuse it outright since it shortens the context.
    throw error(src + ": 'factor' must be >= 1 for rope type " + type_name);
  }
  if (r.type == rope_type::llama3) {
    r.low_freq_factor = f.get_double_or("low_freq_factor", 1.0);
    r.high_freq_factor = f.get_double_or("high_freq_factor", 4.0);
    r.original_max_position_embeddings = f.get_int("original_max_position_embeddings");
    if (!(r.high_freq_factor > r.low_freq_factor)) {
      throw error(src + ": high_freq_factor must exceed low_freq_factor");
    }
  }
  if (!(r.theta > 0) || !std::isfinite(r.theta)) throw error(source + ": rope_theta must be positive");
  return r;
}

}  // namespace

model_config model_config::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw error(source + ": expected a JSON object");
  model_config c;
  if (!j.contains("architectures") || !j["architectures"].is_array() || j["architectures"].empty() ||
      !j["architectures"][0].is_string()) {
    throw error(source + ": field 'architectures' is missing (expected e.g. [\"LlamaForCausalLM\"])");
  }
  c.architecture = j["architectures"][0].get<std::string>();
  if (c.architecture == "LlamaForCausalLM") {
    c.arch = model_arch::llama;
  } else if (c.architecture == "MistralForCausalLM") {
    c.arch = model_arch::mistral;
  } else if (c.architecture == "Qwen2ForCausalLM") {
    c.arch = model_arch::qwen2;
  } else if (c.architecture == "Qwen3ForCausalLM") {
    c.arch = model_arch::qwen3;
  } else {
    throw error(source + ": unknown architecture '" + c.architecture +
                "' (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)");
  }
  field_reader f{j, source};
  c.vocab_size = f.get_positive("vocab_size");
  c.hidden_size = f.get_positive("hidden_size");
  c.intermediate_size = f.get_positive("intermediate_size");
  c.num_layers = f.get_positive("num_hidden_layers");
  c.num_heads = f.get_positive("num_attention_heads");
  c.num_kv_heads = f.present("num_key_value_heads") ? f.get_positive("num_key_value_heads") : c.num_heads;
  if (f.present("head_dim")) {
    c.head_dim = f.get_positive("head_dim");
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      f.fail("hidden_size", "is not divisible by num_attention_heads and no head_dim is given");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    f.fail("num_key_value_heads", "(" + std::to_string(c.num_kv_heads) +
                                      ") must divide num_attention_heads (" + std::to_string(c.num_heads) +
                                      ")");
  }
  if (c.head_dim % 2 != 0) f.fail("head_dim", "must be even for RoPE");
  if (f.present("partial_rotary_factor") && f.get_double_or("partial_rotary_factor", 1.0) != 1.0) {
    f.fail("partial_rotary_factor", "other than 1.0 is not supported");
  }
  if (f.present("hidden_act") && j["hidden_act"] != "silu") {
    f.fail("hidden_act", "must be \"silu\", got " + j["hidden_act"].dump());
  }
  c.max_position_embeddings = f.get_int_or("max_position_embeddings", 2048);
  if (c.max_position_embeddings <= 0) f.fail("max_position_embeddings", "must be positive");
  c.rms_norm_eps = f.get_double_or("rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0)) f.fail("rms_norm_eps", "must be positive");
  c.tie_word_embeddings = f.get_bool_or("tie_word_embeddings", false);
  c.attention_bias = c.arch == model_arch::qwen2 ? true : f.get_bool_or("attention_bias", false);
  c.mlp_bias = f.get_bool_or("mlp_bias", false);
  c.qk_norm = c.arch == model_arch::qwen3;
  if (c.arch == model_arch::mistral) {
    if (f.present("sliding_window")) c.sliding_window = static_cast<int32_t>(f.get_int("sliding_window"));
  } else if (c.arch == model_arch::qwen2 || c.arch == model_arch::qwen3) {
    if (f.get_bool_or("use_sliding_window", false)) {
      f.fail("use_sliding_window", "true is not supported for " + c.architecture);
    }
  }
  if (c.sliding_window && *c.sliding_window <= 0) f.fail("sliding_window", "must be positive");
  c.rope = parse_rope(j, source);
  c.eos_token_ids = read_id_list(j, "eos_token_id", source);
  auto bos = read_id_list(j, "bos_token_id", source);
  if (!bos.empty()) c.bos_token_id = bos[0];
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"];
  if (j.contains("dtype") && j["dtype"].is_string()) c.torch_dtype = j["dtype"];
  return c;
}

model_config model_config::load(const std::string& path) { return from_json(read_json_file(path), path); }

int64_t model_config::max_model_len() const {
  if (rope.type == rope_type::linear || rope.type == rope_type::dynamic) {
    return static_cast<int64_t>(static_cast<double>(max_position_embeddings) * rope.factor);
  }
  return max_position_embeddings;
}

std::vector<float> rope_inv_freq(const model_config& c, int64_t seq_len) {
  const int dim = c.head_dim;
  const rope_config& r = c.rope;
  double base = r.theta;
  if (r.type == rope_type::dynamic) {
    // NTK-aware: once the sequence outgrows max_position_embeddings, raise the base so that the lowest
    // frequency stretches over factor * max_position_embeddings (HF recomputes this per forward).
    const double max_pos = static_cast<double>(c.max_position_embeddings);
    const double len = seq_len > c.max_position_embeddings ? static_cast<double>(seq_len) : max_pos;
    base = base * std::pow((r.factor * len / max_pos) - (r.factor - 1.0),
                           static_cast<double>(dim) / static_cast<double>(dim - 2));
  }
  std::vector<float> inv(dim / 2);
  for (int i = 0; i < dim / 2; ++i) {
    // float32 like HF: base ** (arange(0, dim, 2).float() / dim) evaluated in float.
    float expo = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv[i] = 1.0f / std::pow(static_cast<float>(base), expo);
  }
  if (r.type == rope_type::linear) {
    for (auto& x : inv) x = static_cast<float>(x / r.factor);
  } else if (r.type == rope_type::llama3) {
    const double pi = 3.14159265358979323846;
    const double old_ctx = static_cast<double>(r.original_max_position_embeddings);
    const double low_wavelen = old_ctx / r.low_freq_factor;
    const double high_wavelen = old_ctx / r.high_freq_factor;
    for (auto& x : inv) {
      const double f = x;
      const double wavelen = 2 * pi / f;
      double out;
      if (wavelen < high_wavelen) {
        out = f;  // high frequency: untouched
      } else if (wavelen > low_wavelen) {
        out = f / r.factor;  // low frequency: fully scaled
      } else {
        const double smooth =
            (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        out = (1 - smooth) * f / r.factor + smooth * f;
      }
      x = static_cast<float>(out);
    }
  }
  return inv;
}

void rope_inv_freq_rows(const model_config& c, int32_t num_seqs, const int32_t* query_start,
                        const int32_t* positions, const int32_t* floor_lens, float* rows) {
  const int64_t half = c.head_dim / 2;
  int64_t cached_len = -1;
  std::vector<float> f;
  for (int32_t s = 0; s < num_seqs; ++s) {
    for (int32_t t = query_start[s]; t < query_start[s + 1]; ++t) {
      const int64_t len = std::max<int64_t>(positions[t] + 1, floor_lens[s]);
      if (len != cached_len) {
        f = rope_inv_freq(c, len);
        cached_len = len;
      }
      std::copy(f.begin(), f.end(), rows + t * half);
    }
  }
}

}  // namespace troupe
