// The sm90 fused GNA forward (and dense attention, a GNA whose window is the whole dim): one CTA per (Q tile, head,
// batch) walks the KV tiles its Q tile visits (policy/gna.hpp, through GnaKvTileIterator), or, persistent
// (sm90_tile_scheduler.hpp; the launcher's choice), one CTA per resident slot walks a round robin of those work tiles
// with its pipeline running on from one to the next (sm90_fmha_fwd_body), warp-specialised:
// - warpgroup 0, one warp: TMA loads of Q once and of K, V per visited KV tile into a 2-stage smem ring, straight from
//   the heads-last [B, X0, X1, X2, H, D] tensors viewed as 5-D (D, H, X2, X1, B * X0): a tile of any rank, dilated or
//   not, is one box per kBoxCols head-dim columns (V: kBoxColsV; sm90/tma_gna_box.hpp); it also writes each stage's
//   key geometry (group-local coordinates, whether the tile needs the element mask) next to the data. A stage's K half
//   (with the geometry) and V half are released apart (k_empty, v_empty), and each load waits for its own half only;
// - warpgroups 1 and 2, 64 query rows each: S = Q K^T (wgmma, smem operands), fp32 online softmax in registers (full
//   tiles unmasked, partial ones by the window test per dim, as sm80), O += P V (wgmma, P from registers, V read
//   MN-major from the same smem). The two warpgroups take turns to issue their GEMMs (FlashAttention-3's ping-pong),
//   so one's softmax runs under the other's GEMMs; within a warpgroup, the softmax of KV tile e runs under its own
//   P V of tile e - 1 (FlashAttention-3's intra-warpgroup overlap: one turn issues S_e and P_{e-1} V_{e-1}). K of a
//   tile is released once its S is masked, V once its P V has completed, a tile later: the producer refills K without
//   waiting for that P V;
// - out and logsumexp (natural log, float32) written once per row; a row with no key gets 0 and -inf.
// Additional KV (GnaFwdParams::add_k / add_v, keys every query attends in the same softmax): after its neighbourhood
// tiles a CTA visits ceil(N_add / kBlockN) additional tiles through the same ring, each one box of kBlockN rows of the
// 4-D view (D, H_kv, N_add, B) (sm90_schedules.hpp: additional_run); TMA zero-fills the rows past N_add, which the
// consumers mask by row index alone (no window: every query attends every real additional row). Additional tiles come
// last, so the smem rows past a neighbourhood box that the kernel zeroes once stay zero for every neighbourhood tile.
// The strided-shard and block-sparse families (sm90_seq_fwd_kernel) run the same body with the sm80 schedules wrapped
// in sm90_schedules.hpp: Q tiles and KV visits are runs of consecutive tokens, one box each of the 4-D view
// (D, H, tokens, B); the consumers are unchanged (the 1-D row geometry uses the same windows / coordinates).
// Head dims 64 and up run on 128-byte swizzled smem rows (boxes of 64 columns), head dim 32 on 64-byte ones (one box
// of 32 columns per row); the traits choose the swizzle (sm90_fmha_fwd_traits.hpp), the code here is the same.
// V and O may have fewer columns than Q and K (D_v < D, e.g. DeepSeek's MLA prefill, 192 / 128): V's stages, boxes,
// byte counts, descriptors and zeroed rows, the P V GEMM, the output accumulator and the staged output take kHeadDimV
// and V's swizzle, everything on the Q / K side kHeadDim; D_v = D is the same code as with one head dim.
// Semantics mirror sm80/sm80_fmha_fwd_kernel.hpp; every index comes from the host-tested policy, iterator, box and
// schedule code.
#pragma once

#include <cuda.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <new>
#include <type_traits>

#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cuda_host_adapter.hpp>

#include "natten_like/sm80/gna_tile_iterator.hpp"
#include "natten_like/sm80/named_barrier.hpp"
#include "natten_like/sm80/online_softmax.hpp"
#include "natten_like/sm80/sm80_fmha_fwd_params.hpp"
#include "natten_like/sm90/sm90_fmha_fwd_traits.hpp"
#include "natten_like/sm90/sm90_schedules.hpp"
#include "natten_like/sm90/sm90_tile_scheduler.hpp"
#include "natten_like/sm90/tma_gna_box.hpp"

namespace natten_like::sm90 {

using sm80::GnaFwdParams;
using sm80::GnaKvTileIterator;

// Kernel arguments: the shared params plus one TMA descriptor per input. __grid_constant__ keeps them in parameter
// space, where TMA reads its descriptors and where the policy is read without a local copy.
template <class Params>
struct Sm90FwdArgs {
  Params p;
  cute::TmaDescriptor tma_q;
  cute::TmaDescriptor tma_k;
  cute::TmaDescriptor tma_v;
};
// GNA adds the descriptors of the additional KV (4-D views (D, H_kv, N_add, B) with boxes of kBlockN rows), zero and
// never read when the problem has none.
struct Sm90GnaFwdArgs : Sm90FwdArgs<GnaFwdParams> {
  cute::TmaDescriptor tma_add_k;
  cute::TmaDescriptor tma_add_v;
};

// The kernel body serves two schedule kinds: GNA (this tag; multi-dimensional boxes of the 5-D view, tma_gna_box.hpp,
// the tile iterator as the CTA's state) and the 1-D families (Sm90SeqSchedule of sm90_schedules.hpp, its own state: one
// box per run of the 4-D view (D, H, tokens, B)). Only setup and producer differ; the consumers read the same per-row
// geometry (tokens, windows, key coordinates, need-mask flag) from smem.
struct Sm90GnaSchedule {
  using Params = GnaFwdParams;
};

// The kernel arguments of a schedule kind.
template <class Schedule>
struct Sm90ArgsOf {
  using type = Sm90FwdArgs<typename Schedule::Params>;
};
template <>
struct Sm90ArgsOf<Sm90GnaSchedule> {
  using type = Sm90GnaFwdArgs;
};

namespace detail {

using namespace cute;

// wgmma accumulator ((2, 2, N / 8), MMA_M, MMA_N), values (column pair, row + 8, 8-column block), viewed as
// (rows = (2, MMA_M), cols = (2, N / 8, MMA_N)) for row-wise softmax.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_rowcol(Layout acc) {
  return make_layout(make_layout(get<0, 1>(acc), get<1>(acc)),
                     make_layout(get<0, 0>(acc), get<0, 2>(acc), get<2>(acc)));
}

// The S accumulator viewed as the register A operand of the P V wgmma ((2, 2, 2), MMA_M, N / 16): an A k-block of 16
// keys is two adjacent 8-column blocks of the accumulator, with the same (column pair, row + 8) value order.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_as_a_operand(Layout acc) {
  static_assert(decltype(size<2>(acc))::value == 1, "one wgmma N tile spans the KV block");
  auto blocks = logical_divide(get<0, 2>(acc), Shape<_2>{});  // ((2, N / 16))
  return make_layout(make_layout(get<0, 0>(acc), get<0, 1>(acc), get<0, 0>(blocks)), get<1>(acc), get<0, 1>(blocks));
}

// The sm80 path's row reductions, online softmax row update, epilogue row factors and named barriers.
using sm80::detail::named_barrier_arrive;
using sm80::detail::named_barrier_sync;
using sm80::detail::quad_max;
using sm80::detail::quad_sum;
using sm80::detail::row_inv_sum;
using sm80::detail::row_lse;
using sm80::detail::softmax_update_row;

// acc (+)= A B over all k-blocks as one committed wgmma batch, not waited for: until a warpgroup_wait retires the
// batch, the caller must neither touch acc nor write a register A operand (it fences both after the wait), nor release
// the smem operands.
template <bool kZeroInit, class TiledMma, class TA, class TB, class TC>
CUTE_DEVICE void wgmma_issue(TiledMma& mma, TA const& tA, TB const& tB, TC& tC) {
  warpgroup_fence_operand(tC);
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tA); ++k) {
    cute::gemm(mma, tA(_, _, k), tB(_, _, k), tC);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(tC);
}

// The same batch, waited for before returning: the caller reads acc next, and the smem operands may be released
// afterwards.
template <bool kZeroInit, class TiledMma, class TA, class TB, class TC>
CUTE_DEVICE void wgmma_gemm(TiledMma& mma, TA const& tA, TB const& tB, TC& tC) {
  wgmma_issue<kZeroInit>(mma, tA, tB, tC);
  warpgroup_wait<0>();
  warpgroup_fence_operand(tC);
}

// Zeroes rows [first_row, rows) of `blocks` consecutive blocks of `rows` rows of kRowBytes bytes. A swizzle as wide
// as the row (128 or 64 bytes) permutes 16-byte chunks within a row only, so whole rows are plain byte ranges.
template <int kThreads, int kRowBytes>
CUTE_DEVICE void zero_smem_rows(void* buf, int blocks, int rows, int first_row, int tid) {
  const int chunks = (rows - first_row) * (kRowBytes / 16);
  char* base = static_cast<char*>(buf) + first_row * kRowBytes;
  for (int i = tid; i < blocks * chunks; i += kThreads) {
    *reinterpret_cast<uint4*>(base + (i / chunks) * rows * kRowBytes + (i % chunks) * 16) = make_uint4(0, 0, 0, 0);
  }
}

}  // namespace detail

