// bf16 GEMMs through cuBLASLt with fp32 accumulation. Row-major y = x @ w^T is column-major
// y^T = w * x^T with w transposed, so no copy or transpose kernel is needed.
#include <cublasLt.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/ops.h"

namespace troupe::kernels::cuda {

gemm_context::gemm_context() {
  TROUPE_CUBLAS_CHECK(cublasLtCreate(&handle_));
  TROUPE_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
}

gemm_context::~gemm_context() {
  if (workspace_ != nullptr) cudaFree(workspace_);
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
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  TROUPE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
  TROUPE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans)));
  TROUPE_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans, sizeof(no_trans)));
  // Column-major views: w is [k, n] (ld k), x is [k, m] (ld k), y is [n, m] (ld n).
  TROUPE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, k, n, k));
  TROUPE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, k, m, k));
  TROUPE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&c, f32_out ? CUDA_R_32F : CUDA_R_16BF, n, m, n));
  TROUPE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = kWorkspaceBytes;
  TROUPE_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  TROUPE_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, op, a, b, c, c, pref, 1, &heur, &found));
  TROUPE_KERNEL_REQUIRE(found > 0,
                        "cuBLASLt found no bf16 algorithm for m=" << m << " n=" << n << " k=" << k);
  const float alpha = 1.0f, beta = 0.0f;
  TROUPE_CUBLAS_CHECK(
      cublasLtMatmul(handle_, op, &alpha, w, a, x, b, &beta, y, c, y, c, &heur.algo, workspace_, ws, stream));
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(c);
  cublasLtMatrixLayoutDestroy(b);
  cublasLtMatrixLayoutDestroy(a);
  cublasLtMatmulDescDestroy(op);
}

}  // namespace troupe::kernels::cuda
