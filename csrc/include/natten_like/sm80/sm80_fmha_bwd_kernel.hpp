// The sm80 fused attention backward of every family (GNA, strided-shard, block-sparse), deterministic (no atomics:
// every output element has exactly one writer, which sums its contributions in a fixed order):
// 1. delta kernel: delta = rowsum(dO * O) - grad_lse per (token, query head), float32, into the caller's workspace;
// 2. dK/dV kernel: one CTA per (KV tile, KV head, batch) keeps its K and V tile in smem and walks the query heads of
//    its GQA group and, for each, the Q tiles visiting the KV tile (the family's key-side schedule,
//    fmha_bwd_schedules.hpp), accumulating dK and dV in registers;
// 3. dQ kernel: one CTA per (Q tile, query head, batch) walks the KV tiles its Q tile visits (the forward's schedule,
//    fmha_schedules.hpp) and recomputes S, P, dP and dS to accumulate dQ in registers.
// The mainloops are written once over the schedules' row geometry; each family has its own __global__ entry points
// (sm80_{gna,s2,block_sparse}_bwd_{dkdv,dq}_kernel) so that profiles and SASS checks name them.
// Semantics are the forward's and the CPU reference's: P = exp(scale S - lse), 0 for masked pairs and for rows with
// lse = -inf; dS = P (dP - delta); dQ = scale dS K; dK = scale dS^T Q; dV = P^T dO. Rows are gathered from the
// heads-last tensors by token (the forward's gather_rows_async), masking is the forward's per-dim window test.
#pragma once

#include <cmath>
#include <cstddef>
#include <new>

#include <cute/tensor.hpp>

#include "natten_like/sm80/fmha_bwd_schedules.hpp"
#include "natten_like/sm80/fmha_schedules.hpp"
#include "natten_like/sm80/named_barrier.hpp"
#include "natten_like/sm80/sm80_fmha_bwd_params.hpp"
#include "natten_like/sm80/sm80_fmha_bwd_traits.hpp"
#include "natten_like/sm80/sm80_fmha_fwd_kernel.hpp"

namespace natten_like::sm80 {

namespace detail {

using namespace cute;

// lse (natural log) in the log2 domain of the scaled scores. A row with no key has lse = -inf and P = 0 by definition;
// +inf gives exp2(s - inf) = 0 for every finite or -inf s, where -inf would give exp2(-inf + inf) = NaN on masked
// pairs.
CUTE_DEVICE float lse_to_log2(float lse) { return lse == -INFINITY ? INFINITY : lse * static_cast<float>(M_LOG2E); }

// Shared memory of the dK/dV kernel (the traits' tiles and row geometry, and the CTA's key-side schedule) and of the dQ
// kernel (with the forward's schedule of its Q tile). The schedules live in smem for the reason the forward's does: in
// registers they would cost the accumulators.
template <class Traits, class KeySchedule>
struct DkDvSmem {
  typename Traits::DkDvStorage s;
  KeySchedule sched;
};
template <class Traits, class Schedule>
struct DqSmem {
  typename Traits::DqStorage s;
  Schedule sched;
  KvSource<typename Traits::Element> src[2];  // of each geometry stage's KV tile
};

// Geometry of step `step` of the dK/dV mainloop (a query head of the group and one of its Q tiles visiting the CTA's
// KV tile, from the key-side schedule) into geometry stage st: per query row its token, window, lse and delta (threads
// below kBlockM, one row each); the row count, whether the pair needs the element mask and the head (thread 0).
template <class Traits, class KeySchedule>
CUTE_DEVICE void load_q_geometry(typename Traits::DkDvStorage& smem, int st, const typename KeySchedule::Params& p,
                                 const KeySchedule& sched, int64_t step, int64_t b, int tid) {
  if (tid >= Traits::kBlockM) return;
  const auto& f = p.fwd;
  int h, rows;
  bool full;
  const typename KeySchedule::QTile q = sched.q_tile(p, step, h, rows, full);
  int32_t wb[kRank], we[kRank];
  int64_t token = 0;
  float lse_log2 = INFINITY, delta = 0.f;  // padding rows: P = 0, dS = 0
  if (tid < rows) {
    token = sched.q_row(p, q, tid, wb, we);
    const int64_t idx = (b * f.tokens + token) * f.heads + h;
    lse_log2 = lse_to_log2(f.lse[idx]);
    delta = p.delta[idx];
  } else {
    for (int i = 0; i < kRank; ++i) wb[i] = we[i] = 0;  // empty window: padding queries see no key
  }
  smem.q_token[st][tid] = token;
  for (int i = 0; i < kRank; ++i) {
    smem.q_begin[st][i][tid] = wb[i];
    smem.q_end[st][i][tid] = we[i];
  }
  smem.lse_log2[st][tid] = lse_log2;
  smem.delta[st][tid] = delta;
  if (tid == 0) {
    smem.q_rows[st] = static_cast<int32_t>(rows);
    // Padding rows on either side are harmless without the mask (P = 0 for padding queries; padding keys only reach
    // dK/dV rows that are never stored), but masking them keeps every product finite.
    smem.q_need_mask[st] = !full || rows < Traits::kBlockM || smem.kv_rows < Traits::kBlockN;
    smem.q_head[st] = h;
  }
}

// Geometry of KV tile e of the dQ mainloop (from the forward's schedule) into geometry stage st: token and coordinates
// per key row (threads below kBlockN, one row each; padding rows get -1 in dim 0, outside every window), the row count,
// the mask mode and the tile's source (thread 0). The forward's per-row scheme, kept here so that the backward does not
// depend on the forward's internal helper signatures.
template <class Traits, class Schedule>
CUTE_DEVICE void load_dq_kv_geometry(DqSmem<Traits, Schedule>& smem_all, int st, const typename Schedule::Params& f,
                                     const Schedule& sched, int64_t e, int64_t b, int h_kv, int tid) {
  if (tid >= Traits::kBlockN) return;
  auto& smem = smem_all.s;
  int rows;
  bool full;
  const typename Schedule::KvTile kv = sched.kv_tile(f, e, rows, full);
  int32_t x[kRank];
  int64_t token = 0;
  if (tid < rows) {
    token = sched.kv_row(f, kv, tid, x);
  } else {
    for (int i = 0; i < kRank; ++i) x[i] = 0;
    x[0] = -1;
  }
  smem.kv_token[st][tid] = token;
  for (int i = 0; i < kRank; ++i) smem.kv_x[st][i][tid] = x[i];
  if (tid == 0) {
    smem.kv_rows[st] = static_cast<int32_t>(rows);
    // Padding keys must be masked here: their zero K rows give P = exp(-lse), which can overflow for a row whose scores
    // are all very negative, and inf * 0 (their zero K in dS K) would be NaN.
    smem.kv_need_mask[st] = kv_mask_mode(is_additional<Schedule>(kv), full, rows, Traits::kBlockN);
    smem_all.src[st] = kv_source<typename Traits::Element, Schedule>(f, kv, b, h_kv);
  }
}

// threadIdx.x read afresh (volatile, so never merged with the kernel's first read): what an epilogue derives from it
// is then computed there, rather than hoisted above the mainloop and held, or spilled, across it.
CUTE_DEVICE int fresh_thread_index() {
  int t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  return t;
}

// Converts an fp32 accumulator tile (MMA=4, MMA_M, MMA_N) to Element, as a register tensor laid out as the A operand of
// the next product (the same registers in acc_as_a_operand's order; the tensor owns them, so it can be returned).
template <class Element, class Acc>
CUTE_DEVICE auto to_a_operand(const Acc& acc) {
  Tensor r = make_tensor<Element>(acc_as_a_operand(acc.layout()));
  Tensor r_acc = make_tensor(r.data(), acc.layout());
  CUTE_UNROLL
  for (int i = 0; i < size(acc); ++i) r_acc(i) = static_cast<Element>(acc(i));
  return r;
}

// Stages an fp32 (kRows, kCols) accumulator, times `scale`, as Element in smem tile `s` (layout of the tile's rows),
// for row-wise 16-byte stores.
template <class Traits, class Acc, class SmemTensor, class TiledMma>
CUTE_DEVICE void acc_to_smem(Acc& acc, float scale, SmemTensor& s, TiledMma& mma, int tid) {
  using Element = typename Traits::Element;
  Tensor r = make_tensor_like<Element>(acc);
  CUTE_UNROLL
  for (int i = 0; i < size(acc); ++i) r(i) = static_cast<Element>(acc(i) * scale);
  auto copy_o = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, mma);
  auto thr = copy_o.get_slice(tid);
  copy(copy_o, thr.retile_S(r), thr.partition_D(s));
}

// Writes rows [0, rows) of a staged (kRows, kCols) smem tile to base + token[r] * token_stride (16 bytes per thread per
// step).
template <class Traits, int kRows, int kCols, class SmemTensor>
CUTE_DEVICE void store_rows(const SmemTensor& s, typename Traits::Element* base, int64_t token_stride,
                            const int64_t* token, int rows, int tid) {
  constexpr int kChunksPerRow = kCols / Traits::kChunk;
  constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kChunks % Traits::kThreads == 0);
  CUTE_UNROLL
  for (int i = 0; i < kChunks / Traits::kThreads; ++i) {
    const int idx = tid + i * Traits::kThreads;
    const int r = idx / kChunksPerRow;
    const int c = (idx % kChunksPerRow) * Traits::kChunk;
    if (r < rows) {
      *reinterpret_cast<uint128_t*>(base + token[r] * token_stride + c) = *reinterpret_cast<const uint128_t*>(&s(r, c));
    }
  }
}

}  // namespace detail