namespace detail {

template <class Schedule>
struct ScheduleState {
  using type = Schedule;
};
template <>
struct ScheduleState<Sm90GnaSchedule> {
  using type = GnaKvTileIterator<kRank>;
};

// Issues the K and V rows [start, start + box rows) of (batch entry, KV head h_kv) into one stage through 4-D TMA views
// (one box per kBoxCols head-dim columns of K, per kBoxColsV of V), the stage's full barriers expecting k_bytes and
// v_bytes (they differ for D_v != D): the producer's load of a 1-D run (block-sparse / S2 visits, GNA's additional
// KV). The caller has waited for the stage's K half (k_empty: it writes the stage's key geometry before); the V boxes
// wait here for the V half (v_empty, phase `empty_phase`), released one KV tile later.
template <class Traits, class Element>
CUTE_DEVICE void load_kv_run_4d(const cute::TmaDescriptor* tma_k, const cute::TmaDescriptor* tma_v, uint64_t* k_full,
                                uint64_t* v_full, uint64_t* v_empty, uint32_t empty_phase, Element* k_dst,
                                Element* v_dst, uint32_t k_bytes, uint32_t v_bytes, int h_kv, int32_t start,
                                int32_t batch) {
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  constexpr uint64_t kCacheHint = static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_NORMAL);
  constexpr int kBlockN = Traits::kBlockN, kBoxCols = Traits::kBoxCols, kBoxColsV = Traits::kBoxColsV;
  TxBarrier::arrive_and_expect_tx(k_full, k_bytes);
  CUTE_UNROLL
  for (int j = 0; j < Traits::kBoxesPerRow; ++j) {
    cute::SM90_TMA_LOAD_4D::copy(tma_k, k_full, kCacheHint, k_dst + j * kBlockN * kBoxCols, j * kBoxCols, h_kv, start,
                                 batch);
  }
  cutlass::arch::ClusterBarrier::wait(v_empty, empty_phase);
  TxBarrier::arrive_and_expect_tx(v_full, v_bytes);
  CUTE_UNROLL
  for (int j = 0; j < Traits::kBoxesPerRowV; ++j) {
    cute::SM90_TMA_LOAD_4D::copy(tma_v, v_full, kCacheHint, v_dst + j * kBlockN * kBoxColsV, j * kBoxColsV, h_kv,
                                 start, batch);
  }
}

