// Memory-bound ops: each reads its inputs once with 16-byte accesses and does its math in fp32.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/check.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/rope.cuh"

namespace troupe::kernels::cuda {

namespace {

// 8 bf16 = one 16-byte access.
struct alignas(16) bf16x8 {
  __nv_bfloat162 h[4];
};

__device__ __forceinline__ void to_float8(const bf16x8& v, float (&f)[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(v.h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

__device__ __forceinline__ bf16x8 from_float8(const float (&f)[8]) {
  bf16x8 v;
#pragma unroll
  for (int i = 0; i < 4; ++i) v.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of up to 1024 threads; every thread gets the result.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int num_warps = (blockDim.x + 31) / 32;
  float t = lane < num_warps ? partial[lane] : 0.0f;
  t = warp_sum(t);
  __syncthreads();  // partial[] may be reused by the caller's next block_sum
  return t;
}

__global__ void embedding_kernel(const int32_t* ids, const int32_t* pending, const int32_t* pending_ids,
                                 const bf16x8* table, bf16x8* out, int64_t vecs_per_row, bool early_trigger) {
  if (early_trigger) pdl_trigger();  // pdl_trigger_early
  pdl_wait();
  const int64_t r = blockIdx.x;
  const int32_t from = pending != nullptr ? pending[r] : -1;
  const int32_t id = from >= 0 ? pending_ids[from] : ids[r];
  const bf16x8* src = table + static_cast<int64_t>(id) * vecs_per_row;
  for (int64_t i = threadIdx.x; i < vecs_per_row; i += blockDim.x) out[r * vecs_per_row + i] = src[i];
}

// 8 residual elements as fp32 (the fp32 residual stream) or bf16.
struct alignas(32) f32x8 {
  float4 lo, hi;
};
__device__ __forceinline__ void load8(const bf16x8* p, int64_t i, float (&f)[8]) { to_float8(p[i], f); }
__device__ __forceinline__ void load8(const f32x8* p, int64_t i, float (&f)[8]) {
  const f32x8 v = p[i];
  f[0] = v.lo.x, f[1] = v.lo.y, f[2] = v.lo.z, f[3] = v.lo.w;
  f[4] = v.hi.x, f[5] = v.hi.y, f[6] = v.hi.z, f[7] = v.hi.w;
}
// Stores and returns the values as stored (rounded to bf16 for a bf16 stream).
__device__ __forceinline__ void store8(bf16x8* p, int64_t i, float (&f)[8]) {
  p[i] = from_float8(f);
  to_float8(p[i], f);
}
__device__ __forceinline__ void store8(f32x8* p, int64_t i, float (&f)[8]) {
  p[i] = f32x8{make_float4(f[0], f[1], f[2], f[3]), make_float4(f[4], f[5], f[6], f[7])};
}

// kCache > 0: each thread keeps its (at most kCache) vectors of the row in registers between the sum of
// squares and the scaling, and requests its norm weights before the block's reduction, instead of reading
// the residual back (a round trip to L2 after the store) in a second pass; the same arithmetic, so the same
// bits. kCache == 0: rows longer than kCache * blockDim vectors.
template <typename R, int kCache>
__global__ void add_rms_norm_kernel(R* residual, const bf16x8* x, const bf16x8* w, bf16x8* y,
                                    int64_t vecs_per_row, int64_t dim, float eps, bool early_trigger) {
  if (early_trigger) pdl_trigger();  // pdl_trigger_early
  pdl_wait();
  const int64_t r = blockIdx.x;
  R* res = residual + r * vecs_per_row;
  float ss = 0.0f;
  if constexpr (kCache > 0) {
    // Every load of the row (residual, x, weights) is issued before the first store: a store to the
    // residual may alias the later loads as far as the compiler knows, so interleaving them would cost a
    // round trip per vector.
    float a[kCache][8], b[kCache][8], g[kCache][8];
#pragma unroll
    for (int c = 0; c < kCache; ++c) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(c) * blockDim.x;
      if (i < vecs_per_row) {
        load8(res, i, a[c]);
        if (x != nullptr) to_float8(x[r * vecs_per_row + i], b[c]);
        to_float8(w[i], g[c]);
      }
    }
#pragma unroll
    for (int c = 0; c < kCache; ++c) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(c) * blockDim.x;
      if (i >= vecs_per_row) break;
      if (x != nullptr) {
#pragma unroll
        for (int j = 0; j < 8; ++j) a[c][j] += b[c][j];
        store8(res, i, a[c]);  // the norm sees the stored residual, as the next layer will
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += a[c][j] * a[c][j];
    }
    const float inv = rsqrtf(block_sum(ss) / static_cast<float>(dim) + eps);
#pragma unroll
    for (int c = 0; c < kCache; ++c) {
      const int64_t i = threadIdx.x + static_cast<int64_t>(c) * blockDim.x;
      if (i >= vecs_per_row) break;
#pragma unroll
      for (int j = 0; j < 8; ++j) a[c][j] = g[c][j] * (a[c][j] * inv);
      y[r * vecs_per_row + i] = from_float8(a[c]);
    }
  } else {
    for (int64_t i = threadIdx.x; i < vecs_per_row; i += blockDim.x) {
      float a[8];
      load8(res, i, a);
      if (x != nullptr) {
        float b[8];
        to_float8(x[r * vecs_per_row + i], b);
#pragma unroll
        for (int j = 0; j < 8; ++j) a[j] += b[j];
        store8(res, i, a);  // the norm sees the stored residual, as the next layer will
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) ss += a[j] * a[j];
    }
    const float inv = rsqrtf(block_sum(ss) / static_cast<float>(dim) + eps);
    for (int64_t i = threadIdx.x; i < vecs_per_row; i += blockDim.x) {
      float a[8], g[8];
      load8(res, i, a);
      to_float8(w[i], g);
#pragma unroll
      for (int j = 0; j < 8; ++j) a[j] = g[j] * (a[j] * inv);
      y[r * vecs_per_row + i] = from_float8(a);
    }
  }
}

// One warp per (row, head); kHeadDim / 32 elements per lane.
template <int kHeadDim>
__global__ void head_rms_norm_kernel(bf16* x, const bf16* w, int64_t rows, int64_t row_stride,
                                     int64_t num_heads, float eps) {
  constexpr int kPerLane = kHeadDim / 32;
  const int64_t item = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (item >= rows * num_heads) return;
  bf16* v = x + (item / num_heads) * row_stride + (item % num_heads) * kHeadDim + lane * kPerLane;
  float f[kPerLane];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    f[j] = __bfloat162float(v[j]);
    ss += f[j] * f[j];
  }
  const float inv = rsqrtf(warp_sum(ss) / kHeadDim + eps);
#pragma unroll
  for (int j = 0; j < kPerLane; ++j)
    v[j] = __float2bfloat16(__bfloat162float(w[lane * kPerLane + j]) * (f[j] * inv));
}

__global__ void silu_mul_kernel(const bf16x8* gate_up, bf16x8* out, int64_t rows, int64_t vecs_per_row) {
  const int64_t total = rows * vecs_per_row;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / vecs_per_row, c = i % vecs_per_row;
    float g[8], u[8];
    to_float8(gate_up[r * 2 * vecs_per_row + c], g);
    to_float8(gate_up[r * 2 * vecs_per_row + vecs_per_row + c], u);
#pragma unroll
    for (int j = 0; j < 8; ++j) g[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    out[i] = from_float8(g);
  }
}

// One warp per (row, head) over the q, k and v heads of the merged qkv row (lane layout: detail::rope_lanes).
template <int kHeadDim>
__global__ void rope_write_kv_kernel(rope_write_kv_params p) {
  pdl_wait();
  using L = detail::rope_lanes<kHeadDim>;
  const int total_heads = p.num_heads + 2 * p.num_kv_heads;
  const int64_t item = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (item >= p.rows * total_heads) return;
  const bool active = lane < L::kLanesUsed;
  const int64_t r = item / total_heads;
  const int h = static_cast<int>(item % total_heads);
  bf16* v = p.qkv + r * total_heads * kHeadDim + static_cast<int64_t>(h) * kHeadDim;
  const int32_t slot = p.slot_mapping != nullptr ? p.slot_mapping[r] : -1;
  const bool is_v = h >= p.num_heads + p.num_kv_heads;
  const int kv_head = is_v ? h - p.num_heads - p.num_kv_heads : h - p.num_heads;
  const int64_t cache_off = (static_cast<int64_t>(slot) * p.num_kv_heads + kv_head) * kHeadDim;
  const int i0 = active ? lane * L::kPairs : 0;
  if (is_v) {  // v: copied to the cache unchanged
    if (slot < 0 || !active) return;
#pragma unroll
    for (int j = 0; j < L::kPairs; ++j) {
      p.v_cache[cache_off + i0 + j] = v[i0 + j];
      p.v_cache[cache_off + L::kHalf + i0 + j] = v[L::kHalf + i0 + j];
    }
    return;
  }
  const bool is_q = h < p.num_heads;
  bf16 ra[L::kPairs], rb[L::kPairs];
  detail::rope_rotate_head<kHeadDim>(v, is_q ? p.q_norm_w : p.k_norm_w, p.norm_eps,
                                     static_cast<float>(p.positions[r]), p.inv_freq + r * p.inv_freq_stride,
                                     lane, ra, rb);
  if (!active) return;
#pragma unroll
  for (int j = 0; j < L::kPairs; ++j) {
    v[i0 + j] = ra[j];
    v[L::kHalf + i0 + j] = rb[j];
    if (!is_q && slot >= 0) {
      p.k_cache[cache_off + i0 + j] = ra[j];
      p.k_cache[cache_off + L::kHalf + i0 + j] = rb[j];
    }
  }
}

__global__ void add_bias_kernel(bf16x8* y, const bf16x8* bias, int64_t rows, int64_t vecs_per_row) {
  const int64_t total = rows * vecs_per_row;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float a[8], b[8];
    to_float8(y[i], a);
    to_float8(bias[i % vecs_per_row], b);
#pragma unroll
    for (int j = 0; j < 8; ++j) a[j] += b[j];
    y[i] = from_float8(a);
  }
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void fill_random_normal_kernel(bf16* x, int64_t n, uint64_t seed, float mean, float stddev) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t h = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(i)));
    // Box-Muller on two 24-bit uniforms; u1 in (0, 1] keeps the log finite.
    const float u1 = (static_cast<float>(h >> 40) + 1.0f) * (1.0f / 16777216.0f);
    const float u2 = static_cast<float>((h >> 8) & 0xFFFFFFu) * (1.0f / 16777216.0f);
    x[i] = __float2bfloat16(mean + stddev * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
  }
}

