// CPU implementations of the block-sparse operators: the block-sparse policy (policy/block_sparse.hpp) driving the fused CPU
// kernel (cpu/fmha_cpu.hpp). Block lists arrive in FlexAttention's compressed layout (int64, contiguous, batch and head dims
// of size 1 broadcast); the backward builds the transposed lists once here, before the kernel runs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "dispatch.hpp"

#include <vector>

#include "block_sparse_plan.hpp"
#include "natten_like/cpu/fmha_cpu.hpp"

namespace natten_like {
namespace {

using namespace block_sparse_plan;

std::tuple<at::Tensor, at::Tensor> block_sparse_forward_cpu(
    const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, const at::Tensor& kv_num, const at::Tensor& kv_idx,
    const c10::optional<at::Tensor>& full_num, const c10::optional<at::Tensor>& full_idx,
    const c10::optional<at::Tensor>& cu_q, const c10::optional<at::Tensor>& cu_kv, int64_t q_block, int64_t kv_block,
    bool causal, double scale) {
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const Plan plan = make_plan(q, k, v, kv_num, kv_idx, full_num, full_idx, cu_q, cu_kv, q_block, kv_block, causal, false);
  auto out_shape = q.sizes().vec();
  out_shape.back() = v.size(-1);
  auto out = at::empty(out_shape, q.options());
  auto lse = at::empty(q.sizes().slice(0, q.dim() - 1), q.options().dtype(at::kFloat));
  if (out.numel() == 0 || q.size(-1) == 0) return {out.zero_(), lse.fill_(-INFINITY)};
  NL_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "block_sparse_forward_cpu", [&] {
    auto p = fmha_params<scalar_t>(q, k, v, plan.packed ? 1 : plan.batch, plan.nq, plan.nkv, scale);
    p.out = out.data_ptr<scalar_t>();
    p.lse = lse.data_ptr<float>();
    cpu::fmha_forward(p, plan);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, const at::Tensor& out_,
    const at::Tensor& lse_, const c10::optional<at::Tensor>& grad_lse, const at::Tensor& kv_num, const at::Tensor& kv_idx,
    const c10::optional<at::Tensor>& full_num, const c10::optional<at::Tensor>& full_idx,
    const c10::optional<at::Tensor>& cu_q, const c10::optional<at::Tensor>& cu_kv, int64_t q_block, int64_t kv_block,
    bool causal, double scale) {
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const Plan plan = make_plan(q, k, v, kv_num, kv_idx, full_num, full_idx, cu_q, cu_kv, q_block, kv_block, causal, true);
  const auto grad_out = grad_out_.to(q.scalar_type()).contiguous();
  TORCH_CHECK(grad_out.sizes() == out_.sizes(), "natten_like::block_sparse_backward: grad_out and out shapes differ");
  const auto lse = lse_.to(at::kFloat).contiguous();
  // delta_i = rowsum(dO * O)_i - dlse_i: a logsumexp gradient enters dS = P * (dP - delta) exactly like this.
  auto delta = (grad_out.to(at::kFloat) * out_.to(at::kFloat)).sum(-1);
  if (grad_lse.has_value()) delta = delta - grad_lse->to(at::kFloat);
  delta = delta.contiguous();
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  if (grad_out.numel() == 0 || q.size(-1) == 0 || k.numel() == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};
  NL_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "block_sparse_backward_cpu", [&] {
    auto p = fmha_params<scalar_t>(q, k, v, plan.packed ? 1 : plan.batch, plan.nq, plan.nkv, scale);
    p.grad_out = grad_out.data_ptr<scalar_t>();
    p.lse_in = lse.data_ptr<float>();
    p.delta = delta.data_ptr<float>();
    p.grad_q = dq.data_ptr<scalar_t>();
    p.grad_k = dk.data_ptr<scalar_t>();
    p.grad_v = dv.data_ptr<scalar_t>();
    cpu::fmha_backward(p, plan);
  });
  return {dq, dk, dv};
}

std::tuple<at::Tensor, at::Tensor> block_sparse_visits(const at::Tensor& kv_num, const at::Tensor& kv_idx,
                                                       const c10::optional<at::Tensor>& full_num,
                                                       const c10::optional<at::Tensor>& full_idx, int64_t nq, int64_t nkv,
                                                       int64_t q_block, int64_t kv_block, bool causal) {
  TORCH_CHECK(nq >= 0 && nkv >= 0 && q_block >= 1 && kv_block >= 1 && kv_num.dim() == 3,
              "natten_like::block_sparse_visits: bad arguments");
  Plan plan;
  plan.batch = std::max(kv_num.size(0), full_num.has_value() ? full_num->size(0) : 1);
  plan.heads = std::max(kv_num.size(1), full_num.has_value() ? full_num->size(1) : 1);
  plan.q_seq = {0, nq};
  plan.kv_seq = {0, nkv};
  build_policies(plan, nq, nkv, 1, kv_num, kv_idx, full_num, full_idx, q_block, kv_block, causal, true, at::kCPU);
  const int64_t nt = plan.q_blocks, nu = plan.kv_blocks;
  auto fwd = at::zeros({plan.batch, plan.heads, nt, nu}, at::kLong);
  auto inv = at::zeros({plan.batch, plan.heads, nu, nt}, at::kLong);
  auto f = fwd.accessor<int64_t, 4>(), g = inv.accessor<int64_t, 4>();
  for (int64_t b = 0; b < plan.batch; ++b)
    for (int64_t h = 0; h < plan.heads; ++h) {
      const auto& pol = plan(b, h);
      for (int64_t t = 0; t < nt; ++t)
        pol.for_each_kv_tile(t, [&](int64_t u, bool full) {
          TORCH_CHECK(f[b][h][t][u] == 0, "natten_like::block_sparse_visits: KV tile ", u, " visited twice");
          f[b][h][t][u] = full ? 2 : 1;
        });
      for (int64_t u = 0; u < nu; ++u)
        pol.for_each_q_tile(u, [&](int64_t t, bool full) {
          TORCH_CHECK(g[b][h][u][t] == 0, "natten_like::block_sparse_visits: Q tile ", t, " visited twice");
          g[b][h][u][t] = full ? 2 : 1;
        });
    }
  return {fwd, inv};
}

}  // namespace

TORCH_LIBRARY_IMPL(natten_like, CPU, m) {
  m.impl("block_sparse_forward", &block_sparse_forward_cpu);
  m.impl("block_sparse_backward", &block_sparse_backward_cpu);
}

TORCH_LIBRARY_IMPL(natten_like, CompositeExplicitAutograd, m) { m.impl("block_sparse_visits", &block_sparse_visits); }

}  // namespace natten_like
