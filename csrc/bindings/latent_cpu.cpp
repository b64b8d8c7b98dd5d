// CPU implementation of the compressed-latent (MLA) decode operator (cpu/latent_cpu.hpp), contiguous or paged cache.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "dispatch.hpp"
#include "latent_args.hpp"

#include "natten_like/cpu/latent_cpu.hpp"

namespace natten_like {
namespace {

std::tuple<at::Tensor, at::Tensor> latent_forward_cpu(const at::Tensor& q_, const at::Tensor& cache_,
                                                      const c10::optional<at::Tensor>& seqlens_,
                                                      const c10::optional<at::Tensor>& block_table_, int64_t latent_dim,
                                                      bool causal, double scale, int64_t num_splits) {
  const std::string who = "natten_like::latent";
  const latent_binding::CacheGeometry g =
      latent_binding::check_args(who, q_, cache_, seqlens_, block_table_, latent_dim, num_splits);
  const auto q = q_.contiguous(), cache = cache_.contiguous();
  const int64_t batch = g.batch;
  const at::Tensor block_table = g.paged ? block_table_->to(at::kLong).contiguous() : at::Tensor();
  const at::Tensor seqlens =
      seqlens_.has_value() ? seqlens_->to(at::kLong).contiguous() : at::full({batch}, g.capacity, at::kLong);
  const int64_t max_len = latent_binding::check_contents(who, g, seqlens, block_table);
  const int64_t* lens = seqlens.data_ptr<int64_t>();

  auto out = at::empty({batch, q.size(1), q.size(2), latent_dim}, q.options());
  auto lse = at::empty({batch, q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse.fill_(-INFINITY)};
  NL_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "latent_forward_cpu", [&] {
    cpu::LatentParams<scalar_t> p;
    p.q = q.data_ptr<scalar_t>();
    p.cache = cache.data_ptr<scalar_t>();
    p.seqlens = lens;
    p.block_table = g.paged ? block_table.data_ptr<int64_t>() : nullptr;
    p.out = out.data_ptr<scalar_t>();
    p.lse = lse.data_ptr<float>();
    p.batch = batch;
    p.sq = q.size(1);
    p.heads = q.size(2);
    p.dim = q.size(3);
    p.dim_v = latent_dim;
    p.s_kv = g.paged ? 0 : cache.size(1);
    p.page_size = g.page_size;
    p.max_pages = g.max_pages;
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
