// Reference CPU versions of the transformer ops, in fp32. They are the engine's CPU path and the oracle
// the CUDA kernels are tested against, so they favour clarity and exact semantics over speed (but are
// multi-threaded and vectorizable so the CPU tests stay quick). All shapes are row-major.
#pragma once

#include <cstdint>

namespace troupe::kernels::cpu {

// out[r, :] = table[ids[r], :]
void embedding(const int32_t* ids,  // [rows]
               const float* table,  // [vocab, dim]
               float* out,          // [rows, dim]
               int64_t rows, int64_t dim);

// y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]   (torch's x @ w.T + b; bias may be null)
void matmul_xwt(const float* x,     // [m, k]
                const float* w,     // [n, k]
                const float* bias,  // [n] or null
                float* y,           // [m, n]
                int64_t m, int64_t n, int64_t k);

// y = x / sqrt(mean(x^2) + eps) * w, per row
void rms_norm(const float* x,  // [rows, dim]
              const float* w,  // [dim]
              float* y,        // [rows, dim]
              int64_t rows, int64_t dim, float eps);

// residual += x; y = rms_norm(residual)   (the fused pre-norm step between sublayers)
void add_rms_norm(float* residual,  // [rows, dim], updated in place
                  const float* x,   // [rows, dim]
                  const float* w,   // [dim]
                  float* y,         // [rows, dim]
                  int64_t rows, int64_t dim, float eps);

// out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i]
void silu_mul(const float* gate_up,  // [rows, 2 * inter]: gate then up
              float* out,            // [rows, inter]
              int64_t rows, int64_t inter);

// Rotary embedding in the "rotate half" layout HF Llama uses: pairs (i, i + head_dim/2) rotate by
// angle positions[r] * inv_freq[i]. `x` holds num_heads heads of head_dim per row, updated in place.
// Angles are formed in fp32 as HF does (position * inv_freq in float).
void rope(float* x,                  // [rows, num_heads, head_dim]
          const int32_t* positions,  // [rows]
          const float* inv_freq,     // [rows_or_1, head_dim / 2]; inv_freq_stride 0 = shared by all rows
          int64_t inv_freq_stride, int64_t rows, int64_t num_heads, int64_t head_dim);

// Writes this step's keys and values into the paged cache at slot_mapping[t] = block * block_size + offset.
// A negative slot skips the token.
void write_kv(const float* k,               // [num_tokens, num_kv_heads, head_dim]
              const float* v,               // [num_tokens, num_kv_heads, head_dim]
              const int32_t* slot_mapping,  // [num_tokens]
              float* k_cache,               // [num_blocks, block_size, num_kv_heads, head_dim]
              float* v_cache,               // [num_blocks, block_size, num_kv_heads, head_dim]
              int64_t num_tokens, int64_t num_kv_heads, int64_t head_dim);

struct paged_attention_params {
  const float* q;        // [num_tokens, num_heads, head_dim]
  const float* k_cache;  // [num_blocks, block_size, num_kv_heads, head_dim]
  const float* v_cache;  // [num_blocks, block_size, num_kv_heads, head_dim]
  float* out;            // [num_tokens, num_heads, head_dim]
  const int32_t*
      query_start;  // [num_seqs + 1]: sequence s owns query rows [query_start[s], query_start[s+1])
  const int32_t* context_lens;  // [num_seqs]: keys in the cache for s, this step's included
  const int32_t* block_tables;  // [num_seqs, max_blocks_per_seq]
  int32_t num_seqs = 0;
  int32_t max_blocks_per_seq = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;  // divides num_heads (GQA/MQA)
  int32_t head_dim = 0;
  int32_t block_size = 0;
  float scale = 1.0f;          // usually 1/sqrt(head_dim)
  int32_t sliding_window = 0;  // 0 = full causal; else a query at p sees keys in (p - window, p]
};

// Causal attention over the paged cache. The queries of sequence s are its last q_len tokens: query i sits
// at position context_len - q_len + i and attends keys 0..that position. Softmax in fp32.
void paged_attention(const paged_attention_params& p);

// In place: x[r, :] = log_softmax(x[r, :])
void log_softmax(float* x, int64_t rows, int64_t dim);

}  // namespace troupe::kernels::cpu