int threads_for(int64_t vecs) { return vecs >= 256 ? 256 : (vecs >= 128 ? 128 : (vecs >= 64 ? 64 : 32)); }

// The add + RMSNorm kernel for rows of vecs 16-byte vectors: registers hold the row when it fits 2 or 4
// vectors a thread (hidden sizes up to 8192). TROUPE_NORM_CACHE=0: always the two-pass kernel (benchmarks).
template <typename R>
auto norm_kernel(int64_t vecs) {
  static const bool cache_on = [] {
    const char* e = std::getenv("TROUPE_NORM_CACHE");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  // Registers for the whole row's loads in flight: 2 vectors a thread (hidden sizes up to 4096) keep ~60
  // registers a thread, where 4 would take 106 and cost the 2048-row prefill norm a block an SM.
  if (!cache_on || vecs > 4 * threads_for(vecs)) return add_rms_norm_kernel<R, 0>;
  return vecs <= 2 * threads_for(vecs) ? add_rms_norm_kernel<R, 2> : add_rms_norm_kernel<R, 4>;
}

}  // namespace

void embedding(const int32_t* ids, const bf16* table, bf16* out, int64_t rows, int64_t dim,
               cudaStream_t stream) {
  TROUPE_KERNEL_REQUIRE(dim % 8 == 0, "embedding: dim " << dim << " is not a multiple of 8");
  if (rows == 0) return;
  launch_pdl(embedding_kernel, dim3(static_cast<unsigned>(rows)), dim3(threads_for(dim / 8)), 0, stream, ids,
             static_cast<const int32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
             reinterpret_cast<const bf16x8*>(table), reinterpret_cast<bf16x8*>(out), dim / 8,
             pdl_trigger_early(rows));
}

