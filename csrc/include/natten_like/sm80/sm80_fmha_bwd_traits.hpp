// Static configuration of the sm80 fused attention backward (dK/dV kernel and dQ kernel): CTA tile, tensor-core atom,
// shared-memory layouts, copy atoms and the shared storage of each kernel (the kernels add their schedules to it).
//
// Both kernels tile the M dimension of their tiles over 4 warps (16 rows each), and compute every product in the
// orientation that keeps the row owner fixed, so that no P or dS tile goes through shared memory:
// - dK/dV kernel, rows = keys: S^T = K Q^T and dP^T = V dO^T are accumulators whose rows are the CTA's keys, which is
//   exactly the A operand of dV += P^T dO and dK += dS^T Q (the forward's acc_as_a_operand reuse of S as P); the B
//   operands dO^T and Q^T are transposed smem views read with ldmatrix.trans;
// - dQ kernel, rows = queries: S = Q K^T, dP = dO V^T, then dQ += dS K with K^T a transposed smem view.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "natten_like/sm80/sm80_fmha_bwd_params.hpp"
#include "natten_like/sm80/sm80_fmha_fwd_params.hpp"

namespace natten_like::sm80 {

// kHeadDim is the head dim of Q, K (and dQ, dK), kHeadDimV that of V, the output and dO (and dV); D by default.
template <class Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kHeadDimV_ = kHeadDim_>
struct Sm80FmhaBwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = kBlockM_;  // query rows per Q tile (the Q tile's row product must fit)
  static constexpr int kBlockN = kBlockN_;  // key rows per KV tile (the KV tile's row product must fit)
  static_assert(kBlockM == kBlockN, "both kernels gather with one thread count: square blocks");
  static constexpr int kWarps = kBlockM / 16;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMaxHeadDim = kHeadDim > kHeadDimV ? kHeadDim : kHeadDimV;
  // Groups of kWarps warps in the dK/dV kernel: 1, or, where D + D_v > 256, 2 (one accumulates dV, the other dK, P^T
  // handed over through smem; sm80_fmha_bwd_kernel.hpp: dkdv_steps), since 16 key rows of both accumulators per warp
  // would not fit 255 registers. The dQ kernel runs one group.
  static constexpr int kDkDvGroups = kHeadDim + kHeadDimV > 256 ? 2 : 1;
  static constexpr int kDkDvThreads = kThreads * kDkDvGroups;
  // Query columns per step of the dK/dV kernel: its accumulators stay live across the whole mainloop, so beyond head
  // dim 64 the S^T and dP^T tiles are computed 32 queries at a time, to stay within 255 registers without spills.
  static constexpr int kQChunk = kHeadDim + kHeadDimV <= 128 ? kBlockM : 32;
  // Key columns per step of the dQ kernel: the whole KV tile up to head dim 128; beyond, 32, for the S and dP tiles
  // beside the (kBlockM, kHeadDim) dQ accumulator.
  static constexpr int kKvChunk = kHeadDim + kHeadDimV <= 256 ? kBlockN : 32;
  // Gathered tiles in flight: at head dim 64 the next Q/dO (or K/V) tile loads during this one's math; at 128 a second
  // stage would take shared memory past the 99 KB an sm86/sm89 block may use, so the gather of the next tile follows
  // the math of this one (the next tile's geometry, with the dK/dV kernel's loads of lse and delta, still precedes it).
  static constexpr int kStages = kMaxHeadDim <= 64 ? 2 : 1;
  // CTAs per SM the register allocation must allow: at head dim 64, three (168 registers) spill in both kernels, two
  // leave ptxas ~240; at 128 the accumulators need the full 255.
  static constexpr int kMinBlocksPerSm = kMaxHeadDim <= 64 ? 2 : 1;
  static_assert(kBlockM % 16 == 0 && kBlockN % 16 == 0 && kBlockM % kQChunk == 0 && kBlockN % kKvChunk == 0,
                "m16n8k16 needs 16-row blocks");
  static_assert(kHeadDim % 64 == 0 || kHeadDim == 32, "the smem swizzle atom spans 64 (or, for 32, 32) elements");
  static_assert(kHeadDimV % 64 == 0 || kHeadDimV == 32, "the smem swizzle atom spans 64 (or, for 32, 32) elements");
  static_assert(std::is_same_v<Element, cutlass::half_t> || std::is_same_v<Element, cutlass::bfloat16_t>);

  using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>, cute::SM80_16x8x16_F32F16F16F32_TN,
                                   cute::SM80_16x8x16_F32BF16BF16F32_TN>;
  using TiledMma =
      cute::TiledMMA<cute::MMA_Atom<MmaOp>, cute::Layout<cute::Shape<cute::Int<kWarps>, cute::_1, cute::_1>>,
                     cute::Tile<cute::Int<kBlockM>, cute::_16, cute::_16>>;