// delta[row] = sum_d dO[row, d] * O[row, d] - grad_lse[row] for every (batch, token, query head) row, float32 (0 on
// rows of lse -inf).
// kHeadDimV / (16 / sizeof(Element)) lanes per row, one 16-byte chunk of O and dO each.
template <class Element, int kHeadDimV, class Params>
__global__ void __launch_bounds__(256) sm80_fmha_bwd_delta_kernel(__grid_constant__ const Params p) {
  constexpr int kChunk = 16 / sizeof(Element);
  constexpr int kLanes = kHeadDimV / kChunk;  // power of two, at most 32: the row's lanes sit in one warp
  static_assert(kLanes <= 32 && (kLanes & (kLanes - 1)) == 0);
  constexpr int kRowsPerBlock = 256 / kLanes;
  const FmhaFwdArgs& f = p.fwd;
  const int64_t rows = f.batch * f.tokens * f.heads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kLanes;
  const int lane = threadIdx.x % kLanes;
  float sum = 0.f;
  if (row < rows) {
    const int64_t h = row % f.heads;
    const int64_t bt = row / f.heads;
    const int64_t token = bt % f.tokens;
    const int64_t b = bt / f.tokens;
    const auto* o = static_cast<const Element*>(f.out) + b * f.o_batch_stride + token * f.o_token_stride +
                    h * f.o_head_stride + lane * kChunk;
    const auto* d = static_cast<const Element*>(p.d_out) + b * p.do_batch_stride + token * p.do_token_stride +
                    h * p.do_head_stride + lane * kChunk;
    const cute::uint128_t ov = *reinterpret_cast<const cute::uint128_t*>(o);
    const cute::uint128_t dv = *reinterpret_cast<const cute::uint128_t*>(d);
    const Element* oe = reinterpret_cast<const Element*>(&ov);
    const Element* de = reinterpret_cast<const Element*>(&dv);
    CUTE_UNROLL
    for (int j = 0; j < kChunk; ++j) sum += static_cast<float>(oe[j]) * static_cast<float>(de[j]);
  }
  sum = detail::quad_sum<kLanes>(sum);  // every lane of the warp takes part: no early return above
  // A row that saw no key (lse -inf) has P = 0 and no gradient: delta 0 there, so that a non-finite grad_lse of that
  // row (logaddexp(-inf, -inf) upstream) cannot make dS = 0 * (dP - NaN) reach the keys its Q tile visits.
  if (row < rows && lane == 0) {
    p.delta[row] = f.lse[row] == -INFINITY ? 0.f : sum - (p.grad_lse != nullptr ? p.grad_lse[row] : 0.f);
  }
}

