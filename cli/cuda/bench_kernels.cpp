// `troupe bench kernels [--json] [--iters N] [--group gemm|skinny|batch_gemm|prefill|decode|step_energy]`:
// the attention kernels of both plugins on the shapes, with the two ceilings (device copy bandwidth,
// cuBLASLt bf16 GEMM) measured in the same process so each figure can be read against them. Inputs are random
// (never zeros); times are medians of event-timed runs.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cli/args.h"
#include "cli/bench.h"
#include "cli/cuda/gpu_monitor.h"
#include "core/error.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/probe.h"

namespace troupe::cli {
namespace {

namespace kc = troupe::kernels::cuda;

template <typename T>
T* device_alloc(size_t n) {
  void* p = nullptr;
  TROUPE_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)));
  return static_cast<T*>(p);
}

// Median milliseconds of `iters` event-timed calls after `warmup` untimed ones.
double median_ms(const std::function<void()>& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t start, stop;
  TROUPE_CUDA_CHECK(cudaEventCreate(&start));
  TROUPE_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms(iters);
  for (int i = 0; i < iters; ++i) {
    TROUPE_CUDA_CHECK(cudaEventRecord(start));
    fn();
    TROUPE_CUDA_CHECK(cudaEventRecord(stop));
    TROUPE_CUDA_CHECK(cudaEventSynchronize(stop));
    TROUPE_CUDA_CHECK(cudaEventElapsedTime(&ms[i], start, stop));
  }
  TROUPE_CUDA_CHECK(cudaEventDestroy(start));
  TROUPE_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[iters / 2];
}

// A batch of equal sequences over a paged cache whose blocks are handed out in shuffled order, as a
// long-running server's would be.
struct attention_setup {
  kc::attention_params p{};
  std::vector<void*> owned;

  attention_setup(int batch, int q_len, int ctx, int heads, int kv_heads, int head_dim, uint64_t seed) {
    const int block_size = 16, blocks_per_seq = (ctx + block_size - 1) / block_size;
    const int num_blocks = batch * blocks_per_seq;
    std::vector<int32_t> pool(num_blocks), qs(batch + 1), lens(batch, ctx);
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), std::mt19937(static_cast<uint32_t>(seed)));
    for (int s = 0; s <= batch; ++s) qs[s] = s * q_len;
    const size_t cache = static_cast<size_t>(num_blocks) * block_size * kv_heads * head_dim;
    const size_t q_elems = static_cast<size_t>(batch) * q_len * heads * head_dim;
    auto* q = device_alloc<kc::bf16>(q_elems);
    auto* k = device_alloc<kc::bf16>(cache);
    auto* v = device_alloc<kc::bf16>(cache);
    auto* out = device_alloc<kc::bf16>(q_elems);
    kc::fill_random_normal(q, static_cast<int64_t>(q_elems), seed + 1, 0.0f, 1.0f, nullptr);
    kc::fill_random_normal(k, static_cast<int64_t>(cache), seed + 2, 0.0f, 1.0f, nullptr);
    kc::fill_random_normal(v, static_cast<int64_t>(cache), seed + 3, 0.0f, 1.0f, nullptr);
    auto* d_qs = device_alloc<int32_t>(qs.size());
    auto* d_lens = device_alloc<int32_t>(lens.size());
    auto* d_tables = device_alloc<int32_t>(pool.size());
    TROUPE_CUDA_CHECK(cudaMemcpy(d_qs, qs.data(), qs.size() * 4, cudaMemcpyHostToDevice));
    TROUPE_CUDA_CHECK(cudaMemcpy(d_lens, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice));
    TROUPE_CUDA_CHECK(cudaMemcpy(d_tables, pool.data(), pool.size() * 4, cudaMemcpyHostToDevice));
    const size_t ws = kc::attention_workspace_floats(batch * q_len, heads, head_dim, ctx);
    auto* d_ws = device_alloc<float>(ws);
    owned = {q, k, v, out, d_qs, d_lens, d_tables, d_ws};
    p.q = q;
    p.k_cache = k;
    p.v_cache = v;
    p.out = out;
    p.query_start = d_qs;
    p.context_lens = d_lens;
    p.block_tables = d_tables;
    p.workspace = d_ws;
    p.workspace_floats = ws;
    p.num_seqs = batch;
    p.num_tokens = batch * q_len;
    p.max_q_len = q_len;
    p.max_context_len = ctx;
    p.max_blocks_per_seq = blocks_per_seq;
    p.num_heads = heads;
    p.num_kv_heads = kv_heads;
    p.head_dim = head_dim;
    p.block_size = block_size;
    p.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  }
  ~attention_setup() {
    for (void* ptr : owned) cudaFree(ptr);
  }
};

