// Attention over the paged bf16 KV cache: the same function as kernels/cpu paged_attention (causal, GQA/MQA,
// variable-length batches, queries after a cached prefix, optional sliding window), in two families:
//   flash_*  tensor-core (mma.sync m16n8k16) tiles with online softmax; query rows pack (token, head of the
//            kv group) so one K/V tile in shared memory serves every head of its group; decode splits the
//            keys over blocks (flash-decoding) and merges the parts with flash_merge_splits.
//   paged_*  PagedAttention-style decode on CUDA cores: one block per (sequence, kv head, partition of
//            kPagedPartition keys); one pass when the context fits one partition, else parts + merge.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace troupe::kernels::cuda {

// The rotary embedding applied by the decode kernel itself (flash decode with one query token per sequence;
// rope_write_kv then need not run): q points at the unrotated rows of the merged q/k/v projection output
// (q_stride its row width), each token's new key and value follow its query heads in that row, and the
// kernel rotates q and the new key, writes the new K/V into the cache through slot_mapping and attends,
// exactly as rope_write_kv followed by the attention. Disabled while positions is null.
struct attention_rope {
  const int32_t* positions = nullptr;       // [num_tokens]
  const float* inv_freq = nullptr;          // [num_tokens or 1, head_dim / 2]
  int64_t inv_freq_stride = 0;              // 0: one table for every token
  const int32_t* slot_mapping = nullptr;    // [num_tokens]: where the new K/V go
  const __nv_bfloat16* q_norm_w = nullptr;  // [head_dim] or null (Qwen3's per-head norms)
  const __nv_bfloat16* k_norm_w = nullptr;  // [head_dim] or null
  float norm_eps = 1e-6f;
  __nv_bfloat16* qkv = nullptr;  // the same rows as q, writable: the unfused fallback rotates them in place
  __nv_bfloat16* k_cache = nullptr;  // the params' caches, writable (the new K/V are written here)
  __nv_bfloat16* v_cache = nullptr;
};

struct attention_params {
  const __nv_bfloat16* q;        // [num_tokens, q_stride]: heads [0, num_heads) of head_dim at the row start
  const __nv_bfloat16* k_cache;  // [num_blocks, block_size, num_kv_heads, head_dim]
  const __nv_bfloat16* v_cache;  // [num_blocks, block_size, num_kv_heads, head_dim]
  __nv_bfloat16* out;            // [num_tokens, num_heads, head_dim]
  const int32_t*
      query_start;  // [num_seqs + 1]: sequence s owns query rows [query_start[s], query_start[s+1])
  const int32_t* context_lens;  // [num_seqs]: keys in the cache for s, this step's included
  const int32_t* block_tables;  // [num_seqs, max_blocks_per_seq]
  float* workspace;             // [workspace_floats]: split-K partial outputs and log-sum-exps (may be null)
  size_t workspace_floats = 0;
  int32_t num_seqs = 0;
  int32_t num_tokens = 0;  // query_start[num_seqs], known on the host
  int32_t max_q_len = 0;   // host-side upper bounds used to size the grid
  int32_t max_context_len = 0;
  int32_t max_blocks_per_seq = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;  // divides num_heads
  int32_t head_dim = 0;      // 32, 64, 128 or 256
  int32_t q_stride = 0;      // elements between tokens' q rows; 0 = num_heads * head_dim (q inside the
                             // merged qkv projection output has a longer stride)
  int32_t block_size = 0;
  float scale = 1.0f;
  int32_t sliding_window = 0;  // 0 = full causal; else a query at p sees keys in (p - window, p]
  attention_rope rope;         // flash_attention_decode only
};

constexpr int kPagedPartition = 512;  // keys per block of paged_attention_decode
constexpr int kFlashMaxSplits = 64;

// Floats of workspace the split-K paths may use for these shapes (the launchers never exceed what the
// params give them; with less they split less).
size_t attention_workspace_floats(int32_t num_tokens, int32_t num_heads, int32_t head_dim,
                                  int32_t max_context_len);

// Prefill/mixed batches: tiles of 128 packed query rows, no split, in one of two kernels:
//   mma_sync    mma.sync m16n8k16 (any head_dim, sm_80+). warps_per_block picks its tiling: 4 warps of 2
//               m tiles each (fewer shared-memory reads per MMA, but 255 registers), 8 warps of 1 (2 blocks
//               per SM); 0 = the default (8, or 4 x 1 m tile at head_dim 256).
//   wgmma_sm90  Hopper warpgroup MMAs (flash_prefill_sm90.cu): head_dim 128 on a compute capability 9.0
//               device with an sm_90a build; 2 warpgroups x 64 rows, 128-key tiles.
// automatic = wgmma_sm90 where it applies (and warps_per_block is 0), else mma_sync. Forcing wgmma_sm90
// where it does not apply throws.
enum class flash_prefill_kernel { automatic, mma_sync, wgmma_sm90 };
void flash_attention_prefill(const attention_params& p, cudaStream_t stream, int warps_per_block = 0,
                             flash_prefill_kernel kernel = flash_prefill_kernel::automatic);
// Whether the wgmma_sm90 prefill kernel runs on the current device (compute capability 9.0, sm_90a build).
bool flash_prefill_wgmma_available();
// Short query runs (decode; any q_len works): keys split over blocks to fill the GPU, num_splits 0 =
// choose from the shapes. Three kernels: warp_tiles (the default where max_q_len * group <= 16 packed
// rows: each warp streams its own 16-key tiles through a private cp.async ring), persistent (the default
// over warp_tiles for grids of more than two (sequence, kv head) pairs an SM at head dims 64 and 128 with
// block sizes a multiple of 16: a GPU-sized grid of warps, each streaming an equal share of all pairs' key
// tiles, pairs cut between warps merged by the last piece to finish; num_splits does not apply; forcing it
// where it does not apply throws) and block_tiles (16-row tiles, four warps share 64-key tiles; `stages` 2
// or 3 sets its ring, 0 = 2; any q_len).
enum class flash_decode_kernel { automatic, warp_tiles, block_tiles, persistent };
void flash_attention_decode(const attention_params& p, cudaStream_t stream, int num_splits = 0,
                            flash_decode_kernel kernel = flash_decode_kernel::automatic, int stages = 0);
// Picks one of the two by max_q_len.
void flash_attention(const attention_params& p, cudaStream_t stream);

// Decode only: every sequence has exactly one query row (max_q_len == 1). num_kv_heads groups of 1, 2, 4
// or 8 query heads.
void paged_attention_decode(const attention_params& p, cudaStream_t stream);

}  // namespace troupe::kernels::cuda