namespace detail {

// Roles of a thread group of the dK/dV kernel. kRoleAll: one group of 4 warps computes S^T, dP^T, P^T, dS^T and
// accumulates dV and dK. The wide configurations (Traits::kDkDvGroups == 2) split the work over two groups, each with
// one accumulator, so that neither holds both (D + D_v columns of fp32 over 16 key rows per warp would not fit 255
// registers): kRoleP computes S^T, the masked P^T and dV += P^T dO and hands P^T (fp32) to kRoleDs through smem, which
// computes dP^T, dS^T = P^T (dP^T - delta) and dK += dS^T Q. The two halves do equal work at D 192 / D_v 128 and 256.
enum : int { kRoleAll = 0, kRoleP = 1, kRoleDs = 2 };

// Named barriers of the P^T hand-over (ids above __syncthreads' 0): kXchgFull, the P^T chunk is in smem (kRoleP
// arrives, kRoleDs waits); kXchgEmpty, kRoleDs has read it (kRoleDs arrives, kRoleP waits before the next write).
constexpr int kXchgFull = 1;
constexpr int kXchgEmpty = 2;

// Traits with another thread count, for the row gathers and stores of the dK/dV kernel's kDkDvThreads.
template <class Traits, int kThreads_>
struct WithThreads : Traits {
  static constexpr int kThreads = kThreads_;
};

// The steps of the dK/dV mainloop for one role (above), with the thread index `gtid` within its group of 4 warps;
// the accumulators a role does not own are nullptr. Every thread of the CTA runs the same steps: the gathers and
// __syncthreads are shared, the math is the role's.
template <class Traits, class KeySchedule, int kRole, class AccDk, class AccDv, class GatherQ>
CUTE_DEVICE void dkdv_steps(DkDvSmem<Traits, KeySchedule>& smem_all, const typename KeySchedule::Params& p,
                            const KeySchedule& sched, int steps, int64_t b, int tid, int gtid, AccDk& acc_dk,
                            AccDv& acc_dv, GatherQ&& gather_q) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim, kHeadDimV = Traits::kHeadDimV;
  constexpr int kQChunk = Traits::kQChunk, kStages = Traits::kStages;
  constexpr int kChunks = kBlockM / kQChunk;
  constexpr bool kWithP = kRole != kRoleDs;   // computes S^T and P^T, accumulates dV
  constexpr bool kWithDs = kRole != kRoleP;   // computes dP^T and dS^T, accumulates dK
  auto& smem = smem_all.s;
  const auto& f = p.fwd;

  Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutV{});
  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_slice(gtid);
  auto copy_a = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);             // K, V
  auto copy_b = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);             // Q, dO (rows = queries)
  auto copy_bt = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);  // Q^T, dO^T
  Tensor tSsK = copy_a.get_slice(gtid).partition_S(sK);
  Tensor tSsV = copy_a.get_slice(gtid).partition_S(sV);
  Tensor rK = make_tensor<Element>(partition_shape_A(tiled_mma, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  Tensor rV = make_tensor<Element>(partition_shape_A(tiled_mma, Shape<Int<kBlockN>, Int<kHeadDimV>>{}));
  Tensor rQ = make_tensor<Element>(partition_shape_B(tiled_mma, Shape<Int<kQChunk>, Int<kHeadDim>>{}));
  Tensor rdO = make_tensor<Element>(partition_shape_B(tiled_mma, Shape<Int<kQChunk>, Int<kHeadDimV>>{}));
  Tensor rQt = make_tensor<Element>(partition_shape_B(tiled_mma, Shape<Int<kHeadDim>, Int<kQChunk>>{}));
  Tensor rdOt = make_tensor<Element>(partition_shape_B(tiled_mma, Shape<Int<kHeadDimV>, Int<kQChunk>>{}));

  // Each thread's (key, query) coordinates of an S^T chunk.
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kQChunk>>{}));
  Tensor tScS_rc = make_tensor(tScS.data(), detail::acc_rowcol(tScS.layout()));
  constexpr int kRowsPerThread = size<0>(decltype(tScS_rc.layout()){});
  constexpr int kColsPerThread = size<1>(decltype(tScS_rc.layout()){});

  const float scale_log2 = f.scale * static_cast<float>(M_LOG2E);

  for (int e = 0; e < steps; ++e) {
    const int st = e & 1;
    const int ts = kStages == 2 ? st : 0;
    cp_async_wait<0>();
    __syncthreads();  // Q/dO of step e in smem; every warp is done with step e - 1 (its tiles and geometry)
    if (e + 1 < steps) load_q_geometry<Traits>(smem, st ^ 1, p, sched, e + 1, b, tid);
    if constexpr (kStages == 2) {
      if (e + 1 < steps) {
        __syncthreads();  // geometry of e + 1 visible
        gather_q(ts ^ 1, st ^ 1);
        cp_async_fence();
      }
    }
    const bool need_mask = smem.q_need_mask[st] != 0;

#pragma unroll 1
    for (int c = 0; c < kChunks; ++c) {
      Element* q_ptr = smem.q[ts] + c * kQChunk * Traits::template kRowStride<kHeadDim>;
      Element* do_ptr = smem.d_out[ts] + c * kQChunk * Traits::template kRowStride<kHeadDimV>;
      Tensor sQc = make_tensor(make_smem_ptr(q_ptr), typename Traits::SmemLayoutQc{});
      Tensor sdOc = make_tensor(make_smem_ptr(do_ptr), typename Traits::SmemLayoutDOc{});
      Tensor sQct = make_tensor(make_smem_ptr(q_ptr), typename Traits::SmemLayoutQct{});
      Tensor sdOct = make_tensor(make_smem_ptr(do_ptr), typename Traits::SmemLayoutDOct{});

      // S^T = K Q^T and dP^T = V dO^T: rows are this CTA's keys, columns the chunk's queries.
      Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kQChunk>>{});
      Tensor acc_dp = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kQChunk>>{});
      Tensor s = make_tensor(acc_s.data(), detail::acc_rowcol(acc_s.layout()));
      Tensor dp = make_tensor(acc_dp.data(), detail::acc_rowcol(acc_dp.layout()));
      if constexpr (kWithP) {
        clear(acc_s);
        detail::gemm_ss(acc_s, rK, rQ, tSsK, copy_b.get_slice(gtid).partition_S(sQc), tiled_mma, copy_a, copy_b);
        // P^T = exp2(scale_log2 S^T - lse_log2) (masked pairs: S = -inf first), in place.
        int32_t kx[kRowsPerThread][kRank];
        if (need_mask) {
          CUTE_UNROLL
          for (int mi = 0; mi < kRowsPerThread; ++mi) {
            const int r = get<0>(tScS_rc(mi, 0));
            for (int i = 0; i < kRank; ++i) kx[mi][i] = smem.kv_x[i][r];
          }
        }
        CUTE_UNROLL
        for (int ni = 0; ni < kColsPerThread; ++ni) {
          const int col = c * kQChunk + get<1>(tScS_rc(0, ni));
          const float lse_log2 = smem.lse_log2[st][col];
          int32_t wb[kRank], we[kRank];
          if (need_mask) {
            for (int i = 0; i < kRank; ++i) {
              wb[i] = smem.q_begin[st][i][col];
              we[i] = smem.q_end[st][i][col];
            }
          }
          CUTE_UNROLL
          for (int mi = 0; mi < kRowsPerThread; ++mi) {
            float x = s(mi, ni) * scale_log2;
            if (need_mask) {
              bool inside = true;
              for (int i = 0; i < kRank; ++i) inside = inside && wb[i] <= kx[mi][i] && kx[mi][i] < we[i];
              if (!inside) x = -INFINITY;
            }
            s(mi, ni) = exp2f(x - lse_log2);
          }
        }
      }
      if constexpr (kRole == kRoleP) {
        // Hand P^T over: kRoleDs's thread gtid (the same MMA slice) reads element i of the fragment back for the
        // same (key, query).
        const int chunk = e * kChunks + c;
        if (chunk > 0) named_barrier_sync<kXchgEmpty, Traits::kDkDvThreads>();
        CUTE_UNROLL
        for (int i = 0; i < size(acc_s); ++i) smem.p_xchg[i * Traits::kThreads + gtid] = acc_s(i);
        named_barrier_arrive<kXchgFull, Traits::kDkDvThreads>();
      }
      if constexpr (kWithDs) {
        clear(acc_dp);
        detail::gemm_ss(acc_dp, rV, rdO, tSsV, copy_b.get_slice(gtid).partition_S(sdOc), tiled_mma, copy_a, copy_b);
        if constexpr (kRole == kRoleDs) {
          const int chunk = e * kChunks + c;
          named_barrier_sync<kXchgFull, Traits::kDkDvThreads>();
          CUTE_UNROLL
          for (int i = 0; i < size(acc_s); ++i) acc_s(i) = smem.p_xchg[i * Traits::kThreads + gtid];
          // No arrival after the last chunk: kRoleP waits for none, and no barrier is left half-arrived.
          if (chunk + 1 < steps * kChunks) named_barrier_arrive<kXchgEmpty, Traits::kDkDvThreads>();
        }
        // dS^T = P^T (dP^T - delta), in place.
        CUTE_UNROLL
        for (int ni = 0; ni < kColsPerThread; ++ni) {
          const float delta = smem.delta[st][c * kQChunk + get<1>(tScS_rc(0, ni))];
          CUTE_UNROLL
          for (int mi = 0; mi < kRowsPerThread; ++mi) dp(mi, ni) = s(mi, ni) * (dp(mi, ni) - delta);
        }
      }

      // dV += P^T dO and dK += dS^T Q: the accumulators' rows (keys) are the A operand's rows.
      if constexpr (kWithP) {
        Tensor rP = detail::to_a_operand<Element>(acc_s);
        detail::gemm_rs(acc_dv, rP, rdOt, copy_bt.get_slice(gtid).partition_S(sdOct), tiled_mma, copy_bt);
      }
      if constexpr (kWithDs) {
        Tensor rdS = detail::to_a_operand<Element>(acc_dp);
        detail::gemm_rs(acc_dk, rdS, rQt, copy_bt.get_slice(gtid).partition_S(sQct), tiled_mma, copy_bt);
      }
    }

    if constexpr (kStages == 1) {
      if (e + 1 < steps) {
        __syncthreads();  // every warp is done with the Q/dO buffer; geometry of e + 1 visible
        gather_q(0, st ^ 1);
        cp_async_fence();
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done reading K and V: their buffers may take dK and dV
}

// The dK/dV kernel of one CTA (KV tile blockIdx.x of KV head blockIdx.y, batch blockIdx.z), over the steps of the
// key-side schedule, with Traits::kDkDvGroups groups of 4 warps (dkdv_steps' roles).
template <class Traits, class KeySchedule>
CUTE_DEVICE void bwd_dkdv(const typename KeySchedule::Params& p) {
  using namespace cute;
  using Element = typename Traits::Element;
  using GatherTraits = WithThreads<Traits, Traits::kDkDvThreads>;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim, kHeadDimV = Traits::kHeadDimV;

  extern __shared__ __align__(128) char smem_raw[];
  auto& smem_all = *reinterpret_cast<DkDvSmem<Traits, KeySchedule>*>(smem_raw);
  auto& smem = smem_all.s;
  const int tid = threadIdx.x;
  const int64_t kv_tile = blockIdx.x;
  const int h_kv = blockIdx.y;
  const int64_t b = blockIdx.z;
  const auto& f = p.fwd;

  if (tid == 0) new (&smem_all.sched) KeySchedule(p, kv_tile, h_kv, b);
  __syncthreads();
  const KeySchedule& sched = smem_all.sched;
  // Steps: (query head of the group, visiting Q tile), head-major. A KV tile no query visits has none and stores zeros.
  // Step counters are int32 (a CTA's steps are Q tile visits, far below 2^31): two registers fewer across the loop,
  // which the head dim 128 instantiations need to stay free of spills.
  const int steps = static_cast<int>(sched.count(p));
  const int kv_rows = sched.kv_rows();
  if (tid == 0) smem.kv_rows = kv_rows;  // read by load_q_geometry (thread 0 here, every thread after the barriers)

  if (tid < kBlockN) {
    int32_t x[kRank];
    int64_t token = 0;
    if (tid < kv_rows) {
      token = sched.kv_row(p, tid, x);
    } else {
      for (int i = 0; i < kRank; ++i) x[i] = 0;
      x[0] = -1;  // outside every window
    }
    smem.kv_token[tid] = token;
    for (int i = 0; i < kRank; ++i) smem.kv_x[i][tid] = x[i];
  }
  if (steps > 0) load_q_geometry<Traits>(smem, 0, p, sched, 0, b, tid);
  __syncthreads();

  Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutV{});
  // Gathers Q and dO of the step whose geometry is in stage st into tile buffer ts.
  auto gather_q = [&](int ts, int st) {
    const int h = smem.q_head[st];
    const auto* q_base = static_cast<const Element*>(f.q) + b * f.q_batch_stride + h * f.q_head_stride;
    const auto* do_base = static_cast<const Element*>(p.d_out) + b * p.do_batch_stride + h * p.do_head_stride;
    Tensor sQ = make_tensor(make_smem_ptr(smem.q[ts]), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(smem.d_out[ts]), typename Traits::SmemLayoutDO{});
    detail::gather_rows_async<GatherTraits, kBlockM>(sQ, q_base, f.q_token_stride, smem.q_token[st], smem.q_rows[st],
                                                     tid);
    detail::gather_rows_async<GatherTraits, kBlockM, kHeadDimV>(sdO, do_base, p.do_token_stride, smem.q_token[st],
                                                                smem.q_rows[st], tid);
  };
  if (steps > 0) {
    const auto* k_base = static_cast<const Element*>(f.k) + b * f.k_batch_stride + h_kv * f.k_head_stride;
    const auto* v_base = static_cast<const Element*>(f.v) + b * f.v_batch_stride + h_kv * f.v_head_stride;
    detail::gather_rows_async<GatherTraits, kBlockN>(sK, k_base, f.k_token_stride, smem.kv_token, kv_rows, tid);
    detail::gather_rows_async<GatherTraits, kBlockN, kHeadDimV>(sV, v_base, f.v_token_stride, smem.kv_token, kv_rows,
                                                                tid);
    gather_q(0, 0);
    cp_async_fence();
  }

  // Each group stages its accumulator (dK times scale) in the K or V buffer; threadIdx.x is read afresh there.
  typename Traits::TiledMma tiled_mma;
  auto mainloop = [&]<int kRole>(auto& acc_dk, auto& acc_dv, int gtid) {
    dkdv_steps<Traits, KeySchedule, kRole>(smem_all, p, sched, steps, b, tid, gtid, acc_dk, acc_dv, gather_q);
  };
  auto new_acc = [&]<int kCols>() {
    Tensor acc = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kCols>>{});
    clear(acc);
    return acc;
  };
  std::nullptr_t none = nullptr;
  if constexpr (Traits::kDkDvGroups == 1) {
    auto acc_dk = new_acc.template operator()<kHeadDim>();
    auto acc_dv = new_acc.template operator()<kHeadDimV>();
    mainloop.template operator()<kRoleAll>(acc_dk, acc_dv, tid);
    const int tid_e = fresh_thread_index();
    detail::acc_to_smem<Traits>(acc_dk, f.scale, sK, tiled_mma, tid_e);
    detail::acc_to_smem<Traits>(acc_dv, 1.f, sV, tiled_mma, tid_e);
  } else if (tid < Traits::kThreads) {
    auto acc_dv = new_acc.template operator()<kHeadDimV>();
    mainloop.template operator()<kRoleP>(none, acc_dv, tid);
    detail::acc_to_smem<Traits>(acc_dv, 1.f, sV, tiled_mma, fresh_thread_index());
  } else {
    auto acc_dk = new_acc.template operator()<kHeadDim>();
    mainloop.template operator()<kRoleDs>(acc_dk, none, tid - Traits::kThreads);
    detail::acc_to_smem<Traits>(acc_dk, f.scale, sK, tiled_mma, fresh_thread_index() - Traits::kThreads);
  }
  __syncthreads();
  const int tid_e = fresh_thread_index();
  auto* dk_base = static_cast<Element*>(p.dk) + b * p.dk_batch_stride + h_kv * p.dk_head_stride;
  auto* dv_base = static_cast<Element*>(p.dv) + b * p.dv_batch_stride + h_kv * p.dv_head_stride;
  // The key row count is re-read from smem rather than held in a register across the mainloop.
  detail::store_rows<GatherTraits, kBlockN, kHeadDim>(sK, dk_base, p.dk_token_stride, smem.kv_token, smem.kv_rows,
                                                      tid_e);
  detail::store_rows<GatherTraits, kBlockN, kHeadDimV>(sV, dv_base, p.dv_token_stride, smem.kv_token, smem.kv_rows,
                                                       tid_e);
}

