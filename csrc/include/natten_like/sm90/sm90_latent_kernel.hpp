// The sm90 (Hopper, sm_90a) compressed-latent (DeepSeek MLA, absorbed form) decode forward: D = 576 (latent 512 +
// rope 64), D_v = 512, one shared latent KV head, contiguous or paged cache, split-KV. Same params, semantics, output
// and split-KV workspace contract as sm80/sm80_latent_kernel.hpp (it reuses sm80_latent_combine_kernel and the index
// logic of sm80/latent_schedule.hpp), but with TMA, an mbarrier pipeline and wgmma, FlashMLA-style.
//
// One CTA per (M tile of 64 query rows (s, h), split, batch) as sm80; 384 threads in three warpgroups:
// - warpgroup 0, one thread: the producer (setmaxnreg 40). Loads Q (64 x 576) once, 9 TMA boxes of 64 columns x 64
//   rows from the 3-D view (D, S_q * H, B) (rows past S_q * H arrive as zeros), then per visited KV tile of 64 cache
//   positions 9 boxes of 64 columns x 64 cache rows into a 2-stage ring. A contiguous cache is the view
//   (D, s_kv, B): tile e of batch b is the box at row 64 e of "page" b, rows past s_kv zero-filled. A paged cache is
//   the view (D, page_size, pages): with page_size a multiple of 64 a tile never crosses a page, so it is one box at
//   row 64 e % page_size of page block_table[b][64 e / page_size] (latent::kv_box_coord, host-tested). The block-table
//   entry is read before waiting for the free stage, so its latency hides under the consumers' work.
// - warpgroups 1 and 2 (setmaxnreg 232), stacked along N in both GEMMs as sm80's warp pairs are: warpgroup w
//   computes S = Q K^T for keys [32 (w - 1), 32 w) of the tile (wgmma m64n32k16, Q and K from smem; splitting the keys
//   rather than computing all of S in both warpgroups keeps the tensor work at 8.9 MFLOP a tile instead of 13.6, which
//   matters here: at 85% of an H200's HBM bandwidth a 72 KB tile streams in about 4.4k SM cycles, and the redundant
//   S alone would be about 2.3k of them), exchanges row maxima through smem (named barrier 3, both warpgroups), runs
//   the online softmax in registers, writes its half of P (64 x 32, bf16 / fp16) to a 64 x 64 smem tile (named
//   barrier 4), then O += P V (wgmma m64n256k16, P and V from smem; V is read MN-major from the first 512 columns of
//   the same K stage) for output columns [256 (w - 1), 256 w): 64 x 256 fp32 = 128 accumulator registers a thread.
//   The two barriers also order the shared buffers: a warpgroup reaches barrier 3 of tile e + 1 only after its P V of
//   tile e completed, so P and the row maxima are rewritten only when nobody reads them. Row sums are kept per
//   warpgroup and summed through smem once, in the epilogue. Each consumer warp releases the stage (kv_empty, 8
//   arrivals) after its P V wgmma has completed.
// Masking as sm80: per query row the positions [0, latent::row_limit) (causal: L_b - S_q + s + 1), applied on every
// tile (16 selects a thread). Rows of the last tile at or past L_b are in the box (a page's tail, or contiguous rows
// between L_b and s_kv) and may hold anything, NaN included: S there is replaced by -inf (P exactly 0), and between
// the barriers (after every S of the tile) each consumer warpgroup zeroes its 256 V columns of those rows
// (latent::v_valid_rows), as sm80's zero-filled gather does, so 0 * NaN never reaches O.
//
// smem: Q 72 KB + K 2 x 72 KB + P 8 KB + row maxima / sums 1 KB + 5 mbarriers, in a 1024-byte aligned struct:
// 231424 bytes (226 KB) <= 227 KB. A third 72 KB stage does not fit.
//
// Not supported (cudaErrorNotSupported before any launch, so the caller falls back to the sm80 kernel): a paged cache
// whose page_size is not a positive multiple of 64, q / cache base pointers not 16-byte aligned, byte strides a TMA
// view cannot take (non-positive, or 2^40 and beyond), TMA coordinates past int32 (S_q * H, s_kv, batch), and a
// descriptor the driver refuses. The sm80 launcher's own checks (dim, workspace, 8-element strides, grid limits) come
// first with its return codes.
#pragma once

