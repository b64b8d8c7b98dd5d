// Arguments of the sm80 compressed-latent (DeepSeek MLA, absorbed form) decode forward (sm80_latent_kernel.hpp): one
// shared latent KV head per token, many query heads, a contiguous or paged cache, split-KV with a combine step.
#pragma once

#include <cstdint>

namespace natten_like::sm80 {

struct LatentFwdParams {
  const void* q = nullptr;                // [B, S_q, H, dim], rows (s, h) packed as row s * H + h (contiguous)
  const void* cache = nullptr;            // contiguous [B, s_kv, dim] or paged [pages, page_size, dim]
  // Both device arrays may hold anything (the binding does not read device-resident ones): the kernels take a length
  // outside [0, capacity] as 0 and read through no page outside [0, num_pages), and give the queries either reaches
  // NaN (latent_schedule.hpp).
  const int64_t* block_table = nullptr;   // device [B, max_pages]; null = contiguous cache
  const int64_t* seqlens = nullptr;       // device [B]: cache length L_b of each batch
  void* out = nullptr;                    // [B, S_q, H, dim_v] (Element), rows packed like q
  float* lse = nullptr;                   // [B, S_q, H] natural-log logsumexp; -inf for a query that sees no row
  // Split-KV workspace, used only when num_splits > 1 (the binding allocates both, float32, uninitialised):
  //   o_partial   [num_splits, B, S_q * H, dim_v]  per-split output, normalised by its own softmax sum
  //   lse_partial [num_splits, B, S_q * H]         per-split logsumexp (-inf where the split saw no row)
  float* o_partial = nullptr;
  float* lse_partial = nullptr;
  int64_t q_batch_stride = 0, q_row_stride = 0;  // elements; a query row is (s, h) at s * H + h
  int64_t o_batch_stride = 0, o_row_stride = 0;  // elements
  int64_t cache_row_stride = 0;                  // elements between cache rows (dim for a contiguous cache)
  int64_t batch = 0, sq = 0, heads = 0;
  int64_t dim = 576, dim_v = 512;                // the kernel is built for exactly these (launcher checks)
  int64_t s_kv = 0;                              // contiguous cache: rows per batch
  int64_t page_size = 0, max_pages = 0;          // paged cache
  int64_t num_pages = 0;                         // paged cache: its pages
  float scale = 1.0f;
  bool causal = false;
  int num_splits = 1;
};

}  // namespace natten_like::sm80