// The dQ mainloop of one CTA (kernel Q tile blockIdx.x of query head blockIdx.y, batch blockIdx.z), over the KV tiles
// of the forward's schedule.
template <class Traits, class Params, class Schedule>
CUTE_DEVICE void bwd_dq(const Params& p) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
  constexpr int kHeadDim = Traits::kHeadDim, kHeadDimV = Traits::kHeadDimV;
  constexpr int kKvChunk = Traits::kKvChunk, kStages = Traits::kStages;

  extern __shared__ __align__(128) char smem_raw[];
  auto& smem_all = *reinterpret_cast<DqSmem<Traits, Schedule>*>(smem_raw);
  auto& smem = smem_all.s;
  const int tid = threadIdx.x;
  const int64_t q_tile = blockIdx.x;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const auto& f = p.fwd;
  const int h_kv = h / (f.heads / f.kv_heads);

  if (tid == 0) new (&smem_all.sched) Schedule(f, q_tile, h, b);
  __syncthreads();
  const Schedule& sched = smem_all.sched;
  const int kv_tiles = static_cast<int>(sched.count());  // int32, as the dK/dV kernel's steps
  const int q_rows = sched.q_rows();

  if (tid < kBlockM) {
    int32_t wb[kRank], we[kRank];
    int64_t token = 0;
    if (tid < q_rows) {
      token = sched.q_row(f, tid, wb, we);
    } else {
      for (int i = 0; i < kRank; ++i) wb[i] = we[i] = 0;
    }
    smem.q_token[tid] = token;
    for (int i = 0; i < kRank; ++i) {
      smem.q_begin[i][tid] = wb[i];
      smem.q_end[i][tid] = we[i];
    }
  }
  if (kv_tiles > 0) load_dq_kv_geometry<Traits>(smem_all, 0, f, sched, 0, b, h_kv, tid);
  __syncthreads();

  const auto* q_base = static_cast<const Element*>(f.q) + b * f.q_batch_stride + h * f.q_head_stride;
  const auto* do_base = static_cast<const Element*>(p.d_out) + b * p.do_batch_stride + h * p.do_head_stride;
  Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQ{});
  Tensor sdO = make_tensor(make_smem_ptr(smem.d_out), typename Traits::SmemLayoutDO{});
  // Gathers K and V of the KV tile whose geometry is in stage st into tile buffer ts.
  auto gather_kv = [&](int ts, int st) {
    Tensor sK = make_tensor(make_smem_ptr(smem.k[ts]), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(smem.v[ts]), typename Traits::SmemLayoutV{});
    const KvSource<Element>& src = smem_all.src[st];
    detail::gather_rows_async<Traits, kBlockN>(sK, src.k, src.k_stride, smem.kv_token[st], smem.kv_rows[st], tid);
    detail::gather_rows_async<Traits, kBlockN, kHeadDimV>(sV, src.v, src.v_stride, smem.kv_token[st],
                                                          smem.kv_rows[st], tid);
  };
  if (kv_tiles > 0) {
    detail::gather_rows_async<Traits, kBlockM>(sQ, q_base, f.q_token_stride, smem.q_token, q_rows, tid);
    detail::gather_rows_async<Traits, kBlockM, kHeadDimV>(sdO, do_base, p.do_token_stride, smem.q_token, q_rows, tid);
    gather_kv(0, 0);
    cp_async_fence();
  }

  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_slice(tid);
  Tensor acc_dq = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  clear(acc_dq);

  auto copy_a = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);             // Q, dO
  auto copy_b = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);             // K, V (rows = keys)
  auto copy_bt = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);  // K^T
  Tensor tSsQ = copy_a.get_slice(tid).partition_S(sQ);
  Tensor tSsdO = copy_a.get_slice(tid).partition_S(sdO);
  Tensor rQ = make_tensor<Element>(partition_shape_A(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  Tensor rdO = make_tensor<Element>(partition_shape_A(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDimV>>{}));
  Tensor rK = make_tensor<Element>(partition_shape_B(tiled_mma, Shape<Int<kKvChunk>, Int<kHeadDim>>{}));
  Tensor rV = make_tensor<Element>(partition_shape_B(tiled_mma, Shape<Int<kKvChunk>, Int<kHeadDimV>>{}));
  Tensor rKt = make_tensor<Element>(partition_shape_B(tiled_mma, Shape<Int<kHeadDim>, Int<kKvChunk>>{}));

  // Each thread's (query, key) coordinates of an S chunk.
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kKvChunk>>{}));
  Tensor tScS_rc = make_tensor(tScS.data(), detail::acc_rowcol(tScS.layout()));
  constexpr int kRowsPerThread = size<0>(decltype(tScS_rc.layout()){});
  constexpr int kColsPerThread = size<1>(decltype(tScS_rc.layout()){});

  // lse and delta of this thread's query rows, fixed for the CTA (padding rows: P = 0, never stored).
  float lse_log2[kRowsPerThread], delta[kRowsPerThread];
  CUTE_UNROLL
  for (int mi = 0; mi < kRowsPerThread; ++mi) {
    const int r = get<0>(tScS_rc(mi, 0));
    lse_log2[mi] = INFINITY;
    delta[mi] = 0.f;
    if (r < q_rows) {
      const int64_t idx = (b * f.tokens + smem.q_token[r]) * f.heads + h;
      lse_log2[mi] = detail::lse_to_log2(f.lse[idx]);
      delta[mi] = p.delta[idx];
    }
  }
  const float scale_log2 = f.scale * static_cast<float>(M_LOG2E);

  for (int e = 0; e < kv_tiles; ++e) {
    const int st = e & 1;
    const int ts = kStages == 2 ? st : 0;
    cp_async_wait<0>();
    __syncthreads();  // K/V of tile e in smem; every warp is done with tile e - 1
    if (e + 1 < kv_tiles) load_dq_kv_geometry<Traits>(smem_all, st ^ 1, f, sched, e + 1, b, h_kv, tid);
    if constexpr (kStages == 2) {
      if (e + 1 < kv_tiles) {
        __syncthreads();  // geometry of e + 1 visible
        gather_kv(ts ^ 1, st ^ 1);
        cp_async_fence();
      }
    }

    const int32_t mask = smem.kv_need_mask[st];
    const bool need_mask = mask == kMaskWindow;
#pragma unroll 1
    for (int c = 0; c < kBlockN / kKvChunk; ++c) {
      Element* k_ptr = smem.k[ts] + c * kKvChunk * Traits::template kRowStride<kHeadDim>;
      Element* v_ptr = smem.v[ts] + c * kKvChunk * Traits::template kRowStride<kHeadDimV>;
      Tensor sKc = make_tensor(make_smem_ptr(k_ptr), typename Traits::SmemLayoutKc{});
      Tensor sVc = make_tensor(make_smem_ptr(v_ptr), typename Traits::SmemLayoutVc{});
      Tensor sKct = make_tensor(make_smem_ptr(k_ptr), typename Traits::SmemLayoutKct{});
      Tensor tSsK = copy_b.get_slice(tid).partition_S(sKc);
      Tensor tSsV = copy_b.get_slice(tid).partition_S(sVc);
      Tensor tSsKt = copy_bt.get_slice(tid).partition_S(sKct);

      // S = Q K^T and dP = dO V^T over the chunk's keys.
      Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kKvChunk>>{});
      Tensor acc_dp = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kKvChunk>>{});
      clear(acc_s);
      clear(acc_dp);
      detail::gemm_ss(acc_s, rQ, rK, tSsQ, tSsK, tiled_mma, copy_a, copy_b);
      detail::gemm_ss(acc_dp, rdO, rV, tSsdO, tSsV, tiled_mma, copy_a, copy_b);

      Tensor s = make_tensor(acc_s.data(), detail::acc_rowcol(acc_s.layout()));
      Tensor dp = make_tensor(acc_dp.data(), detail::acc_rowcol(acc_dp.layout()));
      CUTE_UNROLL
      for (int mi = 0; mi < kRowsPerThread; ++mi) {
        int32_t wb[kRank], we[kRank];
        if (need_mask) {
          const int r = get<0>(tScS_rc(mi, 0));
          for (int i = 0; i < kRank; ++i) {
            wb[i] = smem.q_begin[i][r];
            we[i] = smem.q_end[i][r];
          }
        }
        CUTE_UNROLL
        for (int ni = 0; ni < kColsPerThread; ++ni) {
          const int col = c * kKvChunk + get<1>(tScS_rc(0, ni));
          float x = s(mi, ni) * scale_log2;
          if (mask == kMaskAll && smem.kv_x[st][0][col] < 0) x = -INFINITY;
          if (need_mask) {
            bool inside = true;
            for (int i = 0; i < kRank; ++i) {
              const int32_t y = smem.kv_x[st][i][col];
              inside = inside && wb[i] <= y && y < we[i];
            }
            if (!inside) x = -INFINITY;
          }
          const float pv = exp2f(x - lse_log2[mi]);
          dp(mi, ni) = pv * (dp(mi, ni) - delta[mi]);
        }
      }

      // dQ += dS K.
      Tensor rdS = detail::to_a_operand<Element>(acc_dp);
      detail::gemm_rs(acc_dq, rdS, rKt, tSsKt, tiled_mma, copy_bt);
    }

    if constexpr (kStages == 1) {
      if (e + 1 < kv_tiles) {
        __syncthreads();  // every warp is done with the K/V buffer; geometry of e + 1 visible
        gather_kv(0, st ^ 1);
        cp_async_fence();
      }
    }
  }

  // Epilogue: scale dQ, stage it over Q, scatter its rows.
  cp_async_wait<0>();
  __syncthreads();  // every warp is done reading Q
  detail::acc_to_smem<Traits>(acc_dq, f.scale, sQ, tiled_mma, tid);
  __syncthreads();
  auto* dq_base = static_cast<Element*>(p.dq) + b * p.dq_batch_stride + h * p.dq_head_stride;
  detail::store_rows<Traits, kBlockM, kHeadDim>(sQ, dq_base, p.dq_token_stride, smem.q_token, q_rows, tid);
}

}  // namespace detail

