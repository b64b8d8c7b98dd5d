// Arguments of the sm80 GNA forward kernels: plain pointers, element strides and sizes, so that the torch binding
// (csrc/bindings/gna_cuda.cpp) and the kernel translation units (csrc/generated/*.cu) share them without either side
// including the other's heavy headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "natten_like/policy/gna.hpp"

namespace natten_like::sm80 {

// Every problem runs as rank-3 GNA: lower ranks are padded with leading dims of length 1 (window 1, stride 1, dilation 1,
// tile 1), which admit exactly one key per query in that dim. One kernel then serves 1-D, 2-D, 3-D and dense attention,
// keeping the instantiation count at dtype x head dim.
constexpr int kRank = 3;

struct GnaFwdParams {
  // q [B, *tokens, H, D], k/v [B, *tokens, H_kv, D], out like q: element strides of batch, flat token and head; the
  // head dim is contiguous and every row starts 16-byte aligned (the binding checks both).
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;  // [B, *tokens, H], contiguous
  int64_t q_batch_stride, q_token_stride, q_head_stride;
  int64_t k_batch_stride, k_token_stride, k_head_stride;
  int64_t v_batch_stride, v_token_stride, v_head_stride;
  int64_t o_batch_stride, o_token_stride, o_head_stride;
  int64_t batch;
  int64_t tokens;  // product of the token dims
  int heads;
  int kv_heads;  // heads % kv_heads == 0; query head h reads KV head h / (heads / kv_heads)
  int head_dim;
  float scale;
  policy::GnaPolicy<kRank> policy;  // token dims, windows and tile shapes (tile row products <= the kernel's block)
};

// One instantiation: launches the kernel on `stream` and returns the launch's error.
using GnaFwdLaunchFn = cudaError_t (*)(const GnaFwdParams&, cudaStream_t stream);

}  // namespace natten_like::sm80
