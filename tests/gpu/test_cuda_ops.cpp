// CUDA elementwise ops and GEMMs against kernels/cpu on fresh random inputs of several shapes.
#include <algorithm>
#include <cstring>
#include <functional>
#include <numeric>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/gemm_sm90.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/probe.h"
#include "tests/common/test_seed.h"
#include "tests/gpu/gpu_test_util.h"

namespace troupe::gpu_test {
namespace {

namespace kc = troupe::kernels::cuda;
namespace kref = troupe::kernels::cpu;

TEST(CudaOps, EmbeddingGathersRows) {
  TROUPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(11);
  for (const auto& [rows, vocab, dim] :
       {std::tuple<int, int, int>{1, 7, 64}, {37, 1000, 264}, {300, 50, 4096}}) {
    auto table = random_bf16(rng, static_cast<size_t>(vocab) * dim);
    std::vector<int32_t> ids(rows);
    for (auto& id : ids) id = std::uniform_int_distribution<int>(0, vocab - 1)(rng);
    device_buffer<bf16> d_table(table.dev), d_out(static_cast<size_t>(rows) * dim);
    device_buffer<int32_t> d_ids(ids);
    d_out.poison();
    kc::embedding(d_ids.get(), d_table.get(), d_out.get(), rows, dim, nullptr);
    std::vector<float> ref(static_cast<size_t>(rows) * dim);
    kref::embedding(ids.data(), table.ref.data(), ref.data(), rows, dim);
    expect_close(to_float(d_out.download()), ref, 0, 0, 0, "embedding");
  }
}

TEST(CudaOps, AddRmsNormMatchesReference) {
  TROUPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(12);
  // Up to 4096: 2 vectors a thread in registers; 5120: 4; 16384: past that, the two-pass variant.
  for (const auto& [rows, dim] : {std::pair<int, int>{1, 64}, {5, 2048}, {33, 4096}, {7, 5120}, {3, 16384}}) {
    for (bool with_add : {true, false}) {
      const size_t n = static_cast<size_t>(rows) * dim;
      auto res = random_bf16(rng, n, 2.0f), x = random_bf16(rng, n), w = random_bf16(rng, dim, 0.2f, 1.0f);
      device_buffer<bf16> d_res(res.dev), d_x(x.dev), d_w(w.dev), d_y(n);
      d_y.poison();
      kc::add_rms_norm(d_res.get(), with_add ? d_x.get() : nullptr, d_w.get(), d_y.get(), rows, dim, 1e-6f,
                       nullptr);
      std::vector<float> ref_res = res.ref, ref_y(n);
      if (with_add) {
        // The residual stream is bf16: the reference rounds the sum as the kernel stores it.
        for (size_t i = 0; i < n; ++i) ref_res[i] = round_bf16(ref_res[i] + x.ref[i]);
      }
      kref::rms_norm(ref_res.data(), w.ref.data(), ref_y.data(), rows, dim, 1e-6f);
      expect_close(to_float(d_res.download()), ref_res, 0, 0, 0, "residual");
      expect_close(to_float(d_y.download()), ref_y, 1e-2f, 1e-2f, 5e-3, "normed");

      // fp32 residual stream: the sum is not rounded.
      device_buffer<float> d_res32(res.ref);
      d_y.poison();
      kc::add_rms_norm(d_res32.get(), with_add ? d_x.get() : nullptr, d_w.get(), d_y.get(), rows, dim, 1e-6f,
                       nullptr);
      std::vector<float> ref_res32 = res.ref;
      if (with_add) {
        for (size_t i = 0; i < n; ++i) ref_res32[i] += x.ref[i];
      }
      kref::rms_norm(ref_res32.data(), w.ref.data(), ref_y.data(), rows, dim, 1e-6f);
      expect_close(d_res32.download(), ref_res32, 1e-6f, 1e-6f, 1e-7, "fp32 residual");
      expect_close(to_float(d_y.download()), ref_y, 1e-2f, 1e-2f, 5e-3, "normed (fp32 residual)");
    }
  }
}

TEST(CudaOps, HeadRmsNormNormalizesEachHead) {
  TROUPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(13);
  for (int head_dim : {32, 64, 128, 256}) {
    const int rows = 19, heads = 6, stride = 10 * head_dim;  // q heads inside a wider qkv row
    auto x = random_bf16(rng, static_cast<size_t>(rows) * stride, 3.0f),
         w = random_bf16(rng, head_dim, 0.2f, 1.0f);
    device_buffer<bf16> d_x(x.dev), d_w(w.dev);
    kc::head_rms_norm(d_x.get(), d_w.get(), rows, stride, heads, head_dim, 1e-6f, nullptr);
    std::vector<float> ref = x.ref;
    for (int r = 0; r < rows; ++r) {
      float* row = ref.data() + static_cast<size_t>(r) * stride;
      kref::rms_norm(row, w.ref.data(), row, heads, head_dim,
                     1e-6f);  // heads are contiguous rows of head_dim
    }
    expect_close(to_float(d_x.download()), ref, 1e-2f, 1e-2f, 5e-3,
                 "head_rms_norm D=" + std::to_string(head_dim));
  }
  device_buffer<bf16> x(96), w(96);
  EXPECT_THROW(kc::head_rms_norm(x.get(), w.get(), 1, 96, 1, 96, 1e-6f, nullptr), std::runtime_error);
}

TEST(CudaOps, SiluMulMatchesReference) {
  TROUPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(14);
  for (const auto& [rows, inter] : {std::pair<int, int>{1, 64}, {17, 1408}, {64, 14336}}) {
    const size_t n = static_cast<size_t>(rows) * inter;
    auto gu = random_bf16(rng, 2 * n, 2.0f);
    device_buffer<bf16> d_gu(gu.dev), d_out(n);
    d_out.poison();
    kc::silu_mul(d_gu.get(), d_out.get(), rows, inter, nullptr);
    std::vector<float> ref(n);
    kref::silu_mul(gu.ref.data(), ref.data(), rows, inter);
    expect_close(to_float(d_out.download()), ref, 1e-2f, 1e-2f, 5e-3, "silu_mul");
  }
}

// RoPE + cache write: q/k rotated in place, k and v land at their (shuffled) slots, skipped slots untouched.
void check_rope_write_kv(std::mt19937& rng, int head_dim, bool per_row_freq, bool qk_norm) {
  const int rows = 23, nh = 8, nkv = 2, block_size = 16, num_blocks = 9;
  const int total = nh + 2 * nkv, half = head_dim / 2;
  const size_t row_elems = static_cast<size_t>(total) * head_dim;
  auto qkv = random_bf16(rng, rows * row_elems);
  std::vector<int32_t> positions(rows), slots(num_blocks * block_size);
  for (int r = 0; r < rows; ++r) positions[r] = std::uniform_int_distribution<int>(0, 9000)(rng);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(rows);
  slots[5] = -1;  // a padded token: no cache write
  std::vector<float> inv_freq((per_row_freq ? rows : 1) * half);
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    inv_freq[i] = std::pow(500000.0f, -2.0f * static_cast<float>(i % half) / head_dim) *
                  (per_row_freq ? std::uniform_real_distribution<float>(0.25f, 1.0f)(rng) : 1.0f);
  }
  auto qn = random_bf16(rng, head_dim, 0.2f, 1.0f), kn = random_bf16(rng, head_dim, 0.2f, 1.0f);
  const size_t cache_elems = static_cast<size_t>(num_blocks) * block_size * nkv * head_dim;
  auto kc0 = random_bf16(rng, cache_elems), vc0 = random_bf16(rng, cache_elems);
  device_buffer<bf16> d_qkv(qkv.dev), d_kc(kc0.dev), d_vc(vc0.dev), d_qn(qn.dev), d_kn(kn.dev);
  device_buffer<int32_t> d_pos(positions), d_slots(slots);
  device_buffer<float> d_freq(inv_freq);
  kc::rope_write_kv_params p{};
  p.qkv = d_qkv.get();
  p.positions = d_pos.get();
  p.inv_freq = d_freq.get();
  p.inv_freq_stride = per_row_freq ? half : 0;
  p.slot_mapping = d_slots.get();
  p.k_cache = d_kc.get();
  p.v_cache = d_vc.get();
  p.q_norm_w = qk_norm ? d_qn.get() : nullptr;
  p.k_norm_w = qk_norm ? d_kn.get() : nullptr;
  p.rows = rows;
  p.num_heads = nh;
  p.num_kv_heads = nkv;
  p.head_dim = head_dim;
  kc::rope_write_kv(p, nullptr);