// The kernels of each family: thin entry points over the shared mainloops, named per family.
#define NL_SM80_BWD_KERNELS(family, KeySchedule)                                                                    \
  template <class Traits>                                                                                           \
  __global__ void __launch_bounds__(Traits::kDkDvThreads, Traits::kMinBlocksPerSm)                                  \
      sm80_##family##_bwd_dkdv_kernel(__grid_constant__ const typename KeySchedule::Params p) {                     \
    detail::bwd_dkdv<Traits, KeySchedule>(p);                                                                       \
  }                                                                                                                 \
  template <class Traits>                                                                                           \
  __global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)                                      \
      sm80_##family##_bwd_dq_kernel(__grid_constant__ const typename KeySchedule::Params p) {                       \
    detail::bwd_dq<Traits, typename KeySchedule::Params, typename KeySchedule::QSchedule>(p);                       \
  }
NL_SM80_BWD_KERNELS(gna, GnaKeySchedule)
// dK / dV of GNA's additional KV (the dQ kernel covers them through the forward's schedule).
template <class Traits>
__global__ void __launch_bounds__(Traits::kDkDvThreads, Traits::kMinBlocksPerSm)
    sm80_gna_bwd_additional_dkdv_kernel(__grid_constant__ const GnaBwdParams p) {
  detail::bwd_dkdv<Traits, GnaAdditionalKeySchedule<Traits::kBlockM>>(p);
}
NL_SM80_BWD_KERNELS(s2, StridedShardKeySchedule)
NL_SM80_BWD_KERNELS(block_sparse, BlockSparseKeySchedule)
#undef NL_SM80_BWD_KERNELS