#include <cstdint>

#include "natten_like/policy/common.hpp"
#include "natten_like/sm80/latent_schedule.hpp"

// Index logic, plain C++ (tests/test_sm90_latent_host.py compiles this part alone with NL_SM90_LATENT_INDEX_ONLY).
namespace natten_like::sm90::latent {

constexpr int kBlockM = sm80::latent::kBlockM;  // query rows per CTA
constexpr int kBlockN = sm80::latent::kBlockN;  // cache positions per KV tile (the TMA box's rows)
constexpr int64_t kMaxCoord = 0x7fffffff;       // TMA coordinates are int32

// TMA coordinates of a KV tile's box in the 3-D cache view (D, extent, pages): dim 1 the first row within the page
// (contiguous: within the batch entry's s_kv rows), dim 2 the page (contiguous: the batch entry).
struct KvBoxCoord {
  int64_t row;
  int64_t page;
};

// Whether the paged TMA view can take page_size: a tile of 64 positions starting at a multiple of 64 then lies in one
// page, so it is one box.
NL_HOST_DEVICE bool paged_box_supported(int64_t page_size) {
  return page_size > 0 && page_size % kBlockN == 0 && page_size <= kMaxCoord;
}

// The box of KV tile `tile` (positions [64 tile, 64 tile + 64)) of batch b. Box row i is cache row
// page * extent + row + i (extent: page_size, or s_kv contiguous), the row latent::cache_row gives position
// 64 tile + i; it lies in the page (row + i < page_size) for every i when page_size % 64 == 0. Page -1 where the
// block table names no page of the cache (sm80::latent::checked_page): the producer then flags the batch entry.
NL_HOST_DEVICE KvBoxCoord kv_box_coord(const int64_t* block_table, int64_t max_pages, int64_t page_size,
                                       int64_t num_pages, int64_t b, int64_t tile) {
  const int64_t pos = tile * kBlockN;
  if (block_table == nullptr) return {pos, b};
  return {pos % page_size, sm80::latent::checked_page(block_table, max_pages, page_size, num_pages, b, pos)};
}

// Rows [0, n) of KV tile `tile` hold cache positions < L_b; the consumers zero V in rows [n, 64) (garbage or a
// page's tail, which no query attends).
NL_HOST_DEVICE int v_valid_rows(int64_t len, int64_t tile) {
  return static_cast<int>(policy::clamp64(len - tile * kBlockN, 0, kBlockN));
}

// TMA row coordinate of M tile t's Q box in the view (D, S_q * H, B).
NL_HOST_DEVICE int64_t q_box_row(int64_t m_tile) { return m_tile * kBlockM; }

}  // namespace natten_like::sm90::latent

#if !defined(NL_SM90_LATENT_INDEX_ONLY)

#include <cuda.h>

#include <cmath>
#include <type_traits>

#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/cuda_host_adapter.hpp>
#include <cutlass/numeric_types.h>

#include "natten_like/sm80/sm80_latent_kernel.hpp"
#include "natten_like/sm80/sm80_latent_params.hpp"
#include "natten_like/sm90/sm90_fmha_fwd_kernel.hpp"

namespace natten_like::sm90 {

template <class Element_>
struct Sm90LatentTraits {
  using Element = Element_;
  static constexpr int kBlockM = latent::kBlockM;
  static constexpr int kBlockN = latent::kBlockN;
  static constexpr int kDim = 576;
  static constexpr int kDimV = 512;
  static constexpr int kStages = 2;
  static constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups
  static constexpr int kConsumerThreads = 256;
  // 40 * 128 + 232 * 256 = 64512 of the SM's 65536 registers. The producer runs one thread's TMA loop and the
  // block-table read; the consumers hold 128 O + 16 S accumulators plus the softmax state.
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  static constexpr int kBoxCols = 64;  // 128-byte swizzle: a box's inner extent is at most 128 bytes
  static constexpr int kBoxes = kDim / kBoxCols;  // 9 per tile; the first 8 are V
  static constexpr int kVBoxesPerWarpgroup = kDimV / kBoxCols / 2;  // 4: the 256 V columns of one warpgroup
  static_assert(std::is_same_v<Element, cutlass::half_t> || std::is_same_v<Element, cutlass::bfloat16_t>);

