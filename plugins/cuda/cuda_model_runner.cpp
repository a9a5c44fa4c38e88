#include "plugins/cuda/cuda_model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/model_layout.h"
#include "core/safetensors.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/sampling.h"

namespace troupe {

namespace kc = kernels::cuda;

namespace {

std::vector<kc::bf16> to_bf16(const std::vector<float>& f) {
  std::vector<kc::bf16> out(f.size());
  for (size_t i = 0; i < f.size(); ++i) out[i] = __float2bfloat16(f[i]);
  return out;
}

}  // namespace

template <typename T>
T* cuda_model_runner::device_alloc(size_t n) {
  void* p = nullptr;
  TROUPE_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)));
  allocations_.push_back(p);
  return static_cast<T*>(p);
}

template <typename T>
void cuda_model_runner::grow(T*& buf, size_t& cap, size_t n) {
  if (n <= cap && buf != nullptr) return;
  // Outside steady state only: a step larger than every step before it. 1.5x so growth is rare.
  const size_t want = std::max(n, cap + cap / 2);
  TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (buf != nullptr) TROUPE_CUDA_CHECK(cudaFree(buf));
  ++buffers_gen_;  // graphs captured with the old pointer must be captured again
  void* p = nullptr;
  TROUPE_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(1, want) * sizeof(T)));
  buf = static_cast<T*>(p);
  cap = want;
}