// Launches the backward of one instantiation on `stream`: delta, then dK/dV (grid (kernel KV tiles, KV heads, batch)),
// then dQ (grid (kernel Q tiles, heads, batch)), with the family's kernels. Returns cudaErrorInvalidValue when the head
// dim or the head counts do not fit, cudaErrorInvalidConfiguration beyond the grid limits, cudaSuccess for empty
// problems. The family's launcher checks its tile shapes first.
template <class Traits, class KeySchedule, class Params>
cudaError_t launch_sm80_fmha_bwd(const Params& p, void (*dkdv)(Params), void (*dq)(Params), cudaStream_t stream) {
  using QSchedule = typename KeySchedule::QSchedule;
  constexpr int kHeadDimV = Traits::kHeadDimV;
  const auto& f = p.fwd;
  if (f.head_dim != Traits::kHeadDim || f.head_dim_v != kHeadDimV) return cudaErrorInvalidValue;
  if (f.batch == 0 || f.heads == 0 || f.tokens == 0) return cudaSuccess;
  if (f.kv_heads <= 0 || f.heads % f.kv_heads != 0) return cudaErrorInvalidValue;
  const int64_t q_tiles = QSchedule::num_q_tiles(f);
  const int64_t kv_tiles = KeySchedule::num_kv_tiles(p);
  if (q_tiles == 0 || kv_tiles == 0) return cudaSuccess;
  constexpr int kDeltaRowsPerBlock = 256 / (kHeadDimV / Traits::kChunk);
  const int64_t delta_blocks = (f.batch * f.tokens * f.heads + kDeltaRowsPerBlock - 1) / kDeltaRowsPerBlock;
  if (q_tiles > 0x7fffffff || kv_tiles > 0x7fffffff || delta_blocks > 0x7fffffff || f.heads > 65535 ||
      f.batch > 65535) {
    return cudaErrorInvalidConfiguration;
  }

  sm80_fmha_bwd_delta_kernel<typename Traits::Element, kHeadDimV, Params>
      <<<static_cast<unsigned>(delta_blocks), 256, 0, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  constexpr int kSmemDkDv = sizeof(detail::DkDvSmem<Traits, KeySchedule>);
  err = set_dynamic_smem(dkdv, kSmemDkDv);
  if (err != cudaSuccess) return err;
  dim3 grid_kv(static_cast<unsigned>(kv_tiles), static_cast<unsigned>(f.kv_heads), static_cast<unsigned>(f.batch));
  dkdv<<<grid_kv, Traits::kDkDvThreads, kSmemDkDv, stream>>>(p);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  constexpr int kSmemDq = sizeof(detail::DqSmem<Traits, QSchedule>);
  err = set_dynamic_smem(dq, kSmemDq);
  if (err != cudaSuccess) return err;
  dim3 grid_q(static_cast<unsigned>(q_tiles), static_cast<unsigned>(f.heads), static_cast<unsigned>(f.batch));
  dq<<<grid_q, Traits::kThreads, kSmemDq, stream>>>(p);
  return cudaGetLastError();
}