void embedding_pending(const int32_t* ids, const int32_t* pending, const int32_t* pending_ids,
                       const bf16* table, bf16* out, int64_t rows, int64_t dim, cudaStream_t stream) {
  TROUPE_KERNEL_REQUIRE(dim % 8 == 0, "embedding: dim " << dim << " is not a multiple of 8");
  if (rows == 0) return;
  launch_pdl(embedding_kernel, dim3(static_cast<unsigned>(rows)), dim3(threads_for(dim / 8)), 0, stream, ids,
             pending, pending_ids, reinterpret_cast<const bf16x8*>(table), reinterpret_cast<bf16x8*>(out),
             dim / 8, pdl_trigger_early(rows));
}

void add_rms_norm(bf16* residual, const bf16* x, const bf16* w, bf16* y, int64_t rows, int64_t dim, float eps,
                  cudaStream_t stream) {
  TROUPE_KERNEL_REQUIRE(dim % 8 == 0, "add_rms_norm: dim " << dim << " is not a multiple of 8");
  if (rows == 0) return;
  launch_pdl(norm_kernel<bf16x8>(dim / 8), dim3(static_cast<unsigned>(rows)), dim3(threads_for(dim / 8)), 0,
             stream, reinterpret_cast<bf16x8*>(residual), reinterpret_cast<const bf16x8*>(x),
             reinterpret_cast<const bf16x8*>(w), reinterpret_cast<bf16x8*>(y), dim / 8, dim, eps,
             pdl_trigger_early(rows));
}