  // Both GEMMs stack the two consumer warpgroups along N: warpgroup w (1, 2) owns keys [32 (w - 1), 32 w) of
  // S = Q K^T (64 x 32 x 576 each, Q and K K-major in smem) and columns [256 (w - 1), 256 w) of O += P V
  // (64 x 256 x 64 each, P K-major and V MN-major in smem: the cache rows have D contiguous, the N dim of P V).
  using AtomLayout = cute::Layout<cute::Shape<cute::_1, cute::_2, cute::_1>>;
  using TiledMmaQK = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float, cute::Shape<cute::_64, cute::_32, cute::Int<kDim>>>(),
      AtomLayout{}));
  using TiledMmaPV = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float, cute::Shape<cute::_64, cute::_256, cute::_64>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      AtomLayout{}));

  // 128-byte rows (64 elements) under Swizzle<3,4,3>: what TMA's SWIZZLE_128B writes into a 1024-byte aligned box and
  // GMMA reads as K-major SW128. Atoms stack along rows first, so columns [64 j, 64 j + 64) of all 64 rows are one
  // contiguous 8 KB block: the destination of box j.
  using SmemAtom = cute::GMMA::Layout_K_SW128_Atom<Element>;
  using SmemLayoutQ = decltype(cute::tile_to_shape(SmemAtom{}, cute::Shape<cute::_64, cute::Int<kDim>>{}));
  using SmemLayoutK =
      decltype(cute::tile_to_shape(SmemAtom{}, cute::Shape<cute::_64, cute::Int<kDim>, cute::Int<kStages>>{}));
  // V^T (D_v, keys, stage): the first 512 columns of each K stage, keys fastest. The stage stride is that of the K
  // layout (64 x 576), not 64 x 512.
  using SmemLayoutVt = decltype(cute::composition(
      SmemLayoutK{}, cute::Layout<cute::Shape<cute::Int<kDimV>, cute::_64, cute::Int<kStages>>,
                                  cute::Stride<cute::_64, cute::_1, cute::Int<kBlockN * kDim>>>{}));

  // P (64 queries x 64 keys): one 8 KB block of 128-byte swizzled rows, the A operand of P V. Written from the S
  // accumulators with 32-bit stores (adjacent column pairs), through SmemLayoutPOffsets: the same layout with the
  // swizzle on element offsets from the 1024-byte aligned buffer, which keeps the stores STS on 32-bit shared addresses
  // (CuTe's form, which the GMMA descriptors need, swizzles the 64-bit address: generic ST.E).
  using SmemLayoutP = decltype(cute::tile_to_shape(SmemAtom{}, cute::Shape<cute::_64, cute::_64>{}));
  using SmemLayoutPOffsets = decltype(cute::as_position_independent_swizzle_layout(SmemLayoutP{}));
  using SmemCopyAtomP = cute::Copy_Atom<cute::UniversalCopy<uint32_t>, Element>;

  static constexpr int kTileBytes = kBlockN * kDim * 2;  // one stage, one Q tile: 73728
  static constexpr int kBoxBytes = kBlockN * kBoxCols * 2;  // 8192

  struct SharedStorage {
    alignas(1024) Element q[cute::cosize_v<SmemLayoutQ>];
    alignas(1024) Element k[cute::cosize_v<SmemLayoutK>];
    alignas(1024) Element p[cute::cosize_v<SmemLayoutP>];
    float red_max[2][kBlockM];  // per consumer warpgroup: row maxima of its 32 keys of the current tile
    float red_sum[2][kBlockM];  // per consumer warpgroup: row sums of its keys, for the epilogue
    int poison;                 // set by the producer: a used block-table entry is not a page of the cache
    alignas(8) uint64_t q_full;
    uint64_t k_full[kStages];
    uint64_t kv_empty[kStages];
  };
};

