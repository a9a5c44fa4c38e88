// flash and paged attention against kernels/cpu paged_attention: ragged query lengths, contexts longer than
// the queries (cached prefixes), shuffled block tables with holes, GQA and MQA, sliding windows, head dims
// 32/64/128/256, poisoned outputs; the Hopper (wgmma) prefill kernel also against the mma.sync one.
#include <algorithm>
#include <numeric>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/attention.h"
#include "tests/gpu/gpu_test_util.h"

namespace troupe::gpu_test {
namespace {

namespace kc = troupe::kernels::cuda;
namespace kref = troupe::kernels::cpu;

struct attn_case {
  std::vector<int> q_lens;
  std::vector<int> ctx_lens;  // >= q_lens
  int num_heads = 8;
  int num_kv_heads = 2;
  int head_dim = 128;
  int block_size = 16;
  int sliding_window = 0;
  bool merged_qkv = false;  // q rows inside a [tokens, (heads + 2 kv heads) * head_dim] qkv output (q_stride)
};

enum class attn_impl {
  flash_prefill_auto,  // the default dispatch: wgmma on Hopper at head_dim 128, else mma.sync 8 warps
  flash_prefill4,
  flash_prefill8,
  flash_prefill_wgmma,
  flash_decode,         // the default: warp tiles where the rows fit
  flash_decode_split3,  // warp tiles, 3 splits
  flash_decode_split1,  // warp tiles, one split (long contexts: block ids past the shared-memory cache)
  flash_decode_block,   // block tiles, 2 stages
  flash_decode_block_stages3_split5,
  flash_decode_block_split1,
  flash_decode_persistent,  // forced, also where the launcher would not take it
  paged_decode
};

const char* name_of(attn_impl i) {
  switch (i) {
    case attn_impl::flash_prefill_auto:
      return "flash_prefill(default)";
    case attn_impl::flash_prefill4:
      return "flash_prefill(4 warps)";
    case attn_impl::flash_prefill8:
      return "flash_prefill(8 warps)";
    case attn_impl::flash_prefill_wgmma:
      return "flash_prefill(wgmma sm90)";
    case attn_impl::flash_decode:
      return "flash_decode";
    case attn_impl::flash_decode_split3:
      return "flash_decode(3 splits)";
    case attn_impl::flash_decode_split1:
      return "flash_decode(1 split)";
    case attn_impl::flash_decode_block:
      return "flash_decode(block tiles)";
    case attn_impl::flash_decode_block_stages3_split5:
      return "flash_decode(block tiles, 3 stages, 5 splits)";
    case attn_impl::flash_decode_block_split1:
      return "flash_decode(block tiles, 1 split)";
    case attn_impl::flash_decode_persistent:
      return "flash_decode(persistent)";
    case attn_impl::paged_decode:
      return "paged_decode";
  }
  return "?";
}

// Runs impl on fresh random inputs drawn from seed (the same seed gives the same inputs) and returns its
// output; compares it with the CPU reference unless check_ref is false.
std::vector<float> run_case(const attn_case& c, attn_impl impl, uint32_t seed, bool check_ref = true) {
  std::mt19937 rng(seed);
  const int num_seqs = static_cast<int>(c.q_lens.size());
  std::vector<int32_t> query_start(num_seqs + 1, 0), ctx(c.ctx_lens.begin(), c.ctx_lens.end());
  for (int s = 0; s < num_seqs; ++s) query_start[s + 1] = query_start[s] + c.q_lens[s];
  const int num_tokens = query_start[num_seqs];
  const int max_ctx = *std::max_element(ctx.begin(), ctx.end());
  const int max_q = *std::max_element(c.q_lens.begin(), c.q_lens.end());
  const int max_blocks = (max_ctx + c.block_size - 1) / c.block_size + 1;  // one spare column: a hole
  // A pool twice as large as needed, handed out in shuffled order: tables are non-contiguous and unused
  // blocks (holes) hold random data that must never be read.
  const int num_blocks = 2 * num_seqs * max_blocks;
  std::vector<int32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> tables(static_cast<size_t>(num_seqs) * max_blocks, -1);
  size_t next = 0;
  for (int s = 0; s < num_seqs; ++s) {
    for (int b = 0; b < (ctx[s] + c.block_size - 1) / c.block_size; ++b)
      tables[s * max_blocks + b] = pool[next++];
    next += 1;  // skip one: a hole between sequences' blocks
  }
  const size_t cache_elems = static_cast<size_t>(num_blocks) * c.block_size * c.num_kv_heads * c.head_dim;
  // With merged_qkv the kernel reads q rows of q_stride elements (k and v columns after the heads, random
  // too); the reference gets the q columns alone.
  const int q_stride = (c.num_heads + (c.merged_qkv ? 2 * c.num_kv_heads : 0)) * c.head_dim;
  auto q = random_bf16(rng, static_cast<size_t>(num_tokens) * q_stride);
  std::vector<float> q_ref(static_cast<size_t>(num_tokens) * c.num_heads * c.head_dim);
  for (int t = 0; t < num_tokens; ++t)
    std::copy_n(q.ref.begin() + static_cast<size_t>(t) * q_stride, c.num_heads * c.head_dim,
                q_ref.begin() + static_cast<size_t>(t) * c.num_heads * c.head_dim);
  auto kcache = random_bf16(rng, cache_elems), vcache = random_bf16(rng, cache_elems);
  const size_t out_elems = static_cast<size_t>(num_tokens) * c.num_heads * c.head_dim;

  device_buffer<bf16> d_q(q.dev), d_k(kcache.dev), d_v(vcache.dev), d_out(out_elems);
  device_buffer<int32_t> d_qs(query_start), d_ctx(ctx), d_tables(tables);
  const size_t ws_floats = kc::attention_workspace_floats(num_tokens, c.num_heads, c.head_dim, max_ctx);
  device_buffer<float> d_ws(ws_floats);
  d_ws.poison();
  d_out.poison();

  kc::attention_params p{};
  p.q = d_q.get();
  p.k_cache = d_k.get();
  p.v_cache = d_v.get();
  p.out = d_out.get();
  p.query_start = d_qs.get();
  p.context_lens = d_ctx.get();
  p.block_tables = d_tables.get();
  p.workspace = d_ws.get();
  p.workspace_floats = ws_floats;
  p.num_seqs = num_seqs;
  p.num_tokens = num_tokens;
  p.max_q_len = max_q;
  p.max_context_len = max_ctx;
  p.max_blocks_per_seq = max_blocks;
  p.num_heads = c.num_heads;
  p.num_kv_heads = c.num_kv_heads;
  p.head_dim = c.head_dim;
  p.block_size = c.block_size;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  p.sliding_window = c.sliding_window;
  p.q_stride = c.merged_qkv ? q_stride : 0;
  using kc::flash_decode_kernel;
  using kc::flash_prefill_kernel;
  switch (impl) {
    case attn_impl::flash_prefill_auto:
      kc::flash_attention_prefill(p, nullptr);
      break;
    case attn_impl::flash_prefill_wgmma:
      kc::flash_attention_prefill(p, nullptr, 0, flash_prefill_kernel::wgmma_sm90);
      break;
    case attn_impl::flash_prefill4:
      kc::flash_attention_prefill(p, nullptr, 4, flash_prefill_kernel::mma_sync);
      break;
    case attn_impl::flash_prefill8:
      kc::flash_attention_prefill(p, nullptr, 8, flash_prefill_kernel::mma_sync);
      break;
    case attn_impl::flash_decode:
      kc::flash_attention_decode(p, nullptr);
      break;
    case attn_impl::flash_decode_split3:
      kc::flash_attention_decode(p, nullptr, 3, flash_decode_kernel::warp_tiles);
      break;
    case attn_impl::flash_decode_split1:
      kc::flash_attention_decode(p, nullptr, 1, flash_decode_kernel::warp_tiles);
      break;
    case attn_impl::flash_decode_block:
      kc::flash_attention_decode(p, nullptr, 0, flash_decode_kernel::block_tiles);
      break;
    case attn_impl::flash_decode_block_stages3_split5:
      kc::flash_attention_decode(p, nullptr, 5, flash_decode_kernel::block_tiles, 3);
      break;
    case attn_impl::flash_decode_block_split1:
      kc::flash_attention_decode(p, nullptr, 1, flash_decode_kernel::block_tiles);
      break;
    case attn_impl::flash_decode_persistent:
      kc::flash_attention_decode(p, nullptr, 0, flash_decode_kernel::persistent);
      break;
    case attn_impl::paged_decode:
      kc::paged_attention_decode(p, nullptr);
      break;
  }
  TROUPE_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> got = to_float(d_out.download());
  if (!check_ref) return got;

  std::vector<float> ref(out_elems);
  kref::paged_attention_params rp;
  rp.q = q_ref.data();
  rp.k_cache = kcache.ref.data();
  rp.v_cache = vcache.ref.data();
  rp.out = ref.data();
  rp.query_start = query_start.data();
  rp.context_lens = ctx.data();
  rp.block_tables = tables.data();
  rp.num_seqs = num_seqs;
  rp.max_blocks_per_seq = max_blocks;
  rp.num_heads = c.num_heads;
  rp.num_kv_heads = c.num_kv_heads;
  rp.head_dim = c.head_dim;
  rp.block_size = c.block_size;
  rp.scale = p.scale;
  rp.sliding_window = c.sliding_window;
  kref::paged_attention(rp);
  // P is rounded to bf16 before P V (as FlashAttention does) and the output is bf16.
  expect_close(got, ref, 2e-2f, 2e-2f, 1.5e-2,
               std::string(name_of(impl)) + " D=" + std::to_string(c.head_dim) +
                   " H=" + std::to_string(c.num_heads) + "/" + std::to_string(c.num_kv_heads) +
                   " block=" + std::to_string(c.block_size) + " window=" + std::to_string(c.sliding_window) +
                   " seed=" + std::to_string(seed));
  return got;
}

class FlashPrefill : public ::testing::TestWithParam<int> {};

TEST_P(FlashPrefill, RaggedBatchWithCachedPrefixes) {
  TROUPE_SKIP_WITHOUT_GPU();
  const int d = GetParam();
  uint32_t seed = 100 + d;
  // Whole prompts, a chunk after a cached prefix, a single-token decode row and a tiny prompt, mixed.
  attn_case c{{200, 77, 1, 3, 130}, {200, 301, 517, 3, 1000}, 8, 2, d, 16, 0};
  for (attn_impl impl :
       {attn_impl::flash_prefill4, attn_impl::flash_prefill8, attn_impl::flash_prefill_auto}) {
    run_case(c, impl, seed++);
    run_case({{129, 64}, {129, 64}, 4, 4, d, 16, 0}, impl, seed++);     // MHA, exact tile edges
    run_case({{150, 40}, {150, 300}, 8, 1, d, 32, 0}, impl, seed++);    // MQA, block size 32
    run_case({{300, 90}, {300, 333}, 8, 2, d, 16, 100}, impl, seed++);  // sliding window
  }
}
INSTANTIATE_TEST_SUITE_P(HeadDims, FlashPrefill, ::testing::Values(32, 64, 128, 256));

#define TROUPE_SKIP_WITHOUT_WGMMA()                                                                         \
  do {                                                                                                      \
    TROUPE_SKIP_WITHOUT_GPU();                                                                              \
    if (!kc::flash_prefill_wgmma_available())                                                               \
      GTEST_SKIP() << "the wgmma prefill kernel needs a compute capability 9.0 device and an sm_90a build"; \
  } while (0)

// The Hopper kernel (head_dim 128) at its tile edges (128 rows, 128 keys), with 16-token blocks gathered 16
// rows apart by its loader, and the cases its masks and block ids can get wrong.
TEST(FlashPrefillWgmma, MatchesReference) {
  TROUPE_SKIP_WITHOUT_WGMMA();
  const attn_impl w = attn_impl::flash_prefill_wgmma;
  uint32_t seed = 900;
  // Whole prompts, chunks after cached prefixes, a decode row and a tiny prompt, mixed (GQA 8/2).
  run_case({{200, 77, 1, 3, 130}, {200, 301, 517, 3, 1000}, 8, 2, 128, 16, 0}, w, seed++);
  run_case({{129, 64}, {129, 64}, 4, 4, 128, 16, 0}, w, seed++);               // MHA, a row past a tile
  run_case({{256, 128, 384}, {256, 128, 384}, 2, 2, 128, 16, 0}, w, seed++);   // exact tiles
  run_case({{150, 40}, {150, 300}, 8, 1, 128, 32, 0}, w, seed++);              // MQA, block size 32
  run_case({{300, 200, 17}, {300, 900, 1200}, 32, 8, 128, 16, 0}, w, seed++);  // Llama GQA 32/8
  run_case({{60, 33}, {60, 640}, 16, 1, 128, 16, 0}, w, seed++);               // MQA 16/1, prefix
  run_case({{300, 90}, {300, 333}, 8, 2, 128, 16, 100}, w, seed++);            // sliding window
  run_case({{260, 50}, {700, 50}, 4, 2, 128, 16, 17}, w, seed++);              // window inside a tile
  run_case({{200, 70}, {200, 400}, 4, 2, 128, 16, 5000}, w, seed++);           // window past the context
  run_case({{100, 33}, {612, 40}, 4, 1, 128, 8, 0}, w, seed++);                // block size 8
  run_case({{97, 130}, {300, 130}, 4, 2, 128, 48, 0}, w, seed++);              // block size 48 (not 2^k)
  attn_case merged{{190, 5}, {190, 450}, 8, 2, 128, 16, 0};
  merged.merged_qkv = true;  // q inside the qkv projection output: q_stride > heads * head_dim
  run_case(merged, w, seed++);
}

// The two prefill kernels on the same inputs agree within bf16 rounding, on larger shapes than the CPU
// reference can afford.
TEST(FlashPrefillWgmma, MatchesMmaSyncKernel) {
  TROUPE_SKIP_WITHOUT_WGMMA();
  uint32_t seed = 950;
  for (const attn_case& c :
       {attn_case{{1024, 1024}, {1024, 1024}, 8, 2, 128, 16, 0}, attn_case{{2048}, {2048}, 32, 8, 128, 16, 0},
        attn_case{{700, 1500}, {3000, 1500}, 8, 8, 128, 16, 0},
        attn_case{{1000, 513}, {1600, 513}, 8, 2, 128, 16, 300}}) {
    const auto a = run_case(c, attn_impl::flash_prefill_wgmma, seed, false);
    const auto b = run_case(c, attn_impl::flash_prefill8, seed, false);
    expect_close(a, b, 2e-2f, 2e-2f, 1e-2, "wgmma vs mma.sync, seed " + std::to_string(seed));
    ++seed;
  }
}

class Decode : public ::testing::TestWithParam<int> {};

TEST_P(Decode, FlashAndPagedMatchReference) {
  TROUPE_SKIP_WITHOUT_GPU();
  const int d = GetParam();
  uint32_t seed = 200 + d;
  // Contexts on both sides of a paged partition (512) and of a flash key tile (64), batch of 6.
  const std::vector<int> ctx{1, 63, 64, 511, 1300, 2100};
  const std::vector<int> ones(ctx.size(), 1);
  for (attn_impl impl :
       {attn_impl::flash_decode, attn_impl::flash_decode_split3, attn_impl::flash_decode_block,
        attn_impl::flash_decode_block_stages3_split5, attn_impl::paged_decode}) {
    for (const auto& [h, kvh] : {std::pair<int, int>{8, 2}, {8, 8}, {8, 1}, {32, 8}}) {
      if (impl == attn_impl::paged_decode && h / kvh > d / 8)
        continue;  // refused: see RefusesUnsupportedShapes
      run_case({ones, ctx, h, kvh, d, 16, 0}, impl, seed++);
    }
    run_case({ones, ctx, 8, 2, d, 16, 700}, impl, seed++);  // sliding window
  }
  // One split over more block ids than a decode block stages in shared memory (1024 for warp tiles, 256
  // for block tiles): the kernels read the table from global memory then.
  run_case({{1, 1}, {17000, 70}, 8, 2, d, 16, 0}, attn_impl::flash_decode_split1, seed++);
  run_case({{1, 1}, {4500, 70}, 8, 2, d, 16, 0}, attn_impl::flash_decode_block_split1, seed++);
  // Flash decode also takes short multi-token runs (speculative decode, small chunks): 3 x 4 rows fit
  // the warp-tile kernel; 5 x 4 go to block tiles.
  run_case({{2, 3, 1}, {700, 90, 5}, 8, 2, d, 16, 0}, attn_impl::flash_decode, seed++);
  run_case({{2, 3, 1}, {700, 90, 5}, 8, 2, d, 16, 0}, attn_impl::flash_decode_block, seed++);
  run_case({{5, 1}, {300, 40}, 8, 2, d, 16, 0}, attn_impl::flash_decode, seed++);
  // Batch 64 at 400-900 keys, 32 q / 8 kv heads: 512 blocks, more than one wave of four-warp blocks and
  // one wave of two-warp blocks on a 132-SM Hopper, where the launcher takes two warps a block.
  std::vector<int> ctx64(64);
  for (int i = 0; i < 64; ++i) ctx64[i] = 400 + (i * 37) % 500;
  run_case({std::vector<int>(64, 1), ctx64, 32, 8, d, 16, 0}, attn_impl::flash_decode, seed++);
  if (d != 64 && d != 128) return;
  // The persistent kernel, forced where the launcher would not take it: few pairs for a GPU-sized grid, so
  // most warps hold a tile or two and nearly every pair is cut into pieces that the last one merges.
  const attn_impl pers = attn_impl::flash_decode_persistent;
  for (const auto& [h, kvh] : {std::pair<int, int>{8, 2}, {8, 8}, {8, 1}, {32, 8}})
    run_case({ones, ctx, h, kvh, d, 16, 0}, pers, seed++);
  run_case({ones, ctx, 8, 2, d, 16, 700}, pers, seed++);                      // sliding window
  run_case({ones, ctx, 8, 2, d, 32, 0}, pers, seed++);                        // block size 32
  run_case({{2, 3, 1}, {700, 90, 5}, 8, 2, d, 16, 0}, pers, seed++);          // runs of 3 x 4 rows
  run_case({{2, 1, 2}, {700, 90, 5}, 8, 2, d, 16, 0}, pers, seed++);          // 2 x 4 rows: keys-as-m tile
  run_case({{2, 1, 2}, {700, 90, 5}, 8, 2, d, 16, 200}, pers, seed++);        // and a window
  run_case({{1, 1}, {17000, 70}, 8, 2, d, 16, 0}, pers, seed++);              // one long pair, many pieces
  run_case({std::vector<int>(64, 1), ctx64, 32, 8, d, 16, 0}, pers, seed++);  // several pairs a warp
  // Batch 256 at 200-340 keys, 8 q / 2 kv heads (512 pairs), where the default launcher takes it; the
  // pieces merge in a fixed order, so two runs agree to the bit.
  std::vector<int> ctx256(256);
  for (int i = 0; i < 256; ++i) ctx256[i] = 200 + (i * 53) % 141;
  const attn_case big{std::vector<int>(256, 1), ctx256, 8, 2, d, 16, 0};
  const std::vector<float> first = run_case(big, attn_impl::flash_decode, seed);
  const std::vector<float> again = run_case(big, pers, seed++, false);
  EXPECT_EQ(first, again) << "persistent decode: two runs on the same inputs differ";
}
INSTANTIATE_TEST_SUITE_P(HeadDims, Decode, ::testing::Values(32, 64, 128, 256));

// A process that launches on several GPUs (tensor parallelism) must raise each kernel's shared-memory limit
// on each device (the attribute belongs to the function as loaded on one device): the prefill and decode
// kernels against the reference on the second device after the first, then on the first again.
TEST(Attention, KernelsRunOnEveryDevice) {
  TROUPE_SKIP_WITHOUT_GPU();
  int n = 0;
  TROUPE_CUDA_CHECK(cudaGetDeviceCount(&n));
  if (n < 2) GTEST_SKIP() << "needs two GPUs, found " << n;
  uint32_t seed = 990;
  const attn_case prefill{{130, 70}, {130, 200}, 8, 2, 128, 16, 0};
  const attn_case decode{std::vector<int>(8, 1), {100, 170, 240, 310, 380, 450, 520, 590}, 8, 2, 128, 16, 0};
  for (int dev : {0, 1, 0}) {
    SCOPED_TRACE(::testing::Message() << "device " << dev);
    TROUPE_CUDA_CHECK(cudaSetDevice(dev));
    run_case(prefill, attn_impl::flash_prefill8, seed++);
    if (kc::flash_prefill_wgmma_available()) run_case(prefill, attn_impl::flash_prefill_wgmma, seed++);
    for (attn_impl impl : {attn_impl::flash_decode_split3, attn_impl::flash_decode_block,
                           attn_impl::flash_decode_persistent, attn_impl::paged_decode})
      run_case(decode, impl, seed++);
  }
  TROUPE_CUDA_CHECK(cudaSetDevice(0));
}

TEST(Attention, RefusesUnsupportedShapes) {
  TROUPE_SKIP_WITHOUT_GPU();
  kc::attention_params p{};
  p.num_seqs = 1;
  p.num_tokens = 1;
  p.max_q_len = 1;
  p.max_context_len = 1;
  p.num_heads = 8;
  p.num_kv_heads = 2;
  p.block_size = 16;
  p.head_dim = 96;
  EXPECT_THROW(kc::flash_attention_prefill(p, nullptr), std::runtime_error);
  EXPECT_THROW(kc::paged_attention_decode(p, nullptr), std::runtime_error);
  p.head_dim = 64;  // the wgmma kernel is head_dim 128 only (and refused on other devices)
  EXPECT_THROW(kc::flash_attention_prefill(p, nullptr, 0, kc::flash_prefill_kernel::wgmma_sm90),
               std::runtime_error);
  p.head_dim = 256;  // the persistent decode kernel: head dims 64 and 128
  EXPECT_THROW(kc::flash_attention_decode(p, nullptr, 0, kc::flash_decode_kernel::persistent),
               std::runtime_error);
  p.head_dim = 128;
  p.num_heads = 12;  // group of 6: no paged kernel for it
  p.num_kv_heads = 2;
  EXPECT_THROW(kc::paged_attention_decode(p, nullptr), std::runtime_error);
  p.num_kv_heads = 5;
  EXPECT_THROW(kc::flash_attention_prefill(p, nullptr), std::runtime_error);
  p.head_dim = 32;  // a group of 8 needs 8 lanes per key row: head_dim >= 64
  p.num_heads = 8;
  p.num_kv_heads = 1;
  EXPECT_THROW(kc::paged_attention_decode(p, nullptr), std::runtime_error);
}

}  // namespace
}  // namespace troupe::gpu_test
