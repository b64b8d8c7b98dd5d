// The argument checks both latent_forward implementations make (latent_cpu.cpp, latent_cuda.cpp): shapes, dtypes and
// the cache geometry from the tensors' metadata, and the contents of cache_seqlens / block_table where they are on the
// host. Each message starts with the implementation's name.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "natten_like/policy/common.hpp"

namespace natten_like::latent_binding {

// The cache of one call, from the tensors' shapes.
struct CacheGeometry {
  bool paged = false;
  int64_t batch = 0;
  int64_t capacity = 0;  // positions a batch entry's cache can hold: s_kv, or max_pages * page_size
  int64_t page_size = 0, max_pages = 0, num_pages = 0;  // paged only
};

// Checks everything but the contents of cache_seqlens / block_table. `who`: "natten_like::latent" or with " (cuda)".
inline CacheGeometry check_args(const std::string& who, const at::Tensor& q, const at::Tensor& cache,
                                const c10::optional<at::Tensor>& seqlens, const c10::optional<at::Tensor>& block_table,
                                int64_t latent_dim, int64_t num_splits) {
  TORCH_CHECK(q.dim() == 4, who, ": q must be [B, S_q, H, D]");
  TORCH_CHECK(cache.dim() == 3, who, ": kv_cache must be [B, S_kv, D] or paged [pages, page_size, D]");
  TORCH_CHECK(cache.size(2) == q.size(3), who, ": q and kv_cache row widths differ");
  TORCH_CHECK(latent_dim >= 1 && latent_dim <= q.size(3), who, ": latent_dim must be in [1, D]");
  TORCH_CHECK(q.scalar_type() == cache.scalar_type(), who, ": q and kv_cache dtypes differ");
  TORCH_CHECK(num_splits >= 0, who, ": num_splits must be >= 0 (0 = automatic)");
  CacheGeometry g;
  g.paged = block_table.has_value();
  g.batch = q.size(0);
  TORCH_CHECK(!g.paged || seqlens.has_value(), who, ": a paged cache needs cache_seqlens");
  for (const auto* t : {&seqlens, &block_table}) {
    TORCH_CHECK(!t->has_value() || at::isIntegralType((*t)->scalar_type(), /*includeBool=*/false), who,
                ": cache_seqlens and block_table must be integer tensors");
  }
  if (g.paged) {
    TORCH_CHECK(cache.size(1) >= 1, who, ": a paged cache needs a page_size (dim 1) >= 1");
    TORCH_CHECK(block_table->dim() == 2 && block_table->size(0) == g.batch, who, ": block_table must be [B, max_pages]");
    g.page_size = cache.size(1), g.max_pages = block_table->size(1), g.num_pages = cache.size(0);
    g.capacity = g.max_pages * g.page_size;
  } else {
    TORCH_CHECK(cache.size(0) == g.batch, who, ": contiguous kv_cache must be [B, S_kv, D]");
    g.capacity = cache.size(1);
  }
  TORCH_CHECK(!seqlens.has_value() || (seqlens->dim() == 1 && seqlens->size(0) == g.batch), who,
              ": cache_seqlens must be [B]");
  return g;
}

// Checks host-resident lengths (int64 [B], contiguous) and, paged, the block-table entries of the pages they use
// (int64 [B, max_pages], contiguous); returns the longest length.
inline int64_t check_contents(const std::string& who, const CacheGeometry& g, const at::Tensor& seqlens,
                              const at::Tensor& block_table) {
  const int64_t* lens = seqlens.data_ptr<int64_t>();
  int64_t max_len = 0;
  for (int64_t b = 0; b < g.batch; ++b) {
    TORCH_CHECK(lens[b] >= 0 && lens[b] <= g.capacity, who, ": cache_seqlens[", b, "] = ", lens[b], " outside [0, ",
                g.capacity, "]");
    max_len = std::max(max_len, lens[b]);
    if (!g.paged) continue;
    const int64_t* row = block_table.data_ptr<int64_t>() + b * g.max_pages;
    for (int64_t i = 0; i < policy::ceil_div(lens[b], g.page_size); ++i) {
      TORCH_CHECK(row[i] >= 0 && row[i] < g.num_pages, who, ": block_table[", b, ", ", i, "] = ", row[i],
                  " is not a page of kv_cache (", g.num_pages, " pages)");
    }
  }
  return max_len;
}

}  // namespace natten_like::latent_binding
