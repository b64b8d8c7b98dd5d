// The sm80 fused attention forward: one CTA per (Q tile, head, batch) walks the KV tiles its Q tile visits, as its
// family's schedule (fmha_schedules.hpp: GNA through GnaKvTileIterator, block-sparse, strided-shard) gives them, with
// - Q/K/V rows gathered straight from the heads-last [B, *tokens, H, D] tensors: each row's offset comes from the
//   policy's tile geometry (multi-dim tiles, dilation groups), so no permute pass; cp.async with zero-fill for rows past
//   the tile, K of the next tile in flight during P V and V of this tile in flight during Q K^T (FlashAttention-2's
//   two-stage overlap);
// - mma.sync m16n8k16 (fp16/bf16 in, fp32 accumulate), fed by ldmatrix from swizzled smem;
// - fp32 online softmax in registers; full tiles run unmasked, partial ones test each (query, key) pair against the
//   query's window per dim (the schedule's row geometry), which is the policy's element mask without a mask buffer;
// - GNA's additional KV in the same softmax: tiles after the neighbourhood, read from add_k / add_v (each geometry
//   stage carries its tile's K/V source), masked only in their padding rows;
// - out and logsumexp (natural log, float32) written once per row; a row with no key gets 0 and -inf.
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "natten_like/sm80/fmha_schedules.hpp"
#include "natten_like/sm80/sm80_fmha_fwd_params.hpp"
#include "natten_like/sm80/online_softmax.hpp"
#include "natten_like/sm80/sm80_fmha_fwd_traits.hpp"
#include "natten_like/sm80/smem_opt_in.hpp"

namespace natten_like::sm80 {

namespace detail {

using namespace cute;

// Accumulator (MMA=(2,2), MMA_M, MMA_N) viewed as (rows=(2, MMA_M), cols=(2, MMA_N)) for row-wise softmax.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_rowcol(Layout acc) {
  auto l = logical_divide(acc, Shape<_2>{});  // ((2, 2), MMA_M, MMA_N)
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<2>(l)));
}

// Accumulator of S = Q K^T (MMA=4, MMA_M, MMA_N) viewed as the A operand of P V ((4, 2), MMA_M, MMA_N / 2): two
// n8 accumulator blocks side by side are one k16 A block of m16n8k16.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_as_a_operand(Layout acc) {
  auto l = logical_divide(acc, Shape<Underscore, Underscore, _2>{});  // (4, MMA_M, (2, MMA_N / 2))
  return make_layout(make_layout(get<0>(l), get<2, 0>(l)), get<1>(l), get<2, 1>(l));
}

// 16-byte chunks per row of kCols elements, for the row gathers and the output scatter, which split idx = tid + i *
// kThreads into row idx / chunks and column idx % chunks. Unsigned for rows of 256: a shift and a mask, and the column
// one value for all 16 of a thread's chunks (kThreads is a multiple of the count); signed division hides that, and the
// per-chunk offsets the compiler then keeps live across the mainloop spilled (GNA bf16 hd256: 67 LDL/STL on sm_80, 130
// on sm_90a). Shorter rows keep int, and with it the code they were measured with.
template <int kCols, int kChunk>
constexpr std::conditional_t<(kCols >= 256), unsigned, int> kChunksPerRowOf = kCols / kChunk;

// Gathers `rows` rows of kCols elements (default: the head dim) into a (kRows, kCols) smem tile: row r starts at
// base + token[r] * token_stride. Rows r >= rows are zero-filled (cp.async src-size 0), so padding keys contribute
// exact zeros to P V.
template <class Traits, int kRows, int kCols = Traits::kHeadDim, class SmemTensor>
CUTE_DEVICE void gather_rows_async(SmemTensor& s, const typename Traits::Element* base, int64_t token_stride,
                                   const int64_t* token, int rows, int tid) {
  using Element = typename Traits::Element;
  constexpr auto kChunksPerRow = kChunksPerRowOf<kCols, Traits::kChunk>;
  constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kChunks % Traits::kThreads == 0);
  CUTE_UNROLL
  for (int i = 0; i < kChunks / Traits::kThreads; ++i) {
    const int idx = tid + i * Traits::kThreads;
    const int r = idx / kChunksPerRow;
    const int c = (idx % kChunksPerRow) * Traits::kChunk;
    const bool valid = r < rows;
    const Element* src = valid ? base + token[r] * token_stride + c : base;
    SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<uint128_t>::copy(*reinterpret_cast<const uint128_t*>(src),
                                                     *reinterpret_cast<uint128_t*>(&s(r, c)), valid);
  }
}

