// CUDA implementation of gna_forward: the kernel instantiations of csrc/generated (built when NATTEN_LIKE_CUDA_ARCH names
// an arch; the tables are in csrc/generated/instances.hpp), and `cuda_kernels`, the op through which Python learns which
// kernels this build holds. That op exists only in CUDA builds, so its presence is also how tests and the cuda backend
// tell the two builds apart.
//
// Kernel families (the op's `kernel` argument): "sm80" runs on every GPU of compute capability >= 8.0; "sm90" (built
// when NATTEN_LIKE_CUDA_ARCH names 9.0a) on compute capability 9.x only; "auto" takes sm90 where it is built, the GPU is
// a 9.x and the sm90 kernel accepts the problem, else sm80. The tile shapes passed must fit the chosen family's block.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>
#include <string>
#include <vector>

#include "cuda_common.hpp"
#include "natten_like/policy/gna.hpp"

namespace natten_like {
namespace {

using sm80::kRank;
using namespace cuda_binding;

bool fits(const policy::GnaPolicy<kRank>& pol, int64_t block_m, int64_t block_n) {
  return pol.max_q_rows() <= block_m && pol.max_kv_rows() <= block_n;
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
  // The mainloop decomposes its KV tile counter in int32.
  TORCH_CHECK(pol.num_kv_tiles() < (int64_t{1} << 31), "natten_like::gna (cuda): too many KV tiles");
  return pol;
}

// Shapes, dtypes and devices shared by the forward and the backward.
void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() >= 4 && q.dim() <= 6, "natten_like::gna (cuda): q must be [B, *tokens, H, D] with 1-3 token dims");
  TORCH_CHECK(k.dim() == q.dim() && v.dim() == q.dim(), "natten_like::gna (cuda): q, k, v ranks differ");
  for (int i = 0; i < q.dim() - 2; ++i) {
    TORCH_CHECK(k.size(i) == q.size(i) && v.size(i) == q.size(i), "natten_like::gna (cuda): q/k/v batch or token dims differ");
  }
  TORCH_CHECK(k.size(-2) == v.size(-2) && k.size(-2) > 0 && q.size(-2) % k.size(-2) == 0,
              "natten_like::gna (cuda): bad head counts");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "natten_like::gna (cuda): dtypes differ");
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device(),
              "natten_like::gna (cuda): q, k, v must be on one CUDA device");
}

// Additional KV (both or neither): add_k / add_v [B, N_add, H_kv, D / D_v], on q's device in q's dtype, made contiguous and
// aligned; undefined tensors when there is none.
std::pair<at::Tensor, at::Tensor> additional_kv(const c10::optional<at::Tensor>& add_k,
                                                const c10::optional<at::Tensor>& add_v, const at::Tensor& q,
                                                const at::Tensor& k, const at::Tensor& v, const char* op) {
  TORCH_CHECK(add_k.has_value() == add_v.has_value(), op, ": additional_k and additional_v go together");
  if (!add_k.has_value()) return {};
  const at::Tensor& ak = *add_k;
  const at::Tensor& av = *add_v;
  TORCH_CHECK(ak.dim() == 4 && av.dim() == 4 && ak.size(0) == q.size(0) && ak.size(2) == k.size(-2) &&
                  ak.size(3) == q.size(-1) && av.sizes().slice(0, 3) == ak.sizes().slice(0, 3) &&
                  av.size(3) == v.size(-1),
              op, ": additional_k / additional_v must be [B, N_add, H_kv, D] / [B, N_add, H_kv, D_v] = [", q.size(0),
              ", N_add, ", k.size(-2), ", ", q.size(-1), " / ", v.size(-1), "], got ", ak.sizes(), " / ", av.sizes());
  TORCH_CHECK(ak.scalar_type() == q.scalar_type() && av.scalar_type() == q.scalar_type(), op,
              ": additional KV dtype differs from q");
  TORCH_CHECK(ak.device() == q.device() && av.device() == q.device(), op, ": additional KV is not on q's device");
  return {aligned_contiguous(ak), aligned_contiguous(av)};
}

