// kernels/cpu against direct, unoptimized formulas on fresh random inputs (the CPU ops are the oracle for
// the CUDA kernels, so they are checked against the math itself). Paged attention is compared with dense
// attention over the same keys laid out contiguously, through shuffled block tables with holes.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <future>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/common/test_seed.h"

namespace troupe::kernels::cpu {
namespace {

std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(CpuOps, MatmulMatchesDoubleReference) {
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  for (auto [m, n, k] : {std::tuple{1, 7, 5}, std::tuple{3, 64, 129}, std::tuple{9, 33, 256}}) {
    auto x = randn(m * k, rng), w = randn(n * k, rng), b = randn(n, rng);
    std::vector<float> y(m * n, std::numeric_limits<float>::quiet_NaN());
    matmul_xwt(x.data(), w.data(), b.data(), y.data(), m, n, k);
    for (int i = 0; i < m; ++i) {
      for (int j = 0; j < n; ++j) {
        double ref = b[j];
        for (int t = 0; t < k; ++t) ref += static_cast<double>(x[i * k + t]) * w[j * k + t];
        EXPECT_NEAR(y[i * n + j], ref, 1e-4 * std::sqrt(k)) << m << "x" << n << "x" << k;
      }
    }
  }
}

TEST(CpuOps, RmsNormAndFusedResidual) {
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  const int rows = 5, dim = 96;
  auto x = randn(rows * dim, rng), w = randn(dim, rng), r = randn(rows * dim, rng);
  std::vector<float> y(rows * dim, NAN), res = r, y2(rows * dim, NAN);
  rms_norm(x.data(), w.data(), y.data(), rows, dim, 1e-5f);
  add_rms_norm(res.data(), x.data(), w.data(), y2.data(), rows, dim, 1e-5f);
  for (int i = 0; i < rows; ++i) {
    double ss = 0, ss2 = 0;
    for (int j = 0; j < dim; ++j) {
      ss += x[i * dim + j] * x[i * dim + j];
      double s = x[i * dim + j] + r[i * dim + j];
      ss2 += s * s;
    }
    double inv = 1 / std::sqrt(ss / dim + 1e-5), inv2 = 1 / std::sqrt(ss2 / dim + 1e-5);
    for (int j = 0; j < dim; ++j) {
      EXPECT_NEAR(y[i * dim + j], w[j] * x[i * dim + j] * inv, 1e-5);
      const double s = x[i * dim + j] + r[i * dim + j];
      EXPECT_NEAR(res[i * dim + j], s, 1e-6);
      EXPECT_NEAR(y2[i * dim + j], w[j] * s * inv2, 1e-5);
    }
  }
}

TEST(CpuOps, SiluMul) {
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  const int rows = 3, inter = 40;
  auto gu = randn(rows * 2 * inter, rng, 3.0f);
  std::vector<float> out(rows * inter, NAN);
  silu_mul(gu.data(), out.data(), rows, inter);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < inter; ++i) {
      double g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
      EXPECT_NEAR(out[r * inter + i], g / (1 + std::exp(-g)) * u, 1e-5 * (1 + std::abs(g * u)));
    }
  }
}

TEST(CpuOps, RopeRotatesHalvesByPositionTimesFrequency) {
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  const int rows = 4, heads = 3, hd = 8;
  auto x = randn(rows * heads * hd, rng), orig = x;
  std::vector<int32_t> pos = {0, 1, 17, 250};
  std::vector<float> inv = {1.0f, 0.1f, 0.01f, 0.001f};
  rope(x.data(), pos.data(), inv.data(), 0, rows, heads, hd);
  for (int r = 0; r < rows; ++r) {
    for (int h = 0; h < heads; ++h) {
      const float* a = orig.data() + (r * heads + h) * hd;
      const float* b = x.data() + (r * heads + h) * hd;
      for (int i = 0; i < hd / 2; ++i) {
        double ang = static_cast<double>(static_cast<float>(pos[r]) * inv[i]);
        EXPECT_NEAR(b[i], a[i] * std::cos(ang) - a[i + hd / 2] * std::sin(ang), 1e-5);
        EXPECT_NEAR(b[i + hd / 2], a[i + hd / 2] * std::cos(ang) + a[i] * std::sin(ang), 1e-5);
      }
    }
  }
  // Position 0 is the identity.
  for (int j = 0; j < heads * hd; ++j) EXPECT_EQ(x[j], orig[j]);
}

