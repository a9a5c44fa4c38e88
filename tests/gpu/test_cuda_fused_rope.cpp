// The flash decode kernel with the rotary embedding fused (attention_params::rope) against rope_write_kv
// followed by the same kernel: the attention output and the new K/V rows in the cache must be bit-identical,
// since both round q and k to bf16 the same way (kernels/cuda/rope.cuh). Random q/k/v rows and caches,
// ragged contexts (1 to 4100 keys), shuffled block tables, GQA groups 1/4/8,
// head dims 64/128, per-head q/k norms on and off, fixed split counts and the automatic choice, and the
// block-tile kernel, for which the launcher falls back to rope_write_kv first.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace troupe {
namespace {

namespace kc = kernels::cuda;
using gpu_test::device_buffer;
using bf16 = __nv_bfloat16;

struct shape {
  int heads, kv_heads, head_dim;
  bool qk_norm;
  int splits;
  // block_tiles cannot apply the rope itself: flash_attention_decode then runs rope_write_kv first (the
  // fallback the launcher takes for kernels or shapes without the fused path).
  kc::flash_decode_kernel kernel = kc::flash_decode_kernel::warp_tiles;
  // Sequence 0's slot is -1 (a padding token): neither path writes its K/V. Its output is then not compared
  // (the unfused path attends to the cache's stale row there, the persistent kernel to the new key).
  bool pad_first = false;
};

void run_case(const shape& sh, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  const std::vector<int> ctx = {1, 17, 140, 1000, 4100};
  const int S = static_cast<int>(ctx.size()), D = sh.head_dim, bs = 16;
  const int row_w = (sh.heads + 2 * sh.kv_heads) * D;
  int max_ctx = 0, max_blocks = 0, num_blocks = 0;
  for (int c : ctx) {
    max_ctx = std::max(max_ctx, c);
    max_blocks = std::max(max_blocks, (c + bs - 1) / bs);
  }
  num_blocks = S * max_blocks + 3;
  std::vector<int32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> tables(static_cast<size_t>(S) * max_blocks), qs(S + 1), lens(ctx.begin(), ctx.end());
  std::vector<int32_t> pos(S), slots(S);
  for (int s = 0; s < S; ++s) {
    qs[s + 1] = s + 1;
    for (int b = 0; b < max_blocks; ++b)
      tables[static_cast<size_t>(s) * max_blocks + b] = pool[s * max_blocks + b];
    pos[s] = ctx[s] - 1;
    slots[s] = tables[static_cast<size_t>(s) * max_blocks + pos[s] / bs] * bs + pos[s] % bs;
  }
  if (sh.pad_first) slots[0] = -1;
  const size_t cache_n = static_cast<size_t>(num_blocks) * bs * sh.kv_heads * D;
  const auto qkv_h = gpu_test::random_bf16(rng, static_cast<size_t>(S) * row_w);
  const auto k_h = gpu_test::random_bf16(rng, cache_n);
  const auto v_h = gpu_test::random_bf16(rng, cache_n);
  const auto qn_h = gpu_test::random_bf16(rng, D, 0.2f, 1.0f);
  const auto kn_h = gpu_test::random_bf16(rng, D, 0.2f, 1.0f);
  std::vector<float> inv_freq(D / 2);
  for (int i = 0; i < D / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / D);

  device_buffer<int32_t> d_qs(qs), d_lens(lens), d_tables(tables), d_pos(pos), d_slots(slots);
  device_buffer<float> d_inv(inv_freq);
  device_buffer<bf16> d_qn(qn_h.dev), d_kn(kn_h.dev);
  const size_t ws = kc::attention_workspace_floats(S, sh.heads, D, max_ctx);
  std::vector<bf16> out[2], kc_out[2], vc_out[2];
  for (int fused = 0; fused < 2; ++fused) {
    device_buffer<bf16> d_qkv(qkv_h.dev), d_k(k_h.dev), d_v(v_h.dev),
        d_out(static_cast<size_t>(S) * sh.heads * D);
    device_buffer<float> d_ws(ws);
    d_out.poison();
    kc::attention_params p{};
    p.q = d_qkv.get();
    p.q_stride = row_w;
    p.k_cache = d_k.get();
    p.v_cache = d_v.get();
    p.out = d_out.get();
    p.query_start = d_qs.get();
    p.context_lens = d_lens.get();
    p.block_tables = d_tables.get();
    p.workspace = d_ws.get();
    p.workspace_floats = ws;
    p.num_seqs = S;
    p.num_tokens = S;
    p.max_q_len = 1;
    p.max_context_len = max_ctx;
    p.max_blocks_per_seq = max_blocks;
    p.num_heads = sh.heads;
    p.num_kv_heads = sh.kv_heads;
    p.head_dim = D;
    p.block_size = bs;
    p.scale = 1.0f / std::sqrt(static_cast<float>(D));
    if (fused) {
      p.rope.positions = d_pos.get();
      p.rope.inv_freq = d_inv.get();
      p.rope.slot_mapping = d_slots.get();
      p.rope.q_norm_w = sh.qk_norm ? d_qn.get() : nullptr;
      p.rope.k_norm_w = sh.qk_norm ? d_kn.get() : nullptr;
      p.rope.norm_eps = 1e-6f;
      p.rope.qkv = d_qkv.get();
      p.rope.k_cache = d_k.get();
      p.rope.v_cache = d_v.get();
    } else {
      kc::rope_write_kv_params rp{};
      rp.qkv = d_qkv.get();
      rp.positions = d_pos.get();
      rp.inv_freq = d_inv.get();
      rp.slot_mapping = d_slots.get();
      rp.k_cache = d_k.get();
      rp.v_cache = d_v.get();
      rp.q_norm_w = sh.qk_norm ? d_qn.get() : nullptr;
      rp.k_norm_w = sh.qk_norm ? d_kn.get() : nullptr;
      rp.norm_eps = 1e-6f;
      rp.rows = S;
      rp.num_heads = sh.heads;
      rp.num_kv_heads = sh.kv_heads;
      rp.head_dim = D;
      kc::rope_write_kv(rp, nullptr);
    }
    kc::flash_attention_decode(p, nullptr, sh.splits, sh.kernel);
    TROUPE_CUDA_CHECK(cudaDeviceSynchronize());
    out[fused] = d_out.download();
    kc_out[fused] = d_k.download();
    vc_out[fused] = d_v.download();
  }
  const std::string what =
      "heads " + std::to_string(sh.heads) + "/" + std::to_string(sh.kv_heads) + " D " + std::to_string(D) +
      (sh.qk_norm ? " qk-norm" : "") + " splits " + std::to_string(sh.splits) +
      (sh.kernel == kc::flash_decode_kernel::block_tiles ? " block tiles (unfused fallback)" : "") +
      (sh.kernel == kc::flash_decode_kernel::persistent ? " persistent" : "") +
      (sh.pad_first ? " padding slot" : "");
  size_t bad = 0;
  for (size_t i = sh.pad_first ? static_cast<size_t>(sh.heads) * D : 0; i < out[0].size(); ++i) {
    const float a = gpu_test::to_float(out[0][i]), b = gpu_test::to_float(out[1][i]);
    if (!(a == b) || std::isnan(a)) ++bad;
  }
  EXPECT_EQ(bad, 0u) << what << ": output elements that differ (or NaN) of " << out[0].size();
  size_t bad_k = 0, bad_v = 0;
  for (size_t i = 0; i < kc_out[0].size(); ++i) {
    bad_k += gpu_test::to_float(kc_out[0][i]) != gpu_test::to_float(kc_out[1][i]);
    bad_v += gpu_test::to_float(vc_out[0][i]) != gpu_test::to_float(vc_out[1][i]);
  }
  EXPECT_EQ(bad_k, 0u) << what << ": K cache elements that differ";
  EXPECT_EQ(bad_v, 0u) << what << ": V cache elements that differ";
}

TEST(FusedRope, DecodeWithRopeEqualsRopeThenDecode) {
  TROUPE_SKIP_WITHOUT_GPU();
  uint64_t seed = 40;
  for (const shape& sh :
       {shape{32, 8, 128, false, 0}, shape{32, 8, 128, true, 0}, shape{32, 8, 128, false, 3},
        shape{8, 8, 64, false, 0}, shape{16, 2, 64, true, 2}, shape{32, 4, 128, false, 1},
        shape{32, 8, 128, true, 0, kc::flash_decode_kernel::block_tiles},
        shape{32, 8, 128, false, 0, kc::flash_decode_kernel::persistent},
        shape{32, 8, 128, true, 0, kc::flash_decode_kernel::persistent},
        shape{16, 2, 64, true, 0, kc::flash_decode_kernel::persistent},
        shape{32, 8, 128, false, 0, kc::flash_decode_kernel::persistent, true},
        shape{32, 8, 128, false, 0, kc::flash_decode_kernel::warp_tiles, true}}) {
    run_case(sh, ++seed);
  }
}

}  // namespace
}  // namespace troupe
