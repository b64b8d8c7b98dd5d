// Arguments of the sm80 fused backward kernels (GNA, strided-shard, block-sparse): plain pointers, element strides and
// sizes (no torch), shared by the bindings and the generated kernel translation units like the forward's params.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "natten_like/sm80/sm80_fmha_fwd_params.hpp"

namespace natten_like::sm80 {

// The backward's own arguments, common to every family; each family's params are these plus `fwd`, the forward's
// params of the problem.
struct FmhaBwdArgs {
  // dO like q/out: [B, *tokens, H, D], head dim contiguous, rows 16-byte aligned.
  const void* d_out;
  int64_t do_batch_stride, do_token_stride, do_head_stride;
  // Gradient flowing into lse, [B, *tokens, H] contiguous float32; null when lse is not used downstream.
  const float* grad_lse;
  // Outputs in the input dtype: dq like q ([B, *tokens, H, D]), dk/dv like k/v ([B, *tokens, H_kv, D]); head dim
  // contiguous, rows 16-byte aligned. Every element is written (rows no query sees get exact zeros), so they need no
  // zero-initialisation.
  void* dq;
  void* dk;
  void* dv;
  int64_t dq_batch_stride, dq_token_stride, dq_head_stride;
  int64_t dk_batch_stride, dk_token_stride, dk_head_stride;
  int64_t dv_batch_stride, dv_token_stride, dv_head_stride;
  // Workspace the caller allocates: batch * tokens * heads float32, laid out [B, *tokens, H] contiguous. The first
  // kernel writes delta = rowsum(dO * O) - grad_lse into it; the others read it.
  float* delta;
};

// The forward's problem in `fwd`: q, k, v, out (O of the forward, read here), lse (the forward's logsumexp, read here;
// natural log, [B, *tokens, H] contiguous, -inf for rows with no key), their strides, batch, tokens, heads, kv_heads,
// head_dim, scale and the family's pattern, exactly as the forward was launched with.
// With additional KV (fwd.num_additional > 0), their gradients go to d_add_k / d_add_v, laid out like add_k / add_v
// ([B, N_add, H_kv, D]); every element is written.
struct GnaBwdParams : FmhaBwdArgs {
  GnaFwdParams fwd;  // tile shapes included (tile row products <= the kernel's blocks)
  void* d_add_k;
  void* d_add_v;
  int64_t d_add_k_batch_stride, d_add_k_token_stride, d_add_k_head_stride;
  int64_t d_add_v_batch_stride, d_add_v_token_stride, d_add_v_head_stride;
};

// Strided-shard: `fwd` as for the forward (q_split / kv_split for pattern blocks larger than the kernel's blocks).
struct StridedShardBwdParams : FmhaBwdArgs {
  StridedShardFwdParams fwd;
};

// Block-sparse: `fwd` as for the forward (its kv_partial / kv_full lists drive the dQ kernel), plus the transposed
// lists the dK/dV kernel walks: per (batch or sequence, query head, KV block) the query blocks whose list holds it,
// counts [Bm, Hm, KB] and indices [Bm, Hm, KB, cap] (block_sparse_plan.hpp's Transpose), q_full empty when no
// full lists were given. total_kv_tiles = fwd.pattern.num_kv_tiles(), kept here for the host (the grid).
struct BlockSparseBwdParams : FmhaBwdArgs {
  BlockSparseFwdParams fwd;
  policy::BlockListArray q_partial, q_full;
  int64_t total_kv_tiles;
};

// One instantiation: launches the backward's kernels on `stream` and returns the first launch error.
using GnaBwdLaunchFn = cudaError_t (*)(const GnaBwdParams&, cudaStream_t stream);
using StridedShardBwdLaunchFn = cudaError_t (*)(const StridedShardBwdParams&, cudaStream_t stream);
using BlockSparseBwdLaunchFn = cudaError_t (*)(const BlockSparseBwdParams&, cudaStream_t stream);

}  // namespace natten_like::sm80