TEST(CpuOps, LogSoftmax) {
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  auto x = randn(2 * 50, rng, 5.0f), orig = x;
  log_softmax(x.data(), 2, 50);
  for (int r = 0; r < 2; ++r) {
    double z = 0;
    for (int i = 0; i < 50; ++i) z += std::exp(static_cast<double>(orig[r * 50 + i]));
    for (int i = 0; i < 50; ++i) EXPECT_NEAR(x[r * 50 + i], orig[r * 50 + i] - std::log(z), 1e-5);
  }
}

// Dense causal attention for one sequence with contiguous keys: out[t] attends keys 0..ctx-q_len+t.
void dense_attention(const float* q, const float* k, const float* v, float* out, int q_len, int ctx, int nh,
                     int nkv, int hd, float scale, int window) {
  for (int t = 0; t < q_len; ++t) {
    const int pos = ctx - q_len + t;
    for (int h = 0; h < nh; ++h) {
      const int kh = h / (nh / nkv);
      const int first = window > 0 ? std::max(0, pos - window + 1) : 0;
      std::vector<double> s;
      double mx = -1e300;
      for (int j = first; j <= pos; ++j) {
        double d = 0;
        for (int i = 0; i < hd; ++i)
          d += static_cast<double>(q[(t * nh + h) * hd + i]) * k[(j * nkv + kh) * hd + i];
        s.push_back(d * scale);
        mx = std::max(mx, s.back());
      }
      double z = 0;
      for (auto& e : s) z += (e = std::exp(e - mx));
      for (int i = 0; i < hd; ++i) {
        double acc = 0;
        for (int j = first; j <= pos; ++j) acc += s[j - first] / z * v[(j * nkv + kh) * hd + i];
        out[(t * nh + h) * hd + i] = static_cast<float>(acc);
      }
    }
  }
}

struct attn_case {
  int nh, nkv, hd, block_size;
  std::vector<std::pair<int, int>> seqs;  // (q_len, context_len)
  int window;
};