// The projections of a Llama-3.1-8B layer and its LM head: y[m, n] = x[m, k] @ w[n, k]^T.
struct gemm_shape {
  const char* name;
  int64_t n, k;
};
constexpr gemm_shape kLlama8bGemms[] = {{"qkv", 6144, 4096},
                                        {"o", 4096, 4096},
                                        {"gate_up", 28672, 4096},
                                        {"down", 4096, 14336},
                                        {"lm_head", 128256, 4096}};

struct figure {
  std::string name, unit;
  double value, ms, ceiling;  // ceiling 0 = none
};

// One pass of `step` repeated for `seconds` after `warm_seconds` of the same: milliseconds a pass, the
// mean SM clock and board power over the timed window (NVML), and so the joules a pass.
struct sustained {
  double ms = 0, clock_mhz = 0, power_w = 0, joules = 0;
  int samples = 0;
};
sustained run_sustained(const std::function<void()>& step, double warm_seconds, double seconds, int device) {
  using clock = std::chrono::steady_clock;
  const auto run_for = [&](double s) {
    int64_t n = 0;
    const auto t0 = clock::now();
    while (std::chrono::duration<double>(clock::now() - t0).count() < s) {
      for (int i = 0; i < 4; ++i, ++n) step();
      TROUPE_CUDA_CHECK(cudaDeviceSynchronize());
    }
    return std::make_pair(n, std::chrono::duration<double, std::milli>(clock::now() - t0).count());
  };
  run_for(warm_seconds);
  gpu_monitor monitor(device);
  monitor.start();
  const auto [n, ms] = run_for(seconds);
  const gpu_monitor::summary sum = monitor.stop();
  sustained r;
  r.ms = ms / static_cast<double>(n);
  r.samples = sum.samples;
  r.clock_mhz = sum.sm_clock_mhz_mean;
  r.power_w = sum.power_w_mean;
  r.joules = sum.power_w_mean * r.ms * 1e-3;
  return r;
}

