// The sm80 compressed-latent (DeepSeek MLA, absorbed form) decode forward: D = 576 (latent 512 + rope 64), D_v = 512,
// one shared KV head, contiguous or paged cache, split-KV with a combine kernel. mma.sync m16n8k16, so it runs on every
// GPU from sm80 on (FlashMLA's MLA kernels are sm90/sm100 only).
//
// Split kernel: one CTA per (M tile of 64 query rows, split, batch); the rows are the (s, h) queries of one batch
// (latent_schedule.hpp). Q (64 x 576) stays in smem; each KV tile is 64 cache rows of 576 (9 swizzle atoms of 64) and
// V is the first 512 columns of the same smem tile, read transposed by ldmatrix: the latent is loaded once.
//
// Warps: 8, as a 4 x 2 grid over (rows, columns) of both GEMMs. The output tile 64 x 512 fp32 is 128 KB of
// accumulators: over 4 warps 256 floats a thread, far past 255 registers. Over 8 warps (2 x 4 warps on the same rows,
// each pair splitting columns) it is 128 floats a thread. The warp pair of the same 16 rows also splits the 64 keys of
// S = Q K^T (32 each) instead of computing S twice: S costs 64 x 64 x 576 MACs, more than P V (64 x 512 x 64), so
// recomputing it would add ~55% to the tensor-core work. The price is one smem exchange of row maxima (64 x 2 floats)
// and P (64 x 64, 8 KB) through smem, which P V then reads with ldmatrix like any A operand.
//
// smem: Q 72 KB + K 72 KB + P 8 KB + 2 KB = 154 KB: one CTA per SM, fits sm80 / sm90 (<= 163 / 227 KB opt-in), not
// sm86 / sm89 (99 KB); the launcher checks the device's opt-in limit. K is single-buffered (a second 72 KB buffer
// exceeds sm80's limit): only its rope atom (1/9) of the next tile loads during P V; the latent atoms
// load after P V, exposed. Double-buffered 32-row KV tiles (2 x 36 KB) would overlap it all: the next step for speed.
//
// Output: with num_splits == 1 out / lse are written directly; otherwise each split writes its normalised partial
// output and logsumexp to the workspace and sm80_latent_combine_kernel merges them exactly.
#pragma once

#include <cmath>
#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "natten_like/sm80/latent_schedule.hpp"
#include "natten_like/sm80/sm80_fmha_fwd_kernel.hpp"
#include "natten_like/sm80/sm80_latent_params.hpp"

namespace natten_like::sm80 {

template <class Element_>
struct Sm80LatentTraits {
  using Element = Element_;
  static constexpr int kBlockM = latent::kBlockM;
  static constexpr int kBlockN = latent::kBlockN;
  static constexpr int kDim = 576;
  static constexpr int kDimV = 512;
  static constexpr int kWarps = 8;
  static constexpr int kThreads = kWarps * 32;
  static_assert(std::is_same_v<Element, cutlass::half_t> || std::is_same_v<Element, cutlass::bfloat16_t>);

  using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>, cute::SM80_16x8x16_F32F16F16F32_TN,
                                   cute::SM80_16x8x16_F32BF16BF16F32_TN>;
  // Warp w = wm + 4 wn (column-major thread layout): rows [16 wm, 16 wm + 16), and in every 32 columns of the tile the
  // two n8 blocks 8 wn + {0, 16}. Warps w and w + 4 share rows: they are the pair that exchanges row maxima and sums.
  using TiledMma = cute::TiledMMA<cute::MMA_Atom<MmaOp>, cute::Layout<cute::Shape<cute::_4, cute::_2, cute::_1>>,
                                  cute::Tile<cute::_64, cute::_32, cute::_16>>;

  using SmemLayoutAtom = decltype(cute::composition(
      cute::Swizzle<3, 3, 3>{}, cute::Layout<cute::Shape<cute::_8, cute::_64>, cute::Stride<cute::_64, cute::_1>>{}));
  using SmemLayoutQK = decltype(cute::tile_to_shape(SmemLayoutAtom{}, cute::Shape<cute::_64, cute::Int<kDim>>{}));
  using SmemLayoutP = decltype(cute::tile_to_shape(SmemLayoutAtom{}, cute::Shape<cute::_64, cute::_64>{}));
  // V^T (dim_v, keys): the first 512 columns of the K tile, the B operand of P V, read with ldmatrix.trans.
  using SmemLayoutVt = decltype(cute::composition(
      SmemLayoutQK{}, cute::make_layout(cute::Shape<cute::Int<kDimV>, cute::_64>{}, cute::GenRowMajor{})));