cuda_model_runner::~cuda_model_runner() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g.exec);
  gemm_.reset();
  for (void* p : allocations_) cudaFree(p);
  for (void* p :
       {static_cast<void*>(ints_), static_cast<void*>(inv_freq_rows_), static_cast<void*>(residual_),
        static_cast<void*>(x_), static_cast<void*>(h_), static_cast<void*>(qkv_), static_cast<void*>(attn_),
        static_cast<void*>(gu_), static_cast<void*>(act_), static_cast<void*>(sel_),
        static_cast<void*>(logits_), static_cast<void*>(workspace_), static_cast<void*>(greedy_ids_),
        static_cast<void*>(greedy_lp_)}) {
    if (p != nullptr) cudaFree(p);
  }
  for (int32_t* p : ints_stage_) {
    if (p != nullptr) cudaFreeHost(p);
  }
  if (pending_ids_ != nullptr) cudaFree(pending_ids_);
  if (greedy_ids_host_ != nullptr) cudaFreeHost(greedy_ids_host_);
  if (greedy_lp_host_ != nullptr) cudaFreeHost(greedy_lp_host_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

std::unique_ptr<cuda_model_runner> cuda_model_runner::load(const std::string& model_dir,
                                                           const cuda_runner_options& opt) {
  namespace fs = std::filesystem;
  const bool config_file = opt.random_weights && fs::is_regular_file(model_dir);
  if (!config_file && !fs::is_directory(model_dir)) throw error(model_dir + ": not a model directory");
  if (opt.attention != "flash" && opt.attention != "paged") {
    throw error("attention '" + opt.attention + "' is not one of: flash, paged");
  }
  if (opt.block_size <= 0 || opt.block_size > 1024) {
    throw error("block_size must be in 1..1024, got " + std::to_string(opt.block_size));
  }
  std::unique_ptr<cuda_model_runner> r(new cuda_model_runner());
  r->opt_ = opt;
  r->cfg_ = model_config::load(config_file ? model_dir : (fs::path(model_dir) / "config.json").string());
  const model_config& c = r->cfg_;
  {  // Refuse shapes the kernels were not built for now, with every reason at once.
    std::string why;
    if (c.head_dim != 32 && c.head_dim != 64 && c.head_dim != 128 && c.head_dim != 256) {
      why += " head_dim " + std::to_string(c.head_dim) + " is not one of 32, 64, 128, 256;";
    }
    const int group = c.num_heads / std::max(1, c.num_kv_heads);
    if (opt.attention == "paged" && (group & (group - 1)) != 0) {
      why +=
          " paged attention takes 1, 2, 4 or 8 query heads per kv head, not " + std::to_string(group) + ";";
    }
    if (opt.attention == "paged" && group > c.head_dim / 8) {
      why += " paged attention needs head_dim >= 8 * group;";
    }
    if (c.hidden_size % 8 != 0 || c.intermediate_size % 8 != 0)
      why += " hidden/intermediate sizes must be multiples of 8;";
    if (!why.empty()) throw error(model_dir + ": the CUDA backend cannot run this model:" + why);
  }
  TROUPE_CUDA_CHECK(cudaSetDevice(opt.device));
  TROUPE_CUDA_CHECK(cudaStreamCreateWithFlags(&r->stream_, cudaStreamNonBlocking));
  r->gemm_ = std::make_unique<kc::gemm_context>();
  std::unique_ptr<checkpoint> ckpt;
  if (!opt.random_weights) {
    ckpt = std::make_unique<checkpoint>(checkpoint::open(model_dir));
    validate_checkpoint(*ckpt, c);
  }
  uint64_t seed = opt.seed;
  int64_t uploaded = 0;  // bytes, for opt.on_progress
  // One weight: the named tensors stacked along rows, or numel random values (mean, std) drawn on the GPU.
  auto weight = [&](const std::vector<std::string>& names, int64_t numel, float mean, float stddev) {
    kc::bf16* d = r->device_alloc<kc::bf16>(static_cast<size_t>(numel));
    uploaded += numel * static_cast<int64_t>(sizeof(kc::bf16));
    if (ckpt) {
      const auto host = to_bf16(stack_tensors_f32(*ckpt, names));
      TROUPE_CHECK_EQ(static_cast<int64_t>(host.size()), numel) << names[0];
      TROUPE_CUDA_CHECK(cudaMemcpy(d, host.data(), host.size() * sizeof(kc::bf16), cudaMemcpyHostToDevice));
    } else {
      kc::fill_random_normal(d, numel, (seed++) * 0x9e3779b97f4a7c15ull, mean, stddev, r->stream_);
    }
    return d;
  };
  const int64_t H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size, hd = c.head_dim;
  const int64_t qkv_w = c.q_size() + 2 * c.kv_size();
  r->embed_ = weight({"model.embed_tokens.weight"}, V * H, 0.0f, 0.02f);
  r->lm_head_ = c.tie_word_embeddings ? r->embed_ : weight({"lm_head.weight"}, V * H, 0.0f, 0.02f);
  r->final_norm_ = weight({"model.norm.weight"}, H, 1.0f, 0.0f);
  r->layers_.resize(c.num_layers);
  if (opt.on_progress) opt.on_progress(0, c.num_layers, uploaded);
  for (int i = 0; i < c.num_layers; ++i) {
    if (i > 0 && opt.on_progress) opt.on_progress(i, c.num_layers, uploaded);
    layer& L = r->layers_[i];
    auto n = [&](const std::string& s) { return layer_tensor(i, s); };
    L.ln1 = weight({n("input_layernorm.weight")}, H, 1.0f, 0.0f);
    L.ln2 = weight({n("post_attention_layernorm.weight")}, H, 1.0f, 0.0f);
    L.wqkv =
        weight({n("self_attn.q_proj.weight"), n("self_attn.k_proj.weight"), n("self_attn.v_proj.weight")},
               qkv_w * H, 0.0f, 0.02f);
    if (c.attention_bias) {
      L.bqkv = weight({n("self_attn.q_proj.bias"), n("self_attn.k_proj.bias"), n("self_attn.v_proj.bias")},
                      qkv_w, 0.0f, 0.02f);
      if (ckpt && ckpt->find(n("self_attn.o_proj.bias")))
        L.bo = weight({n("self_attn.o_proj.bias")}, H, 0.0f, 0.0f);
    }
    L.wo = weight({n("self_attn.o_proj.weight")}, H * c.q_size(), 0.0f, 0.02f);
    if (c.qk_norm) {
      L.q_norm = weight({n("self_attn.q_norm.weight")}, hd, 1.0f, 0.0f);
      L.k_norm = weight({n("self_attn.k_norm.weight")}, hd, 1.0f, 0.0f);
    }
    L.wgu = weight({n("mlp.gate_proj.weight"), n("mlp.up_proj.weight")}, 2 * I * H, 0.0f, 0.02f);
    L.wdown = weight({n("mlp.down_proj.weight")}, H * I, 0.0f, 0.02f);
    if (c.mlp_bias) {
      L.bgu = weight({n("mlp.gate_proj.bias"), n("mlp.up_proj.bias")}, 2 * I, 0.0f, 0.02f);
      L.bdown = weight({n("mlp.down_proj.bias")}, H, 0.0f, 0.02f);
    }
  }
  TROUPE_CUDA_CHECK(cudaStreamSynchronize(r->stream_));  // the random fills ran on the stream
  if (opt.on_progress) opt.on_progress(c.num_layers, c.num_layers, uploaded);
  {
    const auto f = rope_inv_freq(c, 0);
    r->base_inv_freq_ = r->device_alloc<float>(f.size());
    TROUPE_CUDA_CHECK(
        cudaMemcpy(r->base_inv_freq_, f.data(), f.size() * sizeof(float), cudaMemcpyHostToDevice));
  }

  // KV cache: what is left of gpu_memory_utilization after the weights, less a reserve for step buffers.
  r->block_size_ = opt.block_size;
  const size_t block_bytes = 2ull * c.num_layers * opt.block_size * c.kv_size() * sizeof(kc::bf16);
  int64_t blocks = opt.num_kv_blocks;
  if (blocks <= 0) {
    size_t free_b = 0, total_b = 0;
    TROUPE_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const double reserve = 512.0 * (1 << 20) + 64.0 * c.vocab_size * sizeof(float) * 256;
    const double budget = opt.gpu_memory_utilization * total_b - (total_b - free_b) - reserve;
    blocks = static_cast<int64_t>(std::max(0.0, budget) / block_bytes);
    if (opt.max_kv_tokens > 0)
      blocks = std::min<int64_t>(blocks, (opt.max_kv_tokens + opt.block_size - 1) / opt.block_size);
    if (blocks <= 0) {
      throw error("gpu_memory_utilization " + std::to_string(opt.gpu_memory_utilization) +
                  " leaves no room for the KV cache after the weights");
    }
  }
  r->num_blocks_ = static_cast<int32_t>(blocks);
  // One block more than the pool: padded rows of a CUDA-graph decode step write their K/V there.
  const size_t cache = static_cast<size_t>(blocks + 1) * opt.block_size * c.kv_size();
  for (auto& L : r->layers_) {
    L.k_cache = r->device_alloc<kc::bf16>(cache);
    L.v_cache = r->device_alloc<kc::bf16>(cache);
    // Zeroed once so a (buggy) read of an unwritten slot gives finite values rather than NaN garbage.
    TROUPE_CUDA_CHECK(cudaMemset(L.k_cache, 0, cache * sizeof(kc::bf16)));
    TROUPE_CUDA_CHECK(cudaMemset(L.v_cache, 0, cache * sizeof(kc::bf16)));
  }
  return r;
}

void cuda_model_runner::copy_blocks(const int32_t* src, const int32_t* dst, int32_t n) {
  const size_t block = static_cast<size_t>(block_size_) * cfg_.kv_size();
  for (auto& L : layers_) {
    for (int32_t i = 0; i < n; ++i) {
      TROUPE_CHECK(src[i] >= 0 && src[i] < num_blocks_ && dst[i] >= 0 && dst[i] < num_blocks_)
          << src[i] << dst[i];
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(L.k_cache + dst[i] * block, L.k_cache + src[i] * block,
                                        block * sizeof(kc::bf16), cudaMemcpyDeviceToDevice, stream_));
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(L.v_cache + dst[i] * block, L.v_cache + src[i] * block,
                                        block * sizeof(kc::bf16), cudaMemcpyDeviceToDevice, stream_));
    }
  }
}