  // The forward's swizzled 8 x 64 atom (8 x 32 for rows of 32, as there), with tiles ordered row-major: rows
  // [r0, r0 + 8n) of a tile are one contiguous range of 8n * kCols elements, so a chunk of kQChunk query rows is itself
  // a (kQChunk, kCols) tile at an offset that is a multiple of the swizzle period (the gather writes the whole tile, the
  // math reads chunks).
  template <int kCols>
  using SmemLayoutAtom = decltype(cute::composition(
      cute::Swizzle<kCols % 64 == 0 ? 3 : 2, 3, 3>{},
      cute::Layout<cute::Shape<cute::_8, cute::Int<kCols % 64 == 0 ? 64 : 32>>,
                   cute::Stride<cute::Int<kCols % 64 == 0 ? 64 : 32>, cute::_1>>{}));
  template <int kRows, int kCols>
  using SmemLayoutSwizzled = decltype(cute::tile_to_shape(
      SmemLayoutAtom<kCols>{}, cute::Shape<cute::Int<kRows>, cute::Int<kCols>>{}, cute::Step<cute::_2, cute::_1>{}));
  // Rows padded by one 16-byte chunk instead (row stride kCols + 8 elements, 16 bytes of banks apart for every kCols
  // here, so the 8 rows of an ldmatrix still hit 8 distinct bank groups): linear addresses, one register plus
  // immediates where the swizzle's XOR needs a register per pattern, which the wide configurations need to stay
  // within 255 registers.
  static constexpr bool kPadded = kHeadDim + kHeadDimV > 256;
  template <int kCols>
  static constexpr int kRowStride = kPadded ? kCols + 16 / int(sizeof(Element)) : kCols;
  template <int kRows, int kCols>
  using SmemLayoutRows = std::conditional_t<
      kPadded,
      cute::Layout<cute::Shape<cute::Int<kRows>, cute::Int<kCols>>, cute::Stride<cute::Int<kRowStride<kCols>>, cute::_1>>,
      SmemLayoutSwizzled<kRows, kCols>>;
  // (cols, rows) views of the same smem: the B operands of P^T dO, dS^T Q (rows = queries) and dS K (rows = keys).
  // Chunks (kQChunk query rows, kKvChunk key rows) are tiles of their own at an offset of chunk * rows * cols.
  template <int kRows, int kCols>
  using SmemLayoutRowsT = decltype(cute::composition(
      SmemLayoutRows<kRows, kCols>{},
      cute::make_layout(cute::Shape<cute::Int<kCols>, cute::Int<kRows>>{}, cute::GenRowMajor{})));
  using SmemLayoutQ = SmemLayoutRows<kBlockM, kHeadDim>;
  using SmemLayoutDO = SmemLayoutRows<kBlockM, kHeadDimV>;
  using SmemLayoutK = SmemLayoutRows<kBlockN, kHeadDim>;
  using SmemLayoutV = SmemLayoutRows<kBlockN, kHeadDimV>;
  using SmemLayoutQc = SmemLayoutRows<kQChunk, kHeadDim>;
  using SmemLayoutDOc = SmemLayoutRows<kQChunk, kHeadDimV>;
  using SmemLayoutQct = SmemLayoutRowsT<kQChunk, kHeadDim>;
  using SmemLayoutDOct = SmemLayoutRowsT<kQChunk, kHeadDimV>;
  using SmemLayoutKc = SmemLayoutRows<kKvChunk, kHeadDim>;
  using SmemLayoutVc = SmemLayoutRows<kKvChunk, kHeadDimV>;
  using SmemLayoutKct = SmemLayoutRowsT<kKvChunk, kHeadDim>;

  using SmemCopyAtom = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomTransposed = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;
  using SmemCopyAtomO = cute::Copy_Atom<cute::UniversalCopy<uint32_t>, Element>;

  static constexpr int kChunk = 16 / sizeof(Element);  // elements per 16-byte cp.async
  static constexpr int kTileElems = kBlockM * kRowStride<kHeadDim>;    // a Q or K tile (kBlockM == kBlockN)
  static constexpr int kTileElemsV = kBlockM * kRowStride<kHeadDimV>;  // a dO or V tile

  // dK/dV kernel: K and V of the CTA's KV tile for the whole mainloop; Q and dO of the visiting Q tile in kStages
  // buffers; the per-row geometry of the visiting Q tile double-buffered (the next one is computed during this one).
  struct DkDvStorage {
    alignas(128) Element k[kTileElems];  // also dK in the epilogue
    alignas(128) Element v[kTileElemsV];  // also dV in the epilogue
    alignas(128) Element q[kStages][kTileElems];
    alignas(128) Element d_out[kStages][kTileElemsV];
    int64_t kv_token[kBlockN];         // flat token of each key row
    int32_t kv_x[kRank][kBlockN];      // coordinate of each key row (-1 in dim 0 for padding rows)
    int64_t q_token[2][kBlockM];       // flat token of each query row
    int32_t q_begin[2][kRank][kBlockM];  // window of each query row, per dim (empty for padding rows)
    int32_t q_end[2][kRank][kBlockM];
    float lse_log2[2][kBlockM];        // lse * log2(e); +inf for padding rows and rows with no key, so that P = 0
    float delta[2][kBlockM];           // 0 for padding rows
    // P^T of a chunk, handed from the dV group to the dK group (two groups only): element i of thread t's fragment at
    // i * kThreads + t, so each warp's stores and loads are 32 consecutive words.
    float p_xchg[kDkDvGroups == 2 ? kBlockN * kQChunk : 1];
    int32_t kv_rows;                   // key rows of the tile (read from here, not held in a register)
    int32_t q_rows[2];
    int32_t q_need_mask[2];
    int32_t q_head[2];                 // query head of the step
  };

  // dQ kernel: Q and dO of the CTA's Q tile; K and V of the visited KV tile in kStages buffers; the per-row geometry of
  // the KV tile double-buffered (the next one is computed during this one).
  struct DqStorage {
    alignas(128) Element q[kTileElems];  // also dQ in the epilogue
    alignas(128) Element d_out[kTileElemsV];
    alignas(128) Element k[kStages][kTileElems];
    alignas(128) Element v[kStages][kTileElemsV];
    int64_t q_token[kBlockM];
    int32_t q_begin[kRank][kBlockM];
    int32_t q_end[kRank][kBlockM];
    int64_t kv_token[2][kBlockN];
    int32_t kv_x[2][kRank][kBlockN];
    int32_t kv_rows[2];
    int32_t kv_need_mask[2];
  };
};

}  // namespace natten_like::sm80
