// FlashAttention prefill on Hopper warpgroup MMAs (wgmma, sm_90a), head_dim 128, over the paged KV cache.
//
// Same contract and row packing as flash_attention_kernel (flash_attention.cu): a block owns kBr = 128 packed
// query rows of one (sequence, kv head) -- row r is token r / group, query head kv_head * group + r % group
// -- so one K/V tile in shared memory serves the whole GQA group. The block is two warpgroups; warpgroup w
// owns rows [64 w, 64 w + 64) and runs, per 128-key tile,
//   S = Q K^T   wgmma m64n128k16 x 8 (k = head_dim), A = Q and B = K both from shared memory
//   O += P V    wgmma m64n128k16 x 8 (k = keys), A = P from registers, B = V from shared memory (transposed)
// with the online softmax (log2 domain) on the fp32 S fragments in between. Within a warpgroup the two GEMMs
// overlap the softmax: iteration n issues S_n and O += P_{n-1} V_{n-1} back to back, waits for S_n only,
// runs the softmax of S_n while the P V GEMM is still on the tensor cores, then waits for it and rescales O.
//
// Loads: every thread issues cp.async 16-byte copies (no producer warps) into 3-stage K and V rings:
// iteration n fetches K_{n+2} and V_{n+1} into the stages iteration n - 1 finished with (the rings are one
// tile out of phase because V_n is consumed one iteration after K_n). Key rows are gathered through the
// block table; a thread's block ids of a tile are loaded an iteration before its copies are issued, so no
// cp.async waits on a dependent table read. One __syncthreads per tile: after it every thread's copies of
// the tile have landed and every wgmma of the previous iteration has retired (each thread waits for its own
// before arriving). Two stages (one tile ahead) measured 4 % slower on an H200 (334.7 vs 348.9 TFLOP/s).
//
// Grid: 1-D, (sequence, kv head) pairs in sections whose K/V fit in half of L2 together; within a section
// by row tile from the last, so the heaviest causal tiles start first while the resident blocks share the
// K/V of a few heads (ordered over all pairs, nearly every K/V read missed L2: 8 % hits, 80 % now).
//
// Shared memory layouts (all tiles 1024-byte aligned, as the 128-byte swizzle requires):
//   Q, K[3], V[3] tiles in that order; a 128-row x 128-column bf16 tile (Q, a K stage or a V stage) = 2
//   column halves of 64 (128 bytes), half h at h * 16 KB; within a half, row r at r * 128 bytes, its 16-byte
//   chunk c (columns 8c .. 8c + 7 of the half) at chunk position c ^ (r % 8): the 128B swizzle
//   (Swizzle<3,4,3>: address bits [4,7) ^= [7,10)). Eight rows form one 1024-byte swizzle atom. Q, K (A and B
//   of S = Q K^T, K-major: head_dim contiguous): descriptor start = the half's base plus
//     32 bytes per k16 step inside it (+ 64 rows * 128 bytes for warpgroup 1's Q rows), stride byte offset
//     (between 8-row groups along M or N) 1024, leading byte offset unused for swizzled K-major (1).
//   V (B of O += P V: K x N = keys x head_dim with N contiguous, MN-major, imm-trans-b = 1): start = the
//     tile base + 2048 bytes per k16 step (16 key rows), leading byte offset = 16 KB (from head_dim columns
//     0-63 to 64-127, the next 64-element block along N), stride byte offset = 1024 (the next 8 keys).
// Register fragments (per warpgroup, warp w of 4 owns rows 16 w .. 16 w + 15; lane = 4 g + t):
//   accumulator of m64nN: d[4 j + 2 h + e] = (row 16 w + g + 8 h, column 8 j + 2 t + e), j < N / 8;
//   A of m64k16 in registers: {a0, a1, a2, a3} = (g, 2t..2t+1), (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t
//   + 8..) so the S accumulator columns 16 kk .. 16 kk + 15 (d[8 kk .. 8 kk + 7]) are P's k16 slice kk as is.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/flash_prefill_sm90.cuh"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/sm90.cuh"