// acc += A B with both operands in smem: ldmatrix of k-block i + 1 overlaps the MMAs of k-block i.
template <class Acc, class RA, class RB, class SA, class SB, class TiledMma, class CopyA, class CopyB>
CUTE_DEVICE void gemm_ss(Acc& acc, RA& rA, RB& rB, SA const& sA, SB const& sB, TiledMma& mma, CopyA const& copy_a,
                         CopyB const& copy_b) {
  auto rA_view = copy_a.get_slice(threadIdx.x).retile_D(rA);
  auto rB_view = copy_b.get_slice(threadIdx.x).retile_D(rB);
  copy(copy_a, sA(_, _, _0{}), rA_view(_, _, _0{}));
  copy(copy_b, sB(_, _, _0{}), rB_view(_, _, _0{}));
  CUTE_UNROLL
  for (int i = 0; i < size<2>(rA); ++i) {
    if (i + 1 < size<2>(rA)) {
      copy(copy_a, sA(_, _, i + 1), rA_view(_, _, i + 1));
      copy(copy_b, sB(_, _, i + 1), rB_view(_, _, i + 1));
    }
    gemm(mma, rA(_, _, i), rB(_, _, i), acc);
  }
}

// acc += A B with A in registers (P) and B in smem (V).
template <class Acc, class RA, class RB, class SB, class TiledMma, class CopyB>
CUTE_DEVICE void gemm_rs(Acc& acc, RA const& rA, RB& rB, SB const& sB, TiledMma& mma, CopyB const& copy_b) {
  auto rB_view = copy_b.get_slice(threadIdx.x).retile_D(rB);
  copy(copy_b, sB(_, _, _0{}), rB_view(_, _, _0{}));
  CUTE_UNROLL
  for (int i = 0; i < size<2>(rA); ++i) {
    if (i + 1 < size<2>(rA)) copy(copy_b, sB(_, _, i + 1), rB_view(_, _, i + 1));
    gemm(mma, rA(_, _, i), rB(_, _, i), acc);
  }
}

// Where a KV tile's rows are read from: the K and V rows of one (batch, KV head) and their token strides (elements).
template <class Element>
struct KvSource {
  const Element* k;
  const Element* v;
  int64_t k_stride, v_stride;
};

// The source of tile `kv`: k / v, or add_k / add_v for the additional tiles of a schedule that has them (GNA).
template <class Element, class Schedule>
CUTE_DEVICE KvSource<Element> kv_source(const typename Schedule::Params& p, const typename Schedule::KvTile& kv,
                                        int64_t b, int h_kv) {
  if constexpr (requires { p.add_k; }) {
    if (is_additional<Schedule>(kv)) {
      return {static_cast<const Element*>(p.add_k) + b * p.add_k_batch_stride + h_kv * p.add_k_head_stride,
              static_cast<const Element*>(p.add_v) + b * p.add_v_batch_stride + h_kv * p.add_v_head_stride,
              p.add_k_token_stride, p.add_v_token_stride};
    }
  }
  return {static_cast<const Element*>(p.k) + b * p.k_batch_stride + h_kv * p.k_head_stride,
          static_cast<const Element*>(p.v) + b * p.v_batch_stride + h_kv * p.v_head_stride, p.k_token_stride,
          p.v_token_stride};
}

// Shared memory of the forward: the traits' tiles and row geometry, the CTA's schedule and the source of each
// geometry stage's KV tile.
template <class Traits, class Schedule>
struct FwdSmem {
  typename Traits::SharedStorage s;
  Schedule sched;
  KvSource<typename Traits::Element> src[2];
};

