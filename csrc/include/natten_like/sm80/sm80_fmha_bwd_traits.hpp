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

template <class Element_, int kHeadDim_, int kBlockM_, int kBlockN_>
struct Sm80FmhaBwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;  // query rows per Q tile (the Q tile's row product must fit)
  static constexpr int kBlockN = kBlockN_;  // key rows per KV tile (the KV tile's row product must fit)
  static_assert(kBlockM == kBlockN, "both kernels gather with one thread count: square blocks");
  static constexpr int kWarps = kBlockM / 16;
  static constexpr int kThreads = kWarps * 32;
  // Query columns per step of the dK/dV kernel: its dK and dV accumulators (2 x kBlockN x kHeadDim fp32 over the CTA)
  // stay live across the whole mainloop, so at head dim 128 the S^T and dP^T tiles are computed 32 queries at a time to
  // stay within 255 registers without spills.
  static constexpr int kQChunk = kHeadDim <= 64 ? kBlockM : 32;
  // Gathered tiles in flight: at head dim 64 the next Q/dO (or K/V) tile loads during this one's math; at 128 a second
  // stage would take shared memory past the 99 KB an sm86/sm89 block may use, so the gather of the next tile follows
  // the math of this one (the next tile's geometry, with the dK/dV kernel's loads of lse and delta, still precedes it).
  static constexpr int kStages = kHeadDim <= 64 ? 2 : 1;
  // CTAs per SM the register allocation must allow: at head dim 64, three (168 registers) spill in both kernels, two
  // leave ptxas ~240; at 128 the accumulators need the full 255.
  static constexpr int kMinBlocksPerSm = kHeadDim <= 64 ? 2 : 1;
  static_assert(kBlockM % 16 == 0 && kBlockN % 16 == 0 && kBlockM % kQChunk == 0, "m16n8k16 needs 16-row blocks");
  static_assert(kHeadDim % 64 == 0 || kHeadDim == 32, "the smem swizzle atom spans 64 (or, for 32, 32) elements");
  static_assert(std::is_same_v<Element, cutlass::half_t> || std::is_same_v<Element, cutlass::bfloat16_t>);

  using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>, cute::SM80_16x8x16_F32F16F16F32_TN,
                                   cute::SM80_16x8x16_F32BF16BF16F32_TN>;
  using TiledMma =
      cute::TiledMMA<cute::MMA_Atom<MmaOp>, cute::Layout<cute::Shape<cute::Int<kWarps>, cute::_1, cute::_1>>,
                     cute::Tile<cute::Int<kBlockM>, cute::_16, cute::_16>>;

  // The forward's swizzled 8 x 64 atom (8 x 32 at head dim 32, as there), with tiles ordered row-major: rows
  // [r0, r0 + 8n) of a tile are one contiguous range of 8n * kHeadDim elements, so a chunk of kQChunk query rows is
  // itself a (kQChunk, kHeadDim) tile at an offset that is a multiple of the swizzle period (the gather writes the whole
  // tile, the math reads chunks).
  static constexpr int kAtomCols = kHeadDim % 64 == 0 ? 64 : 32;
  using SmemLayoutAtom = decltype(cute::composition(
      cute::Swizzle<kAtomCols == 64 ? 3 : 2, 3, 3>{},
      cute::Layout<cute::Shape<cute::_8, cute::Int<kAtomCols>>, cute::Stride<cute::Int<kAtomCols>, cute::_1>>{}));
  template <int kRows>
  using SmemLayoutRows = decltype(cute::tile_to_shape(
      SmemLayoutAtom{}, cute::Shape<cute::Int<kRows>, cute::Int<kHeadDim>>{}, cute::Step<cute::_2, cute::_1>{}));
  using SmemLayoutQ = SmemLayoutRows<kBlockM>;
  using SmemLayoutKV = SmemLayoutRows<kBlockN>;
  using SmemLayoutQc = SmemLayoutRows<kQChunk>;
  // (head dim, rows) views of the same smem, the B operands of P^T dO, dS^T Q (rows = queries) and dS K (rows = keys).
  using SmemLayoutQct = decltype(cute::composition(
      SmemLayoutQc{}, cute::make_layout(cute::Shape<cute::Int<kHeadDim>, cute::Int<kQChunk>>{}, cute::GenRowMajor{})));
  using SmemLayoutKt = decltype(cute::composition(
      SmemLayoutKV{}, cute::make_layout(cute::Shape<cute::Int<kHeadDim>, cute::Int<kBlockN>>{}, cute::GenRowMajor{})));

  using SmemCopyAtom = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomTransposed = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;
  using SmemCopyAtomO = cute::Copy_Atom<cute::UniversalCopy<uint32_t>, Element>;

  static constexpr int kChunk = 16 / sizeof(Element);  // elements per 16-byte cp.async
  static constexpr int kChunksPerRow = kHeadDim / kChunk;
  static constexpr int kTileElems = kBlockM * kHeadDim;

  // dK/dV kernel: K and V of the CTA's KV tile for the whole mainloop; Q and dO of the visiting Q tile in kStages
  // buffers; the per-row geometry of the visiting Q tile double-buffered (the next one is computed during this one).
  struct DkDvStorage {
    alignas(128) Element k[kTileElems];  // also dK in the epilogue
    alignas(128) Element v[kTileElems];  // also dV in the epilogue
    alignas(128) Element q[kStages][kTileElems];
    alignas(128) Element d_out[kStages][kTileElems];
    int64_t kv_token[kBlockN];         // flat token of each key row
    int32_t kv_x[kRank][kBlockN];      // coordinate of each key row (-1 in dim 0 for padding rows)
    int64_t q_token[2][kBlockM];       // flat token of each query row
    int32_t q_begin[2][kRank][kBlockM];  // window of each query row, per dim (empty for padding rows)
    int32_t q_end[2][kRank][kBlockM];
    float lse_log2[2][kBlockM];        // lse * log2(e); +inf for padding rows and rows with no key, so that P = 0
    float delta[2][kBlockM];           // 0 for padding rows
    int32_t kv_rows;                   // key rows of the tile (read from here, not held in a register)
    int32_t q_rows[2];
    int32_t q_need_mask[2];
    int32_t q_head[2];                 // query head of the step
  };

  // dQ kernel: Q and dO of the CTA's Q tile; K and V of the visited KV tile in kStages buffers; the per-row geometry of
  // the KV tile double-buffered (the next one is computed during this one).
  struct DqStorage {
    alignas(128) Element q[kTileElems];  // also dQ in the epilogue
    alignas(128) Element d_out[kTileElems];
    alignas(128) Element k[kStages][kTileElems];
    alignas(128) Element v[kStages][kTileElems];
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
