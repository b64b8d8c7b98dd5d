// Helpers of the CUDA bindings (gna_cuda.cpp, strided_shard_cuda.cpp): instance lookup in the generated tables, input
// layout, device checks, and the arguments every sm80 forward shares.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/strides.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../generated/instances.hpp"

namespace natten_like::cuda_binding {

using generated::Instance;

inline const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return "";
  }
}

// The table row (launch function and CTA block) for (dtype, head dim of Q/K, head dim of V), or nullptr.
template <class Params>
const Instance<Params>* find_instance(const Instance<Params>* table, at::ScalarType dtype, int64_t head_dim,
                                      int64_t head_dim_v) {
  for (; table->dtype != nullptr; ++table) {
    if (table->head_dim == head_dim && table->head_dim_v == head_dim_v &&
        std::strcmp(table->dtype, dtype_name(dtype)) == 0) {
      return table;
    }
  }
  return nullptr;
}

// "dtype/head dim" (or "dtype/D x D_v") of every row, for error messages.
template <class Params>
std::string list_instances(const Instance<Params>* table) {
  std::string s;
  for (; table->dtype != nullptr; ++table) {
    s += std::string(s.empty() ? "" : ", ") + table->dtype + "/" + std::to_string(table->head_dim);
    if (table->head_dim_v != table->head_dim) s += "x" + std::to_string(table->head_dim_v);
  }
  return s.empty() ? "none" : s;
}

// The kernels read and write 16-byte chunks of each row: the head dim is contiguous and every row starts 16-byte aligned.
inline at::Tensor aligned_contiguous(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  // torch calls a tensor contiguous whatever the strides of its size-1 dims (a transpose can leave any value there,
  // and clone keeps it), while the kernels step flat token / row indices by the stride of a dim that may be one of
  // them, and TMA descriptors take every stride: give them the row-major strides, which address the same elements.
  const auto dense = c10::contiguous_strides(c.sizes());
  if (c.strides() != c10::IntArrayRef(dense)) c = c.as_strided(c.sizes(), dense);
  return c;
}

// c10's CUDA headers rather than ATen/cuda's: the latter pull in cuBLAS/cuSPARSE headers that a bare toolkit lacks.
inline int compute_capability_major(const at::Tensor& t) {
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, t.device().index()));
  TORCH_CHECK(major >= 8, "natten_like (cuda): the CUDA kernels need compute capability 8.0 or newer, got ",
              major, ".x");
  return major;
}

// NATTEN_LIKE_SM90=off keeps every family on its sm80 kernel even on a Hopper GPU (tests and benchmarks of the fallback
// path); unset or "on": the sm90 kernels run where built and where they accept the problem. An explicit kernel="sm90"
// request (the GNA op's argument) is not affected. Read per call.
inline bool sm90_enabled() {
  const char* v = std::getenv("NATTEN_LIKE_SM90");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "on") == 0) return true;
  TORCH_CHECK(std::strcmp(v, "off") == 0, "NATTEN_LIKE_SM90 must be on or off, got '", v, "'");
  return false;
}

// How the sm90 kernels schedule their work tiles (Sm90Persistence), from NATTEN_LIKE_SM90_PERSISTENT: "auto" (or
// unset: persistent from four waves of work tiles on), "off" (one CTA per work tile) or "on" (persistent, where the
// kernel has a persistent variant: not at head dim 256). A knob for tests and benchmarks; read per call, so a test can
// flip it.
inline int sm90_persistence() {
  const char* v = std::getenv("NATTEN_LIKE_SM90_PERSISTENT");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return 0;
  if (std::strcmp(v, "off") == 0) return 1;
  TORCH_CHECK(std::strcmp(v, "on") == 0, "NATTEN_LIKE_SM90_PERSISTENT must be auto, on or off, got '", v, "'");
  return 2;
}

// A backward's tensors as the sm80 kernels read and write them: q, k, v, out and grad_out contiguous with 16-byte
// aligned rows in q's dtype, lse and grad_lse (undefined: none) float32; dq, dk, dv laid out like q, k, v (unwritten);
// the delta workspace shaped like lse.
struct BwdTensors {
  at::Tensor q, k, v, out, grad_out, lse, grad_lse, dq, dk, dv, delta;
};

