// CPU implementations of the GNA operators: the GNA policy (policy/gna.hpp) driving the fused CPU kernel (cpu/fmha_cpu.hpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "dispatch.hpp"

#include "natten_like/cpu/fmha_cpu.hpp"
#include "natten_like/policy/gna.hpp"

namespace natten_like {
namespace {

using policy::GnaPolicy;

template <int Rank>
GnaPolicy<Rank> make_policy(at::IntArrayRef shape, at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef dilation,
                            const c10::List<bool>& causal, at::IntArrayRef q_tile, at::IntArrayRef kv_tile) {
  TORCH_CHECK(shape.size() == Rank && window.size() == Rank && stride.size() == Rank && dilation.size() == Rank &&
                  causal.size() == Rank && q_tile.size() == Rank && kv_tile.size() == Rank,
              "natten_like::gna: window, stride, dilation, is_causal, q_tile and kv_tile need one entry per token dim (",
              Rank, ")");
  GnaPolicy<Rank> pol;
  for (int i = 0; i < Rank; ++i) {
    const int64_t L = shape[i], k = window[i], s = stride[i], d = dilation[i];
    TORCH_CHECK(d >= 1 && k >= 1 && k * d <= L && s >= 1 && s <= k, "natten_like::gna: invalid window/stride/dilation ",
                k, "/", s, "/", d, " for a token dim of size ", L);
    TORCH_CHECK(q_tile[i] >= 1 && kv_tile[i] >= 1, "natten_like::gna: tile shapes must be positive");
    pol.dim[i] = policy::GnaDim{L, k, s, d, causal.get(i)};
    pol.tq[i] = q_tile[i];
    pol.tk[i] = kv_tile[i];
  }
  return pol;
}

template <class T>
cpu::FmhaParams<T> make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const c10::optional<at::Tensor>& add_k, const c10::optional<at::Tensor>& add_v,
                               double scale) {
  const int64_t batch = q.size(0), tokens = q.numel() / (batch * q.size(-1) * q.size(-2));
  auto p = fmha_params<T>(q, k, v, batch, tokens, tokens, scale);
  if (add_k.has_value()) {
    p.nadd = add_k->size(1);
    p.add_k = add_k->data_ptr<T>();
    p.add_v = add_v->data_ptr<T>();
  }
  return p;
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& add_k,
                  const c10::optional<at::Tensor>& add_v) {
  TORCH_CHECK(q.dim() >= 4 && q.dim() <= 6, "natten_like::gna: q must be [B, *tokens, H, D] with 1-3 token dims");
  TORCH_CHECK(k.dim() == q.dim() && v.dim() == q.dim(), "natten_like::gna: q, k, v ranks differ");
  for (int i = 0; i < q.dim() - 2; ++i)
    TORCH_CHECK(k.size(i) == q.size(i) && v.size(i) == q.size(i), "natten_like::gna: q/k/v batch or token dims differ");
  TORCH_CHECK(k.size(-2) == v.size(-2) && q.size(-2) % k.size(-2) == 0, "natten_like::gna: bad head counts");
  TORCH_CHECK(k.size(-1) == q.size(-1), "natten_like::gna: q and k head dims differ");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "natten_like::gna: dtypes differ");
  TORCH_CHECK(add_k.has_value() == add_v.has_value(), "natten_like::gna: additional_k and additional_v go together");
  if (add_k.has_value()) {
    TORCH_CHECK(add_k->dim() == 4 && add_v->dim() == 4 && add_k->size(0) == q.size(0) && add_v->size(0) == q.size(0) &&
                    add_k->size(1) == add_v->size(1) && add_k->size(2) == k.size(-2) && add_v->size(2) == k.size(-2) &&
                    add_k->size(3) == q.size(-1) && add_v->size(3) == v.size(-1),
                "natten_like::gna: additional_k/v must be [B, N_add, H_kv, D] / [B, N_add, H_kv, D_v]");
    TORCH_CHECK(add_k->scalar_type() == q.scalar_type() && add_v->scalar_type() == q.scalar_type(),
                "natten_like::gna: additional_k/v dtype differs from q");
  }
}

