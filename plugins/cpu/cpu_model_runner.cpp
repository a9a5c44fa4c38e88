#include "plugins/cpu/cpu_model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/model_layout.h"
#include "core/safetensors.h"
#include "kernels/cpu/ops.h"

namespace troupe {

namespace k = kernels::cpu;

namespace {

template <typename T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

std::unique_ptr<cpu_model_runner> cpu_model_runner::load(const std::string& model_dir,
                                                         const cpu_runner_options& opt) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(model_dir)) throw error(model_dir + ": not a model directory");
  std::unique_ptr<cpu_model_runner> r(new cpu_model_runner());
  r->cfg_ = model_config::load((fs::path(model_dir) / "config.json").string());
  const model_config& c = r->cfg_;
  checkpoint ckpt = checkpoint::open(model_dir);
  validate_checkpoint(ckpt, c);

  r->embed_ = load_tensor_f32(ckpt, "model.embed_tokens.weight");
  if (!c.tie_word_embeddings) r->lm_head_ = load_tensor_f32(ckpt, "lm_head.weight");
  r->final_norm_ = load_tensor_f32(ckpt, "model.norm.weight");
  r->layers_.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    layer& L = r->layers_[i];
    auto n = [&](const std::string& s) { return layer_tensor(i, s); };
    L.ln1 = load_tensor_f32(ckpt, n("input_layernorm.weight"));
    L.ln2 = load_tensor_f32(ckpt, n("post_attention_layernorm.weight"));
    L.wqkv = stack_tensors_f32(
        ckpt, {n("self_attn.q_proj.weight"), n("self_attn.k_proj.weight"), n("self_attn.v_proj.weight")});
    if (c.attention_bias) {
      L.bqkv = stack_tensors_f32(
          ckpt, {n("self_attn.q_proj.bias"), n("self_attn.k_proj.bias"), n("self_attn.v_proj.bias")});
      if (ckpt.find(n("self_attn.o_proj.bias"))) L.bo = load_tensor_f32(ckpt, n("self_attn.o_proj.bias"));
    }
    L.wo = load_tensor_f32(ckpt, n("self_attn.o_proj.weight"));
    if (c.qk_norm) {
      L.q_norm = load_tensor_f32(ckpt, n("self_attn.q_norm.weight"));
      L.k_norm = load_tensor_f32(ckpt, n("self_attn.k_norm.weight"));
    }
    L.wgu = stack_tensors_f32(ckpt, {n("mlp.gate_proj.weight"), n("mlp.up_proj.weight")});
    L.wdown = load_tensor_f32(ckpt, n("mlp.down_proj.weight"));
    if (c.mlp_bias) {
      L.bgu = stack_tensors_f32(ckpt, {n("mlp.gate_proj.bias"), n("mlp.up_proj.bias")});
      L.bdown = load_tensor_f32(ckpt, n("mlp.down_proj.bias"));
    }
  }

  if (opt.block_size <= 0 || opt.block_size > 1024) {
    throw error("block_size must be in 1..1024, got " + std::to_string(opt.block_size));
  }
  r->block_size_ = opt.block_size;
  int64_t blocks = opt.num_kv_blocks;
  if (blocks <= 0) {
    int64_t tokens =
        opt.max_kv_tokens > 0 ? opt.max_kv_tokens : std::min<int64_t>(c.max_position_embeddings, 8192);
    blocks = (tokens + opt.block_size - 1) / opt.block_size;
  }
  r->num_blocks_ = static_cast<int32_t>(blocks);
  const size_t cache = static_cast<size_t>(blocks) * opt.block_size * c.kv_size();
  for (auto& L : r->layers_) {
    L.k_cache.assign(cache, 0.0f);
    L.v_cache.assign(cache, 0.0f);
  }
  r->base_inv_freq_ = rope_inv_freq(c, 0);
  return r;
}

