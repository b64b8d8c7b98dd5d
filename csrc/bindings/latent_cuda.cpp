// CUDA implementation of latent_forward (compressed-latent / MLA decode): the split-KV kernel and its combine step,
// contiguous or paged cache; on compute capability 9.x the sm90 kernel (sm90/sm90_latent_kernel.hpp: TMA + wgmma) where
// built and where its TMA views express the problem, else the sm80 one (sm80/sm80_latent_kernel.hpp). Forward only;
// D = 576 (latent 512 + rope 64) only.
// Validation mirrors latent_cpu.cpp; cache_seqlens and block_table are checked on the host (one small copy and sync
// per call), which also gives the max length the split count is chosen from.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda_common.hpp"
#include "natten_like/policy/common.hpp"
#include "natten_like/sm80/latent_schedule.hpp"
#include "natten_like/sm80/sm80_latent_params.hpp"

namespace natten_like {
namespace {

using namespace cuda_binding;

constexpr int64_t kDim = 576, kDimV = 512;
constexpr int64_t kMinSplitRows = 256;  // cache rows per split at least: shorter splits cost more in the combine

// Split count that fills the GPU: about two waves of (batch x M tiles x splits) one-CTA-per-SM blocks, no split
// shorter than kMinSplitRows of the longest cache.
int64_t auto_splits(int64_t ctas, int64_t max_len, int sms) {
  const int64_t want = policy::ceil_div(2 * static_cast<int64_t>(sms), std::max<int64_t>(ctas, 1));
  const int64_t most = std::max<int64_t>(1, max_len / kMinSplitRows);
  return std::clamp<int64_t>(want, 1, most);
}

// What an invalid launch configuration means here.
constexpr const char* kLaunchLimits =
    " (beyond the grid limits: batch and splits <= 65535; or short of the shared memory per block the kernels need: "
    "~154 KB (sm80 kernel) or ~226 KB (sm90), which sm80 / sm90 class GPUs have, not sm86 / sm89)";

std::tuple<at::Tensor, at::Tensor> latent_forward_cuda(const at::Tensor& q_, const at::Tensor& cache_,
                                                       const c10::optional<at::Tensor>& seqlens_,
                                                       const c10::optional<at::Tensor>& block_table_,
                                                       int64_t latent_dim, bool causal, double scale,
                                                       int64_t num_splits) {
  TORCH_CHECK(q_.dim() == 4, "natten_like::latent (cuda): q must be [B, S_q, H, D]");
  TORCH_CHECK(cache_.dim() == 3, "natten_like::latent (cuda): kv_cache must be [B, S_kv, D] or paged "
              "[pages, page_size, D]");
  TORCH_CHECK(cache_.size(2) == q_.size(3), "natten_like::latent (cuda): q and kv_cache row widths differ");
  TORCH_CHECK(latent_dim >= 1 && latent_dim <= q_.size(3), "natten_like::latent (cuda): latent_dim must be in [1, D]");
  TORCH_CHECK(q_.size(3) == kDim && latent_dim == kDimV, "natten_like::latent (cuda): the kernel is built for D = 576 "
              "(latent 512 + rope 64) and latent_dim = 512, got D = ", q_.size(3), ", latent_dim = ", latent_dim);
  TORCH_CHECK(q_.scalar_type() == cache_.scalar_type(), "natten_like::latent (cuda): q and kv_cache dtypes differ");
  TORCH_CHECK(num_splits >= 0, "natten_like::latent (cuda): num_splits must be >= 0 (0 = automatic)");
  TORCH_CHECK(q_.is_cuda() && cache_.device() == q_.device(), "natten_like::latent (cuda): q and kv_cache must be on "
              "one CUDA device");
  const bool paged = block_table_.has_value();
  TORCH_CHECK(!paged || seqlens_.has_value(), "natten_like::latent (cuda): a paged cache needs cache_seqlens");
  for (const auto* t : {&seqlens_, &block_table_}) {
    TORCH_CHECK(!t->has_value() || at::isIntegralType((*t)->scalar_type(), /*includeBool=*/false),
                "natten_like::latent (cuda): cache_seqlens and block_table must be integer tensors");
  }
  TORCH_CHECK(!paged || cache_.size(1) >= 1, "natten_like::latent (cuda): a paged cache needs a page_size (dim 1) >= 1");
  const c10::cuda::CUDAGuard guard(q_.device());
  [[maybe_unused]] const int major = compute_capability_major(q_);
  const auto* inst = find_instance(generated::kSm80LatentFwd, q_.scalar_type(), kDim, kDimV);
  TORCH_CHECK(inst != nullptr, "natten_like::latent (cuda): no kernel for dtype ", q_.scalar_type(),
              " (built: ", list_instances(generated::kSm80LatentFwd), ")");

  const auto q = aligned_contiguous(q_), cache = aligned_contiguous(cache_);
  const int64_t batch = q.size(0);
  at::Tensor block_table, table_host;
  if (paged) {
    TORCH_CHECK(block_table_->device() == q.device() || block_table_->device().is_cpu(),
                "natten_like::latent (cuda): block_table must be on q's device or the CPU");
    table_host = block_table_->to(at::kCPU).to(at::kLong).contiguous();
    TORCH_CHECK(table_host.dim() == 2 && table_host.size(0) == batch,
                "natten_like::latent (cuda): block_table must be [B, max_pages]");
  } else {
    TORCH_CHECK(cache.size(0) == batch, "natten_like::latent (cuda): contiguous kv_cache must be [B, S_kv, D]");
  }
  const int64_t capacity = paged ? table_host.size(1) * cache.size(1) : cache.size(1);
  at::Tensor seqlens_host = seqlens_.has_value() ? seqlens_->to(at::kCPU).to(at::kLong).contiguous()
                                                 : at::full({batch}, capacity, at::TensorOptions().dtype(at::kLong));
  TORCH_CHECK(seqlens_host.dim() == 1 && seqlens_host.size(0) == batch,
              "natten_like::latent (cuda): cache_seqlens must be [B]");
  const int64_t* lens = seqlens_host.data_ptr<int64_t>();
  int64_t max_len = 0;
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(lens[b] >= 0 && lens[b] <= capacity, "natten_like::latent (cuda): cache_seqlens[", b, "] = ", lens[b],
                " outside [0, ", capacity, "]");
    max_len = std::max(max_len, lens[b]);
    if (paged) {
      const int64_t* row = table_host.data_ptr<int64_t>() + b * table_host.size(1);
      for (int64_t i = 0; i < policy::ceil_div(lens[b], cache.size(1)); ++i)
        TORCH_CHECK(row[i] >= 0 && row[i] < cache.size(0), "natten_like::latent (cuda): block_table[", b, ", ", i,
                    "] = ", row[i], " is not a page of kv_cache (", cache.size(0), " pages)");
    }
  }

