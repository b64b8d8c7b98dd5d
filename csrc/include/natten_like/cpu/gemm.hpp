// Small row-major float32 GEMMs for the CPU tile products.
//
// ATen's cpublas::gemm is not exported from libtorch, so the BLAS that torch itself links (MKL's or OpenBLAS's `sgemm_`,
// exported by x86-64 and most aarch64 builds) is looked up once at run time in the already-loaded torch libraries. Where no
// BLAS is found, portable loops (vectorised, one clone per ISA) do the work: slower, same results to rounding.
#pragma once

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>

#include "natten_like/cpu/vec_ops.hpp"

namespace natten_like::cpu {

using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);

inline SgemmFn find_sgemm() {
  static const SgemmFn fn = [] {
    for (const char* lib : {"libtorch_cpu.so", "libtorch_cpu.dylib", "libopenblas.so.0", "libmkl_rt.so"}) {
      void* handle = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD);
      if (!handle) continue;
      if (void* sym = dlsym(handle, "sgemm_")) return reinterpret_cast<SgemmFn>(sym);
    }
    void* sym = dlsym(RTLD_DEFAULT, "sgemm_");
    return reinterpret_cast<SgemmFn>(sym);
  }();
  return fn;
}

// Where no BLAS was found (or NATTEN_LIKE_CPU_BLAS=0 forces it, for tests), the fallback loops below are used.
inline bool use_blas() {
  static const bool enabled = [] {
    const char* env = std::getenv("NATTEN_LIKE_CPU_BLAS");
    return !(env && env[0] == '0' && env[1] == '\0') && find_sgemm() != nullptr;
  }();
  return enabled;
}

namespace detail {

NL_MULTIVERSION static void fallback_abt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                                         int64_t ldb, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t p = 0; p < k; ++p) acc += a[i * lda + p] * b[j * ldb + p];
      c[i * ldc + j] = (beta == 0.0f ? 0.0f : beta * c[i * ldc + j]) + acc;
    }
}

NL_MULTIVERSION static void fallback_ab(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                                        int64_t ldb, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    if (beta == 0.0f)
      for (int64_t j = 0; j < n; ++j) ci[j] = 0.0f;
    for (int64_t p = 0; p < k; ++p) {
      const float aip = a[i * lda + p];
      const float* bp = b + p * ldb;
      for (int64_t j = 0; j < n; ++j) ci[j] += aip * bp[j];
    }
  }
}

NL_MULTIVERSION static void fallback_atb(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                                         int64_t ldb, float beta, float* c, int64_t ldc) {
  if (beta == 0.0f)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = 0.0f;
  for (int64_t p = 0; p < k; ++p)
    for (int64_t i = 0; i < m; ++i) {
      const float api = a[p * lda + i];
      const float* bp = b + p * ldb;
      float* ci = c + i * ldc;
      for (int64_t j = 0; j < n; ++j) ci[j] += api * bp[j];
    }
}

// Row-major X[r][c] is column-major X^T, so each product below is issued to column-major BLAS with operands swapped.
inline void blas(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                 int64_t ldb, float beta, float* c, int64_t ldc) {
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ia = static_cast<int>(lda), ib = static_cast<int>(ldb), ic = static_cast<int>(ldc);
  const float one = 1.0f;
  find_sgemm()(&ta, &tb, &im, &in, &ik, &one, a, &ia, b, &ib, &beta, c, &ic);
}

}  // namespace detail

// Row-major C[m][n] (+)= A[m][k] * B[n][k]^T (beta 0 or 1); lda/ldb/ldc are row strides in elements.
inline void gemm_abt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                     float beta, float* c, int64_t ldc) {
  if (use_blas()) return detail::blas('T', 'N', n, m, k, b, ldb, a, lda, beta, c, ldc);
  detail::fallback_abt(m, n, k, a, lda, b, ldb, beta, c, ldc);
}
// Row-major C[m][n] (+)= A[m][k] * B[k][n].
inline void gemm_ab(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                    float beta, float* c, int64_t ldc) {
  if (use_blas()) return detail::blas('N', 'N', n, m, k, b, ldb, a, lda, beta, c, ldc);
  detail::fallback_ab(m, n, k, a, lda, b, ldb, beta, c, ldc);
}
// Row-major C[m][n] (+)= A[k][m]^T * B[k][n].
inline void gemm_atb(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                     float beta, float* c, int64_t ldc) {
  if (use_blas()) return detail::blas('N', 'T', n, m, k, b, ldb, a, lda, beta, c, ldc);
  detail::fallback_atb(m, n, k, a, lda, b, ldb, beta, c, ldc);
}

// The same on dense (unstrided) operands.
inline void gemm_abt(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float beta, float* c) {
  gemm_abt(m, n, k, a, k, b, k, beta, c, n);
}
inline void gemm_ab(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float beta, float* c) {
  gemm_ab(m, n, k, a, k, b, n, beta, c, n);
}
inline void gemm_atb(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float beta, float* c) {
  gemm_atb(m, n, k, a, m, b, n, beta, c, n);
}

}  // namespace natten_like::cpu