int run(const std::vector<std::string>& args) {
  arg_parser ap("bench kernels", {"iters", "group"}, {"json"});
  ap.parse(args);
  // --group gemm|skinny|batch_gemm|prefill|decode|step_energy: that group only (after the copy ceiling);
  // step_energy runs only when named.
  const std::string group = ap.get_or("group", "");
  if (!group.empty() && group != "gemm" && group != "skinny" && group != "batch_gemm" && group != "prefill" &&
      group != "decode" && group != "step_energy")
    throw error("--group: '" + group +
                "' is not one of gemm, skinny, batch_gemm, prefill, decode, step_energy");
  const auto wants = [&](const char* name) { return group.empty() || group == name; };
  const int iters = static_cast<int>(ap.get_int("iters").value_or(20));
  const bool json = ap.has("json");
  int dev = 0;
  cudaDeviceProp prop{};
  TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
  TROUPE_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  std::vector<figure> figs;

  {  // Ceiling 1: device-to-device copy, bytes read + written.
    const size_t bytes = size_t{2} << 30;
    auto* a = device_alloc<char>(bytes);
    auto* b = device_alloc<char>(bytes);
    TROUPE_CUDA_CHECK(cudaMemset(a, 1, bytes));
    const double ms = median_ms(
        [&] { TROUPE_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 3, iters);
    figs.push_back({"copy_bandwidth", "TB/s", 2.0 * bytes / (ms * 1e-3) / 1e12, ms, 0});
    cudaFree(a);
    cudaFree(b);
  }
  const double copy_tbs = figs.back().value;
  // Ceiling 2: cuBLASLt bf16 GEMM 8192^3.
  if (wants("gemm")) {
    const int64_t n = 8192;
    auto* x = device_alloc<kc::bf16>(n * n);
    auto* w = device_alloc<kc::bf16>(n * n);
    auto* y = device_alloc<kc::bf16>(n * n);
    kc::fill_random_normal(x, n * n, 1, 0.0f, 1.0f, nullptr);
    kc::fill_random_normal(w, n * n, 2, 0.0f, 1.0f, nullptr);
    kc::gemm_context gemm;
    const double ms = median_ms([&] { gemm.matmul_xwt(x, w, y, n, n, n, nullptr); }, 3, iters);
    figs.push_back({"gemm_bf16_8192", "TFLOP/s", 2.0 * n * n * n / (ms * 1e-3) / 1e12, ms, 0});
    cudaFree(x);
    cudaFree(w);
    cudaFree(y);
  }
  // Skinny GEMMs of decode (Llama-3.1-8B shapes), bound by the weight read: the gemv kernel against cuBLASLt
  // (gemv_max_m 0), as bandwidth over the weight bytes.
  if (wants("skinny")) {
    kc::gemm_context gemm;
    for (const gemm_shape& sh : kLlama8bGemms) {
      // Calls cycle through copies of w worth 256 MB or more, so no call finds its weights in L2 (50 MB).
      const int64_t copies = std::max<int64_t>(1, (int64_t{256} << 20) / (2 * sh.n * sh.k) + 1);
      auto* w = device_alloc<kc::bf16>(copies * sh.n * sh.k);
      int64_t call = 0;
      auto* x = device_alloc<kc::bf16>(16 * sh.k);
      auto* y = device_alloc<float>(16 * sh.n);
      kc::fill_random_normal(w, copies * sh.n * sh.k, 3, 0.0f, 0.02f, nullptr);
      kc::fill_random_normal(x, 16 * sh.k, 4, 0.0f, 1.0f, nullptr);
      for (int m : {1, 2, 4, 8, 16}) {
        for (int gemv_max : {kc::kGemvMaxM, 0}) {
          if (gemv_max > 0 && m > gemv_max) continue;
          gemm.set_gemv_max_m(gemv_max);
          const bool f32 = std::string(sh.name) == "lm_head";
          const double ms = median_ms(
              [&] {
                const kc::bf16* wc = w + (call++ % copies) * sh.n * sh.k;
                if (f32) {
                  gemm.matmul_xwt_f32(x, wc, y, m, sh.n, sh.k, nullptr);
                } else {
                  gemm.matmul_xwt(x, wc, reinterpret_cast<kc::bf16*>(y), m, sh.n, sh.k, nullptr);
                }
              },
              3, iters);
          figs.push_back({std::string("skinny_gemm_") + sh.name + "_m" + std::to_string(m) +
                              (gemv_max > 0 ? "_gemv" : "_cublaslt"),
                          "TB/s", 2.0 * sh.n * sh.k / (ms * 1e-3) / 1e12, ms, copy_tbs});
        }
      }
      cudaFree(w);
      cudaFree(x);
      cudaFree(y);
    }
  }
  // Prefill: causal, B4 H32 S4096 D128 (MHA, as the SDPA peer), then the engine's 2048-token prefill (one
  // sequence, Llama-3.1-8B's GQA: 32 q / 8 kv heads); causal FLOPs = half of 4 * S^2 * D per head. The
  // unsuffixed figure is the default dispatch (the wgmma kernel on Hopper), _w4/_w8 the mma.sync kernel's
  // two tilings, all in the same run.
  if (wants("prefill")) {
    struct prefill_shape {
      const char* name;
      int batch, seq, heads, kv_heads;
      uint64_t seed;
    };
    for (const prefill_shape& sh :
         {prefill_shape{"flash_prefill_causal_b4_h32_s4096_d128", 4, 4096, 32, 32, 10},
          prefill_shape{"flash_prefill_causal_b1_h32_kv8_s2048_d128", 1, 2048, 32, 8, 11}}) {
      attention_setup s(sh.batch, sh.seq, sh.seq, sh.heads, sh.kv_heads, 128, sh.seed);
      const double flops = 4.0 * sh.batch * sh.heads * static_cast<double>(sh.seq) * sh.seq * 128 / 2;
      for (int warps : {0, 4, 8}) {
        const double ms = median_ms([&] { kc::flash_attention_prefill(s.p, nullptr, warps); }, 3, iters);
        figs.push_back({std::string(sh.name) + (warps == 0 ? "" : "_w" + std::to_string(warps)), "TFLOP/s",
                        flops / (ms * 1e-3) / 1e12, ms, 0});
      }
    }
  }
  // Decode at three shapes: the (batch 64, 4096-token contexts), and the serving benches' (batch
  // 256 at ~520 keys for throughput, batch 1 at ~140 for latency); 32 q / 8 kv heads, D128. Bytes:
  // every K and V row once. Each flash kernel at its chosen split count and at fixed ones.
  if (wants("decode")) {
    using kc::flash_decode_kernel;
    for (const auto& [batch, ctx] : {std::pair<int, int>{64, 4096}, {256, 520}, {1, 140}}) {
      attention_setup s(batch, 1, ctx, 32, 8, 128, 20 + batch);
      // Half a second idle first: timed right after the prefill kernels, the B64 default figure read 10-12 %
      // below the same kernel timed later in its group (H200: 3.55-3.62 vs 3.95-4.09 TB/s); with the pause
      // they agree (4.04 vs 4.06).
      TROUPE_CUDA_CHECK(cudaDeviceSynchronize());
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      const double bytes = 2.0 * batch * ctx * 8 * 128 * 2;
      const std::string shape = "_b" + std::to_string(batch) + "_ctx" + std::to_string(ctx) + "_h32_kv8_d128";
      auto add = [&](const std::string& name, const std::function<void()>& fn) {
        const double ms = median_ms(fn, 3, iters);
        figs.push_back({name, "TB/s", bytes / (ms * 1e-3) / 1e12, ms, copy_tbs});
      };
      add("paged_decode" + shape, [&] { kc::paged_attention_decode(s.p, nullptr); });
      add("flash_decode" + shape, [&] { kc::flash_attention_decode(s.p, nullptr); });
      const std::pair<const char*, flash_decode_kernel> kernels[] = {
          {"_warp_tiles", flash_decode_kernel::warp_tiles},
          {"_block_tiles", flash_decode_kernel::block_tiles}};
      for (const auto& [kname, kernel] : kernels) {
        for (int splits : {0, 1, 2, 3, 4}) {
          add("flash_decode" + shape + kname + "_splits" +
                  (splits == 0 ? std::string("auto") : std::to_string(splits)),
              [&, kernel = kernel] { kc::flash_attention_decode(s.p, nullptr, splits, kernel); });
        }
      }
      add("flash_decode" + shape + "_persistent",
          [&] { kc::flash_attention_decode(s.p, nullptr, 0, flash_decode_kernel::persistent); });
      add("flash_decode" + shape + "_block_tiles_stages3",
          [&] { kc::flash_attention_decode(s.p, nullptr, 0, flash_decode_kernel::block_tiles, 3); });
    }
  }
  // Decode at batch 1 with a long context: the split-K path's reason to exist.
  if (wants("decode")) {
    attention_setup s(1, 1, 32768, 32, 8, 128, 30);
    const double bytes = 2.0 * 32768 * 8 * 128 * 2;
    for (int which = 0; which < 2; ++which) {
      const double ms = median_ms(
          [&] {
            which == 0 ? kc::paged_attention_decode(s.p, nullptr) : kc::flash_attention_decode(s.p, nullptr);
          },
          3, iters);
      figs.push_back({std::string(which == 0 ? "paged" : "flash") + "_decode_b1_ctx32768_h32_kv8_d128",
                      "TB/s", bytes / (ms * 1e-3) / 1e12, ms, copy_tbs});
    }
  }
  TROUPE_CUDA_CHECK(cudaDeviceSynchronize());

  // Last: its seconds of back-to-back GEMMs pull the H200 down to 1.3-1.5 GHz (nvidia-smi, run89), and the
  // prefill figure timed right after them read 262-283 TFLOP/s against 371 (the same kernel code).
  // Decode-batch GEMMs (Llama-3.1-8B shapes) at m = 136 .. 256 token rows: the Hopper kernel against
  // cuBLASLt, in TFLOP/s, weights cycled through 256 MB+ of copies as above.
  if (wants("batch_gemm")) {
    kc::gemm_context gemm;
    gemm.set_sm90_min_n(0);
    const int64_t max_m = 256;
    for (const gemm_shape& sh : kLlama8bGemms) {
      const int64_t copies = std::max<int64_t>(1, (int64_t{256} << 20) / (2 * sh.n * sh.k) + 1);
      auto* w = device_alloc<kc::bf16>(copies * sh.n * sh.k);
      auto* x = device_alloc<kc::bf16>(max_m * sh.k);
      auto* y = device_alloc<float>(max_m * sh.n);
      kc::fill_random_normal(w, copies * sh.n * sh.k, 5, 0.0f, 0.02f, nullptr);
      kc::fill_random_normal(x, max_m * sh.k, 6, 0.0f, 1.0f, nullptr);
      int64_t call = 0;
      const bool f32 = std::string(sh.name) == "lm_head";
      for (int64_t m : {136, 192, 256}) {
        for (bool sm90 : {true, false}) {
          if (!gemm.set_sm90_m_range(1, sm90 ? max_m : 0)) continue;  // no Hopper kernel here
          // Ten calls a timing, so the host's per-call work (descriptors) overlaps the GPU's as in a step.
          const double ms =
              median_ms(
                  [&] {
                    for (int r = 0; r < 10; ++r) {
                      const kc::bf16* wc = w + (call++ % copies) * sh.n * sh.k;
                      if (f32) {
                        gemm.matmul_xwt_f32(x, wc, y, m, sh.n, sh.k, nullptr);
                      } else {
                        gemm.matmul_xwt(x, wc, reinterpret_cast<kc::bf16*>(y), m, sh.n, sh.k, nullptr);
                      }
                    }
                  },
                  1, iters) /
              10;
          figs.push_back({std::string("batch_gemm_") + sh.name + "_m" + std::to_string(m) +
                              (sm90 ? "_sm90" : "_cublaslt"),
                          "TFLOP/s", 2.0 * m * sh.n * sh.k / (ms * 1e-3) / 1e12, ms, 0});
        }
      }
      cudaFree(w);
      cudaFree(x);
      cudaFree(y);
    }
  }
  // Where a batch-256 decode step's energy goes, the H200 running it at its 700 W limit (perf-notes v11):
  // a step's decode attention (32 layers, the persistent kernel, 576 keys: the bench's mean context), its
  // GEMMs (32 layers of q/k/v, o, gate/up, down at m = 256, then the LM head; weights alternate between two
  // copies so no layer finds them in L2), and both interleaved in a step's order, each sustained for
  // seconds. Reported per step: milliseconds, mean SM clock, mean power and joules. The step's
  // element-wise kernels are left out. Not in the default run (it takes ~20 s): --group step_energy.
  if (group == "step_energy") {
    const int64_t m = 256, layers = 32, hidden = 4096, vocab = 128256;
    attention_setup s(static_cast<int>(m), 1, 576, 32, 8, 128, 40);
    std::vector<void*> owned;
    std::vector<const kc::bf16*> wl[2];
    for (int c = 0; c < 2; ++c) {
      for (int g = 0; g < 4; ++g) {
        const gemm_shape& sh = kLlama8bGemms[g];
        auto* w = device_alloc<kc::bf16>(sh.n * sh.k);
        kc::fill_random_normal(w, sh.n * sh.k, 50 + 4 * c + g, 0.0f, 0.02f, nullptr);
        owned.push_back(w);
        wl[c].push_back(w);
      }
    }
    auto* head = device_alloc<kc::bf16>(vocab * hidden);
    auto* x = device_alloc<kc::bf16>(m * 14336);
    auto* y = device_alloc<kc::bf16>(m * 28672);
    auto* logits = device_alloc<float>(m * vocab);
    owned.insert(owned.end(), {head, x, y, logits});
    kc::fill_random_normal(head, vocab * hidden, 60, 0.0f, 0.02f, nullptr);
    kc::fill_random_normal(x, m * 14336, 61, 0.0f, 1.0f, nullptr);
    kc::gemm_context gemm;
    const auto gemms_of_layer = [&](int64_t l, bool attention) {
      const auto& w = wl[l % 2];
      gemm.matmul_xwt(x, w[0], y, m, 6144, 4096, nullptr);
      if (attention) kc::flash_attention_decode(s.p, nullptr, 0, kc::flash_decode_kernel::persistent);
      gemm.matmul_xwt(x, w[1], y, m, 4096, 4096, nullptr);
      gemm.matmul_xwt(x, w[2], y, m, 28672, 4096, nullptr);
      gemm.matmul_xwt(x, w[3], y, m, 4096, 14336, nullptr);
    };
    const auto attention_step = [&] {
      for (int64_t l = 0; l < layers; ++l) {
        kc::flash_attention_decode(s.p, nullptr, 0, kc::flash_decode_kernel::persistent);
      }
    };
    const auto step = [&](bool gemms, bool attention) {
      return [&, gemms, attention] {
        if (!gemms) return attention_step();
        for (int64_t l = 0; l < layers; ++l) gemms_of_layer(l, attention);
        gemm.matmul_xwt_f32(x, head, logits, m, vocab, hidden, nullptr);
      };
    };
    // Floors to read the figures against: the same K/V bytes read by the plainest streaming kernel, and
    // copied (cudaMemcpy: the bytes read and as many written); every SM busy-waiting ~5 ms; a large
    // cuBLASLt GEMM (8192^3: energy a FLOP at full tensor use).
    const int64_t kv_bytes = static_cast<int64_t>(s.p.max_blocks_per_seq) * s.p.num_seqs * s.p.block_size *
                             s.p.num_kv_heads * s.p.head_dim * 2;  // K or V: every block of the pool
    auto* sink = device_alloc<uint32_t>(kc::read_probe_blocks());
    auto* copy_dst = device_alloc<char>(kv_bytes);
    const int64_t big = 8192;
    auto* ga = device_alloc<kc::bf16>(big * big);
    auto* gb = device_alloc<kc::bf16>(big * big);
    auto* gc = device_alloc<kc::bf16>(big * big);
    owned.insert(owned.end(), {sink, copy_dst, ga, gb, gc});
    kc::fill_random_normal(ga, big * big, 62, 0.0f, 1.0f, nullptr);
    kc::fill_random_normal(gb, big * big, 63, 0.0f, 1.0f, nullptr);
    const auto read_step = [&] {
      for (int64_t l = 0; l < layers; ++l) {
        kc::read_probe(s.p.k_cache, kv_bytes, sink, nullptr);
        kc::read_probe(s.p.v_cache, kv_bytes, sink, nullptr);
      }
    };
    const auto copy_step = [&] {
      for (int64_t l = 0; l < layers; ++l) {
        TROUPE_CUDA_CHECK(cudaMemcpyAsync(copy_dst, s.p.k_cache, kv_bytes, cudaMemcpyDeviceToDevice));
        TROUPE_CUDA_CHECK(cudaMemcpyAsync(copy_dst, s.p.v_cache, kv_bytes, cudaMemcpyDeviceToDevice));
      }
    };
    const auto spin_step = [&] { kc::spin_probe(int64_t{9'000'000}, sink, nullptr); };
    const auto big_gemm_step = [&] { gemm.matmul_xwt(ga, gb, gc, big, big, big, nullptr); };
    struct phase {
      const char* name;
      std::function<void()> fn;
      bool sm90;
      double bytes, flops;  // a pass's, for the rate figures (0: none)
    };
    const double step_flops = 2.0 * m *
                              (layers * (6144.0 + 4096 + 28672) * 4096 + layers * 4096.0 * 14336 +
                               static_cast<double>(vocab) * hidden);
    const double attn_bytes = 2.0 * layers * kv_bytes;
    const phase phases[] = {{"attention", step(false, true), false, attn_bytes, 0},
                            {"gemms", step(true, false), false, 0, step_flops},
                            {"step", step(true, true), false, 0, 0},
                            {"read_probe", read_step, false, attn_bytes, 0},
                            {"copy", copy_step, false, 2 * attn_bytes, 0},
                            {"spin", spin_step, false, 0, 0},
                            {"gemm_8192", big_gemm_step, false, 0, 2.0 * big * big * big},
                            {"gemms_sm90", step(true, false), true, 0, step_flops},
                            {"step_sm90", step(true, true), true, 0, 0}};
    for (const phase& ph : phases) {
      // cuBLASLt unless the phase names the Hopper kernel (whatever TROUPE_GEMM_SM90 says).
      gemm.set_sm90_min_n(0);
      if (!gemm.set_sm90_m_range(1, ph.sm90 ? m : 0)) continue;  // no Hopper kernel here
      TROUPE_CUDA_CHECK(cudaDeviceSynchronize());
      std::this_thread::sleep_for(std::chrono::seconds(2));  // back to the idle clock between phases
      const sustained r = run_sustained(ph.fn, 1.5, 4.0, dev);
      const std::string base = std::string("step_energy_b256_ctx576_") + ph.name;
      figs.push_back({base + "_ms", "ms", r.ms, r.ms, 0});
      figs.push_back({base + "_sm_clock", "MHz", r.clock_mhz, r.ms, 0});
      figs.push_back({base + "_power", "W", r.power_w, r.ms, 0});
      figs.push_back({base + "_energy", "J", r.joules, r.ms, 0});
      if (ph.bytes > 0)
        figs.push_back({base + "_bandwidth", "TB/s", ph.bytes / (r.ms * 1e-3) / 1e12, r.ms, 0});
      if (ph.flops > 0) figs.push_back({base + "_rate", "TFLOP/s", ph.flops / (r.ms * 1e-3) / 1e12, r.ms, 0});
      if (ph.bytes > 0 && r.joules > 0)
        figs.push_back({base + "_pj_per_byte", "pJ/B", r.joules / ph.bytes * 1e12, r.ms, 0});
      if (ph.flops > 0 && r.joules > 0)
        figs.push_back({base + "_pj_per_flop", "pJ/FLOP", r.joules / ph.flops * 1e12, r.ms, 0});
    }
    for (void* p : owned) cudaFree(p);
  }
  if (json) {
    std::printf("{\"device\": \"%s\", \"iters\": %d, \"figures\": [\n", prop.name, iters);
    for (size_t i = 0; i < figs.size(); ++i) {
      const auto& f = figs[i];
      std::printf("  {\"name\": \"%s\", \"value\": %.4g, \"unit\": \"%s\", \"median_ms\": %.5g",
                  f.name.c_str(), f.value, f.unit.c_str(), f.ms);
      if (f.ceiling > 0) std::printf(", \"fraction_of_copy_bandwidth\": %.3f", f.value / f.ceiling);
      std::printf("}%s\n", i + 1 < figs.size() ? "," : "");
    }
    std::printf("]}\n");
  } else {
    std::printf("%s\n", prop.name);
    for (const auto& f : figs) {
      std::printf("%-58s %9.2f %-8s %9.4f ms", f.name.c_str(), f.value, f.unit.c_str(), f.ms);
      if (f.ceiling > 0) std::printf("  (%.0f%% of copy)", 100.0 * f.value / f.ceiling);
      std::printf("\n");
    }
  }
  return 0;
}

bench_registrar reg("kernels", "attention kernels (flash, paged) and the copy/GEMM ceilings on one GPU", run);

}  // namespace
}  // namespace troupe::cli
