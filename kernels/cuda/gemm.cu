// bf16 GEMMs with fp32 accumulation: the gemv kernel for a few rows, our Hopper kernel (gemm_sm90.cu) for
// decode-sized batches, cuBLASLt otherwise. Row-major y = x @ w^T is column-major y^T = w * x^T with w
// transposed, so no copy or transpose kernel is needed. cuBLASLt descriptors and the algorithm are made once
// per shape (the heuristic query cost tens of µs per call); prefill-sized shapes time the heuristic's best
// candidates once and keep the fastest.
#include <cublasLt.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cuda/check.h"
#include "kernels/cuda/gemm_sm90.cuh"
#include "kernels/cuda/ops.h"

namespace troupe::kernels::cuda {

gemm_context::gemm_context() {
  if (const char* e = std::getenv("TROUPE_GEMM_TUNE"); e != nullptr && std::strcmp(e, "0") == 0)
    tune_min_m_ = 0;
  TROUPE_CUBLAS_CHECK(cublasLtCreate(&handle_));
  TROUPE_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  // Off by default: on an H200 it matched cuBLASLt on the gate/up projection and the LM head and trailed it
  // elsewhere, and the batch-256 decode step ran 3 % slower with it (docs/perf-notes.md v11).
  if (const char* e = std::getenv("TROUPE_GEMM_SM90"); e != nullptr && std::strcmp(e, "1") == 0)
    set_sm90_m_range(kSm90MinM, kSm90MaxM);
  if (const char* e = std::getenv("TROUPE_GEMM_SM90_MIN_N"); e != nullptr) sm90_min_n_ = std::atoll(e);
}

bool gemm_context::set_sm90_m_range(int64_t lo, int64_t hi) {
  if (hi > 0 && sm90_workspace_ == nullptr && detail::gemm_sm90_available()) {
    int dev = 0;
    TROUPE_CUDA_CHECK(cudaGetDevice(&dev));
    TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&sm90_ctas_, cudaDevAttrMultiProcessorCount, dev));
    const size_t bytes = detail::gemm_sm90_workspace_bytes(sm90_ctas_);
    TROUPE_CUDA_CHECK(cudaMalloc(&sm90_workspace_, bytes));
    TROUPE_CUDA_CHECK(cudaMemset(sm90_workspace_, 0, bytes));  // the flags start at zero
    // The memset runs on the legacy stream, which a non-blocking stream (the runner's) does not wait for.
    TROUPE_CUDA_CHECK(cudaDeviceSynchronize());
  }
  sm90_min_m_ = lo;
  sm90_max_m_ = sm90_workspace_ != nullptr ? hi : 0;
  return hi <= 0 || sm90_workspace_ != nullptr;
}

gemm_context::~gemm_context() {
  plans_.clear();
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (sm90_workspace_ != nullptr) cudaFree(sm90_workspace_);
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

void gemm_context::matmul_xwt(const bf16* x, const bf16* w, bf16* y, int64_t m, int64_t n, int64_t k,
                              cudaStream_t stream) {
  run(x, w, y, false, m, n, k, stream);
}

void gemm_context::matmul_xwt_f32(const bf16* x, const bf16* w, float* y, int64_t m, int64_t n, int64_t k,
                                  cudaStream_t stream) {
  run(x, w, y, true, m, n, k, stream);
}

struct gemm_context::plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  std::vector<cublasLtMatmulHeuristicResult_t> candidates;  // the heuristic's, best first
  cublasLtMatmulAlgo_t algo{};                              // the one used
  bool tuned = false;
};

void gemm_context::plan_deleter::operator()(plan* p) const {
  if (p->c != nullptr) cublasLtMatrixLayoutDestroy(p->c);
  if (p->b != nullptr) cublasLtMatrixLayoutDestroy(p->b);
  if (p->a != nullptr) cublasLtMatrixLayoutDestroy(p->a);
  if (p->op != nullptr) cublasLtMatmulDescDestroy(p->op);
  delete p;
}