  using SmemCopyAtom = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomTransposed = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;
  using SmemCopyAtomP = cute::Copy_Atom<cute::UniversalCopy<uint32_t>, Element>;  // adjacent column pairs

  static constexpr int kChunk = 16 / sizeof(Element);  // elements per 16-byte cp.async
  static constexpr int kChunksPerRow = kDim / kChunk;  // 72

  struct SharedStorage {
    alignas(128) Element q[cute::cosize_v<SmemLayoutQK>];
    alignas(128) Element k[cute::cosize_v<SmemLayoutQK>];
    alignas(128) Element p[cute::cosize_v<SmemLayoutP>];
    int64_t row_off[kBlockM];  // element offset of each Q row, then of each row of the next K tile; -1 = zero-fill
    int64_t row_limit[kBlockM];  // exclusive end of the positions each query row sees (latent::row_limit)
    float red_max[2][kBlockM];   // per warp column wn: row maxima of its keys, for the pair exchange
    float red_sum[2][kBlockM];   // per wn: row sums, summed in the epilogue
    int64_t seqlen;              // L_b, re-read per KV tile: held in a register across the mainloop it spilled
    int poison;                  // the batch entry's length or a page this CTA loads is invalid: its rows get NaN
  };
};

namespace detail {

// Gathers kBlockM rows of kDim elements into smem: row r from base + off[r], zero-filled where off[r] < 0 (padding
// query rows, positions past the cache): zeros keep 0 * garbage (NaN) out of P V. Eight threads cover one 64-element
// swizzle atom row (128 bytes); a thread walks the 9 atoms of its rows at a constant smem stride (atoms are 512-element
// blocks, M-major, and the swizzle permutes only inside one), so each of its rows needs one global and one smem base
// address: an (r, c) address per chunk would be 36 loop-invariant registers, which spilled.
// Only the 64-column atoms [kAtomBegin, kAtomEnd) are copied (the rope atom of the next K tile goes early).
template <class Traits, int kAtomBegin, int kAtomEnd, class SmemTensor>
CUTE_DEVICE void latent_gather_rows(SmemTensor& s, const typename Traits::Element* base, const int64_t* off, int tid) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kRowsPerPass = Traits::kThreads / 8;
  constexpr int kAtomStride = Traits::kBlockM * 64;  // elements from column c to c + 64 of one row
  static_assert(Traits::kBlockM % kRowsPerPass == 0 && Traits::kDim % 64 == 0);
  static_assert(0 <= kAtomBegin && kAtomBegin < kAtomEnd && kAtomEnd <= Traits::kDim / 64);
  const int cc = (tid % 8) * Traits::kChunk;
  CUTE_UNROLL
  for (int pass = 0; pass < Traits::kBlockM / kRowsPerPass; ++pass) {
    const int r = tid / 8 + pass * kRowsPerPass;
    const int64_t o = off[r];
    const bool valid = o >= 0;
    const Element* src = base + (valid ? o + cc : 0);
    Element* dst = &s(r, cc);
    CUTE_UNROLL
    for (int j = kAtomBegin; j < kAtomEnd; ++j) {
      SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<uint128_t>::copy(*reinterpret_cast<const uint128_t*>(src + (valid ? 64 * j : 0)),
                                                       *reinterpret_cast<uint128_t*>(dst + j * kAtomStride), valid);
    }
  }
}

// acc += A B, both from smem, one k-block at a time without prefetching the next: for P V a k-block of B is 64
// registers a thread (256 columns per warp), and holding two next to the 128 accumulators would spill.
template <class Acc, class RA, class RB, class SA, class SB, class TiledMma, class CopyA, class CopyB>
CUTE_DEVICE void gemm_ss_noprefetch(Acc& acc, RA& rA, RB& rB, SA const& sA, SB const& sB, TiledMma& mma,
                                    CopyA const& copy_a, CopyB const& copy_b) {
  using namespace cute;
  auto rA_view = copy_a.get_slice(threadIdx.x).retile_D(rA);
  auto rB_view = copy_b.get_slice(threadIdx.x).retile_D(rB);
  CUTE_UNROLL
  for (int i = 0; i < size<2>(rA); ++i) {
    copy(copy_a, sA(_, _, i), rA_view(_, _, i));
    copy(copy_b, sB(_, _, i), rB_view(_, _, i));
    gemm(mma, rA(_, _, i), rB(_, _, i), acc);
  }
}

// The epilogue of both MLA decode kernels (sm80, sm90), once each row's partial sums of the two key halves are in
// red_sum[0 / 1][row] and visible: normalise O (`o`: the accumulator `acc_o` viewed as rows x columns, rows those of
// the S partition `tScS_rc`), write lse where `writes_lse` (one thread of each row: lane % 4 == 0 of one half), and the
// output: Element pairs (accumulator values i, i + 1 are adjacent columns of one row, coordinates `tOcO`) straight to
// out, or float2 to the split workspace. Rows from n_rows on are padding of the tile. `poison`: the batch entry's
// length or a page this CTA loaded was invalid (latent_schedule.hpp): every row gets NaN, output and lse, and so does
// the merge.
template <class Element, int kDimV, int kBlockM, class AccO, class RowColO, class RowColS, class CoordO>
CUTE_DEVICE void latent_epilogue(const LatentFwdParams& p, AccO& acc_o, RowColO& o, const RowColS& tScS_rc,
                                 const CoordO& tOcO, const float (&red_sum)[2][kBlockM], const float* row_max,
                                 bool writes_lse, int64_t split, int64_t b, int64_t rows_total, int64_t rows_begin,
                                 int n_rows, bool poison) {
  using namespace cute;
  const bool direct = p.num_splits == 1;
  const int64_t part_row0 = (split * p.batch + b) * rows_total + rows_begin;  // workspace row of this tile's row 0
  CUTE_UNROLL
  for (int mi = 0; mi < size<0>(o); ++mi) {
    const int r = get<0>(tScS_rc(mi, 0));
    const float sum = poison ? NAN : red_sum[0][r] + red_sum[1][r];
    const float inv = detail::row_inv_sum(sum);
    CUTE_UNROLL
    for (int ni = 0; ni < size<1>(o); ++ni) o(mi, ni) *= inv;
    if (writes_lse && r < n_rows) {
      const float lse = detail::row_lse(row_max[mi], sum);
      if (direct) {
        p.lse[b * rows_total + rows_begin + r] = lse;
      } else {
        p.lse_partial[part_row0 + r] = lse;
      }
    }
  }
  auto* out = static_cast<Element*>(p.out);
  CUTE_UNROLL
  for (int i = 0; i < size(acc_o); i += 2) {
    const int r = get<0>(tOcO(i));
    const int c = get<1>(tOcO(i));
    if (r >= n_rows) continue;
    if (direct) {
      Element pair[2] = {static_cast<Element>(acc_o(i)), static_cast<Element>(acc_o(i + 1))};
      *reinterpret_cast<uint32_t*>(out + b * p.o_batch_stride + (rows_begin + r) * p.o_row_stride + c) =
          *reinterpret_cast<const uint32_t*>(pair);
    } else {
      *reinterpret_cast<float2*>(p.o_partial + (part_row0 + r) * kDimV + c) = make_float2(acc_o(i), acc_o(i + 1));
    }
  }
}

}  // namespace detail

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1) sm80_latent_fwd_kernel(__grid_constant__ const LatentFwdParams p) {
  using namespace cute;
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kDim = Traits::kDim, kDimV = Traits::kDimV;
  constexpr int kAtoms = kDim / 64, kLatentAtoms = kDimV / 64;  // 9 column atoms of 64; the first 8 are V

  extern __shared__ __align__(128) char smem_raw[];
  auto& smem = *reinterpret_cast<typename Traits::SharedStorage*>(smem_raw);
  const int tid = threadIdx.x;
  const int64_t m_tile = blockIdx.x;
  const int64_t split = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int warp_n = (tid / 32) / 4;  // which warp of the pair sharing rows (TiledMma's column-major warp layout)

  const int64_t rows_total = latent::num_rows(p.sq, p.heads);
  const policy::Range rows = latent::m_tile_rows(rows_total, m_tile);
  const int n_rows = static_cast<int>(rows.size());
  const latent::CheckedLength checked =
      latent::checked_length(p.seqlens[b], latent::capacity(p.block_table != nullptr, p.s_kv, p.page_size, p.max_pages));
  const int64_t len = checked.len;
  const policy::Range tiles = latent::split_kv_tiles(len, p.sq, p.heads, p.causal, m_tile, p.num_splits, split);

  const auto* q_base = static_cast<const Element*>(p.q);
  const auto* cache = static_cast<const Element*>(p.cache);
  // Cache row offsets of KV tile e (threads below kBlockN, one row each); a position whose page is not one of the
  // cache's is zero-filled and poisons the batch entry.
  auto kv_offsets = [&](int64_t e) {
    if (tid < kBlockN) {
      const int64_t pos = e * kBlockN + tid;
      const int64_t row =
          pos < smem.seqlen ? latent::cache_row(p.block_table, p.max_pages, p.page_size, p.num_pages, p.s_kv, b, pos)
                            : -1;
      if (row < 0 && pos < smem.seqlen) smem.poison = 1;
      smem.row_off[tid] = row < 0 ? -1 : row * p.cache_row_stride;
    }
  };

  Tensor sQ = make_tensor(make_smem_ptr(smem.q), typename Traits::SmemLayoutQK{});
  Tensor sK = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutQK{});
  Tensor sP = make_tensor(make_smem_ptr(smem.p), typename Traits::SmemLayoutP{});
  Tensor sVt = make_tensor(make_smem_ptr(smem.k), typename Traits::SmemLayoutVt{});

  if (tid == 0) {
    smem.seqlen = len;
    smem.poison = !checked.valid;
  }
  if (tid < kBlockM) {
    const int64_t r = rows.begin + tid;
    smem.row_off[tid] = tid < n_rows ? b * p.q_batch_stride + r * p.q_row_stride : -1;
    smem.row_limit[tid] = tid < n_rows ? latent::row_limit(len, p.sq, p.heads, p.causal, r) : 0;
  }
  __syncthreads();
  if (tiles.size() > 0) detail::latent_gather_rows<Traits, 0, kAtoms>(sQ, q_base, smem.row_off, tid);
  cp_async_fence();
  __syncthreads();  // every thread has issued its Q copies from row_off before it is overwritten
  if (tiles.size() > 0) kv_offsets(tiles.begin);
  __syncthreads();
  if (tiles.size() > 0) detail::latent_gather_rows<Traits, 0, kAtoms>(sK, cache, smem.row_off, tid);
  cp_async_fence();

  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_slice(tid);
  Tensor rQ = make_tensor<Element>(partition_shape_A(tiled_mma, Shape<Int<kBlockM>, Int<kDim>>{}));
  Tensor rK = make_tensor<Element>(partition_shape_B(tiled_mma, Shape<Int<kBlockN>, Int<kDim>>{}));
  Tensor rP = make_tensor<Element>(partition_shape_A(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor rVt = make_tensor<Element>(partition_shape_B(tiled_mma, Shape<Int<kDimV>, Int<kBlockN>>{}));
  Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kDimV>>{});  // 128 floats a thread
  clear(acc_o);

  auto copy_a = make_tiled_copy_A(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto copy_k = make_tiled_copy_B(typename Traits::SmemCopyAtom{}, tiled_mma);
  auto copy_v = make_tiled_copy_B(typename Traits::SmemCopyAtomTransposed{}, tiled_mma);
  Tensor tSsQ = copy_a.get_slice(tid).partition_S(sQ);
  Tensor tSsK = copy_k.get_slice(tid).partition_S(sK);
  Tensor tOsP = copy_a.get_slice(tid).partition_S(sP);
  Tensor tOsVt = copy_v.get_slice(tid).partition_S(sVt);
  auto copy_p = make_tiled_copy_C(typename Traits::SmemCopyAtomP{}, tiled_mma);
  auto thr_copy_p = copy_p.get_slice(tid);
  Tensor tPsP = thr_copy_p.partition_D(sP);

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
  const int lane = tid % 32;

  for (int64_t e = tiles.begin; e < tiles.end; ++e) {
    cp_async_wait<0>();
    __syncthreads();  // K(e) (and Q) in smem; row_off of K(e) no longer read
    if (e + 1 < tiles.end) kv_offsets(e + 1);

    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});  // this warp's 16 x 32
    clear(acc_s);
    detail::gemm_ss(acc_s, rQ, rK, tSsQ, tSsK, tiled_mma, copy_a, copy_k);

    // Scale, mask (positions past the row's limit: the causal edge and the cache end), this warp's row maxima.
    Tensor s = make_tensor(acc_s.data(), detail::acc_rowcol(acc_s.layout()));
    const int64_t j0 = e * kBlockN;
    float m_part[kRowsPerThread];
    CUTE_UNROLL
    for (int mi = 0; mi < kRowsPerThread; ++mi) {
      const int r = get<0>(tScS_rc(mi, 0));
      const int lim = latent::tile_key_limit(smem.row_limit[r], j0);
      float m = -INFINITY;
      CUTE_UNROLL
      for (int ni = 0; ni < kColsPerThread; ++ni) {
        const float x = get<1>(tScS_rc(0, ni)) < lim ? s(mi, ni) * scale_log2 : -INFINITY;
        s(mi, ni) = x;
        m = fmaxf(m, x);
      }
      m_part[mi] = detail::quad_max<4>(m);
      if (lane % 4 == 0) smem.red_max[warp_n][r] = m_part[mi];
    }
    __syncthreads();  // both warps' maxima of each row; every warp is done with S, the only reader of K's rope atom

    Tensor o = make_tensor(acc_o.data(), detail::acc_rowcol(acc_o.layout()));
    CUTE_UNROLL
    for (int mi = 0; mi < kRowsPerThread; ++mi) {
      const int r = get<0>(tScS_rc(mi, 0));
      // Both warps of the pair compute the same m, so their partial sums (reduced over quad and pair in the epilogue)
      // and outputs share one scale.
      const float m = fmaxf(row_max[mi], fmaxf(m_part[mi], smem.red_max[warp_n ^ 1][r]));
      const float correction = detail::softmax_update_row(s, mi, m, row_max[mi], row_sum[mi]);
      CUTE_UNROLL
      for (int ni = 0; ni < size<1>(o); ++ni) o(mi, ni) *= correction;
    }
    Tensor p_frag = make_tensor_like<Element>(acc_s);
    CUTE_UNROLL
    for (int i = 0; i < size(acc_s); ++i) p_frag(i) = static_cast<Element>(acc_s(i));
    copy(copy_p, thr_copy_p.retile_S(p_frag), tPsP);
    __syncthreads();  // P of both warps in smem; row_off of K(e + 1) visible
    // The rope atom of K(e + 1) loads during P V, which reads only the latent atoms (issued here, not right after the
    // previous barrier, where the S accumulators are still live: there its addresses spilled).
    if (e + 1 < tiles.end) detail::latent_gather_rows<Traits, kLatentAtoms, kAtoms>(sK, cache, smem.row_off, tid);
    cp_async_fence();

    detail::gemm_ss_noprefetch(acc_o, rP, rVt, tOsP, tOsVt, tiled_mma, copy_a, copy_v);
    __syncthreads();  // every warp is done with K(e)'s latent atoms and P
    if (e + 1 < tiles.end) detail::latent_gather_rows<Traits, 0, kLatentAtoms>(sK, cache, smem.row_off, tid);
    cp_async_fence();
  }
  cp_async_wait<0>();  // an empty split's Q copies (none issued) or nothing: no copy outlives the kernel

  // Epilogue: row sums over the quad and the warp pair, normalise, write.
  Tensor o = make_tensor(acc_o.data(), detail::acc_rowcol(acc_o.layout()));
  CUTE_UNROLL
  for (int mi = 0; mi < kRowsPerThread; ++mi) {
    row_sum[mi] = detail::quad_sum<4>(row_sum[mi]);
    if (lane % 4 == 0) smem.red_sum[warp_n][get<0>(tScS_rc(mi, 0))] = row_sum[mi];
  }
  __syncthreads();
  Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kDimV>>{}));
  detail::latent_epilogue<Element, kDimV>(p, acc_o, o, tScS_rc, tOcO, smem.red_sum, row_max,
                                          lane % 4 == 0 && warp_n == 0, split, b, rows_total, rows.begin, n_rows,
                                          smem.poison != 0);
}