// Row geometry of KV tile e of the schedule into smem stage `st`: token and coordinates per row (threads below kBlockN,
// one row each), row count, mask mode and source (thread 0).
template <class Traits, class Schedule>
CUTE_DEVICE void load_kv_geometry(FwdSmem<Traits, Schedule>& smem_all, int st, const typename Schedule::Params& p,
                                  const Schedule& sched, int64_t e, int64_t b, int h_kv, int tid) {
  if (tid >= Traits::kBlockN) return;
  auto& smem = smem_all.s;
  int rows;
  bool full;
  const typename Schedule::KvTile kv = sched.kv_tile(p, e, rows, full);
  int32_t x[kRank];
  int64_t token = 0;
  if (tid < rows) {
    token = sched.kv_row(p, kv, tid, x);
  } else {
    for (int i = 0; i < kRank; ++i) x[i] = 0;
    x[0] = -1;  // outside every window: padding keys are masked
  }
  smem.kv_token[st][tid] = token;
  for (int i = 0; i < kRank; ++i) smem.kv_x[st][i][tid] = x[i];
  if (tid == 0) {
    smem.kv_rows[st] = static_cast<int32_t>(rows);
    smem_all.src[st] = kv_source<typename Traits::Element, Schedule>(p, kv, b, h_kv);
    smem.kv_need_mask[st] = kv_mask_mode(is_additional<Schedule>(kv), full, rows, Traits::kBlockN);
  }
}

}  // namespace detail

