// CUDA implementation of latent_forward (compressed-latent / MLA decode): the split-KV kernel and its combine step,
// contiguous or paged cache; on compute capability 9.x the sm90 kernel (sm90/sm90_latent_kernel.hpp: TMA + wgmma) where
// built and where its TMA views express the problem, else the sm80 one (sm80/sm80_latent_kernel.hpp). Forward only;
// D = 576 (latent 512 + rope 64) only.
// Argument checks as latent_cpu.cpp (latent_args.hpp). cache_seqlens / block_table on q's device are used where they
// are, with no copy and no host sync, so a call can be captured in a CUDA graph: the kernels check their contents
// (nothing is read out of bounds; the queries an invalid length or page reaches get NaN, latent_schedule.hpp), and
// the split count comes from the cache's capacity. Host-resident ones are checked on the host (errors naming the
// entry), then copied over.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda_common.hpp"
#include "latent_args.hpp"
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
  const std::string who = "natten_like::latent (cuda)";
  const latent_binding::CacheGeometry g =
      latent_binding::check_args(who, q_, cache_, seqlens_, block_table_, latent_dim, num_splits);
  TORCH_CHECK(q_.size(3) == kDim && latent_dim == kDimV, who, ": the kernel is built for D = 576 (latent 512 + rope 64) "
              "and latent_dim = 512, got D = ", q_.size(3), ", latent_dim = ", latent_dim);
  TORCH_CHECK(q_.is_cuda() && cache_.device() == q_.device(), who, ": q and kv_cache must be on one CUDA device");
  for (const auto* t : {&seqlens_, &block_table_}) {
    TORCH_CHECK(!t->has_value() || (*t)->device() == q_.device() || (*t)->device().is_cpu(), who,
                ": cache_seqlens and block_table must be on q's device or the CPU");
  }
  const c10::cuda::CUDAGuard guard(q_.device());
  [[maybe_unused]] const int major = compute_capability_major(q_);
  const auto* inst = find_instance(generated::kSm80LatentFwd, q_.scalar_type(), kDim, kDimV);
  TORCH_CHECK(inst != nullptr, who, ": no kernel for dtype ", q_.scalar_type(),
              " (built: ", list_instances(generated::kSm80LatentFwd), ")");
  const bool capturing = c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
  const bool host_lists = (seqlens_.has_value() && seqlens_->device().is_cpu()) ||
                          (block_table_.has_value() && block_table_->device().is_cpu());
  TORCH_CHECK(!(capturing && host_lists), who, ": under CUDA-graph capture cache_seqlens and block_table must be on "
              "q's device (a graph cannot copy host tensors at replay)");

  const auto q = aligned_contiguous(q_), cache = aligned_contiguous(cache_);
  const int64_t batch = g.batch;
  // int64 and contiguous where they are (a cast is a device kernel, capturable); without lengths, the whole cache.
  at::Tensor seqlens = seqlens_.has_value() ? seqlens_->to(at::kLong).contiguous()
                                            : at::full({batch}, g.capacity, q.options().dtype(at::kLong));
  at::Tensor block_table = g.paged ? block_table_->to(at::kLong).contiguous() : at::Tensor();
  // The longest length where the lengths are on the host (checked there, with their pages); device-resident ones are
  // not read here (the kernels check them): the capacity bounds them.
  int64_t max_len = g.capacity;
  if (host_lists) {
    const at::Tensor lens_host = seqlens.cpu();
    const at::Tensor table_host = g.paged ? block_table.cpu() : at::Tensor();
    max_len = latent_binding::check_contents(who, g, lens_host, table_host);
  }

  // The outputs first: they then take the most recently freed blocks of their sizes (the tests poison those), before
  // the small device copies below.
  auto out = at::empty({batch, q.size(1), q.size(2), kDimV}, q.options());
  auto lse = at::empty({batch, q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse.fill_(-INFINITY)};
  seqlens = seqlens.to(q.device());  // the kernels read each batch entry's length
  if (g.paged) block_table = block_table.to(q.device());

  const int64_t rows = sm80::latent::num_rows(q.size(1), q.size(2));
  const int64_t ctas = batch * sm80::latent::num_m_tiles(rows);
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.device().index()));
  // More splits than 64-row KV tiles of the longest cache only add empty splits; at most the grid's 65535 (results
  // agree for every split count).
  const int64_t most = std::clamp<int64_t>(policy::ceil_div(max_len, sm80::latent::kBlockN), 1, 65535);
  const int64_t splits = std::clamp<int64_t>(num_splits > 0 ? num_splits : auto_splits(ctas, max_len, sms), 1, most);

  at::Tensor o_partial, lse_partial;
  if (splits > 1) {
    o_partial = at::empty({splits, batch, rows, kDimV}, q.options().dtype(at::kFloat));
    lse_partial = at::empty({splits, batch, rows}, q.options().dtype(at::kFloat));
  }

  sm80::LatentFwdParams p;
  p.q = q.data_ptr();
  p.cache = cache.data_ptr();
  p.block_table = g.paged ? block_table.data_ptr<int64_t>() : nullptr;
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
  p.s_kv = g.paged ? 0 : cache.size(1);
  p.page_size = g.page_size;
  p.max_pages = g.max_pages;
  p.num_pages = g.num_pages;
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  p.num_splits = static_cast<int>(splits);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
#if NATTEN_LIKE_WITH_SM90
  if (major == 9 && sm90_enabled()) {
    const auto* inst90 = find_instance(generated::kSm90LatentFwd, q.scalar_type(), kDim, kDimV);
    if (inst90 != nullptr) {
      const cudaError_t err = inst90->launch(p, stream);
      // cudaErrorNotSupported comes before any launch, for what its TMA views cannot express (a page size that is not
      // a multiple of 64, misaligned rows): the sm80 kernel runs those.
      if (err != cudaErrorNotSupported) {
        TORCH_CHECK(err == cudaSuccess, who, ": sm90 kernel: ", cudaGetErrorString(err),
                    err == cudaErrorInvalidConfiguration ? kLaunchLimits : "");
        return {out, lse};
      }
      (void)cudaGetLastError();
    }
  }
#endif
  const cudaError_t err = inst->launch(p, stream);
  TORCH_CHECK(err == cudaSuccess, who, ": kernel launch failed: ", cudaGetErrorString(err),
              err == cudaErrorInvalidConfiguration ? kLaunchLimits : "");
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(natten_like, CUDA, m) { m.impl("latent_forward", &latent_forward_cuda); }

}  // namespace natten_like