  // The outputs first: they then take the most recently freed blocks of their sizes (the tests poison those), before
  // the small device copies below.
  auto out = at::empty({batch, q.size(1), q.size(2), kDimV}, q.options());
  auto lse = at::empty({batch, q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse.fill_(-INFINITY)};
  const at::Tensor seqlens = seqlens_host.to(q.device());  // the kernel reads each batch's length
  if (paged) block_table = table_host.to(q.device());

  const int64_t rows = sm80::latent::num_rows(q.size(1), q.size(2));
  const int64_t ctas = batch * sm80::latent::num_m_tiles(rows);
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.device().index()));
  // More splits than 64-row KV tiles of the longest cache only add empty splits.
  const int64_t splits = std::clamp<int64_t>(num_splits > 0 ? num_splits : auto_splits(ctas, max_len, sms), 1,
                                             std::max<int64_t>(1, policy::ceil_div(max_len, sm80::latent::kBlockN)));
  TORCH_CHECK(splits <= 65535, "natten_like::latent (cuda): num_splits must be <= 65535");

  at::Tensor o_partial, lse_partial;
  if (splits > 1) {
    o_partial = at::empty({splits, batch, rows, kDimV}, q.options().dtype(at::kFloat));
    lse_partial = at::empty({splits, batch, rows}, q.options().dtype(at::kFloat));
  }

  sm80::LatentFwdParams p;
  p.q = q.data_ptr();
  p.cache = cache.data_ptr();
  p.block_table = paged ? block_table.data_ptr<int64_t>() : nullptr;
  p.seqlens = seqlens.data_ptr<int64_t>();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.o_partial = splits > 1 ? o_partial.data_ptr<float>() : nullptr;
  p.lse_partial = splits > 1 ? lse_partial.data_ptr<float>() : nullptr;
  p.q_batch_stride = q.stride(0), p.q_row_stride = q.stride(2);  // contiguous: row s * H + h steps by D
  p.o_batch_stride = out.stride(0), p.o_row_stride = out.stride(2);
  p.cache_row_stride = cache.stride(1);
  p.batch = batch;
  p.sq = q.size(1);
  p.heads = q.size(2);
  p.dim = kDim;
  p.dim_v = kDimV;
  p.s_kv = paged ? 0 : cache.size(1);
  p.page_size = paged ? cache.size(1) : 0;
  p.max_pages = paged ? table_host.size(1) : 0;
  p.num_pages = paged ? cache.size(0) : 0;
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  p.num_splits = static_cast<int>(splits);
  p.max_seqlen = max_len;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
#if NATTEN_LIKE_WITH_SM90
  if (major == 9 && sm90_enabled()) {
    const auto* inst90 = find_instance(generated::kSm90LatentFwd, q.scalar_type(), kDim, kDimV);
    if (inst90 != nullptr) {
      const cudaError_t err = inst90->launch(p, stream);
      // cudaErrorNotSupported comes before any launch, for what its TMA views cannot express (a page size that is not
      // a multiple of 64, misaligned rows): the sm80 kernel runs those.
      if (err != cudaErrorNotSupported) {
        TORCH_CHECK(err == cudaSuccess, "natten_like::latent (cuda): sm90 kernel: ", cudaGetErrorString(err),
                    err == cudaErrorInvalidConfiguration ? kLaunchLimits : "");
        return {out, lse};
      }
      (void)cudaGetLastError();
    }
  }
#endif
  const cudaError_t err = inst->launch(p, stream);
  TORCH_CHECK(err == cudaSuccess, "natten_like::latent (cuda): kernel launch failed: ", cudaGetErrorString(err),
              err == cudaErrorInvalidConfiguration ? kLaunchLimits : "");
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(natten_like, CUDA, m) { m.impl("latent_forward", &latent_forward_cuda); }

}  // namespace natten_like
