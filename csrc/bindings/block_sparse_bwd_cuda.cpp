// CUDA implementation of block_sparse_backward: the sm80 fused backward (sm80_fmha_bwd_kernel.hpp): delta, then dK/dV
// per kernel KV tile over the query blocks of the transposed lists of every query head of its GQA group
// (BlockSparseKeySchedule, fmha_bwd_schedules.hpp), then dQ per kernel Q tile over its listed KV blocks (the forward's
// BlockSparseSchedule). Deterministic, no atomics. The lists are validated, and transposed, on host copies by the
// same plan as the CPU binding (block_sparse_plan.hpp, backward = true); the kernels get device copies of the checked
// arrays.
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
  TORCH_CHECK(v_.size(-1) == q_.size(-1) && k_.size(-1) == q_.size(-1), kName, ": q, k, v head dims differ (D_v != D "
              "has no kernel)");
  const Plan plan = make_plan(q_, k_, v_, kv_num.cpu(), kv_idx.cpu(), on_host(full_num), on_host(full_idx),
                              on_host(cu_q), on_host(cu_kv), q_block, kv_block, causal, true);
  TORCH_CHECK(plan.q_seq.back() < (int64_t{1} << 31) && plan.kv_seq.back() < (int64_t{1} << 31), kName,
              ": token counts must be below 2^31 (int32 key positions)");
  TORCH_CHECK(out_.sizes() == q_.sizes() && grad_out_.sizes() == q_.sizes() &&
                  lse_.sizes() == q_.sizes().slice(0, q_.dim() - 1),
              kName, ": out / grad_out must be shaped like q and lse like q without its head dim");
  const c10::cuda::CUDAGuard guard(q_.device());
  compute_capability_major(q_);
  const auto launch = find_instance(generated::kSm80BlockSparseBwd, q_.scalar_type(), q_.size(-1));
  TORCH_CHECK(launch != nullptr, kName, ": no kernel built for dtype ", q_.scalar_type(), " and head dim ",
              q_.size(-1), " (built: ", list_instances(generated::kSm80BlockSparseBwd), ")");

  const at::Tensor q = aligned_contiguous(q_), k = aligned_contiguous(k_), v = aligned_contiguous(v_);
  const at::Tensor out = aligned_contiguous(out_.to(q.scalar_type()));
  const at::Tensor grad_out = aligned_contiguous(grad_out_.to(q.scalar_type()));
  const at::Tensor lse = lse_.to(at::kFloat).contiguous();
  at::Tensor grad_lse;
  if (grad_lse_.has_value()) {
    TORCH_CHECK(grad_lse_->sizes() == lse.sizes(), kName, ": grad_lse must be shaped like lse");
    grad_lse = grad_lse_->to(at::kFloat).contiguous();
  }
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  if (q.numel() == 0 || k.numel() == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};
  auto delta = at::empty(lse.sizes(), lse.options());
  // A packed batch [total, H, D] runs as batch 1 of [1, total, H, D].
  auto batched = [&](const at::Tensor& t) { return plan.packed ? t.unsqueeze(0) : t; };

  const auto device = q.device();
  auto to_device = [&](const std::vector<int64_t>& x) { return at::tensor(x, at::kLong).to(device); };
  const at::Tensor q_seq = to_device(plan.q_seq), kv_seq = to_device(plan.kv_seq);
  const at::Tensor q_tiles = to_device(plan.q_tiles), kv_tiles = to_device(plan.kv_tiles);
  const at::Tensor part_num = plan.kv_partial.num.to(device), part_idx = plan.kv_partial.idx.to(device);
  const at::Tensor tpart_num = plan.q_partial.num.to(device), tpart_idx = plan.q_partial.idx.to(device);
  at::Tensor full_n, full_i, tfull_n, tfull_i;
  if (plan.kv_full.defined()) {
    full_n = plan.kv_full.num.to(device), full_i = plan.kv_full.idx.to(device);
    tfull_n = plan.q_full.num.to(device), tfull_i = plan.q_full.idx.to(device);
  }

  sm80::BlockSparseBwdParams p{};
  sm80::BlockSparseFwdParams& f = p.fwd;
  fill_fwd_args(f, batched(q), batched(k), batched(v), batched(out), lse, scale);
  f.pattern.q_block = q_block;
  f.pattern.kv_block = kv_block;
  f.pattern.causal = causal;
  f.pattern.num_seqs = static_cast<int64_t>(plan.q_seq.size()) - 1;
  f.pattern.q_seq = q_seq.data_ptr<int64_t>();
  f.pattern.kv_seq = kv_seq.data_ptr<int64_t>();
  f.pattern.q_tiles = q_tiles.data_ptr<int64_t>();
  f.pattern.kv_tiles = kv_tiles.data_ptr<int64_t>();
  f.kv_partial = list_array(plan.kv_partial, part_num.data_ptr<int64_t>(), part_idx.data_ptr<int64_t>());
  p.q_partial = list_array(plan.q_partial, tpart_num.data_ptr<int64_t>(), tpart_idx.data_ptr<int64_t>());
  if (plan.kv_full.defined()) {
    f.kv_full = list_array(plan.kv_full, full_n.data_ptr<int64_t>(), full_i.data_ptr<int64_t>());
    p.q_full = list_array(plan.q_full, tfull_n.data_ptr<int64_t>(), tfull_i.data_ptr<int64_t>());
  }
  f.packed = plan.packed;
  f.total_q_tiles = plan.q_tiles.back();
  p.total_kv_tiles = plan.kv_tiles.back();
  f.q_split =
      split_of(q_block, generated::kSm80BlockSparseBwdBlockM, "natten_like::block_sparse_backward (cuda): q_block");
  f.kv_split =
      split_of(kv_block, generated::kSm80BlockSparseBwdBlockN, "natten_like::block_sparse_backward (cuda): kv_block");

  const at::Tensor bgrad = batched(grad_out), bdq = batched(dq), bdk = batched(dk), bdv = batched(dv);
  p.d_out = bgrad.data_ptr();
  p.do_batch_stride = bgrad.stride(0), p.do_token_stride = bgrad.stride(1), p.do_head_stride = bgrad.stride(2);
  p.grad_lse = grad_lse.defined() ? grad_lse.data_ptr<float>() : nullptr;
  p.dq = bdq.data_ptr();
  p.dk = bdk.data_ptr();
  p.dv = bdv.data_ptr();
  p.dq_batch_stride = bdq.stride(0), p.dq_token_stride = bdq.stride(1), p.dq_head_stride = bdq.stride(2);
  p.dk_batch_stride = bdk.stride(0), p.dk_token_stride = bdk.stride(1), p.dk_head_stride = bdk.stride(2);
  p.dv_batch_stride = bdv.stride(0), p.dv_token_stride = bdv.stride(1), p.dv_head_stride = bdv.stride(2);
  p.delta = delta.data_ptr<float>();
  // The arrays above are freed at return; the caching allocator reuses their blocks only in stream order, after the
  // kernels have read them.
  const cudaError_t err = launch(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, kName, ": sm80 kernel: ", cudaGetErrorString(err));
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(natten_like, CUDA, m) { m.impl("block_sparse_backward", &block_sparse_backward_cuda); }

}  // namespace natten_like
