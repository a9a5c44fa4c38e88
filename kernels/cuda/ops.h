// CUDA versions of the ops in kernels/cpu/ops.h, on bf16 activations with fp32 math. Launchers take POD
// views by value and a stream; all are asynchronous and check their launch. Shapes are row-major; "stride"
// arguments are in elements and let a kernel read a slice of a wider row (e.g. q inside the merged qkv).
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

namespace troupe::kernels::cuda {

using bf16 = __nv_bfloat16;

// out[r, :] = table[ids[r], :]
void embedding(const int32_t* ids,  // [rows]
               const bf16* table,   // [vocab, dim]
               bf16* out,           // [rows, dim]
               int64_t rows, int64_t dim, cudaStream_t stream);
// The same where some ids are known only on the device (asynchronous scheduling): row r gathers
// table[pending_ids[pending[r]]] when pending[r] >= 0, else table[ids[r]].
void embedding_pending(const int32_t* ids,          // [rows]
                       const int32_t* pending,      // [rows]: index into pending_ids, or -1
                       const int32_t* pending_ids,  // [*]: the previous step's sampled ids, on the device
                       const bf16* table, bf16* out, int64_t rows, int64_t dim, cudaStream_t stream);

// If x is non-null: residual += x. Then y = residual / sqrt(mean(residual^2) + eps) * w. The sum is
// rounded to bf16 before the norm, as the residual stream is stored in bf16.
void add_rms_norm(bf16* residual,  // [rows, dim], updated in place when x is non-null
                  const bf16* x,   // [rows, dim] or null (plain RMSNorm of residual)
                  const bf16* w,   // [dim]
                  bf16* y,         // [rows, dim]
                  int64_t rows, int64_t dim, float eps, cudaStream_t stream);
// The same over an fp32 residual stream (the model runner's: one bf16 rounding fewer per sublayer, which
// keeps its logprobs near an fp32 reference).
void add_rms_norm(float* residual,  // [rows, dim], updated in place when x is non-null
                  const bf16* x,    // [rows, dim] or null
                  const bf16* w,    // [dim]
                  bf16* y,          // [rows, dim]
                  int64_t rows, int64_t dim, float eps, cudaStream_t stream);

// Qwen3's per-head q/k norm, in place: each head_dim slice of each row is RMS-normalized with w.
void head_rms_norm(bf16* x,        // [rows, row_stride]: heads [0, num_heads) at the row start
                   const bf16* w,  // [head_dim]
                   int64_t rows, int64_t row_stride, int64_t num_heads, int64_t head_dim, float eps,
                   cudaStream_t stream);

// y[r, :] += bias (the q/k/v biases of Qwen2, optional MLP/o_proj biases)
void add_bias(bf16* y,           // [rows, n]
              const bf16* bias,  // [n]
              int64_t rows, int64_t n, cudaStream_t stream);

// out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i]
void silu_mul(const bf16* gate_up,  // [rows, 2 * inter]
              bf16* out,            // [rows, inter]
              int64_t rows, int64_t inter, cudaStream_t stream);

// RoPE (rotate-half, angle = positions[r] * inv_freq[r * inv_freq_stride + i] in fp32, as kernels/cpu)
// fused with the KV-cache write. qkv is the merged projection output [rows, (nh + 2 * nkv) * head_dim]:
// q is rotated in place; k is rotated and written (with v, unrotated) to the cache at slot_mapping[r]
// (block * block_size + offset; negative = skip). Optional q_norm_w / k_norm_w apply Qwen3's per-head
// RMSNorm before the rotation. k in the qkv buffer is rotated in place too (tests read it back).
struct rope_write_kv_params {
  bf16* qkv;                    // [rows, (num_heads + 2 * num_kv_heads) * head_dim]
  const int32_t* positions;     // [rows]
  const float* inv_freq;        // [rows or 1, head_dim / 2]
  const int32_t* slot_mapping;  // [rows]
  bf16* k_cache;                // [num_blocks, block_size, num_kv_heads, head_dim]
  bf16* v_cache;                // [num_blocks, block_size, num_kv_heads, head_dim]
  const bf16* q_norm_w;         // [head_dim] or null
  const bf16* k_norm_w;         // [head_dim] or null
  int64_t inv_freq_stride = 0;  // 0: one table for every row
  int64_t rows = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  float norm_eps = 1e-6f;
};
void rope_write_kv(const rope_write_kv_params& p, cudaStream_t stream);

// x[i] = mean + stddev * N(0, 1), from a counter hash of (seed, i): random weights and benchmark inputs
// without a host round trip. Deterministic for a seed.
void fill_random_normal(bf16* x, int64_t n, uint64_t seed, float mean, float stddev, cudaStream_t stream);

// Skinny GEMMs by our own kernel (kernels/cuda/gemv.cu): y[m, n] = x[m, k] @ w[n, k]^T for 1 <= m <=
// kGemvMaxM, k % 8 == 0, x and w 16-byte aligned (gemv_supports); fp32 accumulation.
constexpr int kGemvMaxM = 4;
// Shapes gemm_context sends to the Hopper kernel when TROUPE_GEMM_SM90=1: rows m in [kSm90MinM, kSm90MaxM]
// (set_sm90_m_range), n >= kSm90MinN (set_sm90_min_n; the gate/up projection and the LM head, where it
// matched cuBLASLt).
constexpr int64_t kSm90MinM = 129, kSm90MaxM = 256, kSm90MinN = 16384;
bool gemv_supports(const void* x, const void* w, int64_t m, int64_t n, int64_t k);
void gemv_xwt(const bf16* x,  // [m, k]
              const bf16* w,  // [n, k]
              bf16* y,        // [m, n]
              int64_t m, int64_t n, int64_t k, cudaStream_t stream);
void gemv_xwt_f32(const bf16* x,  // [m, k]
                  const bf16* w,  // [n, k]
                  float* y,       // [m, n]
                  int64_t m, int64_t n, int64_t k, cudaStream_t stream);
// The MLP's gate/up projection and SiLU-and-multiply in one pass: act[m, j] = silu(g) * u with g = (x @
// w_gate_up[j]^T) and u = (x @ w_gate_up[inter + j]^T), each rounded to bf16 first (what gemm + silu_mul
// compute). Same limits as gemv_xwt with n = 2 * inter.
void gemv_gate_up_silu(const bf16* x,          // [m, k]
                       const bf16* w_gate_up,  // [2 * inter, k]: gate rows, then up rows
                       bf16* act,              // [m, inter]
                       int64_t m, int64_t inter, int64_t k, cudaStream_t stream);

// GEMMs: y[m, n] = x[m, k] @ w[n, k]^T, bf16 operands, fp32 accumulation, bf16 out; through the gemv
// kernel when m <= gemv_max_m(), the Hopper kernel for shapes in its range (off by default), when the
// shape allows them; cuBLASLt otherwise.
// One gemm_context per stream/thread: it owns the handle and a workspace, created once, reused per call.
class gemm_context {
 public:
  gemm_context();
  ~gemm_context();
  gemm_context(const gemm_context&) = delete;
  gemm_context& operator=(const gemm_context&) = delete;

