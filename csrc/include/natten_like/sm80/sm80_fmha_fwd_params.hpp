// Arguments of the sm80 fused forward kernels: plain pointers, element strides and sizes, so that the torch bindings
// (csrc/bindings/*_cuda.cpp) and the kernel translation units (csrc/generated/*.cu) share them without either side
// including the other's heavy headers. One struct per family, each the common FmhaFwdArgs plus the family's policy.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "natten_like/policy/block_sparse.hpp"
#include "natten_like/policy/gna.hpp"
#include "natten_like/policy/strided_shard.hpp"

namespace natten_like::sm80 {

// Every GNA problem runs as rank 3: lower ranks are padded with leading dims of length 1 (window 1, stride 1, dilation 1,
// tile 1), which admit exactly one key per query in that dim. One kernel then serves 1-D, 2-D, 3-D and dense attention,
// keeping the instantiation count at dtype x head dim. The 1-D families (strided-shard) use the same rank-3 row geometry.
constexpr int kRank = 3;

struct FmhaFwdArgs {
  // q [B, *tokens, H, D], k [B, *kv tokens, H_kv, D], v [B, *kv tokens, H_kv, D_v], out [B, *tokens, H, D_v]: element
  // strides of batch, flat token and head; the head dim is contiguous and every row starts 16-byte aligned (the
  // bindings check both).
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
  int64_t tokens;  // query tokens per batch entry (the product of the token dims)
  int heads;
  int kv_heads;  // heads % kv_heads == 0; query head h reads KV head h / (heads / kv_heads)
  int head_dim;
  int head_dim_v;  // D_v: every kernel checks it against its own (the GNA forward has D_v != D instances)
  float scale;
  // Tile scheduling of the sm90 kernels (sm90/sm90_tile_scheduler.hpp, Sm90Persistence): 0 auto, 1 one CTA per work
  // tile, 2 persistent. The sm80 kernels ignore it.
  int sm90_persistence;
};

// Additional KV (fused): add_k / add_v [B, N_add, H_kv, D] are keys and values every query also attends to, in the
// same softmax, after its neighbourhood (head dim contiguous, rows 16-byte aligned, like k / v); null pointers and
// num_additional = 0 when there are none. The kernels visit them in tiles of `additional_block` rows, which each
// launcher sets to its own KV block (the caller's value is ignored).
struct GnaFwdParams : FmhaFwdArgs {
  policy::GnaPolicy<kRank> policy;  // token dims, windows and tile shapes (tile row products <= the kernel's block)
  const void* add_k;
  const void* add_v;
  int64_t add_k_batch_stride, add_k_token_stride, add_k_head_stride;
  int64_t add_v_batch_stride, add_v_token_stride, add_v_head_stride;
  int64_t num_additional;
  int additional_block;

  NL_HOST_DEVICE int64_t num_additional_tiles() const {
    return num_additional > 0 ? (num_additional + additional_block - 1) / additional_block : 0;
  }
};

// Strided-shard (S2) attention (policy/strided_shard.hpp): the policy of KV head h_kv is `pattern` with
// shift = (h_kv * head_step + sliding_offset) % vert_stride and dense = h_kv >= kv_heads - dense_heads. A pattern block
// of `block` tokens is q_split (kv_split) kernel blocks: block <= the kernel's block (split 1) or a multiple of it.
struct StridedShardFwdParams : FmhaFwdArgs {
  policy::StridedShardPolicy pattern;  // nq, nkv, block, local, vert_stride, causal; shift / dense set per head
  int64_t head_step;
  int64_t sliding_offset;
  int dense_heads;
  int q_split;
  int kv_split;
};

// Block-sparse attention (policy/block_sparse.hpp). `pattern` holds the block sizes, causality and the sequence and
// tile offsets (device arrays; one sequence for a plain [B, N, ...] batch, the packed sequences for varlen, whose kernel
// batch is 1); the lists of (batch, head) come from the list arrays. total_q_tiles = pattern.num_q_tiles(), kept here
// for the host (the grid). q_split / kv_split as for strided-shard.
struct BlockSparseFwdParams : FmhaFwdArgs {
  policy::BlockSparsePolicy pattern;
  policy::BlockListArray kv_partial, kv_full;
  bool packed;
  int64_t total_q_tiles;
  int q_split;
  int kv_split;
};

}  // namespace natten_like::sm80