  // Reference: split q/k/v, optional per-head norm (rounded to bf16 as stored), rope, write_kv.
  std::vector<float> q(rows * nh * head_dim), k(rows * nkv * head_dim), v(rows * nkv * head_dim);
  for (int r = 0; r < rows; ++r) {
    const float* src = qkv.ref.data() + r * row_elems;
    std::copy(src, src + nh * head_dim, q.data() + r * nh * head_dim);
    std::copy(src + nh * head_dim, src + (nh + nkv) * head_dim, k.data() + r * nkv * head_dim);
    std::copy(src + (nh + nkv) * head_dim, src + row_elems, v.data() + r * nkv * head_dim);
  }
  if (qk_norm) {
    kref::rms_norm(q.data(), qn.ref.data(), q.data(), rows * nh, head_dim, 1e-6f);
    kref::rms_norm(k.data(), kn.ref.data(), k.data(), rows * nkv, head_dim, 1e-6f);
    for (auto& x : q) x = round_bf16(x);
    for (auto& x : k) x = round_bf16(x);
  }
  kref::rope(q.data(), positions.data(), inv_freq.data(), p.inv_freq_stride, rows, nh, head_dim);
  kref::rope(k.data(), positions.data(), inv_freq.data(), p.inv_freq_stride, rows, nkv, head_dim);
  std::vector<float> ref_kc = kc0.ref, ref_vc = vc0.ref;
  kref::write_kv(k.data(), v.data(), slots.data(), ref_kc.data(), ref_vc.data(), rows, nkv, head_dim);
  std::vector<float> ref_qkv = qkv.ref;
  for (int r = 0; r < rows; ++r) {
    std::copy(q.data() + r * nh * head_dim, q.data() + (r + 1) * nh * head_dim,
              ref_qkv.data() + r * row_elems);
    std::copy(k.data() + r * nkv * head_dim, k.data() + (r + 1) * nkv * head_dim,
              ref_qkv.data() + r * row_elems + nh * head_dim);
  }
  const std::string what =
      "rope D=" + std::to_string(head_dim) + (per_row_freq ? " per-row" : "") + (qk_norm ? " qk-norm" : "");
  // Angles up to ~9000 rad: fp32 sin/cos of a large argument differ by a few ulp of the argument.
  expect_close(to_float(d_qkv.download()), ref_qkv, 2e-2f, 1e-2f, 5e-3, what + " qkv");
  expect_close(to_float(d_kc.download()), ref_kc, 2e-2f, 1e-2f, 5e-3, what + " k_cache");
  expect_close(to_float(d_vc.download()), ref_vc, 0, 0, 0, what + " v_cache");
}

TEST(CudaOps, RopeWriteKvMatchesReference) {
  TROUPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(15);
  for (int head_dim : {32, 64, 128, 256}) {
    check_rope_write_kv(rng, head_dim, false, false);
    check_rope_write_kv(rng, head_dim, true, false);
    check_rope_write_kv(rng, head_dim, false, true);
  }
}

TEST(CudaOps, AddBias) {
  TROUPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(17);
  const int rows = 13, n = 392;
  auto y = random_bf16(rng, rows * n), b = random_bf16(rng, n);
  device_buffer<bf16> d_y(y.dev), d_b(b.dev);
  kc::add_bias(d_y.get(), d_b.get(), rows, n, nullptr);
  std::vector<float> ref = y.ref;
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < n; ++j) ref[r * n + j] = round_bf16(ref[r * n + j] + b.ref[j]);
  expect_close(to_float(d_y.download()), ref, 0, 0, 0, "add_bias");
}