template <class Traits, class Schedule>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    sm80_fmha_fwd_kernel(__grid_constant__ const typename Schedule::Params p) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
  constexpr int kHeadDimV = Traits::kHeadDimV;

  extern __shared__ __align__(128) char smem_raw[];
  auto& smem_all = *reinterpret_cast<detail::FwdSmem<Traits, Schedule>*>(smem_raw);
  auto& smem = smem_all.s;
  const int tid = threadIdx.x;
  const int64_t q_tile = blockIdx.x;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int h_kv = h / (p.heads / p.kv_heads);

  // The schedule (for GNA some 30 int64) lives in smem: held in registers across the mainloop it would push the
  // accumulators into local memory. Thread 0 builds it; readers fetch the few fields they need when they need them.
  if (tid == 0) new (&smem_all.sched) Schedule(p, q_tile, h, b);
  __syncthreads();
  const Schedule& sched = smem_all.sched;
  const int64_t kv_tiles = sched.count();
  const int q_rows = sched.q_rows();

  const auto* q_base = static_cast<const Element*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride;

  Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutV{});
  Tensor sVt = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutVt{});

  // Geometry of the Q rows (fixed for the CTA) and of the first KV tile.
  if (tid < kBlockM) {
    int32_t wb[kRank], we[kRank];
    int64_t token = 0;
    if (tid < q_rows) {
      token = sched.q_row(p, tid, wb, we);
    } else {
      for (int i = 0; i < kRank; ++i) wb[i] = we[i] = 0;  // empty window: padding queries see nothing, never stored
    }
    smem.q_token[tid] = token;
    for (int i = 0; i < kRank; ++i) {
      smem.q_begin[i][tid] = wb[i];
      smem.q_end[i][tid] = we[i];
    }
  }
  if (kv_tiles > 0) detail::load_kv_geometry<Traits>(smem_all, 0, p, sched, 0, b, h_kv, tid);
  __syncthreads();
  detail::gather_rows_async<Traits, kBlockM>(sQ, q_base, p.q_token_stride, smem.q_token, q_rows, tid);
  if (kv_tiles > 0) {
    detail::gather_rows_async<Traits, kBlockN>(sK, smem_all.src[0].k, smem_all.src[0].k_stride, smem.kv_token[0],
                                               smem.kv_rows[0], tid);
  }
  cp_async_fence();

  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_slice(tid);
  Tensor rQ = make_tensor<Element>(partition_shape_A(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor rK = make_tensor<Element>(partition_shape_B(tiled_mma, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  Tensor rVt = make_tensor<Element>(partition_shape_B(tiled_mma, Shape<Int<kHeadDimV>, Int<kBlockN>>{}));
  Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDimV>>{});  // (MMA, MMA_M, MMA_DV)
  clear(acc_o);

  auto copy_q = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto copy_k = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto copy_v = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
  Tensor tSsQ = copy_q.get_slice(tid).partition_S(sQ);
  Tensor tSsK = copy_k.get_slice(tid).partition_S(sK);
  Tensor tOsVt = copy_v.get_slice(tid).partition_S(sVt);

  // Each thread's rows and columns of the S tile, from the MMA's own partition of an identity tensor.
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor tScS_rc = make_tensor(tScS.data(), detail::acc_rowcol(tScS.layout()));
  constexpr int kRowsPerThread = size<0>(decltype(tScS_rc.layout()){});
  constexpr int kColsPerThread = size<1>(decltype(tScS_rc.layout()){});

  // Scores are scaled into the log2 domain before masking, so scale = 0 never meets -inf (0 * -inf would be NaN).
  const float scale_log2 = p.scale * static_cast<float>(M_LOG2E);
  float row_max[kRowsPerThread], row_sum[kRowsPerThread];
  CUTE_UNROLL
  for (int mi = 0; mi < kRowsPerThread; ++mi) {
    row_max[mi] = -INFINITY;
    row_sum[mi] = 0.f;
  }

  for (int64_t e = 0; e < kv_tiles; ++e) {
    const int st = static_cast<int>(e & 1);
    cp_async_wait<0>();
    __syncthreads();  // K(e) in smem; every warp is done with V(e - 1)
    detail::gather_rows_async<Traits, kBlockN, kHeadDimV>(sV, smem_all.src[st].v, smem_all.src[st].v_stride,
                                                          smem.kv_token[st], smem.kv_rows[st], tid);
    cp_async_fence();
    // The next tile's geometry goes to the other stage (last read before the barrier above), here where only the output
    // accumulator is live: the policy's int64 arithmetic then costs no spills.
    if (e + 1 < kv_tiles) detail::load_kv_geometry<Traits>(smem_all, st ^ 1, p, sched, e + 1, b, h_kv, tid);

    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    detail::gemm_ss(acc_s, rQ, rK, tSsQ, tSsK, tiled_mma, copy_q, copy_k);

    Tensor s = make_tensor(acc_s.data(), detail::acc_rowcol(acc_s.layout()));
    CUTE_UNROLL
    for (int i = 0; i < size(acc_s); ++i) acc_s(i) *= scale_log2;
    const int32_t mask = smem.kv_need_mask[st];
    if (mask == kMaskWindow) {
      // Query windows are re-read from smem per masked tile rather than held in registers across the loop.
      CUTE_UNROLL
      for (int mi = 0; mi < kRowsPerThread; ++mi) {
        const int r = get<0>(tScS_rc(mi, 0));
        int32_t wb[kRank], we[kRank];
        for (int i = 0; i < kRank; ++i) {
          wb[i] = smem.q_begin[i][r];
          we[i] = smem.q_end[i][r];
        }
        CUTE_UNROLL
        for (int ni = 0; ni < kColsPerThread; ++ni) {
          const int c = get<1>(tScS_rc(0, ni));
          bool inside = true;
          for (int i = 0; i < kRank; ++i) {
            const int32_t x = smem.kv_x[st][i][c];
            inside = inside && wb[i] <= x && x < we[i];
          }
          if (!inside) s(mi, ni) = -INFINITY;
        }
      }
    } else if (mask == kMaskAll) {
      CUTE_UNROLL
      for (int ni = 0; ni < kColsPerThread; ++ni) {
        if (smem.kv_x[st][0][get<1>(tScS_rc(0, ni))] < 0) {
          CUTE_UNROLL
          for (int mi = 0; mi < kRowsPerThread; ++mi) s(mi, ni) = -INFINITY;
        }
      }
    }

    // Online softmax: new running max per row (over the quad of lanes sharing the row), rescale what came before.
    Tensor o = make_tensor(acc_o.data(), detail::acc_rowcol(acc_o.layout()));
    CUTE_UNROLL
    for (int mi = 0; mi < kRowsPerThread; ++mi) {
      float m = row_max[mi];
      CUTE_UNROLL
      for (int ni = 0; ni < kColsPerThread; ++ni) m = fmaxf(m, s(mi, ni));
      const float correction = detail::softmax_update_row(s, mi, detail::quad_max(m), row_max[mi], row_sum[mi]);
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(o); ++ni) o(mi, ni) *= correction;
    }

    cp_async_wait<0>();
    __syncthreads();  // V(e) in smem; every warp is done with K(e); geometry of e + 1 visible
    if (e + 1 < kv_tiles) {
      detail::gather_rows_async<Traits, kBlockN>(sK, smem_all.src[st ^ 1].k, smem_all.src[st ^ 1].k_stride,
                                                 smem.kv_token[st ^ 1], smem.kv_rows[st ^ 1], tid);
      cp_async_fence();
    }

    Tensor p_frag = make_tensor_like<Element>(acc_s);
    CUTE_UNROLL
    for (int i = 0; i < size(acc_s); ++i) p_frag(i) = static_cast<Element>(acc_s(i));
    Tensor rP = make_tensor(p_frag.data(), detail::acc_as_a_operand(p_frag.layout()));
    detail::gemm_rs(acc_o, rP, rVt, tOsVt, tiled_mma, copy_v);
  }

  // Epilogue: normalise, stage the output tile in smem (over Q, which is no longer read), scatter its rows.
  Tensor o = make_tensor(acc_o.data(), detail::acc_rowcol(acc_o.layout()));
  const int lane = tid % 32;
  CUTE_UNROLL
  for (int mi = 0; mi < kRowsPerThread; ++mi) {
    const float sum = detail::quad_sum<4>(row_sum[mi]);
    const float inv = detail::row_inv_sum(sum);
    CUTE_UNROLL
    for (int ni = 0; ni < size<1>(o); ++ni) o(mi, ni) *= inv;
    const int r = get<0>(tScS_rc(mi, 0));
    if (lane % 4 == 0 && r < q_rows) {
      const float lse = detail::row_lse(row_max[mi], sum);
      p.lse[(b * p.tokens + smem.q_token[r]) * p.heads + h] = lse;
    }
  }

  // With no KV tile the mainloop never waited on the Q gather (a block-sparse row with empty lists): it must land
  // before the output is staged over Q, or its late bytes overwrite that row's zeros (a barrier does not order
  // cp.async). Free when nothing is pending.
  cp_async_wait<0>();
  __syncthreads();  // every warp is done reading Q (and K/V) from smem
  Tensor rO = make_tensor_like<Element>(acc_o);
  CUTE_UNROLL
  for (int i = 0; i < size(acc_o); ++i) rO(i) = static_cast<Element>(acc_o(i));
  Tensor sO = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutO{});
  auto copy_o = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, tiled_mma);
  auto thr_copy_o = copy_o.get_slice(tid);
  copy(copy_o, thr_copy_o.retile_S(rO), thr_copy_o.partition_D(sO));
  __syncthreads();

  auto* o_base = static_cast<Element*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride;
  constexpr auto kChunksPerRowO = detail::kChunksPerRowOf<kHeadDimV, Traits::kChunk>;
  constexpr int kChunks = kBlockM * kChunksPerRowO;
  CUTE_UNROLL
  for (int i = 0; i < kChunks / Traits::kThreads; ++i) {
    const int idx = tid + i * Traits::kThreads;
    const int r = idx / kChunksPerRowO;
    const int c = (idx % kChunksPerRowO) * Traits::kChunk;
    if (r < q_rows) {
      *reinterpret_cast<uint128_t*>(o_base + smem.q_token[r] * p.o_token_stride + c) =
          *reinterpret_cast<const uint128_t*>(&sO(r, c));
    }
  }
}

