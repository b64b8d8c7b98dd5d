// CUDA implementation of block_sparse_forward: the sm80 fused forward (sm80_fmha_fwd_kernel.hpp) driven by the
// block-sparse schedule (fmha_schedules.hpp), which reads the same policy (policy/block_sparse.hpp) as the CPU kernel.
// The lists are checked on the device by the same plan as the CPU binding (block_sparse_plan.hpp; one host sync), and
// the kernel reads them there. Forward only; blocks larger than the kernel's block run as several kernel
// blocks (q_split / kv_split).
// In builds with sm90 kernels, a 9.x GPU takes the sm90 forward (sm90_fmha_fwd_kernel.hpp, TMA + wgmma, the same
// schedule as TMA runs) where it has the dtype / head dim and the blocks split into its block; where its TMA scheme
// cannot express the problem (cudaErrorNotSupported, before any launch) the sm80 kernel runs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "block_sparse_plan.hpp"
#include "cuda_common.hpp"

namespace natten_like {
namespace {

using namespace cuda_binding;
using namespace block_sparse_plan;

// Kernel blocks per pattern block against an sm90 block, 0 where the pattern block is neither <= it nor a multiple of
// it (the sm80 kernel, with its smaller block, runs those).
[[maybe_unused]] int split_if_divides(int64_t block, int64_t kernel_block) {
  if (block <= kernel_block) return 1;
  return block % kernel_block == 0 ? static_cast<int>(block / kernel_block) : 0;
}

c10::optional<at::Tensor> on_host(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(t->cpu()) : c10::nullopt;
}

std::tuple<at::Tensor, at::Tensor> block_sparse_forward_cuda(
    const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, const at::Tensor& kv_num, const at::Tensor& kv_idx,
    const c10::optional<at::Tensor>& full_num, const c10::optional<at::Tensor>& full_idx,
    const c10::optional<at::Tensor>& cu_q, const c10::optional<at::Tensor>& cu_kv, int64_t q_block, int64_t kv_block,
    bool causal, double scale) {
  TORCH_CHECK(q_.is_cuda() && k_.device() == q_.device() && v_.device() == q_.device(),
              "natten_like::block_sparse (cuda): q, k, v must be on one CUDA device");
  const c10::cuda::CUDAGuard guard(q_.device());
  [[maybe_unused]] const int major = compute_capability_major(q_);
  // D_v may differ from D where an instance has that pair (the tables are keyed by both).
  const auto* inst = find_instance(generated::kSm80BlockSparseFwd, q_.scalar_type(), q_.size(-1), v_.size(-1));
  TORCH_CHECK(inst != nullptr, "natten_like::block_sparse (cuda): no kernel built for dtype ", q_.scalar_type(),
              " and head dims ", q_.size(-1), " / ", v_.size(-1), " (built: ",
              list_instances(generated::kSm80BlockSparseFwd), ")");

  const at::Tensor q = aligned_contiguous(q_), k = aligned_contiguous(k_), v = aligned_contiguous(v_);
  std::vector<int64_t> out_shape(q.sizes().begin(), q.sizes().end());
  out_shape.back() = v.size(-1);
  auto out = at::empty(out_shape, q.options());
  auto lse = at::empty(q.sizes().slice(0, q.dim() - 1), q.options().dtype(at::kFloat));
  // The outputs first: they then take the most recently freed blocks of their sizes (the tests poison those), before
  // the plan's temporaries. The lists are checked on the device (one host sync); the sequence offsets come from host
  // copies of cu_seqlens.
  const Plan plan = make_plan(q, k, v, kv_num, kv_idx, full_num, full_idx, on_host(cu_q), on_host(cu_kv), q_block,
                              kv_block, causal, false);
  TORCH_CHECK(plan.q_seq.back() < (int64_t{1} << 31) && plan.kv_seq.back() < (int64_t{1} << 31),
              "natten_like::block_sparse (cuda): token counts must be below 2^31 (int32 key positions)");
  if (q.numel() == 0) return {out, lse};
  // A packed batch [total, H, D] runs as batch 1 of [1, total, H, D].
  auto batched = [&](const at::Tensor& t) { return plan.packed ? t.unsqueeze(0) : t; };

  const PlanOnDevice arrays(plan, q.device());
  sm80::BlockSparseFwdParams p{};
  fill_fwd_args(p, batched(q), batched(k), batched(v), batched(out), lse, scale);
  p.pattern = arrays.pattern(plan, q_block, kv_block, causal);
  p.kv_partial = arrays.list(plan, 0);
  p.kv_full = arrays.list(plan, 1);
  p.packed = plan.packed;
  p.total_q_tiles = plan.q_tiles.back();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
#if NATTEN_LIKE_WITH_SM90
  if (major == 9 && sm90_enabled()) {
    const auto* inst90 = find_instance(generated::kSm90BlockSparseFwd, q.scalar_type(), q.size(-1), v.size(-1));
    sm80::BlockSparseFwdParams p90 = p;
    p90.q_split = inst90 != nullptr ? split_if_divides(q_block, inst90->block_m) : 0;
    p90.kv_split = inst90 != nullptr ? split_if_divides(kv_block, inst90->block_n) : 0;
    // The sm90 launcher takes the K / V token extent per batch entry from batch stride / token stride (its params hold
    // the sequence offsets on the device only): exact for these contiguous tensors except in a batch of 1, whose batch
    // stride is whatever the caller's tensor had.
    const int64_t kv_tokens = batched(k).size(1);
    p90.k_batch_stride = kv_tokens * p90.k_token_stride;
    p90.v_batch_stride = kv_tokens * p90.v_token_stride;
    if (p90.q_split > 0 && p90.kv_split > 0) {
      const cudaError_t err = inst90->launch(p90, stream);
      if (err != cudaErrorNotSupported) {
        TORCH_CHECK(err == cudaSuccess, "natten_like::block_sparse (cuda): sm90 kernel: ", cudaGetErrorString(err));
        return {out, lse};
      }
      (void)cudaGetLastError();
    }
  }
#endif
  p.q_split = split_of(q_block, inst->block_m, "natten_like::block_sparse (cuda): q_block");
  p.kv_split = split_of(kv_block, inst->block_n, "natten_like::block_sparse (cuda): kv_block");
  const cudaError_t err = inst->launch(p, stream);
  TORCH_CHECK(err == cudaSuccess, "natten_like::block_sparse (cuda): sm80 kernel: ", cudaGetErrorString(err));
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(natten_like, CUDA, m) { m.impl("block_sparse_forward", &block_sparse_forward_cuda); }

}  // namespace natten_like