gemm_context::plan& gemm_context::plan_for(int64_t m, int64_t n, int64_t k, bool f32_out) {
  const auto key = std::make_tuple(m, n, k, f32_out);
  if (auto it = plans_.find(key); it != plans_.end()) return *it->second;
  if (plans_.size() >= kMaxPlans) plans_.clear();  // a server fed every possible m: start over
  std::unique_ptr<plan, plan_deleter> pl(new plan);
  TROUPE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&pl->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
  TROUPE_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans)));
  TROUPE_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans, sizeof(no_trans)));
  // Column-major views: w is [k, n] (ld k), x is [k, m] (ld k), y is [n, m] (ld n).
  TROUPE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&pl->a, CUDA_R_16BF, k, n, k));
  TROUPE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&pl->b, CUDA_R_16BF, k, m, k));
  TROUPE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&pl->c, f32_out ? CUDA_R_32F : CUDA_R_16BF, n, m, n));
  cublasLtMatmulPreference_t pref = nullptr;
  TROUPE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = kWorkspaceBytes;
  TROUPE_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const int want = m >= tune_min_m_ && tune_min_m_ > 0 ? 8 : 1;
  pl->candidates.resize(want);
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, pl->op, pl->a, pl->b, pl->c, pl->c, pref,
                                                           want, pl->candidates.data(), &found);
  cublasLtMatmulPreferenceDestroy(pref);
  TROUPE_CUBLAS_CHECK(st);
  TROUPE_KERNEL_REQUIRE(found > 0,
                        "cuBLASLt found no bf16 algorithm for m=" << m << " n=" << n << " k=" << k);
  pl->candidates.resize(found);
  pl->algo = pl->candidates[0].algo;
  pl->tuned = found == 1;
  return *plans_.emplace(key, std::move(pl)).first->second;
}

// Times each candidate (one warm-up, then the best of three) on the caller's operands and keeps the
// fastest. y is overwritten by the real call that follows.
void gemm_context::tune(plan& pl, const bf16* x, const bf16* w, void* y, cudaStream_t stream) {
  cudaEvent_t start, stop;
  TROUPE_CUDA_CHECK(cudaEventCreate(&start));
  TROUPE_CUDA_CHECK(cudaEventCreate(&stop));
  const float alpha = 1.0f, beta = 0.0f;
  float best_ms = 0;
  for (size_t i = 0; i < pl.candidates.size(); ++i) {
    const cublasLtMatmulAlgo_t& algo = pl.candidates[i].algo;
    float cand_ms = 0;
    bool ok = true;
    for (int rep = 0; rep < 4 && ok; ++rep) {
      TROUPE_CUDA_CHECK(cudaEventRecord(start, stream));
      ok = cublasLtMatmul(handle_, pl.op, &alpha, w, pl.a, x, pl.b, &beta, y, pl.c, y, pl.c, &algo,
                          workspace_, kWorkspaceBytes, stream) == CUBLAS_STATUS_SUCCESS;
      TROUPE_CUDA_CHECK(cudaEventRecord(stop, stream));
      TROUPE_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      TROUPE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (rep == 1 || (rep > 1 && ms < cand_ms)) cand_ms = ms;
    }
    if (ok && (i == 0 || cand_ms < best_ms)) {
      best_ms = cand_ms;
      pl.algo = algo;
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  pl.tuned = true;
}

void gemm_context::run(const bf16* x, const bf16* w, void* y, bool f32_out, int64_t m, int64_t n, int64_t k,
                       cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  if (m <= gemv_max_m_ && (m == 1 || k <= 4096) && gemv_supports(x, w, m, n, k)) {
    if (f32_out) {
      gemv_xwt_f32(x, w, static_cast<float*>(y), m, n, k, stream);
    } else {
      gemv_xwt(x, w, static_cast<bf16*>(y), m, n, k, stream);
    }
    return;
  }
  if (sm90_workspace_ != nullptr && m >= sm90_min_m_ && m <= sm90_max_m_ && n >= sm90_min_n_ &&
      detail::gemm_sm90_supports(x, w, y, m, n, k)) {
    detail::gemm_sm90_xwt(x, w, y, f32_out, m, n, k, sm90_workspace_, sm90_ctas_, stream);
    return;
  }
  plan& pl = plan_for(m, n, k, f32_out);
  if (!pl.tuned) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    TROUPE_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture == cudaStreamCaptureStatusNone) tune(pl, x, w, y, stream);
  }
  const float alpha = 1.0f, beta = 0.0f;
  TROUPE_CUBLAS_CHECK(cublasLtMatmul(handle_, pl.op, &alpha, w, pl.a, x, pl.b, &beta, y, pl.c, y, pl.c,
                                     &pl.algo, workspace_, kWorkspaceBytes, stream));
}

}  // namespace troupe::kernels::cuda