  void matmul_xwt(const bf16* x,  // [m, k]
                  const bf16* w,  // [n, k]
                  bf16* y,        // [m, n]
                  int64_t m, int64_t n, int64_t k, cudaStream_t stream);
  // Same with fp32 output (the LM head: logits leave the GPU in fp32).
  void matmul_xwt_f32(const bf16* x,  // [m, k]
                      const bf16* w,  // [n, k]
                      float* y,       // [m, n]
                      int64_t m, int64_t n, int64_t k, cudaStream_t stream);

  // Largest m sent to the gemv kernel: kGemvMaxM by default, 0 = cuBLASLt always (benchmarks compare). At
  // m > 1 only shapes with k <= 4096 go there: on an H200 the gemv kernel beat cuBLASLt at m = 2..4 for
  // the q/k/v, o and gate/up projections and the LM head, but not for the 14336-deep down projection.
  void set_gemv_max_m(int m) { gemv_max_m_ = m; }
  int gemv_max_m() const { return gemv_max_m_; }

  // Rows m in [lo, hi] go to the Hopper kernel (gemm_sm90.cu) where it is available (a compute capability
  // 9.0 device and an sm_90a build) and takes the shape. That kernel starts loading w before the kernel
  // ahead of it in the stream has finished (programmatic dependent launch): w must be weights, or anything
  // no kernel still in flight writes. hi = 0: never, the default unless TROUPE_GEMM_SM90=1
  // (then [kSm90MinM, kSm90MaxM]). The first call with hi > 0 allocates its workspace, so it must not come
  // during graph capture. False when hi > 0 and the kernel is not available.
  bool set_sm90_m_range(int64_t lo, int64_t hi);
  // ... and only for n >= this (kSm90MinN; TROUPE_GEMM_SM90_MIN_N at construction).
  void set_sm90_min_n(int64_t n) { sm90_min_n_ = n; }

  // GEMMs with m >= this many rows (prefill-sized) pick their cuBLASLt algorithm by timing the
  // heuristic's best candidates once per shape, outside graph capture; 0 = always the heuristic's first
  // (also TROUPE_GEMM_TUNE=0 in the environment).
  void set_tune_min_m(int64_t m) { tune_min_m_ = m; }

 private:
  // Descriptors and the chosen algorithm of one (m, n, k, output type), made on its first call.
  struct plan;
  struct plan_deleter {
    void operator()(plan* p) const;
  };
  void run(const bf16* x, const bf16* w, void* y, bool f32_out, int64_t m, int64_t n, int64_t k,
           cudaStream_t stream);
  plan& plan_for(int64_t m, int64_t n, int64_t k, bool f32_out);
  void tune(plan& pl, const bf16* x, const bf16* w, void* y, cudaStream_t stream);
  int gemv_max_m_ = kGemvMaxM;
  int64_t tune_min_m_ = 1024;
  int64_t sm90_min_m_ = 0, sm90_max_m_ = 0, sm90_min_n_ = kSm90MinN;
  void* sm90_workspace_ = nullptr;  // gemm_sm90_workspace_bytes(sm90_ctas_); null: no Hopper kernel
  int sm90_ctas_ = 0;               // the SM count
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;  // [kWorkspaceBytes]
  static constexpr size_t kWorkspaceBytes = 32u << 20;
  static constexpr size_t kMaxPlans = 4096;  // beyond this, plans are made per call and not kept
  std::map<std::tuple<int64_t, int64_t, int64_t, bool>, std::unique_ptr<plan, plan_deleter>> plans_;
};

}  // namespace troupe::kernels::cuda