void cuda_model_runner::reserve_host_blocks(int32_t num_slots) {
  TROUPE_CHECK_GE(num_slots, 0);
  num_host_slots_ = num_slots;
  const size_t n = static_cast<size_t>(num_slots) * block_size_ * cfg_.kv_size();
  for (auto& L : layers_) {
    L.k_host.assign(n, __float2bfloat16(0.0f));
    L.v_host.assign(n, __float2bfloat16(0.0f));
  }
}

void cuda_model_runner::swap_out(const int32_t* src, const int32_t* dst, int32_t n) {
  const size_t block = static_cast<size_t>(block_size_) * cfg_.kv_size();
  for (auto& L : layers_) {
    for (int32_t i = 0; i < n; ++i) {
      TROUPE_CHECK(src[i] >= 0 && src[i] < num_blocks_ && dst[i] >= 0 && dst[i] < num_host_slots_)
          << src[i] << dst[i];
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(L.k_host.data() + dst[i] * block, L.k_cache + src[i] * block,
                                        block * sizeof(kc::bf16), cudaMemcpyDeviceToHost, stream_));
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(L.v_host.data() + dst[i] * block, L.v_cache + src[i] * block,
                                        block * sizeof(kc::bf16), cudaMemcpyDeviceToHost, stream_));
    }
  }
  TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the caller may reuse the device blocks at once
}