// dK / dV of GNA's additional KV: the dK/dV kernel over GnaAdditionalKeySchedule, on params whose keys, values and
// their gradients are the additional ones. Runs after the delta kernel.
template <class Traits>
cudaError_t launch_sm80_gna_additional_dkdv(const GnaBwdParams& p, cudaStream_t stream) {
  using KeySchedule = GnaAdditionalKeySchedule<Traits::kBlockM>;
  GnaBwdParams a = p;
  a.fwd.k = p.fwd.add_k;
  a.fwd.v = p.fwd.add_v;
  a.fwd.k_batch_stride = p.fwd.add_k_batch_stride, a.fwd.k_token_stride = p.fwd.add_k_token_stride;
  a.fwd.k_head_stride = p.fwd.add_k_head_stride;
  a.fwd.v_batch_stride = p.fwd.add_v_batch_stride, a.fwd.v_token_stride = p.fwd.add_v_token_stride;
  a.fwd.v_head_stride = p.fwd.add_v_head_stride;
  a.dk = p.d_add_k;
  a.dv = p.d_add_v;
  a.dk_batch_stride = p.d_add_k_batch_stride, a.dk_token_stride = p.d_add_k_token_stride;
  a.dk_head_stride = p.d_add_k_head_stride;
  a.dv_batch_stride = p.d_add_v_batch_stride, a.dv_token_stride = p.d_add_v_token_stride;
  a.dv_head_stride = p.d_add_v_head_stride;
  const int64_t tiles = KeySchedule::num_kv_tiles(a);
  const int64_t steps = (a.fwd.tokens + Traits::kBlockM - 1) / Traits::kBlockM * (a.fwd.heads / a.fwd.kv_heads);
  if (tiles > 0x7fffffff || steps > 0x7fffffff) return cudaErrorInvalidConfiguration;
  constexpr int kSmem = sizeof(detail::DkDvSmem<Traits, KeySchedule>);
  auto kernel = sm80_gna_bwd_additional_dkdv_kernel<Traits>;
  cudaError_t err = set_dynamic_smem(kernel, kSmem);
  if (err != cudaSuccess) return err;
  dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(a.fwd.kv_heads), static_cast<unsigned>(a.fwd.batch));
  kernel<<<grid, Traits::kDkDvThreads, kSmem, stream>>>(a);
  return cudaGetLastError();
}