void fill_additional(sm80::GnaFwdParams& p, const at::Tensor& ak, const at::Tensor& av) {
  if (!ak.defined()) return;
  p.add_k = ak.data_ptr();
  p.add_v = av.data_ptr();
  p.add_k_batch_stride = ak.stride(0), p.add_k_token_stride = ak.stride(1), p.add_k_head_stride = ak.stride(2);
  p.add_v_batch_stride = av.stride(0), p.add_v_token_stride = av.stride(1), p.add_v_head_stride = av.stride(2);
  p.num_additional = ak.size(1);
}

std::tuple<at::Tensor, at::Tensor> gna_forward_cuda(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                                    const c10::optional<at::Tensor>& add_k,
                                                    const c10::optional<at::Tensor>& add_v, at::IntArrayRef window,
                                                    at::IntArrayRef stride, at::IntArrayRef dilation,
                                                    const c10::List<bool>& causal, double scale, at::IntArrayRef q_tile,
                                                    at::IntArrayRef kv_tile, c10::string_view kernel) {
  TORCH_CHECK(kernel == "auto" || kernel == "sm80" || kernel == "sm90", "natten_like::gna (cuda): kernel '", kernel,
              "' is not a CUDA kernel family (auto, sm80, sm90)");
  check_qkv(q_, k_, v_);
  // D_v may differ from D where an instance has that pair (the tables are keyed by both).
  TORCH_CHECK(k_.size(-1) == q_.size(-1), "natten_like::gna (cuda): q and k head dims differ");
  // Checked before the empty-problem return below: with D = 0 and D_v > 0 the outputs would not be empty.
  TORCH_CHECK(q_.size(-1) > 0 && v_.size(-1) > 0, "natten_like::gna (cuda): head dims must be positive");
  const auto [ak, av] = additional_kv(add_k, add_v, q_, k_, v_, "natten_like::gna (cuda)");

  const c10::cuda::CUDAGuard guard(q_.device());
  [[maybe_unused]] const int major = compute_capability_major(q_);  // also checks >= 8.0
  const int64_t head_dim = q_.size(-1), head_dim_v = v_.size(-1);
  const at::Tensor q = aligned_contiguous(q_), k = aligned_contiguous(k_), v = aligned_contiguous(v_);
  const int rank = static_cast<int>(q.dim()) - 3;
  std::vector<int64_t> out_shape(q.sizes().begin(), q.sizes().end());
  out_shape.back() = head_dim_v;
  auto out = at::empty(out_shape, q.options());
  auto lse = at::empty(q.sizes().slice(0, q.dim() - 1), q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, lse};

  sm80::GnaFwdParams p{};
  fill_fwd_args(p, q, k, v, out, lse, scale);
  fill_additional(p, ak, av);
  p.policy = make_policy(q.sizes().slice(1, rank), window, stride, dilation, causal, q_tile, kv_tile);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

#if NATTEN_LIKE_WITH_SM90
  if (kernel == "sm90" || (kernel == "auto" && sm90_enabled())) {
    const auto* inst90 = find_instance(generated::kSm90GnaFwd, q.scalar_type(), head_dim, head_dim_v);
    const bool fit = inst90 != nullptr && fits(p.policy, inst90->block_m, inst90->block_n);
    if (kernel == "sm90") {
      TORCH_CHECK(major == 9, "natten_like::gna (cuda): the sm90 kernels need compute capability 9.x, got ", major, ".x");
      TORCH_CHECK(inst90 != nullptr, "natten_like::gna (cuda): no sm90 kernel built for dtype ", q.scalar_type(),
                  " and head dims ", head_dim, " / ", head_dim_v, " (built: ", list_instances(generated::kSm90GnaFwd),
                  ")");
      TORCH_CHECK(fit, "natten_like::gna (cuda): tiles of ", p.policy.max_q_rows(), " query / ", p.policy.max_kv_rows(),
                  " key rows exceed the sm90 block of ", inst90->block_m, " / ", inst90->block_n);
    }
    if (major == 9 && fit) {
      const cudaError_t err = inst90->launch(p, stream);
      // cudaErrorNotSupported is returned before any launch, for problems the TMA scheme cannot express: "auto" then
      // takes the sm80 kernel; an explicit "sm90" request fails rather than switching silently.
      if (err != cudaErrorNotSupported || kernel == "sm90") {
        TORCH_CHECK(err == cudaSuccess, "natten_like::gna (cuda): sm90 kernel: ", cudaGetErrorString(err));
        return {out, lse};
      }
      (void)cudaGetLastError();
    }
  }
#else
  TORCH_CHECK(kernel != "sm90", "natten_like::gna (cuda): this build has no sm90 kernels (build with "
              "NATTEN_LIKE_CUDA_ARCH naming 9.0a)");
#endif
  const auto* inst = find_instance(generated::kSm80GnaFwd, q.scalar_type(), head_dim, head_dim_v);
  TORCH_CHECK(inst != nullptr, "natten_like::gna (cuda): no sm80 kernel built for dtype ", q.scalar_type(),
              " and head dims ", head_dim, " / ", head_dim_v, " (built: ", list_instances(generated::kSm80GnaFwd), ")");
  TORCH_CHECK(fits(p.policy, inst->block_m, inst->block_n),
              "natten_like::gna (cuda): tiles of ", p.policy.max_q_rows(), " query / ", p.policy.max_kv_rows(),
              " key rows exceed the sm80 block of ", inst->block_m, " / ", inst->block_n);
  const cudaError_t err = inst->launch(p, stream);
  TORCH_CHECK(err == cudaSuccess, "natten_like::gna (cuda): sm80 kernel: ", cudaGetErrorString(err));
  return {out, lse};
}

