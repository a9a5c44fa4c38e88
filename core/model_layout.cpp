#include "core/model_layout.h"

#include <set>

#include "core/error.h"

namespace troupe {

std::vector<float> load_tensor_f32(const checkpoint& ckpt, const std::string& name) {
  const tensor_view& t = ckpt.at(name);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  tensor_to_f32(t, out.data());
  return out;
}

std::vector<float> stack_tensors_f32(const checkpoint& ckpt, const std::vector<std::string>& names) {
  size_t total = 0;
  for (const auto& n : names) total += static_cast<size_t>(ckpt.at(n).numel());
  std::vector<float> out(total);
  size_t at = 0;
  for (const auto& n : names) {
    const tensor_view& t = ckpt.at(n);
    tensor_to_f32(t, out.data() + at);
    at += static_cast<size_t>(t.numel());
  }
  return out;
}

std::string layer_tensor(int layer, const std::string& suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

std::vector<expected_tensor> expected_tensors(const model_config& c) {
  const int64_t h = c.hidden_size, v = c.vocab_size, inter = c.intermediate_size;
  const int64_t q = c.q_size(), kv = c.kv_size(), hd = c.head_dim;
  std::vector<expected_tensor> out;
  out.push_back({"model.embed_tokens.weight", {v, h}});
  for (int i = 0; i < c.num_layers; ++i) {
    auto L = [&](const std::string& s) { return layer_tensor(i, s); };
    out.push_back({L("input_layernorm.weight"), {h}});
    out.push_back({L("self_attn.q_proj.weight"), {q, h}});
    out.push_back({L("self_attn.k_proj.weight"), {kv, h}});
    out.push_back({L("self_attn.v_proj.weight"), {kv, h}});
    out.push_back({L("self_attn.o_proj.weight"), {h, q}});
    if (c.attention_bias) {
      out.push_back({L("self_attn.q_proj.bias"), {q}});
      out.push_back({L("self_attn.k_proj.bias"), {kv}});
      out.push_back({L("self_attn.v_proj.bias"), {kv}});
      // Llama's attention_bias also covers o_proj; Qwen2 has biases on q/k/v only.
      if (c.arch != model_arch::qwen2) out.push_back({L("self_attn.o_proj.bias"), {h}});
    }
    if (c.qk_norm) {
      out.push_back({L("self_attn.q_norm.weight"), {hd}});
      out.push_back({L("self_attn.k_norm.weight"), {hd}});
    }
    out.push_back({L("post_attention_layernorm.weight"), {h}});
    out.push_back({L("mlp.gate_proj.weight"), {inter, h}});
    out.push_back({L("mlp.up_proj.weight"), {inter, h}});
    out.push_back({L("mlp.down_proj.weight"), {h, inter}});
    if (c.mlp_bias) {
      out.push_back({L("mlp.gate_proj.bias"), {inter}});
      out.push_back({L("mlp.up_proj.bias"), {inter}});
      out.push_back({L("mlp.down_proj.bias"), {h}});
    }
  }
  out.push_back({"model.norm.weight", {h}});
  out.push_back({"lm_head.weight", {v, h}, c.tie_word_embeddings});
  return out;
}

static std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

static bool ignorable(const std::string& name) {
  const std::string suffix = "rotary_emb.inv_freq";
  return name.size() >= suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void validate_checkpoint(const checkpoint& ckpt, const model_config& c) {
  std::set<std::string> expected_names;
  for (const auto& e : expected_tensors(c)) {
    expected_names.insert(e.name);
    const tensor_view* t = ckpt.find(e.name);
    if (!t) {
      if (e.optional) continue;
      throw error(ckpt.dir() + ": missing tensor '" + e.name + "' (expected shape " + shape_str(e.shape) +
                  ")");
    }
    if (t->shape != e.shape) {
      throw error(t->file + ": tensor '" + e.name + "' has shape " + t->shape_str() + ", expected " +
                  shape_str(e.shape));
    }
    if (t->type != dtype::bf16 && t->type != dtype::f16 && t->type != dtype::f32) {
      throw error(t->file + ": tensor '" + e.name + "' has unsupported dtype " + t->type_name +
                  " (supported: BF16, F16, F32)");
    }
  }
  for (const auto& [name, t] : ckpt.tensors()) {
    if (!expected_names.count(name) && !ignorable(name)) {
      throw error(t.file + ": unexpected tensor '" + name + "' for " + c.architecture + " with " +
                  std::to_string(c.num_layers) + " layers");
    }
  }
}

}  // namespace troupe