// Exact merge of the splits, one CTA of 128 threads per (batch, query row), 4 columns a thread:
// out = sum_s e^(lse_s - M) O_s / sum_s e^(lse_s - M), lse = M + ln(sum_s e^(lse_s - M)), M = max_s lse_s. Splits that
// saw no row have lse_s = -inf and weigh 0; a row no split saw gets out 0, lse -inf. A split with a NaN score has lse_s
// NaN, which fmaxf leaves out of M but which makes its weight, hence the row's out and lse, NaN (never a finite merge
// of a NaN input).
template <class Element>
__global__ void __launch_bounds__(128) sm80_latent_combine_kernel(__grid_constant__ const LatentFwdParams p) {
  constexpr int kDimV = 512;
  const int64_t rows_total = latent::num_rows(p.sq, p.heads);
  const int64_t br = blockIdx.x;  // b * rows_total + r
  const int64_t b = br / rows_total, r = br % rows_total;
  const int64_t plane = p.batch * rows_total;  // workspace rows per split
  float m = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) m = fmaxf(m, p.lse_partial[s * plane + br]);
  const int c = threadIdx.x * 4;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  float sum = 0.f;
  for (int s = 0; s < p.num_splits; ++s) {
    const float l = p.lse_partial[s * plane + br];
    if (l == -INFINITY) continue;  // its partial output is 0 and its weight exactly 0
    const float w = expf(l - m);   // NaN for a NaN split, also where M is -inf (every other split -inf)
    sum += w;
    const float4 x = *reinterpret_cast<const float4*>(p.o_partial + (s * plane + br) * kDimV + c);
    acc.x += w * x.x, acc.y += w * x.y, acc.z += w * x.z, acc.w += w * x.w;
  }
  const float inv = detail::row_inv_sum(sum);
  Element v[4] = {static_cast<Element>(acc.x * inv), static_cast<Element>(acc.y * inv),
                  static_cast<Element>(acc.z * inv), static_cast<Element>(acc.w * inv)};
  auto* out = static_cast<Element*>(p.out) + b * p.o_batch_stride + r * p.o_row_stride + c;
  *reinterpret_cast<uint2*>(out) = *reinterpret_cast<const uint2*>(v);
  if (threadIdx.x == 0) p.lse[br] = sum == 0.f ? -INFINITY : m + logf(sum);
}