// Additional KV is visited in tiles of the kernel's KV block, by the dQ kernel (the forward's schedule) and by its own
// dK/dV kernel.
template <class Element, int kHeadDim, int kBlockM, int kBlockN, int kHeadDimV = kHeadDim>
cudaError_t launch_sm80_gna_bwd(const GnaBwdParams& p, cudaStream_t stream) {
  using Traits = Sm80FmhaBwdTraits<Element, kHeadDim, kBlockM, kBlockN, kHeadDimV>;
  if (p.fwd.policy.max_q_rows() > kBlockM || p.fwd.policy.max_kv_rows() > kBlockN) return cudaErrorInvalidValue;
  const bool additional = p.fwd.num_additional > 0;
  if (p.fwd.num_additional < 0 || (additional && (p.fwd.add_k == nullptr || p.fwd.add_v == nullptr ||
                                                  p.d_add_k == nullptr || p.d_add_v == nullptr))) {
    return cudaErrorInvalidValue;
  }
  GnaBwdParams q = p;
  q.fwd.additional_block = kBlockN;
  const cudaError_t err = launch_sm80_fmha_bwd<Traits, GnaKeySchedule>(q, sm80_gna_bwd_dkdv_kernel<Traits>,
                                                                       sm80_gna_bwd_dq_kernel<Traits>, stream);
  if (err != cudaSuccess || !additional || q.fwd.batch == 0 || q.fwd.heads == 0 || q.fwd.tokens == 0) return err;
  return launch_sm80_gna_additional_dkdv<Traits>(q, stream);
}

// Pattern blocks larger than the kernel's blocks run as q_split x kv_split kernel blocks, as in the forward.
template <class Element, int kHeadDim, int kBlockM, int kBlockN, int kHeadDimV = kHeadDim>
cudaError_t launch_sm80_s2_bwd(const StridedShardBwdParams& p, cudaStream_t stream) {
  using Traits = Sm80FmhaBwdTraits<Element, kHeadDim, kBlockM, kBlockN, kHeadDimV>;
  const StridedShardFwdParams& f = p.fwd;
  const int64_t block = f.pattern.block;
  if (f.q_split < 1 || f.kv_split < 1 || block % f.q_split || block % f.kv_split || block / f.q_split > kBlockM ||
      block / f.kv_split > kBlockN) {
    return cudaErrorInvalidValue;
  }
  return launch_sm80_fmha_bwd<Traits, StridedShardKeySchedule>(p, sm80_s2_bwd_dkdv_kernel<Traits>,
                                                               sm80_s2_bwd_dq_kernel<Traits>, stream);
}

template <class Element, int kHeadDim, int kBlockM, int kBlockN, int kHeadDimV = kHeadDim>
cudaError_t launch_sm80_block_sparse_bwd(const BlockSparseBwdParams& p, cudaStream_t stream) {
  using Traits = Sm80FmhaBwdTraits<Element, kHeadDim, kBlockM, kBlockN, kHeadDimV>;
  const BlockSparseFwdParams& f = p.fwd;
  const int64_t qb = f.pattern.q_block, kb = f.pattern.kv_block;
  if (f.q_split < 1 || f.kv_split < 1 || qb % f.q_split || kb % f.kv_split || qb / f.q_split > kBlockM ||
      kb / f.kv_split > kBlockN) {
    return cudaErrorInvalidValue;
  }
  return launch_sm80_fmha_bwd<Traits, BlockSparseKeySchedule>(p, sm80_block_sparse_bwd_dkdv_kernel<Traits>,
                                                              sm80_block_sparse_bwd_dq_kernel<Traits>, stream);
}

}  // namespace natten_like::sm80
