// Shared helpers of the policy headers: plain C++17, usable from host code, CUDA device code and the CPU kernels.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define NL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NL_HOST_DEVICE inline
#endif

namespace natten_like::policy {

// Half-open interval [begin, end).
struct Range {
  int64_t begin;
  int64_t end;
  NL_HOST_DEVICE int64_t size() const { return end > begin ? end - begin : 0; }
  NL_HOST_DEVICE bool contains(int64_t x) const { return begin <= x && x < end; }
};

NL_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
NL_HOST_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
NL_HOST_DEVICE int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
NL_HOST_DEVICE int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return min64(max64(x, lo), hi); }

}  // namespace natten_like::policy