template <class F>
void dispatch_rank(int rank, F&& f) {
  switch (rank) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    default: TORCH_CHECK(false, "natten_like::gna: 1-3 token dims supported, got ", rank);
  }
}

c10::optional<at::Tensor> contiguous(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(t->contiguous()) : c10::nullopt;
}

// The `kernel` argument names a kernel family; on CPU tensors only the CPU kernel runs.
void check_cpu_kernel(c10::string_view kernel) {
  TORCH_CHECK(kernel == "auto" || kernel == "cpu", "natten_like::gna: kernel '", kernel,
              "' runs on CUDA tensors only; CPU tensors take kernel 'auto' or 'cpu'");
}

std::tuple<at::Tensor, at::Tensor> gna_forward_cpu(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                                   const c10::optional<at::Tensor>& add_k_,
                                                   const c10::optional<at::Tensor>& add_v_, at::IntArrayRef window,
                                                   at::IntArrayRef stride, at::IntArrayRef dilation,
                                                   const c10::List<bool>& causal, double scale, at::IntArrayRef q_tile,
                                                   at::IntArrayRef kv_tile, c10::string_view kernel) {
  check_cpu_kernel(kernel);
  check_inputs(q_, k_, v_, add_k_, add_v_);
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto add_k = contiguous(add_k_), add_v = contiguous(add_v_);
  const int rank = q.dim() - 3;
  auto out_shape = q.sizes().vec();
  out_shape.back() = v.size(-1);
  auto out = at::empty(out_shape, q.options());
  auto lse = at::empty(q.sizes().slice(0, q.dim() - 1), q.options().dtype(at::kFloat));
  if (q.numel() == 0 || out.numel() == 0) return {out.zero_(), lse.fill_(-INFINITY)};
  NL_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "gna_forward_cpu", [&] {
    auto p = make_params<scalar_t>(q, k, v, add_k, add_v, scale);
    p.out = out.data_ptr<scalar_t>();
    p.lse = lse.data_ptr<float>();
    dispatch_rank(rank, [&](auto r) {
      constexpr int R = decltype(r)::value;
      const auto pol = make_policy<R>(q.sizes().slice(1, R), window, stride, dilation, causal, q_tile, kv_tile);
      cpu::fmha_forward(p, [&](int64_t, int64_t) -> const GnaPolicy<R>& { return pol; });
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gna_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const c10::optional<at::Tensor>& add_k_, const c10::optional<at::Tensor>& add_v_, const at::Tensor& out_,
    const at::Tensor& lse_, const c10::optional<at::Tensor>& grad_lse, at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef dilation,
    const c10::List<bool>& causal, double scale, at::IntArrayRef q_tile, at::IntArrayRef kv_tile,
    c10::string_view kernel) {
  check_cpu_kernel(kernel);
  check_inputs(q_, k_, v_, add_k_, add_v_);
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto add_k = contiguous(add_k_), add_v = contiguous(add_v_);
  const auto grad_out = grad_out_.to(q.scalar_type()).contiguous();
  const auto lse = lse_.to(at::kFloat).contiguous();
  TORCH_CHECK(grad_out.sizes() == out_.sizes(), "natten_like::gna_backward: grad_out and out shapes differ");
  // delta_i = rowsum(dO * O)_i - dlse_i: a logsumexp gradient enters dS = P * (dP - delta) exactly like this.
  auto delta = (grad_out.to(at::kFloat) * out_.to(at::kFloat)).sum(-1);  // [B, *tokens, H]
  if (grad_lse.has_value()) delta = delta - grad_lse->to(at::kFloat);
  delta = delta.contiguous();
  const int rank = q.dim() - 3;
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  auto dadd_k = add_k ? at::empty_like(*add_k) : at::empty({0}, q.options());
  auto dadd_v = add_v ? at::empty_like(*add_v) : at::empty({0}, q.options());
  if (q.numel() == 0 || grad_out.numel() == 0) {
    return {dq.zero_(), dk.zero_(), dv.zero_(), dadd_k.zero_(), dadd_v.zero_()};
  }
  NL_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "gna_backward_cpu", [&] {
    auto p = make_params<scalar_t>(q, k, v, add_k, add_v, scale);
    p.grad_out = grad_out.data_ptr<scalar_t>();
    p.lse_in = lse.data_ptr<float>();
    p.delta = delta.data_ptr<float>();
    p.grad_q = dq.data_ptr<scalar_t>();
    p.grad_k = dk.data_ptr<scalar_t>();
    p.grad_v = dv.data_ptr<scalar_t>();
    if (add_k) {
      p.grad_add_k = dadd_k.data_ptr<scalar_t>();
      p.grad_add_v = dadd_v.data_ptr<scalar_t>();
    }
    dispatch_rank(rank, [&](auto r) {
      constexpr int R = decltype(r)::value;
      const auto pol = make_policy<R>(q.sizes().slice(1, R), window, stride, dilation, causal, q_tile, kv_tile);
      cpu::fmha_backward(p, [&](int64_t, int64_t) -> const GnaPolicy<R>& { return pol; });
    });
  });
  return {dq, dk, dv, dadd_k, dadd_v};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gna_policy_1d(int64_t L, int64_t k, int64_t s, bool causal,
                                                                         int64_t tq, int64_t tk) {
  TORCH_CHECK(k >= 1 && k <= L && s >= 1 && s <= k && tq >= 1 && tk >= 1, "natten_like::gna_policy_1d: bad arguments");
  const int64_t nt = policy::ceil_div(L, tq), nu = policy::ceil_div(L, tk);
  auto windows = at::empty({L, 2}, at::kLong), kv_tiles = at::empty({nt, 2}, at::kLong);
  auto full = at::zeros({nt, nu}, at::kLong), q_tiles = at::empty({nu, 2}, at::kLong);
  auto w = windows.accessor<int64_t, 2>(), kt = kv_tiles.accessor<int64_t, 2>(), f = full.accessor<int64_t, 2>(),
       qt = q_tiles.accessor<int64_t, 2>();
  for (int64_t i = 0; i < L; ++i) {
    auto r = policy::gna_window(i, L, k, s, causal);
    w[i][0] = r.begin;
    w[i][1] = r.end;
  }
  for (int64_t t = 0; t < nt; ++t) {
    auto r = policy::gna_tile_kv_tiles(t, tq, tk, L, k, s, causal);
    kt[t][0] = r.begin;
    kt[t][1] = r.end;
    for (int64_t u = 0; u < nu; ++u) f[t][u] = policy::gna_tile_is_full(t, u, tq, tk, L, k, s, causal);
  }
  for (int64_t u = 0; u < nu; ++u) {
    auto r = policy::gna_kv_tile_q_tiles(u, tq, tk, L, k, s, causal);
    qt[u][0] = r.begin;
    qt[u][1] = r.end;
  }
  return {windows, kv_tiles, full, q_tiles};
}

// Per Q tile (in the policy's order): [visited KV tiles, full KV tiles, q rows].
at::Tensor gna_visits(at::IntArrayRef shape, at::IntArrayRef window, at::IntArrayRef stride, at::IntArrayRef dilation,
                      const c10::List<bool>& causal, at::IntArrayRef q_tile, at::IntArrayRef kv_tile) {
  at::Tensor result;
  dispatch_rank(static_cast<int>(shape.size()), [&](auto r) {
    constexpr int R = decltype(r)::value;
    const auto pol = make_policy<R>(shape, window, stride, dilation, causal, q_tile, kv_tile);
    result = at::zeros({pol.num_q_tiles(), 3}, at::kLong);
    auto acc = result.accessor<int64_t, 2>();
    std::vector<int64_t> rows(pol.max_q_rows());
    for (int64_t t = 0; t < pol.num_q_tiles(); ++t) {
      pol.for_each_kv_tile(t, [&](int64_t, bool full) {
        acc[t][0] += 1;
        acc[t][1] += full ? 1 : 0;
      });
      acc[t][2] = pol.q_tile_rows(t, rows.data());
    }
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(natten_like, CPU, m) {
  m.impl("gna_forward", &gna_forward_cpu);
  m.impl("gna_backward", &gna_backward_cpu);
}

TORCH_LIBRARY_IMPL(natten_like, CompositeExplicitAutograd, m) {
  m.impl("gna_policy_1d", &gna_policy_1d);
  m.impl("gna_visits", &gna_visits);
}

}  // namespace natten_like