TEST(CudaOps, GemmMatchesReference) {
  TROUPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(16);
  kc::gemm_context gemm;
  gemm.set_sm90_m_range(kc::kSm90MinM, kc::kSm90MaxM);  // off by default; false where there is none
  gemm.set_sm90_min_n(0);
  // m = 1200 reaches the timed algorithm choice (m >= 1024), and its second round the cached plan; m = 200
  // and 256 the Hopper kernel on an sm_90a build.
  for (const auto& [m, n, k] : {std::tuple<int, int, int>{1, 256, 64},
                                {37, 320, 264},
                                {128, 1024, 4096},
                                {256, 1024, 4096},  // the Hopper kernel where available
                                {200, 264, 264},
                                {1200, 320, 264},
                                {1200, 320, 264}}) {
    auto x = random_bf16(rng, static_cast<size_t>(m) * k),
         w = random_bf16(rng, static_cast<size_t>(n) * k, 0.05f);
    device_buffer<bf16> d_x(x.dev), d_w(w.dev), d_y(static_cast<size_t>(m) * n);
    d_y.poison();
    gemm.matmul_xwt(d_x.get(), d_w.get(), d_y.get(), m, n, k, nullptr);
    std::vector<float> ref(static_cast<size_t>(m) * n);
    kref::matmul_xwt(x.ref.data(), w.ref.data(), nullptr, ref.data(), m, n, k);
    expect_close(to_float(d_y.download()), ref, 2e-2f, 1e-2f, 5e-3, "gemm");
    device_buffer<float> d_y32(static_cast<size_t>(m) * n);
    d_y32.poison();
    gemm.matmul_xwt_f32(d_x.get(), d_w.get(), d_y32.get(), m, n, k, nullptr);
    expect_close(d_y32.download(), ref, 1e-3f, 1e-3f, 1e-4, "gemm fp32 out");
  }
}

