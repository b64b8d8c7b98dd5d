// CPU implementation of the compressed-latent (MLA) decode operator (cpu/latent_cpu.hpp), contiguous or paged cache.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "dispatch.hpp"

#include "natten_like/cpu/latent_cpu.hpp"

namespace natten_like {
namespace {

std::tuple<at::Tensor, at::Tensor> latent_forward_cpu(const at::Tensor& q_, const at::Tensor& cache_,
                                                      const c10::optional<at::Tensor>& seqlens_,
                                                      const c10::optional<at::Tensor>& block_table_, int64_t latent_dim,
                                                      bool causal, double scale, int64_t num_splits) {
  TORCH_CHECK(q_.dim() == 4, "natten_like::latent: q must be [B, S_q, H, D]");
  TORCH_CHECK(cache_.dim() == 3, "natten_like::latent: kv_cache must be [B, S_kv, D] or paged [pages, page_size, D]");
  TORCH_CHECK(cache_.size(2) == q_.size(3), "natten_like::latent: q and kv_cache row widths differ");
  TORCH_CHECK(latent_dim >= 1 && latent_dim <= q_.size(3), "natten_like::latent: latent_dim must be in [1, D]");
  TORCH_CHECK(q_.scalar_type() == cache_.scalar_type(), "natten_like::latent: q and kv_cache dtypes differ");
  TORCH_CHECK(num_splits >= 0, "natten_like::latent: num_splits must be >= 0 (0 = automatic)");
  const bool paged = block_table_.has_value();
  TORCH_CHECK(!paged || seqlens_.has_value(), "natten_like::latent: a paged cache needs cache_seqlens");
  for (const auto* t : {&seqlens_, &block_table_}) {
    TORCH_CHECK(!t->has_value() || at::isIntegralType((*t)->scalar_type(), /*includeBool=*/false),
                "natten_like::latent: cache_seqlens and block_table must be integer tensors");
  }
  TORCH_CHECK(!paged || cache_.size(1) >= 1, "natten_like::latent: a paged cache needs a page_size (dim 1) >= 1");
  const auto q = q_.contiguous(), cache = cache_.contiguous();
  const int64_t batch = q.size(0);
  at::Tensor block_table;
  if (paged) {
    block_table = block_table_->to(at::kLong).contiguous();
    TORCH_CHECK(block_table.dim() == 2 && block_table.size(0) == batch, "natten_like::latent: block_table must be [B, max_pages]");
  } else {
    TORCH_CHECK(cache.size(0) == batch, "natten_like::latent: contiguous kv_cache must be [B, S_kv, D]");
  }
  const int64_t capacity = paged ? block_table.size(1) * cache.size(1) : cache.size(1);
  at::Tensor seqlens = seqlens_.has_value() ? seqlens_->to(at::kLong).contiguous() : at::full({batch}, capacity, at::kLong);
  TORCH_CHECK(seqlens.dim() == 1 && seqlens.size(0) == batch, "natten_like::latent: cache_seqlens must be [B]");
  const int64_t* lens = seqlens.data_ptr<int64_t>();
  int64_t max_len = 0;
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(lens[b] >= 0 && lens[b] <= capacity, "natten_like::latent: cache_seqlens[", b, "] = ", lens[b],
                " outside [0, ", capacity, "]");
    max_len = std::max(max_len, lens[b]);
    if (paged) {
      const int64_t* row = block_table.data_ptr<int64_t>() + b * block_table.size(1);
      for (int64_t i = 0; i < policy::ceil_div(lens[b], cache.size(1)); ++i)
        TORCH_CHECK(row[i] >= 0 && row[i] < cache.size(0), "natten_like::latent: block_table[", b, ", ", i, "] = ", row[i],
                    " is not a page of kv_cache (", cache.size(0), " pages)");
    }
  }

  auto out = at::empty({batch, q.size(1), q.size(2), latent_dim}, q.options());
  auto lse = at::empty({batch, q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse.fill_(-INFINITY)};
  NL_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "latent_forward_cpu", [&] {
    cpu::LatentParams<scalar_t> p;
    p.q = q.data_ptr<scalar_t>();
    p.cache = cache.data_ptr<scalar_t>();
    p.seqlens = lens;
    p.block_table = paged ? block_table.data_ptr<int64_t>() : nullptr;
    p.out = out.data_ptr<scalar_t>();
    p.lse = lse.data_ptr<float>();
    p.batch = batch;
    p.sq = q.size(1);
    p.heads = q.size(2);
    p.dim = q.size(3);
    p.dim_v = latent_dim;
    p.s_kv = paged ? 0 : cache.size(1);
    p.page_size = paged ? cache.size(1) : 0;
    p.max_pages = paged ? block_table.size(1) : 0;
    p.scale = static_cast<float>(scale);
    p.causal = causal;
    const int64_t items = batch * policy::ceil_div(p.sq * p.heads, cpu::kLatentRows);
    // More splits than KV chunks of the longest cache only add empty splits (and their partials' memory).
    const int64_t chunks = std::max<int64_t>(1, policy::ceil_div(max_len, cpu::kLatentChunk));
    p.num_splits = num_splits > 0 ? std::min(num_splits, chunks) : cpu::latent_auto_splits(items, chunks);
    cpu::latent_forward(p);
  });
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(natten_like, CPU, m) { m.impl("latent_forward", &latent_forward_cpu); }

}  // namespace natten_like
