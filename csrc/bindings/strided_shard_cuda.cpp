// CUDA implementation of strided_shard_forward: the sm80 fused forward (sm80_fmha_fwd_kernel.hpp) driven by the S2
// schedule (fmha_schedules.hpp), which reads the same policy (policy/strided_shard.hpp) as the CPU kernel. Forward only;
// pattern blocks larger than the kernel's block run as several kernel blocks (q_split / kv_split).
// In builds with sm90 kernels, a 9.x GPU takes the sm90 forward (sm90_fmha_fwd_kernel.hpp, TMA + wgmma, the same
// schedule as TMA runs) where it has the dtype / head dim and the block splits into its block; where its TMA scheme
// cannot express the problem (cudaErrorNotSupported, before any launch) the sm80 kernel runs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda_common.hpp"

namespace natten_like {
namespace {

using namespace cuda_binding;

// Kernel blocks per pattern block against an sm90 block, 0 where the pattern block is neither <= it nor a multiple of
// it (the sm80 kernel, with its smaller block, runs those).
[[maybe_unused]] int split_if_divides(int64_t block, int64_t kernel_block) {
  if (block <= kernel_block) return 1;
  return block % kernel_block == 0 ? static_cast<int>(block / kernel_block) : 0;
}

std::tuple<at::Tensor, at::Tensor> strided_shard_forward_cuda(const at::Tensor& q_, const at::Tensor& k_,
                                                              const at::Tensor& v_, int64_t block, int64_t local,
                                                              int64_t vert_stride, bool causal, bool homo_head,
                                                              int64_t dense_heads, int64_t sliding_offset, double scale) {
  TORCH_CHECK(q_.dim() == 4 && k_.dim() == 4 && v_.dim() == 4, "natten_like::strided_shard (cuda): q, k, v must be "
              "[B, N, H, D]");
  TORCH_CHECK(k_.size(0) == q_.size(0) && v_.size(0) == q_.size(0) && v_.size(1) == k_.size(1) &&
                  v_.size(2) == k_.size(2),
              "natten_like::strided_shard (cuda): q/k/v batch, token or head dims differ");
  // D_v may differ from D where an instance has that pair (the tables are keyed by both).
  TORCH_CHECK(k_.size(3) == q_.size(3), "natten_like::strided_shard (cuda): q and k head dims differ");
  TORCH_CHECK(q_.scalar_type() == k_.scalar_type() && q_.scalar_type() == v_.scalar_type(),
              "natten_like::strided_shard (cuda): dtypes differ");
  TORCH_CHECK(q_.is_cuda() && k_.device() == q_.device() && v_.device() == q_.device(),
              "natten_like::strided_shard (cuda): q, k, v must be on one CUDA device");
  const int64_t heads = q_.size(2), kv_heads = k_.size(2), nq = q_.size(1), nkv = k_.size(1);
  TORCH_CHECK(kv_heads >= 1 && heads % kv_heads == 0, "natten_like::strided_shard (cuda): query heads must be a "
              "multiple of KV heads");
  TORCH_CHECK(nq <= nkv, "natten_like::strided_shard (cuda): N_q must be <= N_kv (queries align to the end of the keys)");
  TORCH_CHECK(block >= 1 && local >= 1 && vert_stride >= 1 && sliding_offset >= 0 && dense_heads >= 0 &&
                  dense_heads <= kv_heads,
              "natten_like::strided_shard (cuda): need block_size >= 1, local_blocks >= 1, vert_stride >= 1, "
              "head_sliding_offset >= 0, 0 <= num_dense_heads <= H_kv");
  // Key positions are int32 in the kernel's row geometry.
  TORCH_CHECK(nkv < (int64_t{1} << 31), "natten_like::strided_shard (cuda): N_kv must be below 2^31");

  const c10::cuda::CUDAGuard guard(q_.device());
  [[maybe_unused]] const int major = compute_capability_major(q_);
  const auto* inst = find_instance(generated::kSm80S2Fwd, q_.scalar_type(), q_.size(3), v_.size(3));
  TORCH_CHECK(inst != nullptr, "natten_like::strided_shard (cuda): no kernel built for dtype ", q_.scalar_type(),
              " and head dims ", q_.size(3), " / ", v_.size(3), " (built: ", list_instances(generated::kSm80S2Fwd), ")");
  const at::Tensor q = aligned_contiguous(q_), k = aligned_contiguous(k_), v = aligned_contiguous(v_);
  auto out = at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options());
  auto lse = at::empty(q.sizes().slice(0, 3), q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, lse};

  sm80::StridedShardFwdParams p{};
  fill_fwd_args(p, q, k, v, out, lse, scale);
  p.pattern.nq = nq;
  p.pattern.nkv = nkv;
  p.pattern.block = block;
  p.pattern.local = local;
  p.pattern.vert_stride = vert_stride;
  p.pattern.causal = causal;
  // As the CPU binding: the shard step of each KV head, shift and dense flag applied per head by the schedule.
  p.head_step = homo_head ? 0 : std::max<int64_t>(1, vert_stride / heads);
  p.sliding_offset = sliding_offset;
  p.dense_heads = static_cast<int>(dense_heads);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
#if NATTEN_LIKE_WITH_SM90
  if (major == 9 && sm90_enabled()) {
    const auto* inst90 = find_instance(generated::kSm90S2Fwd, q.scalar_type(), q.size(3), v.size(3));
    sm80::StridedShardFwdParams p90 = p;
    p90.q_split = inst90 != nullptr ? split_if_divides(block, inst90->block_m) : 0;
    p90.kv_split = inst90 != nullptr ? split_if_divides(block, inst90->block_n) : 0;
    if (p90.q_split > 0 && p90.kv_split > 0) {
      const cudaError_t err = inst90->launch(p90, stream);
      if (err != cudaErrorNotSupported) {
        TORCH_CHECK(err == cudaSuccess, "natten_like::strided_shard (cuda): sm90 kernel: ", cudaGetErrorString(err));
        return {out, lse};
      }
      (void)cudaGetLastError();
    }
  }
#endif
  p.q_split = split_of(block, inst->block_m, "natten_like::strided_shard (cuda): block_size");
  p.kv_split = split_of(block, inst->block_n, "natten_like::strided_shard (cuda): block_size");
  const cudaError_t err = inst->launch(p, stream);
  TORCH_CHECK(err == cudaSuccess, "natten_like::strided_shard (cuda): sm80 kernel: ", cudaGetErrorString(err));
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(natten_like, CUDA, m) { m.impl("strided_shard_forward", &strided_shard_forward_cuda); }

}  // namespace natten_like