// The Hopper GEMM (stream-K over a grid of `ctas` blocks) against the CPU reference: grids from 3 blocks to
// an SM count, so tiles split into 2 .. 132 segments whose partials the head's block adds; ragged m, n and k
// (TMA's zero fill past the edges, the masked store), two token tiles (m > 256), k of 14336 (the down
// projection), bf16 and fp32 outputs. Every call reuses one workspace, grids of different sizes in turn, so
// a flag left raised would hang or corrupt the next call; two runs of one shape must agree to the bit (the
// sum's order is fixed).
TEST(CudaOps, GemmSm90MatchesReference) {
  TROUPE_SKIP_WITHOUT_GPU();
  if (!kc::detail::gemm_sm90_available())
    GTEST_SKIP() << "needs a compute capability 9.0 device and an sm_90a build";
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  int dev = 0, sms = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  // Before every call the partials are NaN: a head that read a partial before its writer wrote it (or a
  // flag that a grid of another size looked for among the partials, as an early layout did) shows as NaN.
  // After every call every flag must be zero again.
  device_buffer<char> ws(kc::detail::gemm_sm90_workspace_bytes(sms));
  const size_t off = kc::detail::gemm_sm90_partials_offset();
  TROUPE_CUDA_CHECK(cudaMemset(ws.get(), 0, off));
  const auto call = [&](const bf16* x, const bf16* w, void* y, bool f32, int m, int n, int k, int ctas) {
    TROUPE_CUDA_CHECK(cudaMemset(ws.get() + off, 0xFF, ws.size() - off));
    kc::detail::gemm_sm90_xwt(x, w, y, f32, m, n, k, ws.get(), ctas, nullptr);
    std::vector<char> flags(off);
    TROUPE_CUDA_CHECK(cudaMemcpy(flags.data(), ws.get(), off, cudaMemcpyDeviceToHost));
    EXPECT_EQ(std::count(flags.begin(), flags.end(), 0), static_cast<std::ptrdiff_t>(off))
        << "a flag left raised";
  };
  struct shape {
    int m, n, k, ctas;
  };
  // Also: m below 8 and one row past a token tile, n and k below one box (128 weight rows, 64 k), one block.
  for (const shape& sh : {shape{256, 1024, 4096, sms}, shape{256, 128, 14336, sms}, shape{200, 1032, 4104, 7},
                          shape{256, 384, 4096, sms}, shape{17, 136, 64, 3}, shape{17, 136, 1024, 3},
                          shape{300, 256, 520, 5}, shape{256, 4096, 1024, sms}, shape{129, 640, 2048, sms},
                          shape{5, 8, 32, 2}, shape{257, 120, 200, 9}, shape{64, 256, 512, 1}}) {
    SCOPED_TRACE(::testing::Message()
                 << "m " << sh.m << " n " << sh.n << " k " << sh.k << " ctas " << sh.ctas);
    const int m = sh.m, n = sh.n, k = sh.k;
    auto x = random_bf16(rng, static_cast<size_t>(m) * k),
         w = random_bf16(rng, static_cast<size_t>(n) * k, 0.05f);
    device_buffer<bf16> d_x(x.dev), d_w(w.dev), d_y(static_cast<size_t>(m) * n), d_y2(d_y.size());
    std::vector<float> ref(static_cast<size_t>(m) * n);
    kref::matmul_xwt(x.ref.data(), w.ref.data(), nullptr, ref.data(), m, n, k);
    d_y.poison();
    d_y2.poison();
    call(d_x.get(), d_w.get(), d_y.get(), false, m, n, k, sh.ctas);
    call(d_x.get(), d_w.get(), d_y2.get(), false, m, n, k, sh.ctas);
    const auto got = d_y.download(), again = d_y2.download();
    expect_close(to_float(got), ref, 2e-2f, 1e-2f, 5e-3, "gemm sm90");
    EXPECT_EQ(std::memcmp(got.data(), again.data(), got.size() * sizeof(bf16)), 0) << "two runs differ";
    device_buffer<float> d_y32(static_cast<size_t>(m) * n);
    d_y32.poison();
    call(d_x.get(), d_w.get(), d_y32.get(), true, m, n, k, sh.ctas);
    expect_close(d_y32.download(), ref, 1e-3f, 1e-3f, 1e-4, "gemm sm90 fp32 out");
  }
}