void add_rms_norm(float* residual, const bf16* x, const bf16* w, bf16* y, int64_t rows, int64_t dim,
                  float eps, cudaStream_t stream) {
  TROUPE_KERNEL_REQUIRE(dim % 8 == 0, "add_rms_norm: dim " << dim << " is not a multiple of 8");
  if (rows == 0) return;
  launch_pdl(norm_kernel<f32x8>(dim / 8), dim3(static_cast<unsigned>(rows)), dim3(threads_for(dim / 8)), 0,
             stream, reinterpret_cast<f32x8*>(residual), reinterpret_cast<const bf16x8*>(x),
             reinterpret_cast<const bf16x8*>(w), reinterpret_cast<bf16x8*>(y), dim / 8, dim, eps,
             pdl_trigger_early(rows));
}

void head_rms_norm(bf16* x, const bf16* w, int64_t rows, int64_t row_stride, int64_t num_heads,
                   int64_t head_dim, float eps, cudaStream_t stream) {
  const int64_t warps = rows * num_heads;
  if (warps == 0) return;
  TROUPE_DISPATCH_HEAD_DIM(static_cast<int>(head_dim), [&] {
    head_rms_norm_kernel<kHeadDim>
        <<<static_cast<unsigned>((warps + 3) / 4), 128, 0, stream>>>(x, w, rows, row_stride, num_heads, eps);
    TROUPE_CUDA_CHECK_LAUNCH();
  });
}

void fill_random_normal(bf16* x, int64_t n, uint64_t seed, float mean, float stddev, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 132 * 32);
  fill_random_normal_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(x, n, seed, mean, stddev);
  TROUPE_CUDA_CHECK_LAUNCH();
}

void add_bias(bf16* y, const bf16* bias, int64_t rows, int64_t n, cudaStream_t stream) {
  TROUPE_KERNEL_REQUIRE(n % 8 == 0, "add_bias: n " << n << " is not a multiple of 8");
  const int64_t total = rows * n / 8;
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 132 * 32);
  add_bias_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
      reinterpret_cast<bf16x8*>(y), reinterpret_cast<const bf16x8*>(bias), rows, n / 8);
  TROUPE_CUDA_CHECK_LAUNCH();
}

void silu_mul(const bf16* gate_up, bf16* out, int64_t rows, int64_t inter, cudaStream_t stream) {
  TROUPE_KERNEL_REQUIRE(inter % 8 == 0, "silu_mul: inter " << inter << " is not a multiple of 8");
  const int64_t total = rows * inter / 8;
  if (total == 0) return;
  const int64_t blocks = (total + 255) / 256;
  silu_mul_kernel<<<static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8), 256, 0, stream>>>(
      reinterpret_cast<const bf16x8*>(gate_up), reinterpret_cast<bf16x8*>(out), rows, inter / 8);
  TROUPE_CUDA_CHECK_LAUNCH();
}

void rope_write_kv(const rope_write_kv_params& p, cudaStream_t stream) {
  const int64_t warps = p.rows * (p.num_heads + 2 * p.num_kv_heads);
  if (warps == 0) return;
  TROUPE_DISPATCH_HEAD_DIM(p.head_dim, [&] {
    launch_pdl(rope_write_kv_kernel<kHeadDim>, dim3(static_cast<unsigned>((warps + 3) / 4)), dim3(128), 0,
               stream, p);
  });
}

}  // namespace troupe::kernels::cuda