namespace troupe::kernels::cuda::detail {
namespace {

using namespace sm90;
using bf16 = __nv_bfloat16;

constexpr int kD = 128;                           // head_dim
constexpr int kBr = 128;                          // query rows per block: 2 warpgroups x 64
constexpr int kBc = 128;                          // keys per tile
constexpr int kThreads = 256;                     // 2 warpgroups
constexpr uint32_t kRowBytes = 128;               // one 64-column half row: one swizzle row
constexpr uint32_t kHalfBytes = kBr * kRowBytes;  // one 64-column half of a 128-row tile
constexpr uint32_t kTileBytes = 2 * kHalfBytes;   // a 128 x 128 bf16 tile
constexpr int kStages = 3;                        // K and V ring stages
// Q, K[kStages], V[kStages] + slack to align the base to 1024 bytes: 225 KB of the 227 KB a block may have.
constexpr uint32_t kSmemBytes = (1 + 2 * kStages) * kTileBytes + 1024;
static_assert(kBr == kBc, "Q and K/V tiles share the loader and the layout");

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

constexpr int kLoadRows = 16;  // rows one pass of the block's 16-byte copies covers (256 threads / 16 chunks)
constexpr uint32_t kQOff = 0, kKOff = kTileBytes;  // then V at (1 + kStages) tiles

__device__ __forceinline__ void cp_async16_to(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}

#define TROUPE_WGMMA_D64                                                                                     \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%" \
  "28,"                                                                                                      \
  "%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54," \
  "%55,"                                                                                                     \
  "%56,%57,%58,%59,%60,%61,%62,%63}"
// d (+)= A B, m64n128k16, A and B K-major in shared memory. kAccumulate = 0 overwrites d.
template <int kAccumulate>
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " TROUPE_WGMMA_D64
      ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : TROUPE_WGMMA_ACC64(d, 0)
      : "l"(desc_a), "l"(desc_b), "r"(kAccumulate));
}

// d += A B, m64n128k16, A from registers (m64k16 fragment), B MN-major in shared memory (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " TROUPE_WGMMA_D64
      ", {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
      : TROUPE_WGMMA_ACC64(d, 0)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

#endif  // sm_90a

// kBlock16: block_size == 16 (the engine's), where a thread's 8 key rows of a tile are row ld_row of 8
// consecutive blocks; else any block_size (block_shift = log2 of it when a power of two, else -1).
template <bool kBlock16>
__global__ void __launch_bounds__(kThreads, 1)
    flash_prefill_sm90_kernel(attention_params p, int block_shift, int section) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ unsigned char smem_raw[];
  const uint32_t smem = (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) + 1023u) & ~1023u;
  const int tid = threadIdx.x;

  // Sections of `section` (sequence, kv head) pairs; within one, by row tile from the last, then pair.
  const int num_pairs = p.num_seqs * p.num_kv_heads;
  const int row_tiles = gridDim.x / num_pairs;
  const int sec = blockIdx.x / (section * row_tiles), in_sec = blockIdx.x % (section * row_tiles);
  const int sec_pairs = min(section, num_pairs - sec * section);
  const int pair = sec * section + in_sec % sec_pairs;
  const int tile_from_last = in_sec / sec_pairs;
  const int seq = pair / p.num_kv_heads, kv_head = pair % p.num_kv_heads;
  const int group = p.num_heads / p.num_kv_heads;
  const int q0 = p.query_start[seq];
  const int q_len = p.query_start[seq + 1] - q0;
  const int rows_total = q_len * group;
  const int row0 = (row_tiles - 1 - tile_from_last) * kBr;
  if (row0 >= rows_total) return;
  const int ctx = p.context_lens[seq];
  const int pos_base = ctx - q_len;  // position of query row 0; keys before it are the cached prefix
  const int min_pos = pos_base + row0 / group;
  const int max_pos = pos_base + (min(row0 + kBr, rows_total) - 1) / group;
  const int window = p.sliding_window;
  const int kt_begin = window > 0 ? max(0, min_pos - window + 1) / kBc : 0;
  const int num_tiles = max_pos / kBc + 1 - kt_begin;  // >= 1: tiles past the last row's position are skipped
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  const int64_t q_stride = p.q_stride > 0 ? p.q_stride : static_cast<int64_t>(p.num_heads) * kD;

  // Loader: thread tid copies 16-byte chunk tid % 16 of rows tid / 16 + 16 i, i < 8, of a 128-row tile (a
  // warp covers two whole 256-byte rows per copy). Rows i apart differ by 16 * 128 bytes and by a multiple of
  // 8 in row, so the swizzled offset is one base plus i * 2048.
  const int ld_chunk = tid % 16, ld_row = tid / 16;
  const uint32_t ld_off =
      (ld_chunk / 8) * kHalfBytes + ld_row * kRowBytes + (((ld_chunk % 8) ^ (ld_row % 8)) << 4);