// The Hopper GEMM on a second device after the first (its shared-memory limit is a per-device attribute),
// then on the first again.
TEST(CudaOps, GemmSm90RunsOnEveryDevice) {
  TROUPE_SKIP_WITHOUT_GPU();
  int n_dev = 0;
  TROUPE_CUDA_CHECK(cudaGetDeviceCount(&n_dev));
  if (n_dev < 2) GTEST_SKIP() << "needs two GPUs, found " << n_dev;
  if (!kc::detail::gemm_sm90_available())
    GTEST_SKIP() << "needs a compute capability 9.0 device and an sm_90a build";
  std::mt19937 rng(991);
  const int m = 200, n = 1024, k = 2048;
  auto x = random_bf16(rng, static_cast<size_t>(m) * k),
       w = random_bf16(rng, static_cast<size_t>(n) * k, 0.05f);
  std::vector<float> ref(static_cast<size_t>(m) * n);
  kref::matmul_xwt(x.ref.data(), w.ref.data(), nullptr, ref.data(), m, n, k);
  for (int dev : {0, 1, 0}) {
    SCOPED_TRACE(::testing::Message() << "device " << dev);
    TROUPE_CUDA_CHECK(cudaSetDevice(dev));
    int sms = 0;
    TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    device_buffer<char> ws(kc::detail::gemm_sm90_workspace_bytes(sms));
    TROUPE_CUDA_CHECK(cudaMemset(ws.get(), 0, ws.size()));
    device_buffer<bf16> d_x(x.dev), d_w(w.dev), d_y(static_cast<size_t>(m) * n);
    d_y.poison();
    kc::detail::gemm_sm90_xwt(d_x.get(), d_w.get(), d_y.get(), false, m, n, k, ws.get(), sms, nullptr);
    TROUPE_CUDA_CHECK(cudaDeviceSynchronize());
    expect_close(to_float(d_y.download()), ref, 2e-2f, 1e-2f, 5e-3, "gemm sm90");
  }
  TROUPE_CUDA_CHECK(cudaSetDevice(0));
}

