#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/thread_pool.h"

namespace troupe::kernels::cpu {

namespace {

// Eight independent accumulators let the compiler vectorize without -ffast-math reassociation; the
// AVX2/FMA clone is picked at load time where the CPU has it.
__attribute__((target_clones("avx2,fma", "default"))) float dot(const float* a, const float* b, int64_t k) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < k; ++i) s += a[i] * b[i];
  return s;
}

__attribute__((target_clones("avx2,fma", "default"))) void axpy(float a, const float* x, float* y,
                                                                int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace

void embedding(const int32_t* ids, const float* table, float* out, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(out + r * dim, table + static_cast<int64_t>(ids[r]) * dim, sizeof(float) * dim);
  }
}

void matmul_xwt(const float* x, const float* w, const float* bias, float* y, int64_t m, int64_t n,
                int64_t k) {
  // Parallel over output columns (weight rows): each weight row is streamed once per block of 4 x-rows.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k * std::max<int64_t>(1, m)));
  parallel_for(n, grain, [&](int64_t n0, int64_t n1) {
    constexpr int64_t kRowBlock = 4;
    for (int64_t m0 = 0; m0 < m; m0 += kRowBlock) {
      const int64_t m1 = std::min(m, m0 + kRowBlock);
      for (int64_t j = n0; j < n1; ++j) {
        const float* wj = w + j * k;
        const float b = bias ? bias[j] : 0.0f;
        for (int64_t i = m0; i < m1; ++i) y[i * n + j] = dot(x + i * k, wj, k) + b;
      }
    }
  });
}

static void rms_norm_row(const float* x, const float* w, float* y, int64_t dim, float eps) {
  double ss = 0;
  for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = 1.0f / std::sqrt(static_cast<float>(ss / dim) + eps);
  for (int64_t i = 0; i < dim; ++i) y[i] = w[i] * (x[i] * inv);
}

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps) {
  parallel_for(rows, std::max<int64_t>(1, 4096 / dim), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) rms_norm_row(x + r * dim, w, y + r * dim, dim, eps);
  });
}

void add_rms_norm(float* residual, const float* x, const float* w, float* y, int64_t rows, int64_t dim,
                  float eps) {
  parallel_for(rows, std::max<int64_t>(1, 4096 / dim), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* res = residual + r * dim;
      const float* xr = x + r * dim;
      for (int64_t i = 0; i < dim; ++i) res[i] += xr[i];
      rms_norm_row(res, w, y + r * dim, dim, eps);
    }
  });
}

void silu_mul(const float* gate_up, float* out, int64_t rows, int64_t inter) {
  parallel_for(rows, std::max<int64_t>(1, 8192 / inter), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* g = gate_up + r * 2 * inter;
      const float* u = g + inter;
      float* o = out + r * inter;
      for (int64_t i = 0; i < inter; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
}

void rope(float* x, const int32_t* positions, const float* inv_freq, int64_t inv_freq_stride, int64_t rows,
          int64_t num_heads, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> cs(half), sn(half);
    for (int64_t r = r0; r < r1; ++r) {
      const float* f = inv_freq + r * inv_freq_stride;
      const float pos = static_cast<float>(positions[r]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = pos * f[i];
        cs[i] = std::cos(angle);
        sn[i] = std::sin(angle);
      }
      for (int64_t h = 0; h < num_heads; ++h) {
        float* v = x + (r * num_heads + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * cs[i] - b * sn[i];
          v[i + half] = b * cs[i] + a * sn[i];
        }
      }
    }
  });
}

void write_kv(const float* k, const float* v, const int32_t* slot_mapping, float* k_cache, float* v_cache,
              int64_t num_tokens, int64_t num_kv_heads, int64_t head_dim) {
  const int64_t row = num_kv_heads * head_dim;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t slot = slot_mapping[t];
    if (slot < 0) continue;
    std::memcpy(k_cache + slot * row, k + t * row, sizeof(float) * row);
    std::memcpy(v_cache + slot * row, v + t * row, sizeof(float) * row);
  }
}

void paged_attention(const paged_attention_params& p) {
  const int64_t num_tokens = p.query_start[p.num_seqs];
  const int32_t group = p.num_heads / p.num_kv_heads;
  const int64_t kv_row = static_cast<int64_t>(p.num_kv_heads) * p.head_dim;
  // One work item per (query token, head).
  parallel_for(num_tokens * p.num_heads, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> scores;
    std::vector<float> acc(p.head_dim);
    int32_t s = 0;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t t = w / p.num_heads;
      const int32_t h = static_cast<int32_t>(w % p.num_heads);
      while (t >= p.query_start[s + 1]) ++s;
      while (t < p.query_start[s]) --s;
      const int32_t q_len = p.query_start[s + 1] - p.query_start[s];
      const int32_t ctx = p.context_lens[s];
      const int32_t pos = ctx - q_len + static_cast<int32_t>(t - p.query_start[s]);
      const int32_t first = p.sliding_window > 0 ? std::max(0, pos - p.sliding_window + 1) : 0;
      const int32_t kvh = h / group;
      const float* q = p.q + (t * p.num_heads + h) * p.head_dim;
      const int32_t* table = p.block_tables + static_cast<int64_t>(s) * p.max_blocks_per_seq;
      const int32_t n = pos - first + 1;
      scores.resize(n);
      float mx = -std::numeric_limits<float>::infinity();
      for (int32_t j = 0; j < n; ++j) {
        const int32_t kp = first + j;
        const int64_t slot =
            static_cast<int64_t>(table[kp / p.block_size]) * p.block_size + kp % p.block_size;
        scores[j] = dot(q, p.k_cache + slot * kv_row + kvh * p.head_dim, p.head_dim) * p.scale;
        mx = std::max(mx, scores[j]);
      }
      float sum = 0;
      for (int32_t j = 0; j < n; ++j) {
        scores[j] = std::exp(scores[j] - mx);
        sum += scores[j];
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int32_t j = 0; j < n; ++j) {
        const int32_t kp = first + j;
        const int64_t slot =
            static_cast<int64_t>(table[kp / p.block_size]) * p.block_size + kp % p.block_size;
        axpy(scores[j] / sum, p.v_cache + slot * kv_row + kvh * p.head_dim, acc.data(), p.head_dim);
      }
      std::memcpy(p.out + (t * p.num_heads + h) * p.head_dim, acc.data(), sizeof(float) * p.head_dim);
    }
  });
}

void log_softmax(float* x, int64_t rows, int64_t dim) {
  parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* v = x + r * dim;
      float mx = *std::max_element(v, v + dim);
      double sum = 0;
      for (int64_t i = 0; i < dim; ++i) sum += std::exp(static_cast<double>(v[i] - mx));
      const float lse = mx + static_cast<float>(std::log(sum));
      for (int64_t i = 0; i < dim; ++i) v[i] -= lse;
    }
  });
}

}  // namespace troupe::kernels::cpu