void cuda_model_runner::swap_in(const int32_t* src, const int32_t* dst, int32_t n) {
  const size_t block = static_cast<size_t>(block_size_) * cfg_.kv_size();
  for (auto& L : layers_) {
    for (int32_t i = 0; i < n; ++i) {
      TROUPE_CHECK(src[i] >= 0 && src[i] < num_host_slots_ && dst[i] >= 0 && dst[i] < num_blocks_)
          << src[i] << dst[i];
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(L.k_cache + dst[i] * block, L.k_host.data() + src[i] * block,
                                        block * sizeof(kc::bf16), cudaMemcpyHostToDevice, stream_));
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(L.v_cache + dst[i] * block, L.v_host.data() + src[i] * block,
                                        block * sizeof(kc::bf16), cudaMemcpyHostToDevice, stream_));
    }
  }
  TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void cuda_model_runner::ensure_step_buffers(int64_t T, int64_t n_logits, int32_t max_ctx) {
  const model_config& c = cfg_;
  const int64_t H = c.hidden_size, qkv_w = c.q_size() + 2 * c.kv_size(), inter = c.intermediate_size;
  grow(residual_, residual_cap_, T * H);
  grow(x_, x_cap_, T * H);
  grow(h_, h_cap_, T * H);
  grow(qkv_, qkv_cap_, T * qkv_w);
  grow(attn_, attn_cap_, T * c.q_size());
  grow(gu_, gu_cap_, T * 2 * inter);
  grow(act_, act_cap_, T * inter);
  grow(workspace_, workspace_cap_,
       kc::attention_workspace_floats(static_cast<int32_t>(T), c.num_heads, c.head_dim, max_ctx));
  if (n_logits > 0) {
    grow(sel_, sel_cap_, n_logits * H);
    grow(logits_, logits_cap_, n_logits * c.vocab_size);
  }
}

void cuda_model_runner::ensure_ints(size_t n_ints) {
  if (n_ints > ints_host_cap_ || ints_stage_[0] == nullptr) {
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));  // queued uploads may still read the old ones
    ints_host_cap_ = std::max({n_ints, ints_host_cap_ + ints_host_cap_ / 2, size_t{1024}});
    for (int32_t*& p : ints_stage_) {
      if (p != nullptr) TROUPE_CUDA_CHECK(cudaFreeHost(p));
      TROUPE_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&p), ints_host_cap_ * sizeof(int32_t)));
    }
  }
  ints_host_ = ints_stage_[stage_];
  grow(ints_, ints_cap_, n_ints);
}

// Step N + 1 fills the staging buffer step N - 1 used: at most two steps are outstanding, so step N - 1
// was collected (its upload ran) before step N + 1 is built.
void cuda_model_runner::next_stage() { stage_ ^= 1; }

void cuda_model_runner::check_pending(const forward_batch& b) const {
  if (b.pending_rows == nullptr) return;
  for (int64_t t = 0; t < b.num_tokens; ++t) {
    const int32_t r = b.pending_rows[t];
    TROUPE_CHECK(r < 0 || r < last_num_rows_)
        << "token" << t << "is pending on row" << r << "of a previous step with" << last_num_rows_ << "rows";
  }
}