// The Hopper GEMM as the engine runs it: in a CUDA graph, right after a norm launched as its programmatic
// dependent with an early trigger (64 rows: fewer blocks than SMs), so the GEMM starts while the norm runs
// and loads its weights before its programmatic wait. Two graphs normalize different inputs into the same
// buffer and are replayed in turn: a GEMM that read x before the norm finished would see the other graph's
// values.
TEST(CudaOps, GemmSm90InGraphAfterEarlyTriggeringNorm) {
  TROUPE_SKIP_WITHOUT_GPU();
  if (!kc::detail::gemm_sm90_available())
    GTEST_SKIP() << "needs a compute capability 9.0 device and an sm_90a build";
  if (!kc::pdl_enabled()) GTEST_SKIP() << "programmatic dependent launch is off (TROUPE_PDL=0)";
  TROUPE_FRESH_SEED(seed);
  std::mt19937 rng(seed);
  const int m = 64, k = 4096, n = 1024;
  kc::gemm_context gemm;
  ASSERT_TRUE(gemm.set_sm90_m_range(1, 256));  // allocates its workspace: before capture
  gemm.set_sm90_min_n(0);
  auto ra = random_bf16(rng, static_cast<size_t>(m) * k), rb = random_bf16(rng, static_cast<size_t>(m) * k),
       nw = random_bf16(rng, k, 0.1f, 1.0f), w = random_bf16(rng, static_cast<size_t>(n) * k, 0.05f);
  device_buffer<bf16> d_ra(ra.dev), d_rb(rb.dev), d_nw(nw.dev), d_w(w.dev), d_h(static_cast<size_t>(m) * k),
      d_y(static_cast<size_t>(m) * n);
  cudaStream_t stream = nullptr;
  TROUPE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraphExec_t exec[2] = {nullptr, nullptr};
  for (int g = 0; g < 2; ++g) {
    TROUPE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
    kc::add_rms_norm((g == 0 ? d_ra : d_rb).get(), nullptr, d_nw.get(), d_h.get(), m, k, 1e-5f, stream);
    gemm.matmul_xwt(d_h.get(), d_w.get(), d_y.get(), m, n, k, stream);
    cudaGraph_t graph = nullptr;
    TROUPE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    TROUPE_CUDA_CHECK(cudaGraphInstantiate(&exec[g], graph, 0));
    TROUPE_CUDA_CHECK(cudaGraphDestroy(graph));
  }
  for (int replay = 0; replay < 6; ++replay) {
    SCOPED_TRACE(::testing::Message() << "replay " << replay);
    d_y.poison();
    TROUPE_CUDA_CHECK(cudaGraphLaunch(exec[replay % 2], stream));
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> h = to_float(d_h.download());
    std::vector<float> ref(static_cast<size_t>(m) * n);
    kref::matmul_xwt(h.data(), w.ref.data(), nullptr, ref.data(), m, n, k);
    expect_close(to_float(d_y.download()), ref, 2e-2f, 1e-2f, 5e-3, "gemm sm90 after the norm");
  }
  for (cudaGraphExec_t e : exec) TROUPE_CUDA_CHECK(cudaGraphExecDestroy(e));
  TROUPE_CUDA_CHECK(cudaStreamDestroy(stream));
}

