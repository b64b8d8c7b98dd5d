// Static configuration of the sm80 fused attention forward: CTA tile, tensor-core atom, shared-memory layouts and the
// smem <-> register copy atoms. FlashAttention-2's Ampere design: 4 warps, each owning 16 query rows of the tile.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "natten_like/sm80/gna_tile_iterator.hpp"
#include "natten_like/sm80/sm80_fmha_fwd_params.hpp"

namespace natten_like::sm80 {

// kHeadDim is the head dim of Q and K, kHeadDimV that of V and the output (D_v; D by default).
template <class Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kHeadDimV_ = kHeadDim_>
struct Sm80FmhaFwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = kBlockM_;  // query rows per CTA (the Q tile's row product must fit)
  static constexpr int kBlockN = kBlockN_;  // key rows per KV tile step
  static constexpr int kWarps = kBlockM / 16;
  static constexpr int kThreads = kWarps * 32;
  // CTAs per SM the register allocation must allow: at head dim 64, 3 fit in 168 registers without spills on sm_80
  // (ptxas otherwise spends ~250 for no gain, leaving 2 per SM); sm_90's ptxas spills at that cap, so 2 there (the
  // device pass of each arch sees its own value; only __launch_bounds__ reads it). At 128 the accumulators need the
  // full 255, so 2. At 256 the ~105 KB of smem leave room for one CTA on sm_80 (163 KB), so 1: the cap is 255
  // registers either way and ptxas's code the same (on sm_90, 2 CTAs fit its 227 KB).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static constexpr int kMinBlocksPerSm = 2;
#else
  static constexpr int kMinBlocksPerSm = kHeadDim <= 64 ? 3 : kHeadDim < 256 ? 2 : 1;
#endif
  static_assert(kBlockM % 16 == 0 && kBlockN % 16 == 0, "m16n8k16 needs 16-row blocks");
  static_assert(kHeadDim % 64 == 0 || kHeadDim == 32, "the smem swizzle atom spans 64 (or, for 32, 32) elements");
  static_assert(kHeadDimV % 64 == 0 || kHeadDimV == 32, "the smem swizzle atom spans 64 (or, for 32, 32) elements");
  static_assert(std::is_same_v<Element, cutlass::half_t> || std::is_same_v<Element, cutlass::bfloat16_t>);

  using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>, cute::SM80_16x8x16_F32F16F16F32_TN,
                                   cute::SM80_16x8x16_F32BF16BF16F32_TN>;
  // Warps tile M only, so each warp's softmax rows are its own (row reductions stay inside a quad of lanes).
  using TiledMma = cute::TiledMMA<cute::MMA_Atom<MmaOp>, cute::Layout<cute::Shape<cute::Int<kWarps>, cute::_1, cute::_1>>,
                                  cute::Tile<cute::Int<kBlockM>, cute::_16, cute::_16>>;

  // Rows of 64 elements (128 bytes) with a 3-bit XOR swizzle: the 8 rows one ldmatrix reads at a column land in 8
  // distinct 16-byte bank groups, and each 16-byte cp.async chunk stays contiguous.
  // At head dim 32 rows are 64 bytes, two per 128-byte line: a 2-bit swizzle of the row's 4 chunks, with the row's low
  // bit picking the half line, still puts the 8 rows one ldmatrix reads into 8 distinct bank groups.
  template <int kCols>
  using SmemLayoutAtomOf = decltype(cute::composition(
      cute::Swizzle<kCols % 64 == 0 ? 3 : 2, 3, 3>{},
      cute::Layout<cute::Shape<cute::_8, cute::Int<kCols % 64 == 0 ? 64 : 32>>,
                   cute::Stride<cute::Int<kCols % 64 == 0 ? 64 : 32>, cute::_1>>{}));
  template <int kRows, int kCols>
  using SmemLayoutTile =
      decltype(cute::tile_to_shape(SmemLayoutAtomOf<kCols>{}, cute::Shape<cute::Int<kRows>, cute::Int<kCols>>{}));
  // At head dim 256 the output accumulator alone holds 128 of a thread's 255 registers, and every smem address a
  // thread keeps across the mainloop counts: K and V rows of 256 are then plain rows padded by one 16-byte chunk (row
  // stride 528 bytes, 4 banks apart, so the 8 rows of an ldmatrix still hit 8 distinct bank groups), whose linear
  // addresses are one register plus immediates where the swizzle's XOR needs a register per pattern. Padding Q as
  // well measured worse (sm_80 spills), so Q (and the output tile over it) keeps the swizzle.
  template <int kRows, int kCols>
  using SmemLayoutKVTile = std::conditional_t<
      (kCols >= 256),
      cute::Layout<cute::Shape<cute::Int<kRows>, cute::Int<kCols>>,
                   cute::Stride<cute::Int<kCols + 16 / int(sizeof(Element))>, cute::_1>>,
      SmemLayoutTile<kRows, kCols>>;
  using SmemLayoutQ = SmemLayoutTile<kBlockM, kHeadDim>;
  using SmemLayoutKV = SmemLayoutKVTile<kBlockN, kHeadDim>;  // K
  using SmemLayoutV = SmemLayoutKVTile<kBlockN, kHeadDimV>;
  using SmemLayoutO = SmemLayoutTile<kBlockM, kHeadDimV>;  // the output tile, staged over Q in the epilogue
  // V is the B operand of P V (N = head dim, K = keys): a (head dim, keys) view of the same smem, read with ldmatrix.trans.
  using SmemLayoutVt = decltype(cute::composition(
      SmemLayoutV{}, cute::make_layout(cute::Shape<cute::Int<kHeadDimV>, cute::Int<kBlockN>>{}, cute::GenRowMajor{})));

  using SmemCopyAtom = cute::Copy_Atom<cute::SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomTransposed = cute::Copy_Atom<cute::SM75_U16x8_LDSM_T, Element>;
  // The accumulator holds pairs of adjacent columns: 32-bit stores of the output tile into smem.
  using SmemCopyAtomO = cute::Copy_Atom<cute::UniversalCopy<uint32_t>, Element>;

  static constexpr int kChunk = 16 / sizeof(Element);       // elements per 16-byte cp.async

  struct SharedStorage {
    // Q, and the output tile in the epilogue.
    alignas(128) Element q[cute::cosize_v<SmemLayoutQ> > cute::cosize_v<SmemLayoutO> ? cute::cosize_v<SmemLayoutQ>
                                                                                      : cute::cosize_v<SmemLayoutO>];
    alignas(128) Element k[cute::cosize_v<SmemLayoutKV>];
    alignas(128) Element v[cute::cosize_v<SmemLayoutV>];
    int64_t q_token[kBlockM];              // flat token of each Q row
    int32_t q_begin[kRank][kBlockM];       // group-local window of each Q row, per dim
    int32_t q_end[kRank][kBlockM];
    int64_t kv_token[2][kBlockN];          // double-buffered: the tile in flight and the next one
    int32_t kv_x[2][kRank][kBlockN];       // group-local coordinate of each KV row (-1 in dim 0 for padding rows)
    int32_t kv_rows[2];
    int32_t kv_need_mask[2];
  };
};

}  // namespace natten_like::sm80