// Checks that out and grad_out are shaped like q with v's head dim D_v, lse like q without its head dim and grad_lse
// like lse, then converts (BwdTensors). `name` prefixes the errors.
inline BwdTensors bwd_tensors(const char* name, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& out, const at::Tensor& grad_out, const at::Tensor& lse,
                              const c10::optional<at::Tensor>& grad_lse) {
  std::vector<int64_t> out_shape(q.sizes().begin(), q.sizes().end());
  out_shape.back() = v.size(-1);
  TORCH_CHECK(out.sizes() == at::IntArrayRef(out_shape) && grad_out.sizes() == at::IntArrayRef(out_shape) &&
                  lse.sizes() == q.sizes().slice(0, q.dim() - 1),
              name, ": out / grad_out must be shaped like q with v's head dim (", at::IntArrayRef(out_shape),
              "), lse like q without its head dim; got out ", out.sizes(), ", grad_out ", grad_out.sizes(), ", lse ",
              lse.sizes());
  TORCH_CHECK(!grad_lse.has_value() || grad_lse->sizes() == lse.sizes(), name, ": grad_lse must be shaped like lse");
  TORCH_CHECK(out.device() == q.device() && grad_out.device() == q.device() && lse.device() == q.device() &&
                  (!grad_lse.has_value() || grad_lse->device() == q.device()),
              name, ": out, grad_out, lse and grad_lse must be on q's device");
  BwdTensors t;
  t.q = aligned_contiguous(q), t.k = aligned_contiguous(k), t.v = aligned_contiguous(v);
  t.out = aligned_contiguous(out.to(q.scalar_type()));
  t.grad_out = aligned_contiguous(grad_out.to(q.scalar_type()));
  t.lse = lse.to(at::kFloat).contiguous();
  if (grad_lse.has_value()) t.grad_lse = grad_lse->to(at::kFloat).contiguous();
  t.dq = at::empty_like(t.q), t.dk = at::empty_like(t.k), t.dv = at::empty_like(t.v);
  t.delta = at::empty(t.lse.sizes(), t.lse.options());
  return t;
}

// The arguments every forward shares, from contiguous heads-last q [B, *tokens, H, D], k / v [B, *kv tokens, H_kv,
// D / D_v], out [B, *tokens, H, D_v] and lse [B, *tokens, H]: a flat token index steps by the last token dim's stride
// (H * D elements for q).
inline void fill_fwd_args(sm80::FmhaFwdArgs& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& out, const at::Tensor& lse, double scale) {
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.q_batch_stride = q.stride(0), p.q_token_stride = q.stride(-3), p.q_head_stride = q.stride(-2);
  p.k_batch_stride = k.stride(0), p.k_token_stride = k.stride(-3), p.k_head_stride = k.stride(-2);
  p.v_batch_stride = v.stride(0), p.v_token_stride = v.stride(-3), p.v_head_stride = v.stride(-2);
  p.o_batch_stride = out.stride(0), p.o_token_stride = out.stride(-3), p.o_head_stride = out.stride(-2);
  p.batch = q.size(0);
  p.tokens = q.numel() / (q.size(0) * q.size(-2) * q.size(-1));
  p.heads = static_cast<int>(q.size(-2));
  p.kv_heads = static_cast<int>(k.size(-2));
  p.head_dim = static_cast<int>(q.size(-1));
  p.head_dim_v = static_cast<int>(v.size(-1));
  p.scale = static_cast<float>(scale);
  p.sm90_persistence = sm90_persistence();
}

// The arguments every backward shares: dO, the gradient through lse (undefined tensor: none), dq / dk / dv laid out
// like q / k / v, and the delta workspace [B, *tokens, H] float32 (bwd_tensors). `packed`: the tensors are a packed
// batch [total, H, D], which the kernels run as batch 1 of [1, total, H, D].
inline void fill_bwd_args(sm80::FmhaBwdArgs& p, const BwdTensors& t, bool packed = false) {
  auto batched = [&](const at::Tensor& x) { return packed ? x.unsqueeze(0) : x; };
  const at::Tensor grad_out = batched(t.grad_out), dq = batched(t.dq), dk = batched(t.dk), dv = batched(t.dv);
  const at::Tensor& grad_lse = t.grad_lse;
  const at::Tensor& delta = t.delta;
  p.d_out = grad_out.data_ptr();
  p.do_batch_stride = grad_out.stride(0), p.do_token_stride = grad_out.stride(-3);
  p.do_head_stride = grad_out.stride(-2);
  p.grad_lse = grad_lse.defined() ? grad_lse.data_ptr<float>() : nullptr;
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.dq_batch_stride = dq.stride(0), p.dq_token_stride = dq.stride(-3), p.dq_head_stride = dq.stride(-2);
  p.dk_batch_stride = dk.stride(0), p.dk_token_stride = dk.stride(-3), p.dk_head_stride = dk.stride(-2);
  p.dv_batch_stride = dv.stride(0), p.dv_token_stride = dv.stride(-3), p.dv_head_stride = dv.stride(-2);
  p.delta = delta.data_ptr<float>();
}

// Kernel blocks per pattern block (strided-shard, block-sparse): 1 when the pattern block fits the kernel's block, else
// block / kernel block, which must divide it. `what` names the argument in the error.
inline int split_of(int64_t block, int64_t kernel_block, const char* what) {
  if (block <= kernel_block) return 1;
  TORCH_CHECK(block % kernel_block == 0, what, " ", block, " is neither <= the kernel's block (", kernel_block,
              ") nor a multiple of it");
  return static_cast<int>(block / kernel_block);
}

}  // namespace natten_like::cuda_binding
