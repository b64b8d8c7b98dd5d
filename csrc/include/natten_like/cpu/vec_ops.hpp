// Row operations of the CPU attention kernels (online softmax, backward dS), written so the compiler vectorises them, and
// compiled for several ISAs with runtime selection (GCC target_clones): the extension stays portable and uses AVX-512 or
// AVX2 where the CPU has them. Matrix products go to ATen's CPU BLAS, not here.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define NL_MULTIVERSION [[maybe_unused]] __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NL_MULTIVERSION [[maybe_unused]]
#endif

namespace natten_like::cpu {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0 to ~2 ulp, 0 below -87 (including -inf): range reduction to 2^n * exp(f), |f| <= ln2/2, then a degree-6
// polynomial. Branch-free so that loops calling it vectorise.
__attribute__((always_inline)) static inline float exp_nonpos(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  // Round to nearest with the 1.5 * 2^23 trick (a libm call would stop vectorisation); |xc| * log2(e) < 2^22 here.
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float f = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = (static_cast<int32_t>(n) + 127) << 23;
  return x < -87.0f ? 0.0f : p * scale.f;
}

// Forward online-softmax step for one query row: s[j] <- exp(scale * s[j] - m_new) (0 where mask[j] == 0 or masked out).
// Updates the running max m and sum l; returns the factor by which the row's accumulator must be rescaled.
NL_MULTIVERSION static float softmax_row_update(float* __restrict s, const unsigned char* __restrict mask, int64_t n, float scale, float& m,
                                                float& l) {
  // `omp simd reduction` lets the compiler reorder the max/sum reductions into vector lanes (plain C++ may not).
  float row_max = kNegInf;
  if (mask) {
#pragma omp simd reduction(max : row_max)
    for (int64_t j = 0; j < n; ++j) {
      // The byte is widened to float before the select: GCC does not if-convert a select on a char load.
      const float keep = static_cast<float>(mask[j]);
      const float x = keep != 0.0f ? s[j] * scale : kNegInf;
      s[j] = x;
      row_max = x > row_max ? x : row_max;
    }
  } else {
#pragma omp simd reduction(max : row_max)
    for (int64_t j = 0; j < n; ++j) {
      const float x = s[j] * scale;
      s[j] = x;
      row_max = x > row_max ? x : row_max;
    }
  }
  const float m_new = row_max > m ? row_max : m;
  if (m_new == kNegInf) {
    // Every score so far is masked (-inf) or NaN (a NaN query or key: NaN > x is false, so the max skipped it).
    // Masked ones add nothing; a NaN one makes the sum, hence the output and logsumexp, NaN as in dense attention
    // (zeroing it would turn a NaN query into output 0, lse -inf: a finite answer to a NaN input).
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      s[j] = s[j] == kNegInf ? 0.0f : s[j];
      sum += s[j];
    }
    l += sum;
    return 1.0f;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    s[j] = exp_nonpos(s[j] - m_new);
    sum += s[j];
  }
  const float alpha = exp_nonpos(m - m_new);
  l = l * alpha + sum;
  m = m_new;
  return alpha;
}

// Backward, one query row: s[j] <- P = exp(scale * s[j] - lse) (0 where masked or lse = -inf); dp[j] <- P * (dp[j] - delta).
NL_MULTIVERSION static void softmax_row_backward(float* __restrict s, float* __restrict dp, const unsigned char* __restrict mask, int64_t n, float scale,
                                                 float lse, float delta) {
  if (lse == kNegInf) {
    for (int64_t j = 0; j < n; ++j) s[j] = dp[j] = 0.0f;
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    float p = exp_nonpos(s[j] * scale - lse);
    if (mask) {  // a select, not a product: a masked-out logit may exceed lse and make p overflow
      const float keep = static_cast<float>(mask[j]);
      p = keep != 0.0f ? p : 0.0f;
    }
    s[j] = p;
    dp[j] = p * (dp[j] - delta);
  }
}

NL_MULTIVERSION static void scale_row(float* x, int64_t n, float a) {
  for (int64_t j = 0; j < n; ++j) x[j] *= a;
}

}  // namespace natten_like::cpu