// Kernel arguments: params plus the two TMA descriptors, all __grid_constant__ (TMA reads descriptors in param space).
struct Sm90LatentArgs {
  sm80::LatentFwdParams p;
  cute::TmaDescriptor tma_q;
  cute::TmaDescriptor tma_kv;
};

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    sm90_latent_fwd_kernel(__grid_constant__ const Sm90LatentArgs args) {
#if defined(__CUDA_ARCH__) && !defined(CUTE_ARCH_MMA_SM90A_ENABLED)
  // Built for an arch without wgmma / TMA / setmaxnreg: the host launches this kernel only on sm_90a devices, so this
  // runs only if a loader picked this code over the sm_90a cubin, and then it must fail loudly (no unwritten outputs).
  __trap();
#else
  using namespace cute;
  using Element = typename Traits::Element;
  using Barrier = cutlass::arch::ClusterBarrier;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kDimV = Traits::kDimV;
  constexpr int kStages = Traits::kStages, kBoxes = Traits::kBoxes, kBoxCols = Traits::kBoxCols;
  const auto& p = args.p;

  // No static smem: dynamic smem starts at the CTA window's 1024-byte aligned base (as the GNA kernel relies on).
  extern __shared__ __align__(1024) char smem_raw[];
  auto& smem = *reinterpret_cast<typename Traits::SharedStorage*>(smem_raw);
  const int tid = threadIdx.x;
  const int warpgroup = tid / 128;
  const int64_t m_tile = blockIdx.x;
  const int64_t split = blockIdx.y;
  const int64_t b = blockIdx.z;

  if (tid == 0) {
    if (cast_smem_ptr_to_uint(smem_raw) % 1024 != 0) __trap();  // TMA and GMMA agree on the swizzle only there
    smem.poison = 0;
    Barrier::init(&smem.q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      Barrier::init(&smem.k_full[s], 1);  // the producer's arrive_and_expect_tx; TMA completes the bytes
      Barrier::init(&smem.kv_empty[s], Traits::kConsumerThreads / 32);  // one arrival per consumer warp
    }
    cutlass::arch::fence_barrier_init();
  } else if (tid == 32) {
    prefetch_tma_descriptor(&args.tma_q);
    prefetch_tma_descriptor(&args.tma_kv);
  }
  __syncthreads();

  // Both roles derive the CTA's KV tiles from the sm80 schedule (cheap, and nothing to publish through smem). A length
  // outside [0, capacity] (device-resident lengths are not checked on the host) is 0: nothing is loaded, the rows NaN.
  const sm80::latent::CheckedLength checked = sm80::latent::checked_length(
      p.seqlens[b], sm80::latent::capacity(p.block_table != nullptr, p.s_kv, p.page_size, p.max_pages));
  const int64_t len = checked.len;
  const policy::Range tiles = sm80::latent::split_kv_tiles(len, p.sq, p.heads, p.causal, m_tile, p.num_splits, split);

  if (warpgroup == 0) {
    // ---- Producer ------------------------------------------------------------------------------------------------
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (tid != 0) return;
    constexpr uint64_t kHint = static_cast<uint64_t>(TMA::CacheHintSm90::EVICT_NORMAL);
    if (tiles.size() > 0) {
      TxBarrier::arrive_and_expect_tx(&smem.q_full, Traits::kTileBytes);  // OOB rows count too (zero-filled)
      const int32_t row = static_cast<int32_t>(latent::q_box_row(m_tile)), batch = static_cast<int32_t>(b);
      CUTE_UNROLL
      for (int j = 0; j < kBoxes; ++j) {
        SM90_TMA_LOAD_3D::copy(&args.tma_q, &smem.q_full, kHint, smem.q + j * kBlockM * kBoxCols, j * kBoxCols, row,
                               batch);
      }
    }
    for (int64_t e = tiles.begin; e < tiles.end; ++e) {
      const int64_t i = e - tiles.begin;
      const int st = static_cast<int>(i % kStages);
      // The block-table read goes before the wait: its latency overlaps the consumers' use of the stage. A page that
      // is not the cache's (-1) loads page 0 instead (any valid page: the rows it feeds end NaN) and sets the flag the
      // consumers read in the epilogue, after their wait on this stage's k_full, which the arrive below releases it
      // to. The fence keeps the compiler from sinking the store past that arrive (CUTLASS's barrier asm has no memory
      // clobber); it runs only on this error path.
      const latent::KvBoxCoord c = latent::kv_box_coord(p.block_table, p.max_pages, p.page_size, p.num_pages, b, e);
      if (c.page < 0) {
        smem.poison = 1;
        __threadfence_block();
      }
      // A fresh barrier counts its preceding phase as complete: the first kStages waits pass at once.
      Barrier::wait(&smem.kv_empty[st], static_cast<uint32_t>(((i / kStages) & 1) ^ 1));
      TxBarrier::arrive_and_expect_tx(&smem.k_full[st], Traits::kTileBytes);
      Element* dst = smem.k + st * kBlockN * Traits::kDim;
      CUTE_UNROLL
      for (int j = 0; j < kBoxes; ++j) {
        SM90_TMA_LOAD_3D::copy(&args.tma_kv, &smem.k_full[st], kHint, dst + j * kBlockN * kBoxCols, j * kBoxCols,
                               static_cast<int32_t>(c.row), static_cast<int32_t>(c.page < 0 ? 0 : c.page));
      }
    }
    return;
  }

  // ---- Consumers -----------------------------------------------------------------------------------------------
  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
  const int ctid = tid - 128;  // 0..255 over both consumer warpgroups
  const int wg = warpgroup - 1;  // 0: keys [0, 32) of S and columns [0, 256) of O; 1: keys [32, 64), columns [256, 512)
  const int lane = tid % 32;
  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(ctid);
  auto thr_pv = mma_pv.get_thread_slice(ctid);

  Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutK{});
  Tensor sVt = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutVt{});
  Tensor sP = make_tensor(make_smem_ptr(smem.p), typename Traits::SmemLayoutP{});
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);   // GMMA descriptors
  Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stage), this warpgroup's 32 keys
  Tensor tOrP = thr_pv.partition_fragment_A(sP);   // all 64 keys of P
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage), this warpgroup's 256 columns
  auto copy_p = make_tiled_copy_C(typename Traits::SmemCopyAtomP{}, mma_qk);
  auto thr_copy_p = copy_p.get_slice(ctid);
  Tensor tPsP = thr_copy_p.partition_D(make_tensor(make_smem_ptr(smem.p), typename Traits::SmemLayoutPOffsets{}));

  // Each thread's rows (2) and columns (8 of its warpgroup's 32 keys) of the S tile.
  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor tScS_rc = make_tensor(tScS.data(), detail::acc_rowcol(tScS.layout()));
  constexpr int kRowsPerThread = size<0>(decltype(tScS_rc.layout()){});
  constexpr int kColsPerThread = size<1>(decltype(tScS_rc.layout()){});

  const int64_t rows_total = sm80::latent::num_rows(p.sq, p.heads);
  const policy::Range rows = sm80::latent::m_tile_rows(rows_total, m_tile);
  const int n_rows = static_cast<int>(rows.size());
  // Exclusive end of the positions each of this thread's rows sees; 0 for padding rows (all keys masked).
  int64_t row_lim[kRowsPerThread];
  CUTE_UNROLL
  for (int mi = 0; mi < kRowsPerThread; ++mi) {
    const int r = get<0>(tScS_rc(mi, 0));
    row_lim[mi] = r < n_rows ? sm80::latent::row_limit(len, p.sq, p.heads, p.causal, rows.begin + r) : 0;
  }

  Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kDimV>>{});  // 128 floats a thread
  clear(acc_o);
  float row_max[kRowsPerThread], row_sum[kRowsPerThread];
  CUTE_UNROLL
  for (int mi = 0; mi < kRowsPerThread; ++mi) {
    row_max[mi] = -INFINITY;
    row_sum[mi] = 0.f;
  }
  // Scores are scaled into the log2 domain before masking, so scale = 0 never meets -inf (0 * -inf would be NaN).
  const float scale_log2 = p.scale * static_cast<float>(M_LOG2E);

  if (tiles.size() > 0) Barrier::wait(&smem.q_full, 0);
  for (int64_t e = tiles.begin; e < tiles.end; ++e) {
    const int64_t i = e - tiles.begin;
    const int st = static_cast<int>(i % kStages);
    const uint32_t phase = static_cast<uint32_t>((i / kStages) & 1);
    Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});  // this warpgroup's 64 x 32
    Barrier::wait(&smem.k_full[st], phase);
    detail::wgmma_gemm<true>(mma_qk, tSrQ, tSrK(_, _, _, st), acc_s);

    // Scale, mask (the causal edge and the cache end, per row), this warpgroup's row maxima.
    Tensor s = make_tensor(acc_s.data(), detail::acc_rowcol(acc_s.layout()));
    const int64_t j0 = e * kBlockN;
    float m_part[kRowsPerThread];
    CUTE_UNROLL
    for (int mi = 0; mi < kRowsPerThread; ++mi) {
      const int lim = sm80::latent::tile_key_limit(row_lim[mi], j0);
      float m = -INFINITY;
      CUTE_UNROLL
      for (int ni = 0; ni < kColsPerThread; ++ni) {
        // A select, not a multiply: a masked key's score may be NaN (garbage past L_b).
        const float x = get<1>(tScS_rc(0, ni)) < lim ? s(mi, ni) * scale_log2 : -INFINITY;
        s(mi, ni) = x;
        m = fmaxf(m, x);
      }
      m_part[mi] = detail::quad_max(m);
      if (lane % 4 == 0) smem.red_max[wg][get<0>(tScS_rc(mi, 0))] = m_part[mi];
    }
    // Barrier 3 (both consumer warpgroups): the other warpgroup's maxima are in smem; it has also finished its P V of
    // the previous tile (waited), so P may be rewritten, and its S of this tile, so V rows may be zeroed below.
    detail::named_barrier_sync<3, Traits::kConsumerThreads>();

    Tensor o = make_tensor(acc_o.data(), detail::acc_rowcol(acc_o.layout()));
    CUTE_UNROLL
    for (int mi = 0; mi < kRowsPerThread; ++mi) {
      const int r = get<0>(tScS_rc(mi, 0));
      // Both warpgroups compute the same m, so their partial sums (reduced over quad and warpgroups in the epilogue)
      // and outputs share one scale.
      const float m = fmaxf(row_max[mi], fmaxf(m_part[mi], smem.red_max[wg ^ 1][r]));
      const float correction = detail::softmax_update_row(s, mi, m, row_max[mi], row_sum[mi]);
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(o); ++ni) o(mi, ni) *= correction;
    }
    Tensor p_frag = make_tensor_like<Element>(acc_s);
    CUTE_UNROLL
    for (int k = 0; k < size(acc_s); ++k) p_frag(k) = static_cast<Element>(acc_s(k));
    copy(copy_p, thr_copy_p.retile_S(p_frag), tPsP);

    // The tile's rows at or past L_b: zero this warpgroup's 4 V boxes there (whole 128-byte rows: the swizzle permutes
    // 16-byte chunks within a row only). Every S of the tile is done (barrier 3): nothing else reads them now. Uniform
    // over the CTA: only the batch's last tile, in the split that holds it.
    const int valid = latent::v_valid_rows(len, e);
    if (valid < kBlockN) {
      char* v_base = reinterpret_cast<char*>(smem.k + st * kBlockN * Traits::kDim) +
                     wg * Traits::kVBoxesPerWarpgroup * Traits::kBoxBytes;
      constexpr int kRowBytes = kBoxCols * sizeof(Element);  // one box row: 128 bytes
      detail::zero_smem_rows<128, kRowBytes>(v_base, Traits::kVBoxesPerWarpgroup, kBlockN, valid, tid % 128);
    }
    // P's and the zeros' generic-proxy stores, visible to wgmma's async-proxy reads of both warpgroups (barrier 4).
    cutlass::arch::fence_view_async_shared();
    detail::named_barrier_sync<4, Traits::kConsumerThreads>();

    detail::wgmma_gemm<false>(mma_pv, tOrP, tOrV(_, _, _, st), acc_o);
    if (lane == 0) Barrier::arrive(&smem.kv_empty[st]);  // this warp no longer reads the stage
  }

  // ---- Epilogue: row sums over quad and warpgroups, normalise, write ------------------------------------------------
  CUTE_UNROLL
  for (int mi = 0; mi < kRowsPerThread; ++mi) {
    row_sum[mi] = detail::quad_sum(row_sum[mi]);
    if (lane % 4 == 0) smem.red_sum[wg][get<0>(tScS_rc(mi, 0))] = row_sum[mi];
  }
  detail::named_barrier_sync<3, Traits::kConsumerThreads>();
  // Written once per CTA, so not staged through smem.
  Tensor o = make_tensor(acc_o.data(), detail::acc_rowcol(acc_o.layout()));
  Tensor tOcO = thr_pv.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kDimV>>{}));
  sm80::detail::latent_epilogue<Element, kDimV>(p, acc_o, o, tScS_rc, tOcO, smem.red_sum, row_max,
                                                wg == 0 && lane % 4 == 0, split, b, rows_total, rows.begin, n_rows,
                                                !checked.valid || smem.poison != 0);
