// CUDA implementation of gna_forward: the sm80 kernels of csrc/generated (built when NATTEN_LIKE_CUDA_ARCH names an arch),
// and `sm80_gna_forward_instances`, the op through which Python learns which kernels this build holds. That op exists
// only in CUDA builds, so its presence is also how tests and the cuda backend tell the two builds apart.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>
#include <string>
#include <vector>

#include "../generated/sm80_gna_fwd_instances.hpp"
#include "natten_like/policy/gna.hpp"

namespace natten_like {
namespace {

using sm80::kRank;

const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return "";
  }
}

// The kernels read and write 16-byte chunks of each row: the head dim is contiguous and every row starts 16-byte aligned.
at::Tensor aligned_contiguous(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

// Pads a rank-R problem to the kernel's rank 3 with leading dims of length 1 (window, stride, dilation, tiles 1).
policy::GnaPolicy<kRank> make_policy(at::IntArrayRef shape, at::IntArrayRef window, at::IntArrayRef stride,
                                     at::IntArrayRef dilation, const c10::List<bool>& causal, at::IntArrayRef q_tile,
                                     at::IntArrayRef kv_tile) {
  const int rank = static_cast<int>(shape.size());
  TORCH_CHECK(window.size() == shape.size() && stride.size() == shape.size() && dilation.size() == shape.size() &&
                  causal.size() == shape.size() && q_tile.size() == shape.size() && kv_tile.size() == shape.size(),
              "natten_like::gna (cuda): window, stride, dilation, is_causal, q_tile and kv_tile need one entry per token "
              "dim (", rank, ")");
  policy::GnaPolicy<kRank> pol;
  const int pad = kRank - rank;
  for (int i = 0; i < pad; ++i) {
    pol.dim[i] = policy::GnaDim{1, 1, 1, 1, false};
    pol.tq[i] = pol.tk[i] = 1;
  }
  for (int i = 0; i < rank; ++i) {
    const int64_t L = shape[i], k = window[i], s = stride[i], d = dilation[i];
    TORCH_CHECK(d >= 1 && k >= 1 && k * d <= L && s >= 1 && s <= k, "natten_like::gna (cuda): invalid window/stride/",
                "dilation ", k, "/", s, "/", d, " for a token dim of size ", L);
    TORCH_CHECK(q_tile[i] >= 1 && kv_tile[i] >= 1, "natten_like::gna (cuda): tile shapes must be positive");
    // Group-local coordinates are int32 in the kernel.
    TORCH_CHECK(L < (int64_t{1} << 31), "natten_like::gna (cuda): token dims must be below 2^31");
    pol.dim[pad + i] = policy::GnaDim{L, k, s, d, causal.get(i)};
    pol.tq[pad + i] = q_tile[i];
    pol.tk[pad + i] = kv_tile[i];
  }
  TORCH_CHECK(pol.max_q_rows() <= sm80::kGnaFwdBlockM && pol.max_kv_rows() <= sm80::kGnaFwdBlockN,
              "natten_like::gna (cuda): tiles of ", pol.max_q_rows(), " query / ", pol.max_kv_rows(),
              " key rows exceed the kernel's block of ", sm80::kGnaFwdBlockM, " / ", sm80::kGnaFwdBlockN);
  // The mainloop decomposes its KV tile counter in int32.
  TORCH_CHECK(pol.num_kv_tiles() < (int64_t{1} << 31), "natten_like::gna (cuda): too many KV tiles");
  return pol;
}

std::tuple<at::Tensor, at::Tensor> gna_forward_cuda(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                                    const c10::optional<at::Tensor>& add_k,
                                                    const c10::optional<at::Tensor>& add_v, at::IntArrayRef window,
                                                    at::IntArrayRef stride, at::IntArrayRef dilation,
                                                    const c10::List<bool>& causal, double scale, at::IntArrayRef q_tile,
                                                    at::IntArrayRef kv_tile) {
  TORCH_CHECK(!add_k.has_value() && !add_v.has_value(), "natten_like::gna (cuda): additional KV is not supported yet");
  TORCH_CHECK(q_.dim() >= 4 && q_.dim() <= 6, "natten_like::gna (cuda): q must be [B, *tokens, H, D] with 1-3 token dims");
  TORCH_CHECK(k_.dim() == q_.dim() && v_.dim() == q_.dim(), "natten_like::gna (cuda): q, k, v ranks differ");
  for (int i = 0; i < q_.dim() - 2; ++i) {
    TORCH_CHECK(k_.size(i) == q_.size(i) && v_.size(i) == q_.size(i), "natten_like::gna (cuda): q/k/v batch or token dims differ");
  }
  TORCH_CHECK(k_.size(-2) == v_.size(-2) && k_.size(-2) > 0 && q_.size(-2) % k_.size(-2) == 0,
              "natten_like::gna (cuda): bad head counts");
  TORCH_CHECK(k_.size(-1) == q_.size(-1) && v_.size(-1) == q_.size(-1), "natten_like::gna (cuda): q, k, v head dims differ");
  TORCH_CHECK(q_.scalar_type() == k_.scalar_type() && q_.scalar_type() == v_.scalar_type(),
              "natten_like::gna (cuda): dtypes differ");
  TORCH_CHECK(q_.is_cuda() && k_.device() == q_.device() && v_.device() == q_.device(),
              "natten_like::gna (cuda): q, k, v must be on one CUDA device");

  const c10::cuda::CUDAGuard guard(q_.device());
  // c10's CUDA headers rather than ATen/cuda's: the latter pull in cuBLAS/cuSPARSE headers that a bare toolkit lacks.
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q_.device().index()));
  TORCH_CHECK(major >= 8, "natten_like::gna (cuda): the sm80 kernels need compute capability 8.0 or newer, got ",
              major, ".x");
  const int64_t head_dim = q_.size(-1);
  sm80::GnaFwdLaunchFn launch = nullptr;
  for (const auto& inst : sm80::kGnaFwdInstances) {
    if (inst.head_dim == head_dim && std::strcmp(inst.dtype, dtype_name(q_.scalar_type())) == 0) launch = inst.launch;
  }
  TORCH_CHECK(launch != nullptr, "natten_like::gna (cuda): no kernel built for dtype ", q_.scalar_type(), " and head dim ",
              head_dim);

  const at::Tensor q = aligned_contiguous(q_), k = aligned_contiguous(k_), v = aligned_contiguous(v_);
  const int rank = static_cast<int>(q.dim()) - 3;
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty(q.sizes().slice(0, q.dim() - 1), q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, lse};

  sm80::GnaFwdParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  // Contiguous [B, *tokens, H, D]: a flat token index steps by the token dim's stride (H * D elements).
  p.q_batch_stride = q.stride(0), p.q_token_stride = q.stride(rank), p.q_head_stride = q.stride(-2);
  p.k_batch_stride = k.stride(0), p.k_token_stride = k.stride(rank), p.k_head_stride = k.stride(-2);
  p.v_batch_stride = v.stride(0), p.v_token_stride = v.stride(rank), p.v_head_stride = v.stride(-2);
  p.o_batch_stride = out.stride(0), p.o_token_stride = out.stride(rank), p.o_head_stride = out.stride(-2);
  p.batch = q.size(0);
  p.tokens = q.numel() / (q.size(0) * q.size(-2) * head_dim);
  p.heads = static_cast<int>(q.size(-2));
  p.kv_heads = static_cast<int>(k.size(-2));
  p.head_dim = static_cast<int>(head_dim);
  p.scale = static_cast<float>(scale);
  p.policy = make_policy(q.sizes().slice(1, rank), window, stride, dilation, causal, q_tile, kv_tile);
  const cudaError_t err = launch(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "natten_like::gna (cuda): kernel launch failed: ", cudaGetErrorString(err));
  return {out, lse};
}

// (dtype names, head dims) of the built sm80 forward kernels, one entry per kernel, and their CTA block (query rows, key
// rows): the tiles a caller passes must fit in it.
std::tuple<std::vector<std::string>, std::vector<int64_t>, int64_t, int64_t> sm80_gna_forward_instances() {
  std::vector<std::string> dtypes;
  std::vector<int64_t> head_dims;
  for (const auto& inst : sm80::kGnaFwdInstances) {
    dtypes.emplace_back(inst.dtype);
    head_dims.push_back(inst.head_dim);
  }
  return {dtypes, head_dims, sm80::kGnaFwdBlockM, sm80::kGnaFwdBlockN};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(natten_like, m) {
  m.def("sm80_gna_forward_instances() -> (str[] dtypes, int[] head_dims, int block_m, int block_n)",
        &sm80_gna_forward_instances);
}

TORCH_LIBRARY_IMPL(natten_like, CUDA, m) { m.impl("gna_forward", &gna_forward_cuda); }

}  // namespace natten_like