#pragma unroll
  for (int i = 0; i < kBr / kLoadRows; ++i) {
    const int gr = row0 + ld_row + kLoadRows * i;
    const bool valid = gr < rows_total;  // padding rows are zero-filled
    const int64_t off = valid ? static_cast<int64_t>(q0 + gr / group) * q_stride +
                                    (kv_head * group + gr % group) * kD + ld_chunk * 8
                              : 0;
    cp_async16_to(smem + kQOff + ld_off + i * kLoadRows * kRowBytes, p.q + off, valid);
  }
  // Block ids of this thread's 8 key rows of tile kt (0 for rows past the context, which are zero-filled).
  auto tile_ids = [&](int kt, int(&id)[8]) {
#pragma unroll
    for (int i = 0; i < kBc / kLoadRows; ++i) {
      const int j = kt * kBc + ld_row + kLoadRows * i;
      const int blk = kBlock16 ? kt * (kBc / 16) + i : block_shift >= 0 ? j >> block_shift : j / p.block_size;
      id[i] = j < ctx ? __ldg(table + blk) : 0;
    }
  };
  // Element offset of this thread's chunk within a key row (kv head, 16-byte chunk); with 16-token blocks,
  // of its row ld_row within every block too.
  const int64_t row_elems = static_cast<int64_t>(p.num_kv_heads) * kD;
  const int64_t thread_off = kv_head * kD + ld_chunk * 8 + (kBlock16 ? ld_row * row_elems : 0);
  const int block_elems = 16 * p.num_kv_heads * kD;  // kBlock16: one block of one layer's cache (< 2^31)
  auto load_tile = [&](const bf16* cache, uint32_t dst, int kt, const int(&id)[8]) {
    const bf16* base = cache + thread_off;
#pragma unroll
    for (int i = 0; i < kBc / kLoadRows; ++i) {
      const int j = kt * kBc + ld_row + kLoadRows * i;
      const bool valid = j < ctx;  // rows past the context are zero-filled: P (= 0) * V must not be NaN
      int64_t off;
      if constexpr (kBlock16) {
        off = static_cast<int64_t>(id[i]) * block_elems;  // 32 x 32 -> 64-bit multiply
      } else {
        const int in_blk = block_shift >= 0 ? j & (p.block_size - 1) : j % p.block_size;
        off = (static_cast<int64_t>(id[i]) * p.block_size + in_blk) * row_elems;
      }
      // Rows past the context have id 0: a real block, never read (source size 0). A select of the cache
      // pointer instead cost a parameter reload and two moves per copy (register pressure).
      cp_async16_to(dst + ld_off + i * kLoadRows * kRowBytes, base + off, valid);
    }
  };
  // Iteration n copies K_{n+L} and V_{n+L-1} (L = kStages - 1 tiles ahead) into the stages freed by
  // iteration n - 1; id_k, id_v hold their block ids (loaded one iteration earlier still).
  constexpr int L = kStages - 1;
  constexpr uint32_t kVOff = (1 + kStages) * kTileBytes;
  int id_v[8], id_k[8];
  tile_ids(kt_begin, id_v);
  load_tile(p.k_cache, smem + kKOff, kt_begin, id_v);
  cp_async_commit();  // group 0: Q and K_0