// The skinny-GEMM kernel at every m it takes, row counts that are not a multiple of a block's 4 warps, and
// k from one 16-byte chunk per row to the 14336 of a Llama-3-8B down projection (the unrolled main loop and
// its tail); gemm_context sends m <= kGemvMaxM there and larger m to cuBLASLt.
TEST(CudaOps, GemvMatchesReference) {
  TROUPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(18);
  for (int m = 1; m <= kc::kGemvMaxM; ++m) {
    for (const auto& [n, k] : {std::pair<int, int>{1, 8}, {7, 264}, {1000, 4096}, {130, 14336}, {33, 1032}}) {
      auto x = random_bf16(rng, static_cast<size_t>(m) * k),
           w = random_bf16(rng, static_cast<size_t>(n) * k, 0.05f);
      device_buffer<bf16> d_x(x.dev), d_w(w.dev), d_y(static_cast<size_t>(m) * n);
      device_buffer<float> d_y32(static_cast<size_t>(m) * n);
      d_y.poison();
      d_y32.poison();
      ASSERT_TRUE(kc::gemv_supports(d_x.get(), d_w.get(), m, n, k));
      kc::gemv_xwt(d_x.get(), d_w.get(), d_y.get(), m, n, k, nullptr);
      kc::gemv_xwt_f32(d_x.get(), d_w.get(), d_y32.get(), m, n, k, nullptr);
      std::vector<float> ref(static_cast<size_t>(m) * n);
      kref::matmul_xwt(x.ref.data(), w.ref.data(), nullptr, ref.data(), m, n, k);
      const std::string what =
          "gemv m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k);
      expect_close(to_float(d_y.download()), ref, 2e-2f, 1e-2f, 5e-3, what);
      expect_close(d_y32.download(), ref, 1e-3f, 1e-3f, 1e-4, what + " fp32 out");
    }
  }
  // The fused gate/up + SiLU-and-multiply: the reference rounds gate and up to bf16 (the unfused path
  // stores them as bf16) before silu_mul.
  for (int m = 1; m <= kc::kGemvMaxM; ++m) {
    for (const auto& [inter, k] : {std::pair<int, int>{5, 64}, {300, 4096}, {1000, 264}}) {
      auto x = random_bf16(rng, static_cast<size_t>(m) * k),
           w = random_bf16(rng, static_cast<size_t>(2 * inter) * k, 0.05f);
      device_buffer<bf16> d_x(x.dev), d_w(w.dev), d_act(static_cast<size_t>(m) * inter);
      d_act.poison();
      kc::gemv_gate_up_silu(d_x.get(), d_w.get(), d_act.get(), m, inter, k, nullptr);
      std::vector<float> gu(static_cast<size_t>(m) * 2 * inter), ref(static_cast<size_t>(m) * inter);
      kref::matmul_xwt(x.ref.data(), w.ref.data(), nullptr, gu.data(), m, 2 * inter, k);
      for (float& v : gu) v = round_bf16(v);
      kref::silu_mul(gu.data(), ref.data(), m, inter);
      expect_close(to_float(d_act.download()), ref, 2e-2f, 1e-2f, 5e-3,
                   "gemv_gate_up_silu m=" + std::to_string(m) + " inter=" + std::to_string(inter));
    }
  }
  EXPECT_FALSE(kc::gemv_supports(nullptr, nullptr, kc::kGemvMaxM + 1, 16, 64));
  EXPECT_FALSE(kc::gemv_supports(nullptr, nullptr, 1, 16, 60));  // k not whole 16-byte chunks
  EXPECT_THROW(kc::gemv_xwt(nullptr, nullptr, nullptr, 1, 16, 60, nullptr), std::runtime_error);
}

// The power probes of `troupe bench kernels --group step_energy`: the read probe touches every word once
// (the XOR of its per-block results is the XOR of the data, whatever the grid stride hands each block), and
// the spin probe lasts at least its cycles at the highest SM clock.
TEST(CudaOps, PowerProbesDoTheirWork) {
  TROUPE_SKIP_WITHOUT_GPU();
  std::mt19937 rng(31);
  const int blocks = kc::read_probe_blocks();
  device_buffer<uint32_t> sink(static_cast<size_t>(blocks));
  for (size_t words : {size_t{4}, size_t{4} * 1000 + 4, size_t{4} * blocks * 256 * 4 + 36, size_t{1} << 24}) {
    std::vector<uint32_t> data(words);
    for (auto& x : data) x = static_cast<uint32_t>(rng());
    const uint32_t want = std::accumulate(data.begin(), data.end(), 0u, std::bit_xor<uint32_t>());
    device_buffer<uint32_t> d_data(data);
    sink.poison();
    kc::read_probe(d_data.get(), static_cast<int64_t>(words * 4), sink.get(), nullptr);
    const std::vector<uint32_t> got = sink.download();
    EXPECT_EQ(std::accumulate(got.begin(), got.end(), 0u, std::bit_xor<uint32_t>()), want)
        << words << " words";
  }
  EXPECT_THROW(kc::read_probe(sink.get(), 20, sink.get(), nullptr), std::runtime_error);  // not 16-byte sized

  int dev = 0, khz = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev));
  const int64_t cycles = 20'000'000;
  cudaEvent_t start, stop;
  TROUPE_CUDA_CHECK(cudaEventCreate(&start));
  TROUPE_CUDA_CHECK(cudaEventCreate(&stop));
  TROUPE_CUDA_CHECK(cudaEventRecord(start));
  kc::spin_probe(cycles, sink.get(), nullptr);
  TROUPE_CUDA_CHECK(cudaEventRecord(stop));
  TROUPE_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  TROUPE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  TROUPE_CUDA_CHECK(cudaEventDestroy(start));
  TROUPE_CUDA_CHECK(cudaEventDestroy(stop));
  EXPECT_GE(ms, 0.99 * cycles / khz) << "spin of " << cycles << " cycles at most " << khz << " kHz";
}

}  // namespace
}  // namespace troupe::gpu_test