// The kernel body (inlined into the __global__ entries below, which take `args` as __grid_constant__).
// kPersistent (sm90_tile_scheduler.hpp): the CTA walks the work tiles blockIdx.x, + gridDim.x, ... of the linearised
// (Q tile, head, batch) space instead of running the one tile of its 3-D grid position. Then
// - the producer and the consumers walk the same sequence; the KV ring's position (stage, phase) and the phases of
//   q_full / q_empty continue across work tiles, nothing is re-initialised;
// - the schedule states are double-buffered (`state` for the CTA's even local work tiles i, odd_state for odd ones,
//   with the work tile itself in tile[i % 2]; q_tile -1 means no more work). Thread 0 builds work tile 0's before the
//   role split; when the consumers start work tile i, one consumer thread builds work tile i + 1's (or the end mark)
//   in the other buffer and publishes it to the producer on state_full[(i + 1) % 2] (an mbarrier: the producer runs
//   ahead, so a CTA-wide barrier would serialise the roles) and to the other consumers through consumer-only named
//   barrier 5, which also orders the previous epilogue's reads of the Q row geometry before its rewrite. That buffer
//   was last read for work tile i - 1, by the producer before any load the consumers waited for, by the consumers
//   before barrier 5. The producer (56 registers) thus never builds a state, and re-reads the head and batch entry
//   from smem where it issues a load rather than holding them across its loop;
// - the consumer warps release the Q buffer on q_empty after the epilogue has read the staged output (and the Q row
//   geometry) back; the producer waits on it before the next Q box, which it issues after the next work tile's first
//   KV tiles, so those loads overlap the epilogue;
// - with additional KV, smem key rows past the neighbourhood box may hold the previous work tile's additional rows
//   (its last boxes fill all kBlockN rows): masked keys of the next neighbourhood tiles, data of this batch entry's
//   additional KV that P (exactly 0 there) cancels.
// Without it the code below is the one-tile kernel: every persistent-only step is under `if constexpr (kPersistent)`.
template <class Traits, class Schedule, bool kPersistent>
CUTE_DEVICE void sm90_fmha_fwd_body(const typename Sm90ArgsOf<Schedule>::type& args) {
#if defined(__CUDA_ARCH__) && !defined(CUTE_ARCH_MMA_SM90A_ENABLED)
  // Built for an arch without wgmma/TMA/setmaxnreg (the same TU is compiled for sm_80 too, and its PTX): the host
  // launches this kernel only on sm_90a devices, so this body runs only if a loader picked this code over the sm_90a
  // cubin, and then it must fail loudly rather than return unwritten outputs.
  __trap();
#else
  using namespace cute;
  constexpr bool kGna = std::is_same_v<Schedule, Sm90GnaSchedule>;
  using State = typename ScheduleState<Schedule>::type;
  using SharedStorage = typename Traits::template SharedStorageFor<State, kPersistent>;
  using Element = typename Traits::Element;
  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
  constexpr int kHeadDimV = Traits::kHeadDimV;
  constexpr int kStages = Traits::kStages, kBoxCols = Traits::kBoxCols, kBoxesPerRow = Traits::kBoxesPerRow;
  constexpr int kBoxColsV = Traits::kBoxColsV, kBoxesPerRowV = Traits::kBoxesPerRowV;
  constexpr int kConsumerWarps = Traits::kConsumerThreads / 32;

  const auto& p = args.p;

  // The kernel has no static smem, so dynamic smem starts at the 1024-byte aligned base of the CTA's window (CUTLASS's
  // sm90 kernels rely on the same); a constant base keeps the buffers' addresses immediates instead of a 64-bit pointer
  // live across the role split.
  extern __shared__ __align__(1024) char smem_raw[];
  auto& smem = *reinterpret_cast<SharedStorage*>(smem_raw);
  const int tid = threadIdx.x;
  const int warpgroup = tid / 128;

  // The CTA's work tile in the one-tile kernel: its grid position.
  const int64_t grid_q_tile = blockIdx.x;
  const int grid_h = blockIdx.y;
  const int64_t grid_b = blockIdx.z;
  auto grid_tile = [&] { return Sm90WorkTile{grid_q_tile, grid_h, grid_b}; };
  // The schedule state of a work tile, constructed in place in smem.
  auto init_state = [&](State& state, const Sm90WorkTile& t) {
    if constexpr (kGna) {
      state = GnaKvTileIterator<kRank>(p.policy, t.q_tile);
    } else {
      new (&state) State(p, t.q_tile, t.h, t.b);
    }
  };
  // Persistent: local work tile i's state and work tile (buffer i % 2).
  auto state_buf = [&](uint32_t k) -> State& {
    if constexpr (kPersistent) {
      return k ? smem.persistent.odd_state : smem.state;
    } else {
      return smem.state;
    }
  };

  // The iterator (some 30 int64) or schedule lives in smem, read field by field where needed, as in sm80: held in
  // registers it would compete with the accumulators.
  if (tid == 0) {
    // TMA and GMMA agree on the swizzle only in 1024-byte aligned buffers: fail loudly rather than compute garbage.
    if (cast_smem_ptr_to_uint(smem_raw) % 1024 != 0) __trap();
    if constexpr (kPersistent) {
      Sm90TileScheduler work;
      if constexpr (kGna) {
        work = Sm90TileScheduler{p.policy.num_q_tiles(), p.heads, p.batch};
      } else {
        work = Sm90TileScheduler{Schedule::num_q_tiles(p), p.heads, p.batch};
      }
      smem.persistent.work = work;
      // The launcher's grid never exceeds the work; were it to, the CTA would see "no more work" and exit.
      Sm90WorkTile t{-1, 0, 0};
      if (static_cast<int64_t>(blockIdx.x) < work.total()) {
        t = work.tile(blockIdx.x);
        init_state(smem.state, t);
      }
      smem.persistent.tile[0] = t;
    } else {
      init_state(smem.state, grid_tile());
    }
    Barrier::init(&smem.q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      Barrier::init(&smem.k_full[s], 1);  // the producer's arrive_and_expect_tx; TMA completes the bytes
      Barrier::init(&smem.v_full[s], 1);
      // One arrival per consumer warp: K after its mask of S, V after its P V wgmma.
      Barrier::init(&smem.k_empty[s], kConsumerWarps);
      Barrier::init(&smem.v_empty[s], kConsumerWarps);
    }
    if constexpr (kPersistent) {
      Barrier::init(&smem.persistent.q_empty, kConsumerWarps);  // one arrival per consumer warp, after its epilogue
      Barrier::init(&smem.persistent.state_full[0], 1);  // the consumer thread that builds the state
      Barrier::init(&smem.persistent.state_full[1], 1);
    }
    cutlass::arch::fence_barrier_init();
  } else if (tid == 32) {
    prefetch_tma_descriptor(&args.tma_q);
    prefetch_tma_descriptor(&args.tma_k);
    prefetch_tma_descriptor(&args.tma_v);
    if constexpr (kGna) {
      if (p.num_additional > 0) {
        prefetch_tma_descriptor(&args.tma_add_k);
        prefetch_tma_descriptor(&args.tma_add_v);
      }
    }
  }
  if constexpr (!kPersistent) __syncthreads();
  // Every box of this launch fills the same rows of its smem tile: GNA, the tile shape's row product; 1-D, the kernel
  // rows of one pattern block (both <= the block).
  int q_box_rows, kv_box_rows;
  if constexpr (kGna) {
    q_box_rows = static_cast<int>(tma_box_rows<kRank>(p.policy.tq));
    kv_box_rows = static_cast<int>(tma_box_rows<kRank>(p.policy.tk));
  } else {
    q_box_rows = seq_q_box_rows(p);
    kv_box_rows = seq_kv_box_rows(p);
  }

  // Q row geometry of smem row `row` of the work tile of `sched`: token (for the epilogue) and window per dim (for the
  // mask).
  auto write_q_row = [&](const State& sched, int row) {
    int32_t wb[kRank], we[kRank];
    int64_t token = -1;
    if constexpr (kGna) {
      const GnaPolicy<kRank>& pol = p.policy;
      int32_t x[kRank];
      if (tma_box_row(sched.q, pol.tq, row, x)) {
        token = tma_box_row_token(pol, sched.q, x);
        sched.q_row_window(pol, x, wb, we);
      } else {
        for (int i = 0; i < kRank; ++i) wb[i] = we[i] = 0;  // empty window; the row is never stored
      }
    } else {
      token = sched.q_row(p, row, wb, we);  // -1 and an empty window past the tile's rows
    }
    smem.q_token[row] = token;
    for (int i = 0; i < kRank; ++i) {
      smem.q_begin[i][row] = wb[i];
      smem.q_end[i][row] = we[i];
    }
  };
  // KV tiles of a work tile: kv_tiles of its neighbourhood / schedule, then (GNA) the additional tiles; the launcher
  // sets num_additional to 0 when there are none.
  auto kv_tiles_of = [&](const State& sched) -> int64_t {
    if constexpr (kGna) {
      return sched.count;
    } else {
      return sched.count();
    }
  };
  // Additional tiles per work tile (GNA), recomputed where needed rather than held across the role split.
  auto tiles_add = [&]() -> int64_t {
    if constexpr (kGna) {
      return additional_tiles(p.num_additional, kBlockN);
    } else {
      return 0;
    }
  };

  // Non-persistent: the Q row geometry, fixed for the CTA (persistent: per work tile, by the consumers).
  if constexpr (!kPersistent) {
    if (tid < kBlockM) write_q_row(smem.state, tid);
  }
  // Rows past the box's row product are never written by a neighbourhood / 1-D box. Zero them once for the CTA: P is
  // exactly 0 on those keys (they are masked), but stale smem could hold NaN bit patterns and 0 * NaN = NaN in P V.
  // Rows inside the box that are not tile rows are zero-filled by TMA (GNA: past any token dim's end, the batch entry
  // being a TMA dim of its own) or hold other tokens (1-D: tokens past the run, of another block or, packed, of the
  // next sequence). Additional KV boxes fill all kBlockN rows (real rows, or TMA's zeros past N_add) and come after
  // every neighbourhood tile of the work tile (persistent: the next work tile's neighbourhood tiles then see those
  // additional rows there, masked). Persistent: the Q rows past the box keep the previous work
  // tile's staged output (bytes of O rows, in O's layout when D_v != D): whatever a Q row holds reaches only the
  // outputs of that row (S, the softmax and P V are row-wise), never stored.
  constexpr int kRowBytes = Traits::kSwizzleBytes, kRowBytesV = Traits::kSwizzleBytesV;  // a row of one box's block
  detail::zero_smem_rows<Traits::kThreads, kRowBytes>(smem.q, kBoxesPerRow, kBlockM, q_box_rows, tid);
  detail::zero_smem_rows<Traits::kThreads, kRowBytes>(smem.k, kBoxesPerRow * kStages, kBlockN, kv_box_rows, tid);
  detail::zero_smem_rows<Traits::kThreads, kRowBytesV>(smem.v, kBoxesPerRowV * kStages, kBlockN, kv_box_rows, tid);
  cutlass::arch::fence_view_async_shared();  // generic-proxy zeros visible to wgmma's async-proxy reads
  __syncthreads();

  // One-tile kernel: the KV tile counts of the CTA, read once for both roles (persistent: per work tile and role).
  int64_t grid_kv_tiles = 0, grid_tiles = 0;
  if constexpr (!kPersistent) {
    grid_kv_tiles = kv_tiles_of(smem.state);
    grid_tiles = grid_kv_tiles + tiles_add();
  }
  if (warpgroup == 0) {
    // ---- Producer --------------------------------------------------------------------------------------------------
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (tid >= 32) return;
    const int lane = tid;  // warp 0 alone goes on; the lane index is never held across the role split
    constexpr uint64_t kCacheHint = static_cast<uint64_t>(TMA::CacheHintSm90::EVICT_NORMAL);
    // Persistent: KV tiles loaded by the CTA before this work tile, mod 2^32 (the ring's position: kStages divides
    // 2^32), and the local work tile i (q_full / q_empty phase i % 2, state buffer i % 2).
    uint32_t ring = 0;
    for (uint32_t i = 0;; ++i) {
      Sm90WorkTile t;
      if constexpr (kPersistent) {
        // Work tile i's state, built by a consumer thread when the consumers started work tile i - 1 (the first by
        // thread 0 before the role split); buffer i % 2 is published for the (i + 1) / 2-th time.
        if (i > 0) Barrier::wait(&smem.persistent.state_full[i & 1], ((i - 1) >> 1) & 1);
        t = smem.persistent.tile[i & 1];
        if (t.q_tile < 0) break;
      } else {
        t = grid_tile();
      }
      const State& sched = state_buf(i & 1);
      // The work tile's head, KV head and batch entry: the grid's, or (persistent) re-read from smem by lane 0 where it
      // issues a load, as the producer's register budget has no room to hold them across the KV loop.
      const int h_grid = kPersistent ? 0 : t.h;
      const int h_kv_grid = kPersistent ? 0 : t.h / (p.heads / p.kv_heads);
      const int64_t b_grid = kPersistent ? 0 : t.b;
      auto head = [&]() -> int {
        if constexpr (kPersistent) {
          return smem.persistent.tile[i & 1].h;
        } else {
          return h_grid;
        }
      };
      auto kv_head = [&]() -> int {
        if constexpr (kPersistent) {
          return head() / (p.heads / p.kv_heads);
        } else {
          return h_kv_grid;
        }
      };
      auto batch_entry = [&]() -> int64_t {
        if constexpr (kPersistent) {
          return smem.persistent.tile[i & 1].b;
        } else {
          return b_grid;
        }
      };
      // int32: the launchers keep a work tile's KV tiles (neighbourhood or runs, and additional) below 2^31, and the
      // producer's 56 registers have no room for 64-bit counts.
      const int kv_tiles = static_cast<int>(kPersistent ? kv_tiles_of(sched) : grid_kv_tiles);
      const int tiles = static_cast<int>(kPersistent ? kv_tiles + tiles_add() : grid_tiles);
      // Persistent: every lane has read the work tile and its counts before lane 0's loads let the consumers finish it
      // and reuse its state buffer (for work tile i + 2); a work tile with no neighbourhood tile has no other
      // __syncwarp between these reads and the next work tile.
      if constexpr (kPersistent) __syncwarp();
      // Persistent, after the first work tile: the Q box goes after the first KV tiles (which only wait for the ring),
      // so they load while the consumers still run the previous epilogue out of the Q buffer.
      // (q_at = min(kStages, tiles) as a register would spill under the producer's budget: the tests below spell it.)
      const bool q_first = !kPersistent || i == 0;
      auto stage_of = [&](int64_t e) {
        if constexpr (kPersistent) return static_cast<int>((ring + static_cast<uint32_t>(e)) % kStages);
        return static_cast<int>(e % kStages);
      };
      auto phase_of = [&](int64_t e) {
        if constexpr (kPersistent) return ((ring + static_cast<uint32_t>(e)) / kStages) & 1;
        return static_cast<uint32_t>((e / kStages) & 1);
      };
      if constexpr (kGna) {
        const GnaPolicy<kRank>& pol = p.policy;
        // TMA coordinates (h * D + columns, x2, x1, x0, batch entry) of the 5-D views (make_gna_tma_desc).
        auto load_q = [&] {
          if (lane == 0) {
            const int32_t col = head() * kHeadDim;
            const int32_t b = static_cast<int32_t>(batch_entry());
            if constexpr (kPersistent) Barrier::wait(&smem.persistent.q_empty, (i & 1) ^ 1);
            int32_t start[kRank];
            tma_box_start(pol, sched.q, start);
            TxBarrier::arrive_and_expect_tx(&smem.q_full, q_box_rows * kHeadDim * sizeof(Element));
            CUTE_UNROLL
            for (int j = 0; j < kBoxesPerRow; ++j) {
              SM90_TMA_LOAD_5D::copy(&args.tma_q, &smem.q_full, kCacheHint, smem.q + j * kBlockM * kBoxCols,
                                     col + j * kBoxCols, start[2], start[1], start[0], b);
            }
          }
        };
        if (q_first) load_q();
        const uint32_t k_bytes = kv_box_rows * kHeadDim * sizeof(Element);
        const uint32_t v_bytes = kv_box_rows * kHeadDimV * sizeof(Element);
        for (int e = 0; e < tiles; ++e) {
          if (!q_first && e == kStages) load_q();
          const int st = stage_of(e);
          const uint32_t phase = phase_of(e);
          // Wait until every consumer warp is done with the K half of the stage's previous tile (K and the key
          // geometry, written below); a fresh barrier counts its preceding phase as complete, so the first kStages
          // waits pass at once. The V half is waited for by lane 0 just before the V boxes, after this tile's K boxes
          // are issued: it is released one KV tile later, and this K does not wait for it (the next tile's K does, as
          // lane 0 issues in order).
          Barrier::wait(&smem.k_empty[st], phase ^ 1);
          Element* k_dst = smem.k + st * kBlockN * kHeadDim;
          Element* v_dst = smem.v + st * kBlockN * kHeadDimV;
          if (e >= kv_tiles) {
            // Additional tile: a box of kBlockN rows (all of them counted by TMA, zero-filled past N_add) at row
            // a * kBlockN of the CTA's batch entry. The consumers mask by row index, so no row geometry is written.
            if (lane == 0) {
              const SeqRun run = additional_run(p.num_additional, kBlockN, e - kv_tiles);
              smem.kv_mask[st] = kv_mask_of_additional(run, kBlockN);
              constexpr uint32_t kAddBytesK = kBlockN * kHeadDim * sizeof(Element);
              constexpr uint32_t kAddBytesV = kBlockN * kHeadDimV * sizeof(Element);
              load_kv_run_4d<Traits>(&args.tma_add_k, &args.tma_add_v, &smem.k_full[st], &smem.v_full[st],
                                     &smem.v_empty[st], phase ^ 1, k_dst, v_dst, kAddBytesK, kAddBytesV, kv_head(),
                                     static_cast<int32_t>(run.token), static_cast<int32_t>(batch_entry()));
            }
            continue;
          }
          if constexpr (kPersistent) {
            // Every work tile ends with its additional tiles, whose kBlockN rows the stages keep into the next work
            // tile: the V rows past this box, which no neighbourhood box rewrites, must be zeros again before the
            // consumers read the stage, since P = 0 there and 0 * NaN (a NaN in add_v) would reach this work tile's
            // output. So the first use of each stage in a work tile after the first (its first kStages tiles) zeroes
            // them once the consumers are done with the stage's V; no TMA write races those rows. Computed, not
            // tracked per stage: a register for it spilled the hd32 producer. (K rows there are masked to -inf by
            // assignment.) V's rows: kHeadDimV columns in V's swizzle.
            if (i > 0 && e < kStages && tiles_add() > 0) {
              Barrier::wait(&smem.v_empty[st], phase ^ 1);
              detail::zero_smem_rows<32, Traits::kSwizzleBytesV>(v_dst, kBoxesPerRowV, kBlockN, kv_box_rows, lane);
              cutlass::arch::fence_view_async_shared();  // visible to the consumers' wgmma (async proxy) reads
              __syncwarp();
            }
          }
          int64_t u[kRank];
          bool full;
          const GnaTileBox<kRank> kv = sched.visit(pol, e, u, full);
          // One row at a time: unrolled, the rows' divisions by runtime tile extents, next to what lane 0 keeps for
          // the V half's wait below, overflow the producer's 56 registers.
          CUTE_NO_UNROLL
          for (int r = lane; r < kBlockN; r += 32) {
            int32_t x[kRank];
            tma_box_row(kv, pol.tk, r, x);
            for (int i = 0; i < kRank; ++i) smem.kv_x[st][i][r] = x[i];
          }
          if (lane == 0) smem.kv_mask[st] = kv_mask_of_tile(full, kv_box_rows, kBlockN);
          // The geometry is published by lane 0's arrive below (release), ordered after the other lanes' stores here.
          __syncwarp();
          if (lane == 0) {
            const int h_kv = kv_head();
            const int32_t b = static_cast<int32_t>(batch_entry());
            int32_t start[kRank];
            tma_box_start(pol, kv, start);
            TxBarrier::arrive_and_expect_tx(&smem.k_full[st], k_bytes);
            CUTE_UNROLL
            for (int j = 0; j < kBoxesPerRow; ++j) {
              SM90_TMA_LOAD_5D::copy(&args.tma_k, &smem.k_full[st], kCacheHint, k_dst + j * kBlockN * kBoxCols,
                                     h_kv * kHeadDim + j * kBoxCols, start[2], start[1], start[0], b);
            }
            Barrier::wait(&smem.v_empty[st], phase ^ 1);
            TxBarrier::arrive_and_expect_tx(&smem.v_full[st], v_bytes);
            CUTE_UNROLL
            for (int j = 0; j < kBoxesPerRowV; ++j) {
              SM90_TMA_LOAD_5D::copy(&args.tma_v, &smem.v_full[st], kCacheHint, v_dst + j * kBlockN * kBoxColsV,
                                     h_kv * kHeadDimV + j * kBoxColsV, start[2], start[1], start[0], b);
            }
          }
        }
        if (!q_first && tiles <= kStages) load_q();
      } else {
        // 1-D families: one box per run, (head-dim columns, head, first token of the run, batch entry) of the 4-D view.
        auto load_q = [&] {
          if (lane == 0) {
            const int h = head();
            const int32_t batch = static_cast<int32_t>(batch_entry());
            if constexpr (kPersistent) Barrier::wait(&smem.persistent.q_empty, (i & 1) ^ 1);
            const int32_t q_start = static_cast<int32_t>(sched.q_start(p));
            TxBarrier::arrive_and_expect_tx(&smem.q_full, q_box_rows * kHeadDim * sizeof(Element));
            CUTE_UNROLL
            for (int j = 0; j < kBoxesPerRow; ++j) {
              SM90_TMA_LOAD_4D::copy(&args.tma_q, &smem.q_full, kCacheHint, smem.q + j * kBlockM * kBoxCols,
                                     j * kBoxCols, h, q_start, batch);
            }
          }
        };
        if (q_first) load_q();
        const uint32_t k_bytes = kv_box_rows * kHeadDim * sizeof(Element);
        const uint32_t v_bytes = kv_box_rows * kHeadDimV * sizeof(Element);
        for (int e = 0; e < kv_tiles; ++e) {
          if (!q_first && e == kStages) load_q();
          const int st = stage_of(e);
          const uint32_t phase = phase_of(e);
          Barrier::wait(&smem.k_empty[st], phase ^ 1);  // as above (the V half: in load_kv_run_4d)
          typename Schedule::KvTile kv;
          const SeqRun run = sched.kv_run(p, e, kv);
          for (int r = lane; r < kBlockN; r += 32) {
            int32_t x[kRank];
            sched.kv_row(p, kv, run, r, x);
            for (int i = 0; i < kRank; ++i) smem.kv_x[st][i][r] = x[i];
          }
          // A run shorter than the block (a small pattern block, a block cut by the end, an empty visit) has padding.
          if (lane == 0) smem.kv_mask[st] = kv_mask_of_tile(run.full, run.rows, kBlockN);
          __syncwarp();
          if (lane == 0) {
            load_kv_run_4d<Traits>(&args.tma_k, &args.tma_v, &smem.k_full[st], &smem.v_full[st], &smem.v_empty[st],
                                   phase ^ 1, smem.k + st * kBlockN * kHeadDim, smem.v + st * kBlockN * kHeadDimV,
                                   k_bytes, v_bytes, kv_head(), static_cast<int32_t>(run.token),
                                   static_cast<int32_t>(batch_entry()));
          }
        }
        if (!q_first && kv_tiles <= kStages) load_q();
      }
      if constexpr (!kPersistent) break;
      ring += static_cast<uint32_t>(tiles);
    }
    return;
  }

  // ---- Consumers --------------------------------------------------------------------------------------------------
  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
  const int ctid = tid - 128;  // thread index among the consumer warpgroups
  const int lane = ctid % 32;
  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(ctid);

  Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutK{});
  Tensor sVt = make_tensor(make_smem_ptr(smem.v), typename Traits::SmemLayoutVt{});
  // The GMMA descriptors depend on the warpgroup only: taken from a warp-uniform index (a shuffle from lane 0, as
  // FlashAttention-3 does), they live in uniform registers instead of taking 16 of the registers the accumulators need.
  const int wg_thread0 = __shfl_sync(0xffffffff, ctid / 128, 0) * 128;
  auto wg_qk = mma_qk.get_slice(wg_thread0);
  auto wg_pv = mma_pv.get_slice(wg_thread0);
  Tensor tSrQ = wg_qk.partition_fragment_A(sQ);  // GMMA descriptors of this warpgroup's 64 Q rows
  Tensor tSrK = wg_qk.partition_fragment_B(sK);  // (MMA, MMA_N, MMA_K, stage)
  Tensor tOrV = wg_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)

  // Each thread's rows and columns of the S tile, from the MMA's own partition of an identity tensor.
  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor tScS_rc = make_tensor(tScS.data(), detail::acc_rowcol(tScS.layout()));
  constexpr int kRowsPerThread = size<0>(decltype(tScS_rc.layout()){});
  constexpr int kColsPerThread = size<1>(decltype(tScS_rc.layout()){});

  // Scores are scaled into the log2 domain before masking, so scale = 0 never meets -inf (0 * -inf would be NaN).
  const float scale_log2 = p.scale * static_cast<float>(M_LOG2E);

  uint32_t ring = 0;  // as the producer's
  for (uint32_t i = 0;; ++i) {
    int64_t tiles;
    if constexpr (kPersistent) {
      // tile[i % 2] and its state were published by barrier 5 of work tile i - 1 (or the __syncthreads above).
      if (smem.persistent.tile[i & 1].q_tile < 0) break;
      // Barrier 5 (the consumer threads): the previous epilogue's reads of the Q row geometry and of tile[(i + 1) % 2]
      // are done before both are rewritten.
      detail::named_barrier_sync<5, Traits::kConsumerThreads>();
      if (ctid == 0) {
        // Work tile i + 1 for the producer (which waits for it only after loading all of work tile i, and has read
        // buffer (i + 1) % 2 for work tile i - 1 before any load the consumers waited for) and for the consumers.
        const Sm90TileScheduler& work = smem.persistent.work;
        const int64_t next = static_cast<int64_t>(blockIdx.x) + (static_cast<int64_t>(i) + 1) * gridDim.x;
        Sm90WorkTile t{-1, 0, 0};
        if (next < work.total()) {
          t = work.tile(next);
          init_state(state_buf((i & 1) ^ 1), t);
        }
        smem.persistent.tile[(i & 1) ^ 1] = t;
        Barrier::arrive(&smem.persistent.state_full[(i & 1) ^ 1]);
      }
      const State& sched = state_buf(i & 1);
      if (ctid < kBlockM) write_q_row(sched, ctid);
      tiles = kv_tiles_of(sched) + tiles_add();
      detail::named_barrier_sync<5, Traits::kConsumerThreads>();  // the Q row geometry is written
    } else {
      tiles = grid_tiles;
    }
    auto stage_of = [&](int64_t e) {
      if constexpr (kPersistent) return static_cast<int>((ring + static_cast<uint32_t>(e)) % kStages);
      return static_cast<int>(e % kStages);
    };
    auto phase_of = [&](int64_t e) {
      if constexpr (kPersistent) return ((ring + static_cast<uint32_t>(e)) / kStages) & 1;
      return static_cast<uint32_t>((e / kStages) & 1);
    };

    Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kHeadDimV>>{});
    clear(acc_o);
    Tensor o = make_tensor(acc_o.data(), detail::acc_rowcol(acc_o.layout()));
    // Per row of this thread: the running max (log2 domain), the thread's partial sum, and the correction that moves O
    // from the previous max to row_max, set by a tile's softmax and applied to O right before that tile's P V.
    float row_max[kRowsPerThread], row_sum[kRowsPerThread], correction[kRowsPerThread];
    CUTE_UNROLL
    for (int mi = 0; mi < kRowsPerThread; ++mi) {
      row_max[mi] = -INFINITY;
      row_sum[mi] = 0.f;
    }
    // S of one tile and P of the previous one in registers of their own: P_{e-1} is the A operand of the P V wgmma
    // that is in flight while S_e is masked and exponentiated.
    Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
    Tensor s = make_tensor(acc_s.data(), detail::acc_rowcol(acc_s.layout()));
    Tensor p_frag = make_tensor_like<Element>(acc_s);
    Tensor tOrP = make_tensor(p_frag.data(), detail::acc_as_a_operand(p_frag.layout()));

    // Ping-pong turns: barrier 3 is warpgroup 1's turn, 4 is warpgroup 2's; each is a bar.sync of the warpgroup whose
    // turn it is (128 threads) plus a bar.arrive of the other (128). A turn issues the GEMMs of one KV tile e: S_e
    // alone for e = 0, S_e and P_{e-1} V_{e-1} for e >= 1 (the last tile's P V is issued after the last turn), so each
    // warpgroup takes `tiles` turns. Warpgroup 1 grants itself the first turn; a warpgroup hands the turn over after
    // each, except warpgroup 2 after the last tile (warpgroup 1 takes no further turn), so no barrier is left
    // half-arrived at the end of the work tile: barrier 3 sees 1 + (tiles - 1) arrivals and tiles syncs, barrier 4
    // tiles of each; none at all for tiles = 0. Both warpgroups visit the same tiles.
    auto take_turn = [&] {
      if constexpr (Traits::kPingPong) {
        if (warpgroup == 1) {
          detail::named_barrier_sync<3, 256>();
        } else {
          detail::named_barrier_sync<4, 256>();
        }
      }
    };
    auto pass_turn = [&](int64_t e) {
      if constexpr (Traits::kPingPong) {
        if (warpgroup == 1) {
          detail::named_barrier_arrive<4, 256>();
        } else if (e + 1 < tiles) {
          detail::named_barrier_arrive<3, 256>();
        }
      }
    };
    if constexpr (Traits::kPingPong) {
      if (warpgroup == 1 && tiles > 0) detail::named_barrier_arrive<3, 256>();
    }

    // S (completed, stage st) -> exponents in place: scale into the log2 domain, mask, release the stage's K half, then
    // the online softmax (new running max per row over the 4 lanes sharing the row, exponents, partial sums and the
    // correction of what came before).
    auto mask_softmax = [&](int st) {
      CUTE_UNROLL
      for (int i = 0; i < size(acc_s); ++i) acc_s(i) *= scale_log2;
      const int32_t kv_mask = smem.kv_mask[st];
      if (kv_mask == kKvMaskWindow) {
        // Query windows and key coordinates are read from smem per masked tile rather than held across the loop.
        int32_t wb[kRowsPerThread][kRank], we[kRowsPerThread][kRank];
        CUTE_UNROLL
        for (int mi = 0; mi < kRowsPerThread; ++mi) {
          const int r = get<0>(tScS_rc(mi, 0));
          CUTE_UNROLL
          for (int i = 0; i < kRank; ++i) {
            wb[mi][i] = smem.q_begin[i][r];
            we[mi][i] = smem.q_end[i][r];
          }
        }
        CUTE_UNROLL
        for (int ni = 0; ni < kColsPerThread; ++ni) {
          const int c = get<1>(tScS_rc(0, ni));
          int32_t x[kRank];
          CUTE_UNROLL
          for (int i = 0; i < kRank; ++i) x[i] = smem.kv_x[st][i][c];
          CUTE_UNROLL
          for (int mi = 0; mi < kRowsPerThread; ++mi) {
            bool inside = true;
            CUTE_UNROLL
            for (int i = 0; i < kRank; ++i) inside = inside && wb[mi][i] <= x[i] && x[i] < we[mi][i];
            if (!inside) s(mi, ni) = -INFINITY;
          }
        }
      } else if constexpr (kGna) {
        if (kv_mask < 0) {
          // The last additional tile, short of a block: its key rows from -kv_mask on are padding (zero-filled by TMA)
          // for every query; the window test plays no part. (The 1-D families have no additional KV: no code there.)
          CUTE_UNROLL
          for (int ni = 0; ni < kColsPerThread; ++ni) {
            if (!kv_mask_attends(kv_mask, true, get<1>(tScS_rc(0, ni)))) {
              CUTE_UNROLL
              for (int mi = 0; mi < kRowsPerThread; ++mi) s(mi, ni) = -INFINITY;
            }
          }
        }
      }
      // The S wgmma that read K has completed and every lane of this warp has read the key geometry: the producer may
      // refill the K half while P V of the previous tile still reads the V half.
      __syncwarp();
      if (lane == 0) Barrier::arrive(&smem.k_empty[st]);

      CUTE_UNROLL
      for (int mi = 0; mi < kRowsPerThread; ++mi) {
        float m = row_max[mi];
        CUTE_UNROLL
        for (int ni = 0; ni < kColsPerThread; ++ni) m = fmaxf(m, s(mi, ni));
        correction[mi] = detail::softmax_update_row(s, mi, detail::quad_max(m), row_max[mi], row_sum[mi]);
      }
    };
    auto rescale_o = [&] {
      CUTE_UNROLL
      for (int mi = 0; mi < kRowsPerThread; ++mi) {
        CUTE_UNROLL
        for (int ni = 0; ni < size<1>(o); ++ni) o(mi, ni) *= correction[mi];
      }
    };

    // Retires the P V wgmma in flight, if any (tile e - 2's: its V half is released), then turns tile e - 1's
    // exponents into P, in the registers that P V read.
    auto retire_pv = [&](int64_t e) {
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_o);
      warpgroup_fence_operand(tOrP);
      if (e >= 2 && lane == 0) Barrier::arrive(&smem.v_empty[stage_of(e - 2)]);
      CUTE_UNROLL
      for (int i = 0; i < size(acc_s); ++i) p_frag(i) = static_cast<Element>(acc_s(i));
    };

    // Intra-warpgroup overlap (FlashAttention-3's IntraWGOverlap): the softmax of tile e runs while this warpgroup's
    // O += P_{e-1} V_{e-1} is in flight, so O_e = O_{e-1} * correction_e + P_e V_e is applied one tile late. The
    // prologue (tile 0) issues S alone; step e >= 1 retires the previous P V and makes P_{e-1}, issues S_e and
    // P_{e-1} V_{e-1} in one turn and runs the softmax of S_e; the tail issues the last P V. P V is retired at the top
    // of the next step rather than right after the softmax: ptxas hoists a wgmma wait up to the last memory operation
    // before it in its basic block, which there would leave the softmax's arithmetic behind the wait (MUFU.EX2 after
    // WARPGROUP.DEPBAR.LE gsb0, 0x0 in the SASS); the loop's back-edge keeps the wait after the softmax. Each stage's
    // K half is released after the mask of its S, its V half after its P V.
    Barrier::wait(&smem.q_full, kPersistent ? i & 1 : 0);
    if (tiles > 0) {
      const int st0 = stage_of(0);
      Barrier::wait(&smem.k_full[st0], phase_of(0));
      take_turn();
      detail::wgmma_issue<true>(mma_qk, tSrQ, tSrK(_, _, _, st0), acc_s);
      pass_turn(0);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_s);
      mask_softmax(st0);

      for (int64_t e = 1; e < tiles; ++e) {
        const int st = stage_of(e), st_v = stage_of(e - 1);
        retire_pv(e);
        Barrier::wait(&smem.k_full[st], phase_of(e));
        take_turn();
        detail::wgmma_issue<true>(mma_qk, tSrQ, tSrK(_, _, _, st), acc_s);
        // O is no operand of the S wgmma in flight, and the P V that last wrote it has been retired.
        rescale_o();
        Barrier::wait(&smem.v_full[st_v], phase_of(e - 1));
        warpgroup_fence_operand(tOrP);
        detail::wgmma_issue<false>(mma_pv, tOrP, tOrV(_, _, _, st_v), acc_o);
        pass_turn(e);
        warpgroup_wait<1>();  // S_e, committed first, has completed; P V may still run
        warpgroup_fence_operand(acc_s);
        mask_softmax(st);
      }

      const int st_v = stage_of(tiles - 1);
      retire_pv(tiles);
      rescale_o();
      Barrier::wait(&smem.v_full[st_v], phase_of(tiles - 1));
      warpgroup_fence_operand(tOrP);
      detail::wgmma_gemm<false>(mma_pv, tOrP, tOrV(_, _, _, st_v), acc_o);
      if (lane == 0) Barrier::arrive(&smem.v_empty[st_v]);
    }

    // ---- Epilogue: normalise, lse, stage the output in this warpgroup's rows of the Q buffer, scatter rows ---------
    // The work tile's head and batch entry, read here rather than held across the KV loop (persistent: tile[i % 2] is
    // rewritten only after barrier 5 of the next work tile).
    int h;
    int64_t b;
    if constexpr (kPersistent) {
      h = smem.persistent.tile[i & 1].h;
      b = smem.persistent.tile[i & 1].b;
    } else {
      h = grid_h;
      b = grid_b;
    }
    CUTE_UNROLL
    for (int mi = 0; mi < kRowsPerThread; ++mi) {
      const float sum = detail::quad_sum(row_sum[mi]);
      const float inv = detail::row_inv_sum(sum);
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(o); ++ni) o(mi, ni) *= inv;
      const int r = get<0>(tScS_rc(mi, 0));
      const int64_t token = smem.q_token[r];
      if (lane % 4 == 0 && token >= 0) {
        const float lse = detail::row_lse(row_max[mi], sum);
        p.lse[(b * p.tokens + token) * p.heads + h] = lse;
      }
    }

    // This warpgroup's last wgmma reading its Q rows has completed (waited), so the rows can take the output: O rows
    // as wide in bytes as Q rows (the same swizzle, e.g. D 192 / D_v 128) put O row r within Q row r's bytes. Narrower
    // ones (D_v 32 under D >= 64: 64-byte O rows, 128-byte Q rows) put O row r in Q row r / 2, the other warpgroup's
    // for r >= 64, so there the warpgroups first wait for each other's last Q read (barrier 5, the consumer threads).
    if constexpr (Traits::kSwizzleBytesV != Traits::kSwizzleBytes) {
      detail::named_barrier_sync<5, Traits::kConsumerThreads>();
    }
    Tensor rO = make_tensor_like<Element>(acc_o);
    CUTE_UNROLL
    for (int i = 0; i < size(acc_o); ++i) rO(i) = static_cast<Element>(acc_o(i));
    Tensor sO = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutO{});  // STS / LDS addressing
    auto copy_o = make_tiled_copy_C(typename Traits::SmemCopyAtomO{}, mma_pv);
    auto thr_copy_o = copy_o.get_slice(ctid);
    copy(copy_o, thr_copy_o.retile_S(rO), thr_copy_o.partition_D(sO));
    // Only this warpgroup's 128 threads wrote these rows: a named barrier per warpgroup (ids 1, 2).
    if (warpgroup == 1) {
      detail::named_barrier_sync<1, 128>();
    } else {
      detail::named_barrier_sync<2, 128>();
    }

    auto* o_base = static_cast<Element*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride;
    // Thread wtid copies the 16-byte chunk column c (+ 128 per further column pass) of rows r0 + k * kRowStep of this
    // warpgroup's 64. Either swizzle (128- or 64-byte rows) permutes a row's chunks by row % 8 alone and kRowStep is a
    // multiple of 8, so the thread's chunks lie kRowStep rows of kBoxColsV elements apart in their box, and a pass
    // whole boxes further: one smem address (and one q_token address) serves every k and pass
    // (tests/test_sm90_host.py checks it). Taken per chunk, the swizzled addresses are hoisted out of the persistent
    // work-tile loop and held across the KV loop, which the consumer's register budget does not afford.
    constexpr int kRowStep = Traits::kOutRowStep;
    static_assert(kRowStep % 8 == 0 && 64 % kRowStep == 0, "a thread's chunks share their swizzle phase");
    const int wtid = tid % 128;
    const int r0 = (warpgroup - 1) * 64 + wtid / Traits::kOutThreadsPerRow;
    const int c = (wtid % Traits::kOutThreadsPerRow) * Traits::kChunk;
    const Element* o_smem = &sO(r0, c);
    CUTE_UNROLL
    for (int k = 0; k < 64 / kRowStep; ++k) {
      const int64_t token = smem.q_token[r0 + k * kRowStep];
      if (token >= 0) {
        Element* o_row = o_base + token * p.o_token_stride + c;
        CUTE_UNROLL
        for (int pass = 0; pass < Traits::kOutColPasses; ++pass) {
          *reinterpret_cast<uint128_t*>(o_row + pass * Traits::kOutThreadsPerRow * Traits::kChunk) =
              *reinterpret_cast<const uint128_t*>(o_smem + k * kRowStep * kBoxColsV + pass * Traits::kOutPassElems);
        }
      }
    }
    if constexpr (kPersistent) {
      // This warp has read its staged output rows back: the Q buffer may take the next work tile's Q box, an
      // async-proxy write after these generic-proxy accesses (hence the fence before the release).
      cutlass::arch::fence_view_async_shared();
      __syncwarp();
      if (lane == 0) Barrier::arrive(&smem.persistent.q_empty);
    }
    if constexpr (!kPersistent) break;
    ring += static_cast<uint32_t>(tiles);
  }