// Launches the split kernel (grid: M tiles, splits, batch) and, with num_splits > 1, the combine kernel. Requires
// dim 576, dim_v 512, 16-byte aligned rows (q / cache / out row strides multiples of 8 elements), lse [B, S_q, H]
// contiguous, and the workspace when num_splits > 1.
template <class Element>
cudaError_t launch_sm80_latent_fwd(const LatentFwdParams& p, cudaStream_t stream) {
  using Traits = Sm80LatentTraits<Element>;
  if (p.dim != Traits::kDim || p.dim_v != Traits::kDimV || p.num_splits < 1) return cudaErrorInvalidValue;
  if (p.num_splits > 1 && (p.o_partial == nullptr || p.lse_partial == nullptr)) return cudaErrorInvalidValue;
  if (p.q_row_stride % 8 || p.q_batch_stride % 8 || p.o_row_stride % 8 || p.o_batch_stride % 8 ||
      p.cache_row_stride % 8) {
    return cudaErrorInvalidValue;
  }
  const int64_t rows = latent::num_rows(p.sq, p.heads);
  const int64_t m_tiles = latent::num_m_tiles(rows);
  if (m_tiles == 0 || p.batch == 0) return cudaSuccess;
  if (m_tiles > 0x7fffffff || p.num_splits > 65535 || p.batch > 65535 || p.batch * rows > 0x7fffffff) {
    return cudaErrorInvalidConfiguration;
  }
  constexpr int kSmem = sizeof(typename Traits::SharedStorage);
  auto kernel = sm80_latent_fwd_kernel<Traits>;
  cudaError_t err = set_dynamic_smem(kernel, kSmem);  // above 99 KB: not on sm86 / sm89
  if (err != cudaSuccess) return err;
  dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(p.num_splits), static_cast<unsigned>(p.batch));
  kernel<<<grid, Traits::kThreads, kSmem, stream>>>(p);
  err = cudaGetLastError();
  if (err != cudaSuccess || p.num_splits == 1) return err;
  sm80_latent_combine_kernel<Element><<<static_cast<unsigned>(p.batch * rows), 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace natten_like::sm80
