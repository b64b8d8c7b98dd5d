// CUDA implementation of strided_shard_backward: the sm80 fused backward (sm80_fmha_bwd_kernel.hpp): delta, then dK/dV
// per kernel KV tile over the query blocks keeping it (StridedShardKeySchedule, fmha_bwd_schedules.hpp; the pattern is
// the KV head's, shared by its GQA group), then dQ per kernel Q tile over its kept KV blocks (the forward's
// StridedShardSchedule). Deterministic, no atomics. Pattern blocks larger than the kernel's block run as several kernel
// blocks (q_split / kv_split), as in the forward.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda_common.hpp"

namespace natten_like {
namespace {

using namespace cuda_binding;

std::tuple<at::Tensor, at::Tensor, at::Tensor> strided_shard_backward_cuda(
    const at::Tensor& grad_out_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& out_, const at::Tensor& lse_, const c10::optional<at::Tensor>& grad_lse_, int64_t block,
    int64_t local, int64_t vert_stride, bool causal, bool homo_head, int64_t dense_heads, int64_t sliding_offset,
    double scale) {
  constexpr const char* kName = "natten_like::strided_shard_backward (cuda)";
  TORCH_CHECK(q_.dim() == 4 && k_.dim() == 4 && v_.dim() == 4, kName, ": q, k, v must be [B, N, H, D]");
  TORCH_CHECK(k_.size(0) == q_.size(0) && v_.size(0) == q_.size(0) && v_.size(1) == k_.size(1) &&
                  v_.size(2) == k_.size(2),
              kName, ": q/k/v batch, token or head dims differ");
  TORCH_CHECK(k_.size(3) == q_.size(3), kName, ": q and k head dims differ");
  TORCH_CHECK(q_.scalar_type() == k_.scalar_type() && q_.scalar_type() == v_.scalar_type(), kName, ": dtypes differ");
  TORCH_CHECK(q_.is_cuda() && k_.device() == q_.device() && v_.device() == q_.device() &&
                  out_.device() == q_.device() && grad_out_.device() == q_.device() && lse_.device() == q_.device(),
              kName, ": grad_out, q, k, v, out, lse must be on one CUDA device");
  const int64_t heads = q_.size(2), kv_heads = k_.size(2), nq = q_.size(1), nkv = k_.size(1);
  TORCH_CHECK(kv_heads >= 1 && heads % kv_heads == 0, kName, ": query heads must be a multiple of KV heads");
  TORCH_CHECK(nq <= nkv, kName, ": N_q must be <= N_kv (queries align to the end of the keys)");
  TORCH_CHECK(block >= 1 && local >= 1 && vert_stride >= 1 && sliding_offset >= 0 && dense_heads >= 0 &&
                  dense_heads <= kv_heads,
              kName, ": need block_size >= 1, local_blocks >= 1, vert_stride >= 1, head_sliding_offset >= 0, "
              "0 <= num_dense_heads <= H_kv");
  // Key positions are int32 in the kernels' row geometry.
  TORCH_CHECK(nkv < (int64_t{1} << 31), kName, ": N_kv must be below 2^31");

  const c10::cuda::CUDAGuard guard(q_.device());
  compute_capability_major(q_);
  const auto* inst = find_instance(generated::kSm80S2Bwd, q_.scalar_type(), q_.size(3), v_.size(3));
  TORCH_CHECK(inst != nullptr, kName, ": no kernel built for dtype ", q_.scalar_type(), " and head dims ", q_.size(3),
              " / ", v_.size(3), " (built: ", list_instances(generated::kSm80S2Bwd), ")");
  const BwdTensors t = bwd_tensors(kName, q_, k_, v_, out_, grad_out_, lse_, grad_lse_);
  if (t.q.numel() == 0 || t.k.numel() == 0) return {t.dq.zero_(), t.dk.zero_(), t.dv.zero_()};

  sm80::StridedShardBwdParams p{};
  sm80::StridedShardFwdParams& f = p.fwd;
  fill_fwd_args(f, t.q, t.k, t.v, t.out, t.lse, scale);
  f.pattern.nq = nq;
  f.pattern.nkv = nkv;
  f.pattern.block = block;
  f.pattern.local = local;
  f.pattern.vert_stride = vert_stride;
  f.pattern.causal = causal;
  // As the CPU binding: the shard step of each KV head, shift and dense flag applied per head by the schedules.
  f.head_step = homo_head ? 0 : std::max<int64_t>(1, vert_stride / heads);
  f.sliding_offset = sliding_offset;
  f.dense_heads = static_cast<int>(dense_heads);
  f.q_split = split_of(block, inst->block_m, "natten_like::strided_shard_backward (cuda): block_size");
  f.kv_split = split_of(block, inst->block_n, "natten_like::strided_shard_backward (cuda): block_size");

  fill_bwd_args(p, t);
  const cudaError_t err = inst->launch(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, kName, ": sm80 kernel: ", cudaGetErrorString(err));
  return {t.dq, t.dk, t.dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(natten_like, CUDA, m) { m.impl("strided_shard_backward", &strided_shard_backward_cuda); }

}  // namespace natten_like