TEST(CpuOps, PagedAttentionEqualsDenseAttention) {
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  const std::vector<attn_case> cases = {
      {4, 4, 16, 16, {{5, 5}}, 0},                            // MHA prefill
      {8, 2, 32, 16, {{1, 40}, {7, 7}, {3, 35}, {1, 1}}, 0},  // GQA: decode + prefill + chunk after prefix
      {4, 1, 64, 8, {{17, 50}, {1, 64}}, 0},                  // MQA, small blocks
      {4, 2, 16, 16, {{9, 30}, {1, 45}}, 6},                  // sliding window
  };
  for (const auto& c : cases) {
    const int ns = static_cast<int>(c.seqs.size());
    int max_blocks = 0, total_blocks = 0, total_q = 0;
    for (auto [ql, ctx] : c.seqs) {
      max_blocks = std::max(max_blocks, (ctx + c.block_size - 1) / c.block_size);
      total_blocks += (ctx + c.block_size - 1) / c.block_size;
      total_q += ql;
    }
    // Twice as many physical blocks as needed, handed out in shuffled order: tables with holes.
    const int num_blocks = 2 * total_blocks + 3;
    std::vector<int32_t> ids(num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    const int row = c.nkv * c.hd;
    auto k_cache = randn(static_cast<size_t>(num_blocks) * c.block_size * row, rng);
    auto v_cache = randn(k_cache.size(), rng);
    std::vector<int32_t> tables(ns * max_blocks, -1), qs{0}, ctxs;
    auto q = randn(static_cast<size_t>(total_q) * c.nh * c.hd, rng);
    std::vector<float> out(q.size(), NAN);
    std::vector<std::vector<float>> dense_k(ns), dense_v(ns);
    int next = 0;
    for (int s = 0; s < ns; ++s) {
      auto [ql, ctx] = c.seqs[s];
      const int nb = (ctx + c.block_size - 1) / c.block_size;
      for (int b = 0; b < nb; ++b) tables[s * max_blocks + b] = ids[next++];
      ++next;  // leave a hole
      for (int p = 0; p < ctx; ++p) {
        const int64_t slot =
            static_cast<int64_t>(tables[s * max_blocks + p / c.block_size]) * c.block_size + p % c.block_size;
        dense_k[s].insert(dense_k[s].end(), k_cache.begin() + slot * row, k_cache.begin() + (slot + 1) * row);
        dense_v[s].insert(dense_v[s].end(), v_cache.begin() + slot * row, v_cache.begin() + (slot + 1) * row);
      }
      qs.push_back(qs.back() + ql);
      ctxs.push_back(ctx);
    }
    paged_attention_params p;
    p.q = q.data();
    p.k_cache = k_cache.data();
    p.v_cache = v_cache.data();
    p.out = out.data();
    p.query_start = qs.data();
    p.context_lens = ctxs.data();
    p.block_tables = tables.data();
    p.num_seqs = ns;
    p.max_blocks_per_seq = max_blocks;
    p.num_heads = c.nh;
    p.num_kv_heads = c.nkv;
    p.head_dim = c.hd;
    p.block_size = c.block_size;
    p.scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
    p.sliding_window = c.window;
    paged_attention(p);
    for (int s = 0; s < ns; ++s) {
      auto [ql, ctx] = c.seqs[s];
      std::vector<float> ref(static_cast<size_t>(ql) * c.nh * c.hd);
      dense_attention(q.data() + static_cast<size_t>(qs[s]) * c.nh * c.hd, dense_k[s].data(),
                      dense_v[s].data(), ref.data(), ql, ctx, c.nh, c.nkv, c.hd, p.scale, c.window);
      for (size_t i = 0; i < ref.size(); ++i) {
        ASSERT_NEAR(out[static_cast<size_t>(qs[s]) * c.nh * c.hd + i], ref[i], 1e-4)
            << "seq " << s << " elem " << i << " nh " << c.nh << " nkv " << c.nkv;
      }
    }
  }
}

TEST(CpuOps, WriteKvFollowsSlotMappingAndSkipsNegativeSlots) {
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  const int tokens = 3, nkv = 2, hd = 4, slots = 10;
  auto k = randn(tokens * nkv * hd, rng), v = randn(k.size(), rng);
  std::vector<float> kc(slots * nkv * hd, 0.5f), vc(kc.size(), 0.5f);
  std::vector<int32_t> map = {7, -1, 2};
  write_kv(k.data(), v.data(), map.data(), kc.data(), vc.data(), tokens, nkv, hd);
  for (int i = 0; i < nkv * hd; ++i) {
    EXPECT_EQ(kc[7 * nkv * hd + i], k[i]);
    EXPECT_EQ(vc[2 * nkv * hd + i], v[2 * nkv * hd + i]);
  }
  int untouched = 0;
  for (float x : kc) untouched += x == 0.5f;
  EXPECT_EQ(untouched, (slots - 2) * nkv * hd);
}

TEST(CpuOps, ParallelForCoversRangeOnce) {
  for (int threads : {1, 3}) {
    set_num_threads(threads);
    std::vector<int> hits(1000, 0);
    parallel_for(1000, 7, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) ++hits[i];
    });
    EXPECT_TRUE(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
  }
  set_num_threads(0);
}

// Back-to-back regions of different sizes: a worker that wakes for one region after the caller has done all
// of it must not take part in the next one with the old region's counters (it ran a chunk twice, counted it
// twice, done_ overshot chunks_ and the caller waited forever: the CPU worker's step never returned).
TEST(CpuOps, ParallelForBackToBackRegionsOfDifferentSizes) {
  set_num_threads(2);
  auto runner = std::async(std::launch::async, [] {
    std::vector<std::atomic<int>> hits(64);
    int64_t bad = 0;
    for (int r = 0; r < 1000000; ++r) {
      const int64_t n = r % 2 ? 2 : 64;  // 2 chunks, then 8 (a pool of 2 splits into at most 8)
      for (auto& h : hits) h.store(0, std::memory_order_relaxed);
      parallel_for(n, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1, std::memory_order_relaxed);
      });
      for (int64_t i = 0; i < n; ++i) bad += hits[i].load() != 1;
    }
    return bad;
  });
  if (runner.wait_for(std::chrono::seconds(120)) != std::future_status::ready) {
    ADD_FAILURE() << "parallel_for never returned: a region's done count overshot its chunk count";
    std::_Exit(1);  // the deadlocked thread cannot be joined
  }
  EXPECT_EQ(runner.get(), 0) << "chunks run twice or not at all";
  set_num_threads(0);
}

}  // namespace
}  // namespace troupe::kernels::cpu