void cpu_model_runner::copy_blocks(const int32_t* src, const int32_t* dst, int32_t n) {
  const size_t block = static_cast<size_t>(block_size_) * cfg_.kv_size();
  for (auto& L : layers_) {
    for (int32_t i = 0; i < n; ++i) {
      TROUPE_CHECK(src[i] >= 0 && src[i] < num_blocks_ && dst[i] >= 0 && dst[i] < num_blocks_)
          << src[i] << dst[i];
      std::memcpy(L.k_cache.data() + dst[i] * block, L.k_cache.data() + src[i] * block,
                  block * sizeof(float));
      std::memcpy(L.v_cache.data() + dst[i] * block, L.v_cache.data() + src[i] * block,
                  block * sizeof(float));
    }
  }
}

void cpu_model_runner::reserve_host_blocks(int32_t num_slots) {
  TROUPE_CHECK_GE(num_slots, 0);
  num_host_slots_ = num_slots;
  const size_t n = static_cast<size_t>(num_slots) * block_size_ * cfg_.kv_size();
  for (auto& L : layers_) {
    L.k_host.assign(n, 0.0f);
    L.v_host.assign(n, 0.0f);
  }
}

void cpu_model_runner::swap_out(const int32_t* src, const int32_t* dst, int32_t n) {
  // On the CPU backend "device" and host memory are the same RAM; the copy keeps the contract honest.
  const size_t block = static_cast<size_t>(block_size_) * cfg_.kv_size();
  for (auto& L : layers_) {
    for (int32_t i = 0; i < n; ++i) {
      TROUPE_CHECK(src[i] >= 0 && src[i] < num_blocks_ && dst[i] >= 0 && dst[i] < num_host_slots_)
          << src[i] << dst[i];
      std::memcpy(L.k_host.data() + dst[i] * block, L.k_cache.data() + src[i] * block, block * sizeof(float));
      std::memcpy(L.v_host.data() + dst[i] * block, L.v_cache.data() + src[i] * block, block * sizeof(float));
    }
  }
}

void cpu_model_runner::swap_in(const int32_t* src, const int32_t* dst, int32_t n) {
  const size_t block = static_cast<size_t>(block_size_) * cfg_.kv_size();
  for (auto& L : layers_) {
    for (int32_t i = 0; i < n; ++i) {
      TROUPE_CHECK(src[i] >= 0 && src[i] < num_host_slots_ && dst[i] >= 0 && dst[i] < num_blocks_)
          << src[i] << dst[i];
      std::memcpy(L.k_cache.data() + dst[i] * block, L.k_host.data() + src[i] * block, block * sizeof(float));
      std::memcpy(L.v_cache.data() + dst[i] * block, L.v_host.data() + src[i] * block, block * sizeof(float));
    }
  }
}