#pragma unroll
  for (int i = 0; i < 8; ++i) id_k[i] = 0;
  if (num_tiles > 1) tile_ids(kt_begin + 1, id_k);
  if constexpr (L == 2) {  // group 1: K_1 and V_0
    if (num_tiles > 1) load_tile(p.k_cache, smem + kKOff + kTileBytes, kt_begin + 1, id_k);
    load_tile(p.v_cache, smem + kVOff, kt_begin, id_v);
    cp_async_commit();
#pragma unroll
    for (int i = 0; i < 8; ++i) id_v[i] = id_k[i];
    if (num_tiles > 2) tile_ids(kt_begin + 2, id_k);
  }
  static_assert(L == 1 || L == 2, "2 or 3 stages");

  const int wg = tid / 128, warp_in_wg = (tid % 128) / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  int row_pos[2];  // positions of this thread's rows g and g + 8; -1 = padding (every key masked)
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int gr = row0 + wg * 64 + warp_in_wg * 16 + g + 8 * h;
    row_pos[h] = gr < rows_total ? pos_base + gr / group : -1;
  }
  const uint64_t q_desc = smem_desc(smem + kQOff + wg * 64 * kRowBytes, 16, 1024);
  const uint64_t k_desc = smem_desc(smem + kKOff, 16, 1024);
  const uint64_t v_desc = smem_desc(smem + kVOff, kHalfBytes, 1024);
  constexpr uint64_t kTileDesc = kTileBytes >> 4;  // descriptor start-address units of one tile

  const float scale_log2 = p.scale * 1.4426950408889634f;
  float o[64], s[64];
  uint32_t pa[8][4];  // P of the previous tile as 8 k16 A fragments
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = s[i] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < 8; ++kk)
#pragma unroll
    for (int e = 0; e < 4; ++e) pa[kk][e] = 0;

  auto issue_s = [&](int stage) {
    static_for<kD / 16>([&](auto ks_c) {
      constexpr int ks = decltype(ks_c)::value;
      constexpr uint32_t koff = ((ks / 4) * kHalfBytes + (ks % 4) * 32) >> 4;
      wgmma_ss<ks == 0 ? 0 : 1>(s, q_desc + koff, k_desc + stage * kTileDesc + koff);
    });
  };
  auto issue_pv = [&](int stage) {
    static_for<kBc / 16>([&](auto kk_c) {
      constexpr int kk = decltype(kk_c)::value;
      wgmma_rs(o, pa[kk], v_desc + stage * kTileDesc + ((kk * 16 * kRowBytes) >> 4));
    });
  };
  // Row h of this thread sees key kt * kBc + c, c = 8 j + 2 t4 + e, iff lo < c - 2 t4 <= hi: one compare
  // against compile-time 8 j + e per bound and element.
  auto apply_mask = [&](int kt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int hi = row_pos[h] - kt * kBc - 2 * t4;  // causal: key <= position (padding rows: none)
      const int lo = window > 0 ? row_pos[h] - window - kt * kBc - 2 * t4 : INT_MIN;  // key > pos - window
#pragma unroll
      for (int j = 0; j < kBc / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          if (8 * j + e > hi || 8 * j + e <= lo) s[4 * j + 2 * h + e] = -INFINITY;
    }
  };
  // S of tile kt -> unnormalized probabilities in place; corr = the factor O and l are rescaled by.
  auto softmax = [&](int kt, float(&corr)[2]) {
    // Masks only where the tile crosses the diagonal, the context end or the window start (a branch around
    // the whole mask: inside the element loop the compiler turned it into selects on every tile).
    if ((kt + 1) * kBc - 1 > min_pos || (window > 0 && kt * kBc <= max_pos - window)) apply_mask(kt);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // Four independent partial maxima and sums: with two warps per scheduler, a 32-long dependent chain
      // of fmax or fadd is latency nothing hides.
      float mx4[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < kBc / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) mx4[(2 * j + e) % 4] = fmaxf(mx4[(2 * j + e) % 4], s[4 * j + 2 * h + e]);
      float mx = fmaxf(fmaxf(mx4[0], mx4[1]), fmaxf(mx4[2], mx4[3]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[h], mx * scale_log2);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet stays all-zero
      corr[h] = fast_exp2(m[h] - m_use);
      m[h] = m_new;
      float sum4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < kBc / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[4 * j + 2 * h + e];
          v = fast_exp2(fmaf(v, scale_log2, -m_use));
          sum4[(2 * j + e) % 4] += v;
        }
      l[h] = l[h] * corr[h] + ((sum4[0] + sum4[1]) + (sum4[2] + sum4[3]));
    }
  };

  // Iteration n: K_n and V_{n-1} are in shared memory (copied during iteration n - 1).
  auto step = [&](int n, auto first_c) {
    constexpr bool kFirst = decltype(first_c)::value;
    const int kt = kt_begin + n, stage = n % kStages;
    cp_async_wait<L - 1>();  // K_n and V_{n-1} (the groups of later tiles may be in flight)
    fence_proxy_async();
    __syncthreads();  // K_n, V_{n-1} landed for all; every wgmma reading K_{n-1} or V_{n-2} has retired
    reg_fence(s);
    reg_fence(o);
    reg_fence(pa);
    wgmma_fence();
    issue_s(stage);
    wgmma_commit();
    if constexpr (!kFirst) {
      issue_pv((n - 1) % kStages);
      wgmma_commit();
    }
    if (n + L < num_tiles) load_tile(p.k_cache, smem + kKOff + (n + L) % kStages * kTileBytes, kt + L, id_k);
    if (n + L - 1 < num_tiles)
      load_tile(p.v_cache, smem + kVOff + (n + L - 1) % kStages * kTileBytes, kt + L - 1, id_v);
    cp_async_commit();  // possibly empty: the wait counts above stay exact at the end of the range
#pragma unroll
    for (int i = 0; i < 8; ++i) id_v[i] = id_k[i];
    if (n + L + 1 < num_tiles) tile_ids(kt + L + 1, id_k);
    if constexpr (kFirst) {
      wgmma_wait<0>();
    } else {
      wgmma_wait<1>();  // S_n done; O += P_{n-1} V_{n-1} may still run under the softmax
    }
    reg_fence(s);
    float corr[2];
    softmax(kt, corr);
    wgmma_wait<0>();
    reg_fence(o);
    reg_fence(pa);
#pragma unroll
    for (int j = 0; j < kD / 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        o[4 * j + 2 * h] *= corr[h];
        o[4 * j + 2 * h + 1] *= corr[h];
      }
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      pa[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
      pa[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };
  step(0, std::true_type{});
  for (int n = 1; n < num_tiles; ++n) step(n, std::false_type{});
  // O += P V of the last tile.
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
  reg_fence(o);
  reg_fence(pa);
  wgmma_fence();
  issue_pv((num_tiles - 1) % kStages);
  wgmma_commit();
  wgmma_wait<0>();
  reg_fence(o);

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = l[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int gr = row0 + wg * 64 + warp_in_wg * 16 + g + 8 * h;
    if (gr >= rows_total) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int64_t orow = static_cast<int64_t>(q0 + gr / group) * p.num_heads + kv_head * group + gr % group;
    bf16* dst = p.out + orow * kD + 2 * t4;
#pragma unroll
    for (int j = 0; j < kD / 8; ++j)
      *reinterpret_cast<__nv_bfloat162*>(dst + 8 * j) =
          __floats2bfloat162_rn(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
  }
#else
  TROUPE_SM90_UNAVAILABLE_BODY();
#endif
}

}  // namespace

bool flash_prefill_sm90_available() {
  static const bool available =
      sm90::sm90_image_present(reinterpret_cast<const void*>(flash_prefill_sm90_kernel<true>));
  return available;
}

void flash_prefill_sm90(const attention_params& p, cudaStream_t stream) {
  TROUPE_KERNEL_REQUIRE(p.head_dim == kD, "flash prefill (sm90): head_dim " << p.head_dim << " is not 128");
  TROUPE_KERNEL_REQUIRE(flash_prefill_sm90_available(),
                        "flash prefill (sm90): needs a compute capability 9.0 device and an sm_90a build");
  TROUPE_KERNEL_REQUIRE(
      p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0,
      "num_heads " << p.num_heads << " is not a multiple of num_kv_heads " << p.num_kv_heads);
  TROUPE_KERNEL_REQUIRE(p.block_size > 0, "block_size " << p.block_size);
  if (p.num_tokens == 0) return;
  // The L2 size sets the section of (sequence, kv head) pairs whose blocks run together: their K/V (at the
  // longest context) take at most half of it (the first device's: the GPUs of a process are alike).
  static const int64_t l2_bytes = [] {
    int dev = 0, bytes = 0;
    TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
    TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, dev));
    return static_cast<int64_t>(bytes);
  }();
  const int group = p.num_heads / p.num_kv_heads;
  const int64_t row_tiles = (static_cast<int64_t>(p.max_q_len) * group + kBr - 1) / kBr;
  const int64_t pairs = static_cast<int64_t>(p.num_kv_heads) * p.num_seqs;
  const int64_t blocks = row_tiles * pairs;
  TROUPE_KERNEL_REQUIRE(blocks < (int64_t{1} << 31), "flash prefill (sm90): grid too large");
  if (blocks == 0) return;
  const int64_t pair_bytes = 2 * static_cast<int64_t>(std::max(p.max_context_len, 1)) * kD * 2;
  // B4 H32 S4096 (2 MB of K/V a pair, 12 pairs a section): 348.9 TFLOP/s against 340.4 with one section.
  const int section = static_cast<int>(std::clamp<int64_t>(l2_bytes / 2 / pair_bytes, 1, pairs));
  const int block_shift = (p.block_size & (p.block_size - 1)) == 0 ? __builtin_ctz(p.block_size) : -1;
  const auto kernel = p.block_size == 16 ? flash_prefill_sm90_kernel<true> : flash_prefill_sm90_kernel<false>;
  set_max_dynamic_smem(kernel, static_cast<int>(kSmemBytes));
  kernel<<<static_cast<unsigned>(blocks), kThreads, kSmemBytes, stream>>>(p, block_shift, section);
  TROUPE_CUDA_CHECK_LAUNCH();
}

}  // namespace troupe::kernels::cuda::detail