#endif
}

}  // namespace detail

// GNA and dense attention. kPersistent: a 1-D grid of CTAs walking the work tiles (sm90_tile_scheduler.hpp).
template <class Traits, bool kPersistent = false>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    sm90_gna_fwd_kernel(__grid_constant__ const Sm90GnaFwdArgs args) {
  detail::sm90_fmha_fwd_body<Traits, Sm90GnaSchedule, kPersistent>(args);
}

// The 1-D families: Schedule is Sm90StridedShardSchedule or Sm90BlockSparseSchedule (sm90_schedules.hpp).
template <class Traits, class Schedule, bool kPersistent = false>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    sm90_seq_fwd_kernel(__grid_constant__ const Sm90FwdArgs<typename Schedule::Params> args) {
  detail::sm90_fmha_fwd_body<Traits, Schedule, kPersistent>(args);
}

namespace detail {

// Launches `kernel` (one CTA per work tile, grid (q_tiles, heads, batch), `smem` bytes) or `persistent_kernel` (a 1-D
// grid of min(work tiles, SMs x resident CTAs per SM) CTAs, `persistent_smem` bytes), as `persistence` says
// (sm90_tile_scheduler.hpp: sm90_use_persistent; kOff asks the device nothing). A null `persistent_kernel` (traits
// without one: kHasPersistent) takes the one-tile grid in every mode. The caller has checked the 3-D grid's limits,
// so both grids fit.
template <class Args>
cudaError_t launch_fwd_grid(void (*kernel)(Args), void (*persistent_kernel)(Args), const Args& args, int64_t q_tiles,
                            int64_t heads, int64_t batch, int threads, int smem, int persistent_smem,
                            Sm90Persistence persistence, cudaStream_t stream) {
  bool persistent = false;
  int64_t grid_1d = 0;
  cudaError_t err;
  if (persistence != Sm90Persistence::kOff && persistent_kernel != nullptr) {
    int device = 0, sms = 0, per_sm = 0;
    err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) {
      err = cudaFuncSetAttribute(persistent_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, persistent_smem);
    }
    if (err == cudaSuccess) {
      err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, persistent_kernel, threads, persistent_smem);
    }
    if (err != cudaSuccess) return err;
    const Sm90TileScheduler work{q_tiles, heads, batch};
    const int64_t capacity = static_cast<int64_t>(sms) * std::max(per_sm, 1);
    persistent = sm90_use_persistent(persistence, work.total(), capacity);
    grid_1d = sm90_persistent_grid(work.total(), sms, per_sm);
  }
  if (persistent) {
    persistent_kernel<<<static_cast<unsigned>(grid_1d), threads, persistent_smem, stream>>>(args);
    return cudaGetLastError();
  }
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  dim3 grid(static_cast<unsigned>(q_tiles), static_cast<unsigned>(heads), static_cast<unsigned>(batch));
  kernel<<<grid, threads, smem, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace detail