// Everything from the embedding to the LM head, on stream_, for inputs already on the device. Launches
// only: no allocation and no synchronization, so that a CUDA graph can capture it.
void cuda_model_runner::launch_model(const step_shape& sh) {
  const model_config& c = cfg_;
  const int64_t T = sh.T, H = c.hidden_size, hd = c.head_dim;
  const int64_t qs = c.q_size(), kvs = c.kv_size(), qkv_w = qs + 2 * kvs;
  const int64_t inter = c.intermediate_size, V = c.vocab_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  kc::attention_params ap{};
  ap.q = qkv_;
  ap.q_stride = static_cast<int32_t>(qkv_w);
  ap.out = attn_;
  ap.query_start = sh.d_qs;
  ap.context_lens = sh.d_ctx;
  ap.block_tables = sh.d_tables;
  ap.workspace = workspace_;
  ap.workspace_floats = workspace_cap_;
  ap.num_seqs = static_cast<int32_t>(sh.S);
  ap.num_tokens = static_cast<int32_t>(T);
  ap.max_q_len = sh.max_q;
  ap.max_context_len = sh.max_ctx;
  ap.max_blocks_per_seq = sh.max_blocks;
  ap.num_heads = c.num_heads;
  ap.num_kv_heads = c.num_kv_heads;
  ap.head_dim = c.head_dim;
  ap.block_size = block_size_;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  ap.sliding_window = c.sliding_window ? *c.sliding_window : 0;
  const bool paged_decode = opt_.attention == "paged" && sh.max_q == 1;
  // Decode steps of the flash plugin apply RoPE inside the attention kernel (TROUPE_FUSED_ROPE=0: apart).
  static const bool fused_rope_on = [] {
    const char* e = std::getenv("TROUPE_FUSED_ROPE");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  const bool fuse_rope = fused_rope_on && !paged_decode && sh.max_q == 1;

  // residual = 0 + embedding (exact in fp32), then layer 0's norm: the same fused kernel as every layer.
  // (The memset first: kernels after it start as programmatic dependents of the kernel before them.)
  TROUPE_CUDA_CHECK(cudaMemsetAsync(residual_, 0, T * H * sizeof(float), stream_));
  if (sh.d_pending != nullptr) {
    kc::embedding_pending(sh.d_tokens, sh.d_pending, pending_ids_, embed_, x_, T, H, stream_);
  } else {
    kc::embedding(sh.d_tokens, embed_, x_, T, H, stream_);
  }
  for (int32_t l = 0; l < c.num_layers; ++l) {
    layer& L = layers_[l];
    kc::add_rms_norm(residual_, x_, L.ln1, h_, T, H, eps, stream_);
    gemm_->matmul_xwt(h_, L.wqkv, qkv_, T, qkv_w, H, stream_);
    if (L.bqkv != nullptr) kc::add_bias(qkv_, L.bqkv, T, qkv_w, stream_);
    kc::rope_write_kv_params rp{};
    rp.qkv = qkv_;
    rp.positions = sh.d_pos;
    rp.inv_freq = sh.inv_freq;
    rp.inv_freq_stride = sh.inv_stride;
    rp.slot_mapping = sh.d_slots;
    rp.k_cache = L.k_cache;
    rp.v_cache = L.v_cache;
    rp.q_norm_w = L.q_norm;
    rp.k_norm_w = L.k_norm;
    rp.rows = T;
    rp.num_heads = c.num_heads;
    rp.num_kv_heads = c.num_kv_heads;
    rp.head_dim = c.head_dim;
    rp.norm_eps = eps;
    ap.k_cache = L.k_cache;
    ap.v_cache = L.v_cache;
    if (fuse_rope) {
      // The decode kernel rotates q and the new key and writes the new K/V itself: one launch less.
      ap.rope.positions = sh.d_pos;
      ap.rope.inv_freq = sh.inv_freq;
      ap.rope.inv_freq_stride = sh.inv_stride;
      ap.rope.slot_mapping = sh.d_slots;
      ap.rope.q_norm_w = L.q_norm;
      ap.rope.k_norm_w = L.k_norm;
      ap.rope.norm_eps = eps;
      ap.rope.qkv = qkv_;
      ap.rope.k_cache = L.k_cache;
      ap.rope.v_cache = L.v_cache;
    } else {
      kc::rope_write_kv(rp, stream_);
    }
    if (paged_decode) {
      kc::paged_attention_decode(ap, stream_);
    } else {
      kc::flash_attention(ap, stream_);
    }
    gemm_->matmul_xwt(attn_, L.wo, x_, T, H, qs, stream_);
    if (L.bo != nullptr) kc::add_bias(x_, L.bo, T, H, stream_);
    kc::add_rms_norm(residual_, x_, L.ln2, h_, T, H, eps, stream_);
    if (L.bgu == nullptr && T <= gemm_->gemv_max_m() && kc::gemv_supports(h_, L.wgu, T, 2 * inter, H)) {
      kc::gemv_gate_up_silu(h_, L.wgu, act_, T, inter, H, stream_);  // decode at small batch: one pass
    } else {
      gemm_->matmul_xwt(h_, L.wgu, gu_, T, 2 * inter, H, stream_);
      if (L.bgu != nullptr) kc::add_bias(gu_, L.bgu, T, 2 * inter, stream_);
      kc::silu_mul(gu_, act_, T, inter, stream_);
    }
    gemm_->matmul_xwt(act_, L.wdown, x_, T, H, inter, stream_);
    if (L.bdown != nullptr) kc::add_bias(x_, L.bdown, T, H, stream_);
  }
  if (sh.n_logits == 0) return;
  // Final residual add + norm over every row (cheap next to the LM head), then only the wanted rows go
  // through the LM head: an embedding gather is exactly a row gather.
  kc::add_rms_norm(residual_, x_, final_norm_, h_, T, H, eps, stream_);
  kc::embedding(sh.d_rows, h_, sel_, sh.n_logits, H, stream_);
  gemm_->matmul_xwt_f32(sel_, lm_head_, logits_, sh.n_logits, V, H, stream_);
}

namespace {
// Decode batch sizes with a captured graph; a step of S sequences runs the smallest bucket >= S, padded,
// up to options.max_graph_batch. (With the block-tile decode kernel, buckets past 128 cost more than the
// launches saved: the context bucket widened its split grid. The warp-tile kernel keeps one split at
// large batches, so the buckets go to 256 again.)
constexpr int32_t kGraphBatches[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256};
}  // namespace

bool cuda_model_runner::run_graph(const forward_batch& b, int32_t max_ctx) {
  const int32_t S = b.num_seqs;
  if (!opt_.cuda_graphs || cfg_.rope.type == rope_type::dynamic || b.num_tokens != S || b.num_logits != S ||
      S > kGraphBatches[std::size(kGraphBatches) - 1] || S > opt_.max_graph_batch) {
    return false;
  }
  for (int32_t s = 0; s < S; ++s) {
    if (b.logits_rows[s] != s) return false;
  }
  int32_t B = 0;
  for (int32_t x : kGraphBatches) {
    if (x >= S) {
      B = x;
      break;
    }
  }
  // Context bucket: a multiple of 256 tokens up to 4096, then a power of two. The attention launchers size
  // their grids (split-K parts) from this bound; the kernels read each sequence's real length from the
  // device, as in any mixed batch, so a bucket only costs some empty splits.
  int32_t ctxb = std::max<int32_t>(256, (max_ctx + 255) / 256 * 256);
  if (ctxb > 4096) {
    ctxb = 8192;
    while (ctxb < max_ctx) ctxb *= 2;
  }
  const int32_t MB = (ctxb + block_size_ - 1) / block_size_;
  if (static_cast<int64_t>(B) * MB > (1 << 24)) return false;

  // Fixed layout for the bucket: [tokens B | positions B | slots B | query_start B+1 | context_lens B |
  // block_tables B x MB | logits_rows B | pending B]; padded rows write their K/V into the scratch block.
  const size_t n_ints = 3 * static_cast<size_t>(B) + (B + 1) + B + static_cast<size_t>(B) * MB + 2 * B;
  ensure_ints(n_ints);
  ensure_step_buffers(B, B, ctxb);
  int32_t* tok = ints_host_;
  int32_t* pos = tok + B;
  int32_t* slot = pos + B;
  int32_t* qs = slot + B;
  int32_t* ctx = qs + B + 1;
  int32_t* tab = ctx + B;
  int32_t* rows = tab + static_cast<size_t>(B) * MB;
  int32_t* pend = rows + B;
  const int32_t scratch = num_blocks_;  // the extra block allocated past the pool
  const int32_t copy_blocks = std::min(MB, b.max_blocks_per_seq);
  qs[0] = 0;
  for (int32_t s = 0; s < B; ++s) {
    const bool real = s < S;
    pend[s] = real && b.pending_rows != nullptr ? b.pending_rows[s] : -1;
    tok[s] = real && pend[s] < 0 ? b.token_ids[s] : 0;
    pos[s] = real ? b.positions[s] : 0;
    slot[s] = real ? b.slot_mapping[s] : scratch * block_size_;
    qs[s + 1] = s + 1;
    ctx[s] = real ? b.context_lens[s] : 1;
    int32_t* row = tab + static_cast<size_t>(s) * MB;
    int32_t j = 0;
    if (real) {
      const int32_t* src = b.block_tables + static_cast<size_t>(s) * b.max_blocks_per_seq;
      for (; j < copy_blocks; ++j) row[j] = src[j];
    }
    for (; j < MB; ++j) row[j] = scratch;
    rows[s] = s;
  }
  // The upload is not part of the graph: it reads whichever staging buffer this step filled.
  TROUPE_CUDA_CHECK(
      cudaMemcpyAsync(ints_, ints_host_, n_ints * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));

  const auto key = std::make_pair(B, ctxb);
  auto it = graphs_.find(key);
  if (it != graphs_.end() && it->second.gen != buffers_gen_) {
    TROUPE_CUDA_CHECK(cudaGraphExecDestroy(it->second.exec));
    graphs_.erase(it);
    it = graphs_.end();
  }
  if (it == graphs_.end()) {
    step_shape sh;
    sh.T = B;
    sh.S = B;
    sh.n_logits = B;
    sh.max_q = 1;
    sh.max_ctx = ctxb;
    sh.max_blocks = MB;
    sh.d_tokens = ints_;
    sh.d_pos = ints_ + (pos - ints_host_);
    sh.d_slots = ints_ + (slot - ints_host_);
    sh.d_qs = ints_ + (qs - ints_host_);
    sh.d_ctx = ints_ + (ctx - ints_host_);
    sh.d_tables = ints_ + (tab - ints_host_);
    sh.d_rows = ints_ + (rows - ints_host_);
    sh.d_pending = ints_ + (pend - ints_host_);
    sh.inv_freq = base_inv_freq_;
    sh.inv_stride = 0;
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    cudaGraph_t graph = nullptr;
    TROUPE_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    try {
      launch_model(sh);
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
      throw;
    }
    TROUPE_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    graph_entry e;
    e.gen = buffers_gen_;
    const cudaError_t err = cudaGraphInstantiate(&e.exec, graph, 0);
    cudaGraphDestroy(graph);
    TROUPE_CUDA_CHECK(err);
    it = graphs_.emplace(key, e).first;
  }
  TROUPE_CUDA_CHECK(cudaGraphLaunch(it->second.exec, stream_));
  return true;
}

void cuda_model_runner::run_to_logits(const forward_batch& b) {
  const model_config& c = cfg_;
  const int64_t T = b.num_tokens, hd = c.head_dim, S = b.num_seqs;
  TROUPE_CHECK_GT(T, 0);
  TROUPE_CHECK_EQ(b.query_start[S], b.num_tokens);
  int32_t max_q = 0, max_ctx = 0;
  for (int64_t s = 0; s < S; ++s) {
    max_q = std::max(max_q, b.query_start[s + 1] - b.query_start[s]);
    max_ctx = std::max(max_ctx, b.context_lens[s]);
  }
  check_pending(b);
  for (int64_t t = 0; t < T; ++t) {
    const bool pending = b.pending_rows != nullptr && b.pending_rows[t] >= 0;
    TROUPE_CHECK(pending || (b.token_ids[t] >= 0 && b.token_ids[t] < c.vocab_size))
        << "token" << b.token_ids[t];
    TROUPE_CHECK(b.slot_mapping[t] < static_cast<int64_t>(num_blocks_) * block_size_) << b.slot_mapping[t];
  }
  for (int64_t i = 0; i < b.num_logits; ++i)
    TROUPE_CHECK(b.logits_rows[i] >= 0 && b.logits_rows[i] < T) << b.logits_rows[i];
  if (run_graph(b, max_ctx)) return;

  // One upload for the step's integer inputs: [tokens | positions | slots | query_start | context_lens |
  // block_tables | logits_rows | pending rows, when the step has them].
  const int64_t n_logits = b.num_logits;
  const size_t table_n = static_cast<size_t>(S) * b.max_blocks_per_seq;
  const int64_t n_pending = b.pending_rows != nullptr ? T : 0;
  const size_t n_ints = 3 * T + (S + 1) + S + table_n + n_logits + n_pending;
  ensure_ints(n_ints);  // no step is in flight here: forward() returns only after its stream drained
  int32_t* hp = ints_host_;
  auto put = [&](const int32_t* src, size_t n) {
    int32_t* at = hp;
    if (n > 0) std::memcpy(hp, src, n * sizeof(int32_t));
    hp += n;
    return ints_ + (at - ints_host_);
  };
  step_shape sh;
  sh.T = T;
  sh.S = S;
  sh.n_logits = n_logits;
  sh.max_q = max_q;
  sh.max_ctx = max_ctx;
  sh.max_blocks = b.max_blocks_per_seq;
  sh.d_tokens = put(b.token_ids, T);
  sh.d_pos = put(b.positions, T);
  sh.d_slots = put(b.slot_mapping, T);
  sh.d_qs = put(b.query_start, S + 1);
  sh.d_ctx = put(b.context_lens, S);
  sh.d_tables = put(b.block_tables, table_n);
  sh.d_rows = put(b.logits_rows, n_logits);
  if (n_pending > 0) sh.d_pending = put(b.pending_rows, n_pending);
  TROUPE_CUDA_CHECK(
      cudaMemcpyAsync(ints_, ints_host_, n_ints * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));

  // RoPE frequencies: shared, except dynamic NTK whose base depends on the sequence length (see
  // forward_batch::prompt_lens); computed here exactly as the CPU runner does, then uploaded.
  sh.inv_freq = base_inv_freq_;
  sh.inv_stride = 0;
  if (c.rope.type == rope_type::dynamic) {
    std::vector<float> rows(T * (hd / 2));
    rope_inv_freq_rows(c, static_cast<int32_t>(S), b.query_start, b.positions,
                       b.prompt_lens ? b.prompt_lens : b.context_lens, rows.data());
    grow(inv_freq_rows_, inv_freq_rows_cap_, rows.size());
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(inv_freq_rows_, rows.data(), rows.size() * sizeof(float),
                                      cudaMemcpyHostToDevice, stream_));
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));  // rows is a local vector
    sh.inv_freq = inv_freq_rows_;
    sh.inv_stride = hd / 2;
  }
  ensure_step_buffers(T, n_logits, max_ctx);
  launch_model(sh);
}

