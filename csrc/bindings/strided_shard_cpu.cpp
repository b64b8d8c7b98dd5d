// CPU implementations of the strided-shard (S2-Attention) operators: the S2 policy (policy/strided_shard.hpp) driving the
// fused CPU kernel (cpu/fmha_cpu.hpp). One policy per query head (the pattern does not depend on the batch).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "dispatch.hpp"

#include <vector>

#include "natten_like/cpu/fmha_cpu.hpp"
#include "natten_like/policy/strided_shard.hpp"

namespace natten_like {
namespace {

using policy::StridedShardPolicy;

struct Plan {
  std::vector<StridedShardPolicy> pols;  // per query head
  const StridedShardPolicy& operator()(int64_t, int64_t h) const { return pols[h]; }
};

Plan make_plan(int64_t heads, int64_t kv_heads, int64_t nq, int64_t nkv, int64_t block, int64_t local, int64_t vert_stride,
               bool causal, bool homo_head, int64_t dense_heads, int64_t sliding_offset) {
  TORCH_CHECK(kv_heads >= 1 && heads % kv_heads == 0, "natten_like::strided_shard: query heads must be a multiple of KV heads");
  TORCH_CHECK(nq <= nkv, "natten_like::strided_shard: N_q must be <= N_kv (queries align to the end of the keys)");
  TORCH_CHECK(block >= 1 && local >= 1 && vert_stride >= 1 && sliding_offset >= 0 && dense_heads >= 0 &&
                  dense_heads <= kv_heads,
              "natten_like::strided_shard: need block_size >= 1, local_blocks >= 1, vert_stride >= 1, "
              "head_sliding_offset >= 0, 0 <= num_dense_heads <= H_kv");
  const int64_t step = homo_head ? 0 : std::max<int64_t>(1, vert_stride / heads);
  const int64_t group = heads / kv_heads;
  Plan plan;
  plan.pols.resize(heads);
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t hk = h / group;
    StridedShardPolicy& p = plan.pols[h];
    p.nq = nq;
    p.nkv = nkv;
    p.block = block;
    p.local = local;
    p.vert_stride = vert_stride;
    p.shift = (hk * step + sliding_offset) % vert_stride;
    p.causal = causal;
    p.dense = hk >= kv_heads - dense_heads;
  }
  return plan;
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "natten_like::strided_shard: q, k, v must be [B, N, H, D]");
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0) && v.size(1) == k.size(1) && v.size(2) == k.size(2),
              "natten_like::strided_shard: q/k/v batch, token or head dims differ");
  TORCH_CHECK(k.size(3) == q.size(3), "natten_like::strided_shard: q and k head dims differ");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "natten_like::strided_shard: dtypes differ");
}

std::tuple<at::Tensor, at::Tensor> strided_shard_forward_cpu(const at::Tensor& q_, const at::Tensor& k_,
                                                             const at::Tensor& v_, int64_t block, int64_t local,
                                                             int64_t vert_stride, bool causal, bool homo_head,
                                                             int64_t dense_heads, int64_t sliding_offset, double scale) {
  check_inputs(q_, k_, v_);
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const Plan plan = make_plan(q.size(2), k.size(2), q.size(1), k.size(1), block, local, vert_stride, causal, homo_head,
                              dense_heads, sliding_offset);
  auto out = at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options());
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (out.numel() == 0 || q.size(3) == 0) return {out.zero_(), lse.fill_(-INFINITY)};
  NL_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "strided_shard_forward_cpu", [&] {
    auto p = fmha_params<scalar_t>(q, k, v, q.size(0), q.size(1), k.size(1), scale);
    p.out = out.data_ptr<scalar_t>();
    p.lse = lse.data_ptr<float>();
    cpu::fmha_forward(p, plan);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> strided_shard_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, const at::Tensor& out_,
    const at::Tensor& lse_, const c10::optional<at::Tensor>& grad_lse, int64_t block, int64_t local, int64_t vert_stride,
    bool causal, bool homo_head, int64_t dense_heads, int64_t sliding_offset, double scale) {
  check_inputs(q_, k_, v_);
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const Plan plan = make_plan(q.size(2), k.size(2), q.size(1), k.size(1), block, local, vert_stride, causal, homo_head,
                              dense_heads, sliding_offset);
  const auto grad_out = grad_out_.to(q.scalar_type()).contiguous();
  TORCH_CHECK(grad_out.sizes() == out_.sizes(), "natten_like::strided_shard_backward: grad_out and out shapes differ");
  const auto lse = lse_.to(at::kFloat).contiguous();
  // delta_i = rowsum(dO * O)_i - dlse_i: a logsumexp gradient enters dS = P * (dP - delta) exactly like this.
  auto delta = (grad_out.to(at::kFloat) * out_.to(at::kFloat)).sum(-1);
  if (grad_lse.has_value()) delta = delta - grad_lse->to(at::kFloat);
  delta = delta.contiguous();
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  if (grad_out.numel() == 0 || q.size(3) == 0 || k.numel() == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};
  NL_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "strided_shard_backward_cpu", [&] {
    auto p = fmha_params<scalar_t>(q, k, v, q.size(0), q.size(1), k.size(1), scale);
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

std::tuple<at::Tensor, at::Tensor> strided_shard_visits(int64_t heads, int64_t kv_heads, int64_t nq, int64_t nkv,
                                                        int64_t block, int64_t local, int64_t vert_stride, bool causal,
                                                        bool homo_head, int64_t dense_heads, int64_t sliding_offset) {
  const Plan plan = make_plan(heads, kv_heads, nq, nkv, block, local, vert_stride, causal, homo_head, dense_heads,
                              sliding_offset);
  const int64_t nt = plan.pols[0].num_q_tiles(), nu = plan.pols[0].num_kv_tiles();
  auto fwd = at::zeros({heads, nt, nu}, at::kLong), inv = at::zeros({heads, nu, nt}, at::kLong);
  auto f = fwd.accessor<int64_t, 3>(), g = inv.accessor<int64_t, 3>();
  for (int64_t h = 0; h < heads; ++h) {
    const auto& pol = plan.pols[h];
    for (int64_t t = 0; t < nt; ++t)
      pol.for_each_kv_tile(t, [&](int64_t u, bool full) {
        TORCH_CHECK(f[h][t][u] == 0, "natten_like::strided_shard_visits: KV tile ", u, " visited twice by Q tile ", t);
        f[h][t][u] = full ? 2 : 1;
      });
    for (int64_t u = 0; u < nu; ++u)
      pol.for_each_q_tile(u, [&](int64_t t, bool full) {
        TORCH_CHECK(g[h][u][t] == 0, "natten_like::strided_shard_visits: Q tile ", t, " visited twice for KV tile ", u);
        g[h][u][t] = full ? 2 : 1;
      });
  }
  return {fwd, inv};
}

}  // namespace

TORCH_LIBRARY_IMPL(natten_like, CPU, m) {
  m.impl("strided_shard_forward", &strided_shard_forward_cpu);
  m.impl("strided_shard_backward", &strided_shard_backward_cpu);
}

TORCH_LIBRARY_IMPL(natten_like, CompositeExplicitAutograd, m) { m.impl("strided_shard_visits", &strided_shard_visits); }

}  // namespace natten_like