namespace detail {

// One TMA descriptor of the 5-D view (H * D, X2, X1, X0, B) of a [B, X0, X1, X2, H, D] tensor whose heads are
// contiguous (head stride D; the binding's tensors are contiguous) with boxes of Rows::kBoxCols head-dim columns (of one
// head: they start at h * D) x one tile (tile[i] * d_i tokens at element stride d_i per dim) x one batch entry, in the
// swizzle mode of the operand's rows (the traits' RowsQK for Q / K, RowsVO for V). Heads and head dim share TMA dim 0
// so that the batch has a dim of its own: a box past a batch entry's last X0 row is zero-filled rather than reading the
// next entry's rows (finite or not).
template <class Element, class Rows>
cudaError_t make_gna_tma_desc(cute::TmaDescriptor* desc, const void* ptr, int64_t head_dim, int64_t heads,
                              int64_t head_stride, int64_t token_stride, int64_t batch, int64_t batch_stride,
                              const GnaPolicy<kRank>& pol, const int64_t* tile) {
  constexpr int64_t kBytes = sizeof(Element);
  if (head_stride != head_dim) return cudaErrorNotSupported;  // the launcher checked it
  const int64_t x0 = pol.dim[0].length, x1 = pol.dim[1].length, x2 = pol.dim[2].length;
  cuuint64_t dims[5] = {static_cast<cuuint64_t>(heads * head_dim), static_cast<cuuint64_t>(x2),
                        static_cast<cuuint64_t>(x1), static_cast<cuuint64_t>(x0), static_cast<cuuint64_t>(batch)};
  // One batch entry: its stride plays no part, so the dense one keeps any value the caller holds out of the checks.
  const int64_t entry_stride = batch > 1 ? batch_stride : x0 * x1 * x2 * token_stride;
  const int64_t strides64[4] = {token_stride * kBytes, x2 * token_stride * kBytes, x1 * x2 * token_stride * kBytes,
                                entry_stride * kBytes};
  cuuint64_t strides[4];
  for (int i = 0; i < 4; ++i) {
    if (!tma_stride_ok(strides64[i])) return cudaErrorNotSupported;
    strides[i] = static_cast<cuuint64_t>(strides64[i]);
  }
  cuuint32_t box[5] = {static_cast<cuuint32_t>(Rows::kBoxCols), static_cast<cuuint32_t>(tma_box_extent(pol, tile, 2)),
                       static_cast<cuuint32_t>(tma_box_extent(pol, tile, 1)),
                       static_cast<cuuint32_t>(tma_box_extent(pol, tile, 0)), 1u};
  cuuint32_t element_strides[5] = {1u, static_cast<cuuint32_t>(pol.dim[2].dilation),
                                   static_cast<cuuint32_t>(pol.dim[1].dilation),
                                   static_cast<cuuint32_t>(pol.dim[0].dilation), 1u};
  const CUtensorMapDataType dtype =
      std::is_same_v<Element, cutlass::half_t> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  // OOB_FILL_NONE fills out-of-bounds elements with zeros: rows past a group's end (in every token dim) arrive as zeros.
  const CUresult result = cutlass::call_cuTensorMapEncodeTiled(
      desc, dtype, 5, const_cast<void*>(ptr), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      Rows::kTmaSwizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return result == CUDA_SUCCESS ? cudaSuccess : cudaErrorNotSupported;
}

// One TMA descriptor of the 4-D view (D, H, tokens, B) of a heads-last tensor (sm90_schedules.hpp: seq_tma_view), in
// the swizzle mode of the operand's rows (RowsQK / RowsVO); the view, built with the operand's head dim, has a box one
// swizzle span wide in D, Rows::kBoxCols.
template <class Element, class Rows>
cudaError_t make_seq_tma_desc(cute::TmaDescriptor* desc, const void* ptr, const SeqTmaView& view) {
  if (!view.ok || reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return cudaErrorNotSupported;
  cuuint64_t dims[4], strides[3];
  cuuint32_t box[4], element_strides[4] = {1u, 1u, 1u, 1u};
  for (int i = 0; i < 4; ++i) {
    dims[i] = static_cast<cuuint64_t>(view.dims[i]);
    box[i] = static_cast<cuuint32_t>(view.box[i]);
  }
  for (int i = 0; i < 3; ++i) strides[i] = static_cast<cuuint64_t>(view.strides[i]);
  const CUtensorMapDataType dtype =
      std::is_same_v<Element, cutlass::half_t> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  // Rows past the token dim's end arrive as zeros (OOB_FILL_NONE), as for GNA.
  const CUresult result = cutlass::call_cuTensorMapEncodeTiled(
      desc, dtype, 4, const_cast<void*>(ptr), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      Rows::kTmaSwizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return result == CUDA_SUCCESS ? cudaSuccess : cudaErrorNotSupported;
}

}  // namespace detail

// Launches one instantiation: grid (Q tiles, heads, batch) or persistent (below), 384 threads, dynamic smem. kHeadDimV
// (D_v, D by default) is the head dim of V and the output. Returns
// - cudaErrorInvalidValue: head_dim != kHeadDim or head_dim_v != kHeadDimV, a tile's row product above the block, or
//   kv_heads not dividing heads;
// - cudaSuccess without a launch for an empty problem;
// - cudaErrorNotSupported, before any launch, when the TMA scheme cannot express the problem (the caller falls back to
//   the sm80 kernel): a dilation above 8 (TMA element strides), a box extent tile * dilation above 256, X0 plus a box
//   or heads x head dim reaching 2^31 (TMA coordinates are int32), q / k / v heads not contiguous (head stride != head
//   dim: heads and head dim share TMA dim 0), byte strides (batch and additional KV's included) not positive multiples
//   of 16 or beyond 2^40, base pointers not 16-byte aligned (or add_k / add_v null), N_add + kBlockN reaching 2^31
//   (TMA coordinates), tokens per batch entry plus additional tiles reaching 2^31 (int32 tile counts), or the driver
//   refusing a descriptor; batch strides are free otherwise (the batch entry is a TMA dim of its own in every view);
// - cudaErrorInvalidConfiguration: a grid beyond the hardware limits (as sm80; of the one-tile grid, in both modes);
// - otherwise the error of the device queries (kAuto, kOn: SM count, occupancy) or of the launch.
// Tile shapes are the policy's tq/tk (the table's, clamped to the dims by the caller, as for sm80). Additional KV
// (num_additional > 0) runs fused, in tiles of kBlockN rows: the kernel's params get additional_block = kBlockN,
// whatever the caller set.
// p.sm90_persistence (sm90_tile_scheduler.hpp's Sm90Persistence; other values: cudaErrorInvalidValue): kAuto runs a
// persistent 1-D grid of min(work tiles, resident CTAs) CTAs from kSm90PersistentMinWaves waves of work tiles on, one
// CTA per work tile below; kOff / kOn force one or the other (tests, benchmarks), except that traits without a
// persistent variant (D_v 256: Sm90FmhaFwdTraits::kHasPersistent) run one CTA per work tile in every mode. Every
// refusal above comes before any CUDA call and is the same in both modes (the grid limits too); kAuto and kOn then ask
// the device for its SM count and the kernel's occupancy, whose errors are returned.
template <class Element, int kHeadDim, int kBlockM, int kBlockN, int kHeadDimV = kHeadDim>
cudaError_t launch_sm90_gna_fwd(const GnaFwdParams& p, cudaStream_t stream) {
  using Traits = Sm90FmhaFwdTraits<Element, kHeadDim, kBlockM, kBlockN, kHeadDimV>;
  using RowsQK = typename Traits::RowsQK;
  using RowsVO = typename Traits::RowsVO;
  const GnaPolicy<kRank>& pol = p.policy;
  if (p.head_dim != kHeadDim || p.head_dim_v != kHeadDimV || pol.max_q_rows() > kBlockM ||
      pol.max_kv_rows() > kBlockN || p.sm90_persistence < 0 || p.sm90_persistence > 2) {
    return cudaErrorInvalidValue;
  }
  const int64_t q_tiles = pol.num_q_tiles();
  if (q_tiles == 0 || p.heads == 0 || p.batch == 0) return cudaSuccess;
  if (p.kv_heads <= 0 || p.heads % p.kv_heads != 0) return cudaErrorInvalidValue;

  if (!tma_box_supported(pol, pol.tq) || !tma_box_supported(pol, pol.tk)) return cudaErrorNotSupported;
  const int64_t max_extent = std::max(tma_box_extent(pol, pol.tq, 0), tma_box_extent(pol, pol.tk, 0));
  if (pol.dim[0].length + max_extent > int64_t{0x7fffffff}) return cudaErrorNotSupported;  // int32 coordinates
  // TMA dim 0 is heads x head dim (contiguous heads): its coordinates h * D + columns are int32 too.
  if (p.q_head_stride != kHeadDim || p.k_head_stride != kHeadDim || p.v_head_stride != kHeadDimV ||
      std::max(p.heads * kHeadDim, p.kv_heads * kHeadDimV) > int64_t{0x7fffffff}) {
    return cudaErrorNotSupported;
  }
  // Every byte stride of the views (the batch's only where there are several entries, as make_gna_tma_desc).
  for (const int64_t stride : {p.q_token_stride, p.k_token_stride, p.v_token_stride}) {
    if (!tma_stride_ok(stride * static_cast<int64_t>(sizeof(Element)))) return cudaErrorNotSupported;
  }
  if (p.batch > 1) {
    for (const int64_t stride : {p.q_batch_stride, p.k_batch_stride, p.v_batch_stride}) {
      if (!tma_stride_ok(stride * static_cast<int64_t>(sizeof(Element)))) return cudaErrorNotSupported;
    }
  }
  // The producer counts a work tile's KV tiles in int32: at most one per token of the batch entry (tiles are disjoint
  // and not empty), plus the additional ones.
  if (p.tokens + additional_tiles(p.num_additional, kBlockN) > int64_t{0x7fffffff}) return cudaErrorNotSupported;
  for (const void* ptr : {p.q, p.k, p.v}) {
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return cudaErrorNotSupported;
  }
  // Additional KV: the 4-D views (D, H_kv, N_add, B), boxes of kBlockN rows (the kernel's additional tiles).
  const bool additional = p.num_additional > 0;
  SeqTmaView view_add_k{}, view_add_v{};
  if (additional) {
    constexpr int64_t kBytes = sizeof(Element);
    view_add_k = seq_tma_view(kBytes, kHeadDim, p.kv_heads, p.num_additional, p.batch, p.add_k_head_stride,
                              p.add_k_token_stride, p.add_k_batch_stride, kBlockN);
    view_add_v = seq_tma_view(kBytes, kHeadDimV, p.kv_heads, p.num_additional, p.batch, p.add_v_head_stride,
                              p.add_v_token_stride, p.add_v_batch_stride, kBlockN);
    for (const void* ptr : {p.add_k, p.add_v}) {
      if (ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return cudaErrorNotSupported;
    }
    if (!view_add_k.ok || !view_add_v.ok) return cudaErrorNotSupported;
  }
  if (q_tiles > 0x7fffffff || p.heads > 65535 || p.batch > 65535) return cudaErrorInvalidConfiguration;

  Sm90GnaFwdArgs args{};
  args.p = p;
  args.p.additional_block = kBlockN;
  if (!additional) args.p.num_additional = 0;  // the kernel counts tiles from it
  cudaError_t err = detail::make_gna_tma_desc<Element, RowsQK>(&args.tma_q, p.q, kHeadDim, p.heads, p.q_head_stride,
                                                                p.q_token_stride, p.batch, p.q_batch_stride, pol,
                                                                pol.tq);
  if (err == cudaSuccess) {
    err = detail::make_gna_tma_desc<Element, RowsQK>(&args.tma_k, p.k, kHeadDim, p.kv_heads, p.k_head_stride,
                                                      p.k_token_stride, p.batch, p.k_batch_stride, pol, pol.tk);
  }
  if (err == cudaSuccess) {
    err = detail::make_gna_tma_desc<Element, RowsVO>(&args.tma_v, p.v, kHeadDimV, p.kv_heads, p.v_head_stride,
                                                      p.v_token_stride, p.batch, p.v_batch_stride, pol, pol.tk);
  }
  if (err == cudaSuccess && additional) {
    err = detail::make_seq_tma_desc<Element, RowsQK>(&args.tma_add_k, p.add_k, view_add_k);
  }
  if (err == cudaSuccess && additional) {
    err = detail::make_seq_tma_desc<Element, RowsVO>(&args.tma_add_v, p.add_v, view_add_v);
  }
  if (err != cudaSuccess) return err;

  using State = sm80::GnaKvTileIterator<kRank>;
  constexpr int kSmem = sizeof(typename Traits::template SharedStorageFor<State, false>);
  constexpr int kPersistentSmem = sizeof(typename Traits::template SharedStorageFor<State, true>);
  static_assert(kPersistentSmem <= 227 * 1024, "Hopper's per-block shared memory limit (persistent: the larger)");
  void (*persistent)(Sm90GnaFwdArgs) = nullptr;
  if constexpr (Traits::kHasPersistent) persistent = sm90_gna_fwd_kernel<Traits, true>;
  return detail::launch_fwd_grid<Sm90GnaFwdArgs>(sm90_gna_fwd_kernel<Traits, false>, persistent, args, q_tiles,
                                                 p.heads, p.batch, Traits::kThreads, kSmem, kPersistentSmem,
                                                 static_cast<Sm90Persistence>(p.sm90_persistence), stream);
}

namespace detail {

// The launcher shared by the 1-D families: q_block / kv_block are the pattern's block sizes, kv_tokens_k / _v the
// token extents of the K / V views per batch entry (-1: unknown, not supported).
template <class Element, int kHeadDim, int kBlockM, int kBlockN, int kHeadDimV, class Schedule>
cudaError_t launch_sm90_seq_fwd(const typename Schedule::Params& p, int64_t q_block, int64_t kv_block,
                                int64_t kv_tokens_k, int64_t kv_tokens_v, cudaStream_t stream) {
  using Traits = Sm90FmhaFwdTraits<Element, kHeadDim, kBlockM, kBlockN, kHeadDimV>;
  using RowsQK = typename Traits::RowsQK;
  using RowsVO = typename Traits::RowsVO;
  if (p.head_dim != kHeadDim || p.head_dim_v != kHeadDimV || !seq_split_matches(q_block, p.q_split, kBlockM) ||
      !seq_split_matches(kv_block, p.kv_split, kBlockN) || p.sm90_persistence < 0 || p.sm90_persistence > 2) {
    return cudaErrorInvalidValue;
  }
  const int64_t q_tiles = Schedule::num_q_tiles(p);
  if (q_tiles == 0 || p.heads == 0 || p.batch == 0) return cudaSuccess;
  if (p.kv_heads <= 0 || p.heads % p.kv_heads != 0) return cudaErrorInvalidValue;

  // Token coordinates reach past a tensor's tokens by less than a pattern block (the start of a part past the end);
  // TMA coordinates are int32.
  constexpr int64_t kMaxCoord = 0x7fffffff;
  // These bounds also keep a work tile's KV runs below 2^31 (the producer counts them in int32): at most
  // ceil(kv_tokens / kv_block) pattern blocks of kv_split runs each, <= (kv_tokens + kv_block) / kBlockN.
  if (kv_tokens_k < 1 || kv_tokens_v != kv_tokens_k || p.tokens + q_block > kMaxCoord ||
      kv_tokens_k + kv_block > kMaxCoord) {
    return cudaErrorNotSupported;
  }
  constexpr int64_t kBytes = sizeof(Element);
  const SeqTmaView view_q = seq_tma_view(kBytes, kHeadDim, p.heads, p.tokens, p.batch, p.q_head_stride,
                                         p.q_token_stride, p.q_batch_stride, seq_q_box_rows(p));
  const SeqTmaView view_k = seq_tma_view(kBytes, kHeadDim, p.kv_heads, kv_tokens_k, p.batch, p.k_head_stride,
                                         p.k_token_stride, p.k_batch_stride, seq_kv_box_rows(p));
  const SeqTmaView view_v = seq_tma_view(kBytes, kHeadDimV, p.kv_heads, kv_tokens_v, p.batch, p.v_head_stride,
                                         p.v_token_stride, p.v_batch_stride, seq_kv_box_rows(p));
  const bool aligned = reinterpret_cast<uintptr_t>(p.q) % 16 == 0 && reinterpret_cast<uintptr_t>(p.k) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(p.v) % 16 == 0;
  if (!view_q.ok || !view_k.ok || !view_v.ok || !aligned) return cudaErrorNotSupported;
  if (q_tiles > 0x7fffffff || p.heads > 65535 || p.batch > 65535) return cudaErrorInvalidConfiguration;

  Sm90FwdArgs<typename Schedule::Params> args;
  args.p = p;
  cudaError_t err = make_seq_tma_desc<Element, RowsQK>(&args.tma_q, p.q, view_q);
  if (err == cudaSuccess) err = make_seq_tma_desc<Element, RowsQK>(&args.tma_k, p.k, view_k);
  if (err == cudaSuccess) err = make_seq_tma_desc<Element, RowsVO>(&args.tma_v, p.v, view_v);
  if (err != cudaSuccess) return err;

  constexpr int kSmem = sizeof(typename Traits::template SharedStorageFor<Schedule, false>);
  constexpr int kPersistentSmem = sizeof(typename Traits::template SharedStorageFor<Schedule, true>);
  static_assert(kPersistentSmem <= 227 * 1024, "Hopper's per-block shared memory limit (persistent: the larger)");
  using Args = Sm90FwdArgs<typename Schedule::Params>;
  void (*persistent)(Args) = nullptr;
  if constexpr (Traits::kHasPersistent) persistent = sm90_seq_fwd_kernel<Traits, Schedule, true>;
  return launch_fwd_grid<Args>(sm90_seq_fwd_kernel<Traits, Schedule, false>, persistent, args, q_tiles, p.heads,
                               p.batch, Traits::kThreads, kSmem, kPersistentSmem,
                               static_cast<Sm90Persistence>(p.sm90_persistence), stream);
}

}  // namespace detail

// Strided-shard (S2) forward: grid (pattern Q tiles x q_split, heads, batch) or persistent, 384 threads; kHeadDimV as
// launch_sm90_gna_fwd's. Returns
// - cudaErrorInvalidValue: head_dim != kHeadDim or head_dim_v != kHeadDimV, q_split / kv_split not splitting the
//   pattern block into the kernel's blocks (block <= 128 with split 1, or block = split * 128), or kv_heads not
//   dividing heads;
// - cudaSuccess without a launch for an empty problem;
// - cudaErrorNotSupported, before any launch, when the TMA scheme cannot express the problem (the caller falls back to
//   the sm80 kernel): byte strides not positive multiples of 16 or beyond 2^40, base pointers not 16-byte aligned,
//   token counts plus a block beyond int32 (TMA coordinates), or the driver refusing a descriptor;
// - cudaErrorInvalidConfiguration: a grid beyond the hardware limits (of the one-tile grid, in both modes);
// - otherwise the error of the device queries (kAuto, kOn: SM count, occupancy) or of the launch.
// p.sm90_persistence: as launch_sm90_gna_fwd's (sm90_tile_scheduler.hpp).
template <class Element, int kHeadDim, int kBlockM, int kBlockN, int kHeadDimV = kHeadDim>
cudaError_t launch_sm90_s2_fwd(const sm80::StridedShardFwdParams& p, cudaStream_t stream) {
  return detail::launch_sm90_seq_fwd<Element, kHeadDim, kBlockM, kBlockN, kHeadDimV, Sm90StridedShardSchedule>(
      p, p.pattern.block, p.pattern.block, p.pattern.nkv, p.pattern.nkv, stream);
}

// Block-sparse forward: grid (total Q tiles x q_split, heads, batch; a packed varlen batch is batch 1) or persistent,
// 384 threads, the same kHeadDimV, return codes and p.sm90_persistence as launch_sm90_s2_fwd. The params hold the
// sequence offsets on the device only, so the K / V views take their token extent per batch entry from the strides:
// k_batch_stride / k_token_stride (and V's), exact for tensors contiguous over the token dims, which the binding
// passes (for batch 1 it sets the batch strides to tokens * token stride). Strides that do not divide, or K and V
// extents that differ, are not supported.
template <class Element, int kHeadDim, int kBlockM, int kBlockN, int kHeadDimV = kHeadDim>
cudaError_t launch_sm90_block_sparse_fwd(const sm80::BlockSparseFwdParams& p, cudaStream_t stream) {
  auto extent = [](int64_t batch_stride, int64_t token_stride) -> int64_t {
    if (token_stride <= 0 || batch_stride <= 0 || batch_stride % token_stride != 0) return -1;
    return batch_stride / token_stride;
  };
  return detail::launch_sm90_seq_fwd<Element, kHeadDim, kBlockM, kBlockN, kHeadDimV, Sm90BlockSparseSchedule>(
      p, p.pattern.q_block, p.pattern.kv_block, extent(p.k_batch_stride, p.k_token_stride),
      extent(p.v_batch_stride, p.v_token_stride), stream);
}

}  // namespace natten_like::sm90