#endif
}

namespace detail {

// A 3-D TMA view (576, dim1, dim2) with byte strides stride1 / stride2 and boxes of 64 x 64 x 1, SWIZZLE_128B;
// out-of-bounds rows arrive as zeros.
template <class Element>
cudaError_t make_latent_tma_desc(cute::TmaDescriptor* desc, const void* ptr, int64_t dim1, int64_t dim2,
                                 int64_t stride1, int64_t stride2) {
  cuuint64_t dims[3] = {576u, static_cast<cuuint64_t>(dim1), static_cast<cuuint64_t>(dim2)};
  cuuint64_t strides[2] = {static_cast<cuuint64_t>(stride1), static_cast<cuuint64_t>(stride2)};
  cuuint32_t box[3] = {64u, 64u, 1u}, element_strides[3] = {1u, 1u, 1u};
  const CUtensorMapDataType dtype =
      std::is_same_v<Element, cutlass::half_t> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUresult result = cutlass::call_cuTensorMapEncodeTiled(
      desc, dtype, 3, const_cast<void*>(ptr), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return result == CUDA_SUCCESS ? cudaSuccess : cudaErrorNotSupported;
}

}  // namespace detail

// Launches the split kernel (grid: M tiles, splits, batch; 384 threads) and, with num_splits > 1,
// sm80_latent_combine_kernel on the same workspace layout. Returns, in this order and before any CUDA call:
// - cudaErrorInvalidValue: what launch_sm80_latent_fwd refuses (dim != 576, dim_v != 512, num_splits < 1, a missing
//   workspace, q / out / cache row or batch strides not multiples of 8 elements);
// - cudaSuccess without a launch for an empty problem;
// - cudaErrorNotSupported (the caller falls back to sm80): see the header comment;
// - cudaErrorInvalidConfiguration: the grid limits, as sm80;
// then the errors of the descriptor encoding (cudaErrorNotSupported), the device queries and the launch.
template <class Element>
cudaError_t launch_sm90_latent_fwd(const sm80::LatentFwdParams& p, cudaStream_t stream) {
  using Traits = Sm90LatentTraits<Element>;
  if (p.dim != Traits::kDim || p.dim_v != Traits::kDimV || p.num_splits < 1) return cudaErrorInvalidValue;
  if (p.num_splits > 1 && (p.o_partial == nullptr || p.lse_partial == nullptr)) return cudaErrorInvalidValue;
  if (p.q_row_stride % 8 || p.q_batch_stride % 8 || p.o_row_stride % 8 || p.o_batch_stride % 8 ||
      p.cache_row_stride % 8) {
    return cudaErrorInvalidValue;
  }
  const int64_t rows = sm80::latent::num_rows(p.sq, p.heads);
  const int64_t m_tiles = sm80::latent::num_m_tiles(rows);
  if (m_tiles == 0 || p.batch == 0) return cudaSuccess;

  constexpr int64_t kBytes = sizeof(Element);
  const bool paged = p.block_table != nullptr;
  if (reinterpret_cast<uintptr_t>(p.q) % 16 != 0 || reinterpret_cast<uintptr_t>(p.cache) % 16 != 0) {
    return cudaErrorNotSupported;
  }
  if (paged && !latent::paged_box_supported(p.page_size)) return cudaErrorNotSupported;
  // Q view (D, S_q * H, B); with one batch entry its batch stride is never used, any valid value does.
  const int64_t q_batch_bytes = p.batch > 1 ? p.q_batch_stride * kBytes : rows * p.q_row_stride * kBytes;
  // KV view (D, extent, pages): paged (D, page_size, the cache's pages; a page index is a TMA coordinate, int32);
  // contiguous (D, s_kv, B).
  if (paged && (p.num_pages < 1 || p.num_pages > latent::kMaxCoord)) return cudaErrorNotSupported;
  const int64_t kv_extent = paged ? p.page_size : (p.s_kv > 0 ? p.s_kv : 1);
  const int64_t kv_pages = paged ? p.num_pages : p.batch;
  const int64_t kv_page_bytes = kv_extent * p.cache_row_stride * kBytes;
  if (!tma_stride_ok(p.q_row_stride * kBytes) || !tma_stride_ok(q_batch_bytes) ||
      !tma_stride_ok(p.cache_row_stride * kBytes) || !tma_stride_ok(kv_page_bytes)) {
    return cudaErrorNotSupported;
  }
  // Coordinates: Q rows up to the last M tile's box, cache rows up to a box past s_kv, batch entries.
  if (m_tiles * latent::kBlockM > latent::kMaxCoord || (!paged && kv_extent + latent::kBlockN > latent::kMaxCoord) ||
      p.batch > latent::kMaxCoord) {
    return cudaErrorNotSupported;
  }
  if (m_tiles > 0x7fffffff || p.num_splits > 65535 || p.batch > 65535 || p.batch * rows > 0x7fffffff) {
    return cudaErrorInvalidConfiguration;
  }

  Sm90LatentArgs args{};
  args.p = p;
  cudaError_t err = detail::make_latent_tma_desc<Element>(&args.tma_q, p.q, rows, p.batch, p.q_row_stride * kBytes,
                                                          q_batch_bytes);
  if (err == cudaSuccess) {
    err = detail::make_latent_tma_desc<Element>(&args.tma_kv, p.cache, kv_extent, kv_pages,
                                                p.cache_row_stride * kBytes, kv_page_bytes);
  }
  if (err != cudaSuccess) return err;

  constexpr int kSmem = sizeof(typename Traits::SharedStorage);
  static_assert(kSmem <= 227 * 1024, "Hopper's per-block shared memory limit");
  auto kernel = sm90_latent_fwd_kernel<Traits>;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(p.num_splits), static_cast<unsigned>(p.batch));
  kernel<<<grid, Traits::kThreads, kSmem, stream>>>(args);
  err = cudaGetLastError();
  if (err != cudaSuccess || p.num_splits == 1) return err;
  sm80::sm80_latent_combine_kernel<Element><<<static_cast<unsigned>(p.batch * rows), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace natten_like::sm90

#endif  // !NL_SM90_LATENT_INDEX_ONLY