void cpu_model_runner::forward(const forward_batch& b, float* logits) {
  const model_config& c = cfg_;
  const int64_t T = b.num_tokens, H = c.hidden_size, hd = c.head_dim;
  const int64_t nq = c.num_heads, nkv = c.num_kv_heads, qs = c.q_size(), kvs = c.kv_size();
  const int64_t inter = c.intermediate_size, V = c.vocab_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  TROUPE_CHECK_GT(T, 0);
  TROUPE_CHECK_EQ(b.query_start[b.num_seqs], b.num_tokens);
  for (int64_t t = 0; t < T; ++t) {
    TROUPE_CHECK(b.token_ids[t] >= 0 && b.token_ids[t] < c.vocab_size) << "token" << b.token_ids[t];
    TROUPE_CHECK(b.slot_mapping[t] < static_cast<int64_t>(num_blocks_) * block_size_) << b.slot_mapping[t];
  }

  grow(x_, T * H);
  grow(residual_, T * H);
  grow(h_, T * H);
  grow(qkv_, T * (qs + 2 * kvs));
  grow(q_, T * qs);
  grow(k_, T * kvs);
  grow(v_, T * kvs);
  grow(attn_, T * qs);
  grow(o_, T * H);
  grow(gu_, T * 2 * inter);
  grow(act_, T * inter);

  // RoPE frequencies: shared, except dynamic NTK whose base depends on the sequence length (see
  // forward_batch::prompt_lens).
  const float* inv_freq = base_inv_freq_.data();
  int64_t inv_stride = 0;
  if (c.rope.type == rope_type::dynamic) {
    grow(inv_freq_rows_, T * (hd / 2));
    rope_inv_freq_rows(c, b.num_seqs, b.query_start, b.positions,
                       b.prompt_lens ? b.prompt_lens : b.context_lens, inv_freq_rows_.data());
    inv_freq = inv_freq_rows_.data();
    inv_stride = hd / 2;
  }

  k::embedding(b.token_ids, embed_.data(), residual_.data(), T, H);
  for (int32_t l = 0; l < c.num_layers; ++l) {
    layer& L = layers_[l];
    if (l == 0) {
      k::rms_norm(residual_.data(), L.ln1.data(), h_.data(), T, H, eps);
    } else {
      k::add_rms_norm(residual_.data(), x_.data(), L.ln1.data(), h_.data(), T, H, eps);
    }
    const int64_t qkv_w = qs + 2 * kvs;
    k::matmul_xwt(h_.data(), L.wqkv.data(), L.bqkv.empty() ? nullptr : L.bqkv.data(), qkv_.data(), T, qkv_w,
                  H);
    for (int64_t t = 0; t < T; ++t) {
      const float* row = qkv_.data() + t * qkv_w;
      std::memcpy(q_.data() + t * qs, row, qs * sizeof(float));
      std::memcpy(k_.data() + t * kvs, row + qs, kvs * sizeof(float));
      std::memcpy(v_.data() + t * kvs, row + qs + kvs, kvs * sizeof(float));
    }
    if (c.qk_norm) {
      k::rms_norm(q_.data(), L.q_norm.data(), q_.data(), T * nq, hd, eps);
      k::rms_norm(k_.data(), L.k_norm.data(), k_.data(), T * nkv, hd, eps);
    }
    k::rope(q_.data(), b.positions, inv_freq, inv_stride, T, nq, hd);
    k::rope(k_.data(), b.positions, inv_freq, inv_stride, T, nkv, hd);
    k::write_kv(k_.data(), v_.data(), b.slot_mapping, L.k_cache.data(), L.v_cache.data(), T, nkv, hd);

    k::paged_attention_params p;
    p.q = q_.data();
    p.k_cache = L.k_cache.data();
    p.v_cache = L.v_cache.data();
    p.out = attn_.data();
    p.query_start = b.query_start;
    p.context_lens = b.context_lens;
    p.block_tables = b.block_tables;
    p.num_seqs = b.num_seqs;
    p.max_blocks_per_seq = b.max_blocks_per_seq;
    p.num_heads = c.num_heads;
    p.num_kv_heads = c.num_kv_heads;
    p.head_dim = c.head_dim;
    p.block_size = block_size_;
    p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
    p.sliding_window = c.sliding_window ? *c.sliding_window : 0;
    k::paged_attention(p);

    k::matmul_xwt(attn_.data(), L.wo.data(), L.bo.empty() ? nullptr : L.bo.data(), o_.data(), T, H, qs);
    k::add_rms_norm(residual_.data(), o_.data(), L.ln2.data(), h_.data(), T, H, eps);
    k::matmul_xwt(h_.data(), L.wgu.data(), L.bgu.empty() ? nullptr : L.bgu.data(), gu_.data(), T, 2 * inter,
                  H);
    k::silu_mul(gu_.data(), act_.data(), T, inter);
    k::matmul_xwt(act_.data(), L.wdown.data(), L.bdown.empty() ? nullptr : L.bdown.data(), x_.data(), T, H,
                  inter);
  }

  // Only the rows that need logits go through the final norm and the LM head.
  const int64_t n = b.num_logits;
  if (n == 0) return;
  grow(sel_, n * H);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = b.logits_rows[i];
    TROUPE_CHECK(t >= 0 && t < T) << t;
    float* dst = sel_.data() + i * H;
    for (int64_t j = 0; j < H; ++j) dst[j] = residual_[t * H + j] + x_[t * H + j];
  }
  k::rms_norm(sel_.data(), final_norm_.data(), sel_.data(), n, H, eps);
  const float* head = lm_head_.empty() ? embed_.data() : lm_head_.data();
  k::matmul_xwt(sel_.data(), head, nullptr, logits, n, V, H);
}

}  // namespace troupe