void cuda_model_runner::forward(const forward_batch& b, float* logits) {
  TROUPE_CHECK(outstanding_.empty()) << "forward while an asynchronous step is outstanding";
  run_to_logits(b);
  next_stage();
  if (b.num_logits > 0) {
    const size_t n = static_cast<size_t>(b.num_logits) * cfg_.vocab_size;
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(logits, logits_, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  }
  TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void cuda_model_runner::forward_greedy(const forward_batch& b, const uint8_t* greedy, float* logits,
                                       int32_t* ids, float* logprobs) {
  TROUPE_CHECK(outstanding_.empty()) << "forward while an asynchronous step is outstanding";
  run_to_logits(b);
  next_stage();
  const int64_t n = b.num_logits, V = cfg_.vocab_size;
  if (n > 0) {
    // Every row is reduced (one read of the logits, ~30 us for 256 rows of 128k): simpler than gathering
    // the greedy ones, and the non-greedy rows' results are simply not used.
    grow(greedy_ids_, greedy_cap_, n);
    grow(greedy_lp_, greedy_lp_cap_, n);
    if (static_cast<size_t>(n) > greedy_host_cap_) {
      if (greedy_ids_host_ != nullptr) TROUPE_CUDA_CHECK(cudaFreeHost(greedy_ids_host_));
      if (greedy_lp_host_ != nullptr) TROUPE_CUDA_CHECK(cudaFreeHost(greedy_lp_host_));
      greedy_host_cap_ = std::max<size_t>(n, 2 * greedy_host_cap_);
      TROUPE_CUDA_CHECK(
          cudaMallocHost(reinterpret_cast<void**>(&greedy_ids_host_), greedy_host_cap_ * sizeof(int32_t)));
      TROUPE_CUDA_CHECK(
          cudaMallocHost(reinterpret_cast<void**>(&greedy_lp_host_), greedy_host_cap_ * sizeof(float)));
    }
    kc::argmax_logprob(logits_, n, V, greedy_ids_, greedy_lp_, stream_);
    TROUPE_CUDA_CHECK(
        cudaMemcpyAsync(greedy_ids_host_, greedy_ids_, n * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    TROUPE_CUDA_CHECK(
        cudaMemcpyAsync(greedy_lp_host_, greedy_lp_, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    // Rows sampled on the host: their logits, packed. Consecutive ones go in one copy.
    int64_t packed = 0;
    for (int64_t r = 0; r < n;) {
      if (greedy[r]) {
        ++r;
        continue;
      }
      int64_t e = r;
      while (e < n && !greedy[e]) ++e;
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(logits + packed * V, logits_ + r * V, (e - r) * V * sizeof(float),
                                        cudaMemcpyDeviceToHost, stream_));
      packed += e - r;
      r = e;
    }
  }
  TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (int64_t r = 0; r < n; ++r) {
    if (!greedy[r]) continue;
    ids[r] = greedy_ids_host_[r];
    logprobs[r] = greedy_lp_host_[r];
  }
}

void cuda_model_runner::forward_sample(const forward_batch& b, const device_sample_row* rows,
                                       int32_t num_rows, int32_t* ids, float* logprobs, token_logprob* top) {
  forward_sample_submit(b, rows, num_rows);
  forward_sample_collect(ids, logprobs, top);
}

void cuda_model_runner::forward_sample_submit(const forward_batch& b, const device_sample_row* rows,
                                              int32_t num_rows) {
  TROUPE_CHECK_LT(outstanding_.size(), size_t{2}) << "a third step submitted before the first was collected";
  if (!sampler_) sampler_ = std::make_unique<cuda_sampler>(cfg_.vocab_size);
  if (pending_ids_ == nullptr) grow(pending_ids_, pending_ids_cap_, 256);
  // Slot of this step's results: the one the step before the last used (it was collected).
  const int slot = outstanding_.empty() ? stage_ : 1 - outstanding_.back().slot;
  run_to_logits(b);
  next_stage();
  // Growing the device ids buffer synchronizes first, so this step's embedding has read the last ids.
  if (static_cast<size_t>(num_rows) > pending_ids_cap_) grow(pending_ids_, pending_ids_cap_, num_rows);
  sampler_->launch(logits_, b.num_logits, rows, num_rows, slot, opt_.async_steps ? pending_ids_ : nullptr,
                   stream_);
  outstanding_.push_back(outstanding_step{slot});
  last_num_rows_ = num_rows;
}

void cuda_model_runner::forward_sample_collect(int32_t* ids, float* logprobs, token_logprob* top) {
  TROUPE_CHECK(!outstanding_.empty()) << "collect without a submitted step";
  const outstanding_step st = outstanding_.front();
  outstanding_.erase(outstanding_.begin());
  sampler_->finish(st.slot, ids, logprobs, top);
}

}  // namespace troupe