// Launches one instantiation: grid (Q tiles, heads, batch), dynamic smem above the 48 KB default where needed.
// cudaErrorInvalidConfiguration when the GPU's opt-in shared memory per block is below the kernel's (head dim 256:
// about 105 KB), or beyond the grid limits.
template <class Element, int kHeadDim, int kBlockM, int kBlockN, class Schedule, int kHeadDimV = kHeadDim>
cudaError_t launch_sm80_fmha_fwd(const typename Schedule::Params& p, cudaStream_t stream) {
  using Traits = Sm80FmhaFwdTraits<Element, kHeadDim, kBlockM, kBlockN, kHeadDimV>;
  if (p.head_dim != kHeadDim || p.head_dim_v != kHeadDimV) return cudaErrorInvalidValue;
  const int64_t q_tiles = Schedule::num_q_tiles(p);
  if (q_tiles == 0 || p.heads == 0 || p.batch == 0) return cudaSuccess;
  if (q_tiles > 0x7fffffff || p.heads > 65535 || p.batch > 65535) return cudaErrorInvalidConfiguration;
  constexpr int kSmem = sizeof(detail::FwdSmem<Traits, Schedule>);
  auto kernel = sm80_fmha_fwd_kernel<Traits, Schedule>;
  const cudaError_t err = set_dynamic_smem(kernel, kSmem);  // head dim 256: above 99 KB
  if (err != cudaSuccess) return err;
  dim3 grid(static_cast<unsigned>(q_tiles), static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
  kernel<<<grid, Traits::kThreads, kSmem, stream>>>(p);
  return cudaGetLastError();
}

// Additional KV is visited in tiles of the kernel's KV block. Every family's instances may have D_v != D.
template <class Element, int kHeadDim, int kBlockM, int kBlockN, int kHeadDimV = kHeadDim>
cudaError_t launch_sm80_gna_fwd(const GnaFwdParams& p, cudaStream_t stream) {
  if (p.policy.max_q_rows() > kBlockM || p.policy.max_kv_rows() > kBlockN) return cudaErrorInvalidValue;
  if (p.num_additional < 0 || (p.num_additional > 0 && (p.add_k == nullptr || p.add_v == nullptr))) {
    return cudaErrorInvalidValue;
  }
  GnaFwdParams q = p;
  q.additional_block = kBlockN;
  return launch_sm80_fmha_fwd<Element, kHeadDim, kBlockM, kBlockN, GnaSchedule, kHeadDimV>(q, stream);
}

template <class Element, int kHeadDim, int kBlockM, int kBlockN, int kHeadDimV = kHeadDim>
cudaError_t launch_sm80_block_sparse_fwd(const BlockSparseFwdParams& p, cudaStream_t stream) {
  const int64_t qb = p.pattern.q_block, kb = p.pattern.kv_block;
  if (p.q_split < 1 || p.kv_split < 1 || qb % p.q_split || kb % p.kv_split || qb / p.q_split > kBlockM ||
      kb / p.kv_split > kBlockN) {
    return cudaErrorInvalidValue;
  }
  return launch_sm80_fmha_fwd<Element, kHeadDim, kBlockM, kBlockN, BlockSparseSchedule, kHeadDimV>(p, stream);
}

template <class Element, int kHeadDim, int kBlockM, int kBlockN, int kHeadDimV = kHeadDim>
cudaError_t launch_sm80_s2_fwd(const StridedShardFwdParams& p, cudaStream_t stream) {
  const int64_t block = p.pattern.block;
  if (p.q_split < 1 || p.kv_split < 1 || block % p.q_split || block % p.kv_split || block / p.q_split > kBlockM ||
      block / p.kv_split > kBlockN) {
    return cudaErrorInvalidValue;
  }
  return launch_sm80_fmha_fwd<Element, kHeadDim, kBlockM, kBlockN, StridedShardSchedule, kHeadDimV>(p, stream);
}

}  // namespace natten_like::sm80