// CUDA implementation of gna_backward: the sm80 kernels (delta = rowsum(dO * O) - dlse, then dK/dV per KV tile over
// the Q tiles that visit it, then dQ per Q tile): deterministic, no atomics. They run after any forward kernel family;
// the tiles passed must fit the sm80 block (ops._gna_backward passes sm80's).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gna_backward_cuda(
    const at::Tensor& grad_out_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const c10::optional<at::Tensor>& add_k, const c10::optional<at::Tensor>& add_v, const at::Tensor& out_,
    const at::Tensor& lse_, const c10::optional<at::Tensor>& grad_lse_, at::IntArrayRef window, at::IntArrayRef stride,
    at::IntArrayRef dilation, const c10::List<bool>& causal, double scale, at::IntArrayRef q_tile,
    at::IntArrayRef kv_tile, c10::string_view kernel) {
  TORCH_CHECK(kernel == "auto" || kernel == "sm80", "natten_like::gna_backward (cuda): the backward kernels are sm80's "
              "(kernel 'auto' or 'sm80'), got '", kernel, "'");
  check_qkv(q_, k_, v_);
  TORCH_CHECK(k_.size(-1) == q_.size(-1), "natten_like::gna_backward (cuda): q and k head dims differ");
  const auto [ak, av] = additional_kv(add_k, add_v, q_, k_, v_, "natten_like::gna_backward (cuda)");
  const c10::cuda::CUDAGuard guard(q_.device());
  compute_capability_major(q_);
  const int64_t head_dim = q_.size(-1), head_dim_v = v_.size(-1);
  const auto* inst = find_instance(generated::kSm80GnaBwd, q_.scalar_type(), head_dim, head_dim_v);
  TORCH_CHECK(inst != nullptr, "natten_like::gna_backward (cuda): no sm80 backward kernel built for dtype ",
              q_.scalar_type(), " and head dims ", head_dim, " / ", head_dim_v, " (built: ",
              list_instances(generated::kSm80GnaBwd), ")");

  const BwdTensors t = bwd_tensors("natten_like::gna_backward (cuda)", q_, k_, v_, out_, grad_out_, lse_, grad_lse_);
  const at::Tensor& q = t.q;  // shapes and options below
  // [0] tensors stand for "no additional KV" in the op's schema.
  auto d_ak = ak.defined() ? at::empty_like(ak) : at::empty({0}, q.options());
  auto d_av = av.defined() ? at::empty_like(av) : at::empty({0}, q.options());
  if (q.numel() == 0) return {t.dq, t.dk.zero_(), t.dv.zero_(), d_ak.zero_(), d_av.zero_()};

  const int rank = static_cast<int>(q.dim()) - 3;
  sm80::GnaBwdParams p{};
  fill_fwd_args(p.fwd, t.q, t.k, t.v, t.out, t.lse, scale);
  fill_additional(p.fwd, ak, av);
  if (ak.defined()) {
    p.d_add_k = d_ak.data_ptr();
    p.d_add_v = d_av.data_ptr();
    p.d_add_k_batch_stride = d_ak.stride(0), p.d_add_k_token_stride = d_ak.stride(1);
    p.d_add_k_head_stride = d_ak.stride(2);
    p.d_add_v_batch_stride = d_av.stride(0), p.d_add_v_token_stride = d_av.stride(1);
    p.d_add_v_head_stride = d_av.stride(2);
  }
  p.fwd.policy = make_policy(q.sizes().slice(1, rank), window, stride, dilation, causal, q_tile, kv_tile);
  TORCH_CHECK(fits(p.fwd.policy, inst->block_m, inst->block_n),
              "natten_like::gna_backward (cuda): tiles of ", p.fwd.policy.max_q_rows(), " query / ",
              p.fwd.policy.max_kv_rows(), " key rows exceed the sm80 block of ", inst->block_m, " / ", inst->block_n);
  fill_bwd_args(p, t);
  const cudaError_t err = inst->launch(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "natten_like::gna_backward (cuda): sm80 kernel: ", cudaGetErrorString(err));
  return {t.dq, t.dk, t.dv, d_ak, d_av};
}

