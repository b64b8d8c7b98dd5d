// Dtype dispatch and kernel parameters shared by the CPU bindings.
#pragma once

#include <ATen/Dispatch.h>

// float32 / float16 / bfloat16, all accumulated in float32. float64 is left to the reference backend: computing it in
// float32 here would silently lose the precision the caller asked for.
#define NL_DISPATCH_FLOAT_HALF_BF16(TYPE, NAME, ...)                                                              \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

#include <ATen/ATen.h>

#include "natten_like/cpu/fmha_cpu.hpp"

namespace natten_like {

// Kernel parameters of contiguous heads-last q [batch, nq, H, D], k/v [batch, nkv, H_kv, D / D_v] (token dims flattened;
// a packed varlen batch is batch 1 with all tokens).
template <class T>
cpu::FmhaParams<T> fmha_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t batch,
                               int64_t nq, int64_t nkv, double scale) {
  cpu::FmhaParams<T> p;
  p.batch = batch;
  p.nq = nq;
  p.nkv = nkv;
  p.heads = q.size(-2);
  p.kv_heads = k.size(-2);
  p.dim = q.size(-1);
  p.dim_v = v.size(-1);
  p.scale = static_cast<float>(scale);
  p.q = q.data_ptr<T>();
  p.k = k.data_ptr<T>();
  p.v = v.data_ptr<T>();
  return p;
}

}  // namespace natten_like
