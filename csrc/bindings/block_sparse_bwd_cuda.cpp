// CUDA implementation of block_sparse_backward: the sm80 fused backward (sm80_fmha_bwd_kernel.hpp): delta, then dK/dV
// per kernel KV tile over the query blocks of the transposed lists of every query head of its GQA group
// (BlockSparseKeySchedule, fmha_bwd_schedules.hpp), then dQ per kernel Q tile over its listed KV blocks (the forward's
// BlockSparseSchedule). Deterministic, no atomics. The lists are checked, and transposed, on the device by the
// same plan as the CPU binding (block_sparse_plan.hpp, backward = true; one host sync).
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

c10::optional<at::Tensor> on_host(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(t->cpu()) : c10::nullopt;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_backward_cuda(
    const at::Tensor& grad_out_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& out_, const at::Tensor& lse_, const c10::optional<at::Tensor>& grad_lse_,
    const at::Tensor& kv_num, const at::Tensor& kv_idx, const c10::optional<at::Tensor>& full_num,
    const c10::optional<at::Tensor>& full_idx, const c10::optional<at::Tensor>& cu_q,
    const c10::optional<at::Tensor>& cu_kv, int64_t q_block, int64_t kv_block, bool causal, double scale) {
  constexpr const char* kName = "natten_like::block_sparse_backward (cuda)";
  TORCH_CHECK(q_.is_cuda() && k_.device() == q_.device() && v_.device() == q_.device() &&
                  out_.device() == q_.device() && grad_out_.device() == q_.device() && lse_.device() == q_.device(),
              kName, ": grad_out, q, k, v, out, lse must be on one CUDA device");
  TORCH_CHECK(k_.size(-1) == q_.size(-1), kName, ": q and k head dims differ");
  const c10::cuda::CUDAGuard guard(q_.device());
  compute_capability_major(q_);
  const auto* inst = find_instance(generated::kSm80BlockSparseBwd, q_.scalar_type(), q_.size(-1), v_.size(-1));
  TORCH_CHECK(inst != nullptr, kName, ": no kernel built for dtype ", q_.scalar_type(), " and head dims ",
              q_.size(-1), " / ", v_.size(-1), " (built: ", list_instances(generated::kSm80BlockSparseBwd), ")");

  const BwdTensors t = bwd_tensors(kName, q_, k_, v_, out_, grad_out_, lse_, grad_lse_);
  // After the gradients' allocation (the tests poison the blocks freed last): the lists checked and transposed on the
  // device (one host sync), the sequence offsets from host copies of cu_seqlens.
  const Plan plan = make_plan(t.q, t.k, t.v, kv_num, kv_idx, full_num, full_idx, on_host(cu_q), on_host(cu_kv),
                              q_block, kv_block, causal, true);
  TORCH_CHECK(plan.q_seq.back() < (int64_t{1} << 31) && plan.kv_seq.back() < (int64_t{1} << 31), kName,
              ": token counts must be below 2^31 (int32 key positions)");
  if (t.q.numel() == 0 || t.k.numel() == 0) return {t.dq.zero_(), t.dk.zero_(), t.dv.zero_()};
  // A packed batch [total, H, D] runs as batch 1 of [1, total, H, D].
  auto batched = [&](const at::Tensor& x) { return plan.packed ? x.unsqueeze(0) : x; };

  const PlanOnDevice arrays(plan, t.q.device());
  sm80::BlockSparseBwdParams p{};
  sm80::BlockSparseFwdParams& f = p.fwd;
  fill_fwd_args(f, batched(t.q), batched(t.k), batched(t.v), batched(t.out), t.lse, scale);
  f.pattern = arrays.pattern(plan, q_block, kv_block, causal);
  f.kv_partial = arrays.list(plan, 0);
  f.kv_full = arrays.list(plan, 1);
  p.q_partial = arrays.list(plan, 2);
  p.q_full = arrays.list(plan, 3);
  f.packed = plan.packed;
  f.total_q_tiles = plan.q_tiles.back();
  p.total_kv_tiles = plan.kv_tiles.back();
  f.q_split = split_of(q_block, inst->block_m, "natten_like::block_sparse_backward (cuda): q_block");
  f.kv_split = split_of(kv_block, inst->block_n, "natten_like::block_sparse_backward (cuda): kv_block");

  fill_bwd_args(p, t, plan.packed);
  const cudaError_t err = inst->launch(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, kName, ": sm80 kernel: ", cudaGetErrorString(err));
  return {t.dq, t.dk, t.dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(natten_like, CUDA, m) { m.impl("block_sparse_backward", &block_sparse_backward_cuda); }

}  // namespace natten_like