// Every CUDA kernel of this build, one entry per instantiation: (family, dtype name, head dim of Q/K, of V). Families:
// "sm80_gna_fwd", "sm80_gna_bwd", "sm80_block_sparse_fwd", "sm80_block_sparse_bwd", "sm80_s2_fwd", "sm80_s2_bwd",
// "sm80_latent_fwd", "sm90_gna_fwd", "sm90_block_sparse_fwd", "sm90_s2_fwd", "sm90_latent_fwd".
std::tuple<std::vector<std::string>, std::vector<std::string>, std::vector<int64_t>, std::vector<int64_t>>
cuda_kernels() {
  std::vector<std::string> kinds, dtypes;
  std::vector<int64_t> head_dims, head_dims_v;
  auto add = [&](const char* kind, auto table) {
    for (; table->dtype != nullptr; ++table) {
      kinds.emplace_back(kind);
      dtypes.emplace_back(table->dtype);
      head_dims.push_back(table->head_dim);
      head_dims_v.push_back(table->head_dim_v);
    }
  };
  add("sm80_gna_fwd", generated::kSm80GnaFwd);
  add("sm80_gna_bwd", generated::kSm80GnaBwd);
  add("sm80_block_sparse_fwd", generated::kSm80BlockSparseFwd);
  add("sm80_s2_fwd", generated::kSm80S2Fwd);
  add("sm80_block_sparse_bwd", generated::kSm80BlockSparseBwd);
  add("sm80_s2_bwd", generated::kSm80S2Bwd);
  add("sm80_latent_fwd", generated::kSm80LatentFwd);
#if NATTEN_LIKE_WITH_SM90
  add("sm90_gna_fwd", generated::kSm90GnaFwd);
  add("sm90_latent_fwd", generated::kSm90LatentFwd);
  add("sm90_block_sparse_fwd", generated::kSm90BlockSparseFwd);
  add("sm90_s2_fwd", generated::kSm90S2Fwd);
#endif
  return {kinds, dtypes, head_dims, head_dims_v};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(natten_like, m) {
  m.def("cuda_kernels() -> (str[] kinds, str[] dtypes, int[] head_dims, int[] head_dims_v)", &cuda_kernels);
}

TORCH_LIBRARY_IMPL(natten_like, CUDA, m) {
  m.impl("gna_forward", &gna_forward_cuda);
  m.impl("gna_backward", &gna_backward_cuda);
}

}  // namespace natten_like
