// Static configuration of the sm90 fused attention forward: CTA tile, GMMA atoms, shared-memory layouts and the shared
// storage of the warp-specialised kernel (FlashAttention-3's Hopper design): warpgroup 0 loads Q once and K, V per
// visited KV tile with TMA into a 2-stage ring; warpgroups 1 and 2 each own 64 of the 128 query rows and run
// S = Q K^T (wgmma, both operands in smem), the online softmax in registers and O += P V (wgmma, P from registers),
// tile e's softmax under tile e - 1's P V (intra-warpgroup overlap), so a stage's K and V halves are released apart.
// The KV ring also carries the GNA forward's additional KV tiles (same stage layout, the box of kBlockN rows). A
// persistent CTA (sm90_tile_scheduler.hpp) adds a second schedule state, its work tiles and their barriers.
// Q and K have kHeadDim columns, V and O kHeadDimV (D_v; D by default, e.g. 192 / 128 for DeepSeek's MLA prefill):
// the P V GEMM's N, the output accumulator, V's smem stages and boxes and the staged output (in the Q buffer, which is
// at least as large) take kHeadDimV.
// The smem swizzle of each operand is chosen here, once, from its own row width (Sm90SwizzledRows): 128-byte rows
// (Swizzle<3,4,3>, TMA's SWIZZLE_128B, GMMA's SW128) for 64 columns and up, 64-byte rows (Swizzle<2,4,3>, SWIZZLE_64B,
// SW64) for 32; the kernel takes the atoms, the TMA modes and the box widths from these traits.
#pragma once

#include <cuda.h>

#include <algorithm>
#include <type_traits>

#include <cute/tensor.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>

#include "natten_like/sm80/gna_tile_iterator.hpp"
#include "natten_like/sm80/sm80_fmha_fwd_params.hpp"
#include "natten_like/sm90/sm90_tile_scheduler.hpp"

namespace natten_like::sm90 {

using sm80::kRank;

// The swizzled smem rows of one operand of kCols columns. A TMA box's inner extent is at most the swizzle's span, and
// a row is cut into boxes of that many bytes, each the rows of one smem block. 128 bytes (64 elements) where the row
// allows; 32 columns (64-byte rows) take the 64-byte swizzle, whose span is exactly one row, rather than boxes wider
// than the tensor. Q / K and V / O each take the rows of their own head dim, so D 192 / D_v 128 reads both as 128-byte
// rows and D 64 / D_v 32 mixes the two swizzles.
template <class Element, int kCols>
struct Sm90SwizzledRows {
  static constexpr int kSwizzleBytes = std::min(128, kCols * static_cast<int>(sizeof(Element)));
  static constexpr int kBoxCols = kSwizzleBytes / sizeof(Element);  // columns per TMA box and smem block
  static constexpr int kBoxesPerRow = kCols / kBoxCols;
  static constexpr CUtensorMapSwizzle kTmaSwizzle =
      kSwizzleBytes == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B;
  static_assert(kCols == 32 || (kCols % 64 == 0 && kCols <= 256),
                "32 columns (one 64-byte swizzled block) or whole 128-byte swizzled blocks of 64 columns");
  static_assert(sizeof(Element) == 2 && (kBoxCols == 64 || kBoxCols == 32));

  // Rows of 64 elements (128 bytes), Swizzle<3,4,3> on byte addresses: exactly what TMA's CU_TENSOR_MAP_SWIZZLE_128B
  // writes for a box with a 128-byte inner extent into a 1024-byte aligned buffer, and what GMMA reads as K-major
  // SW128 (or MN-major SW128, V^T). 32 columns: rows of 64 bytes, Swizzle<2,4,3> (16-byte chunk bits [4:5] XOR bits
  // [7:8], a pattern of 512 bytes): what SWIZZLE_64B writes for a 64-byte inner extent and GMMA reads as SW64
  // (tests/test_sm90_host.py checks both). Either swizzle permutes 16-byte chunks within a row by row % 8 alone.
  using SmemAtom = std::conditional_t<kSwizzleBytes == 128, cute::GMMA::Layout_K_SW128_Atom<Element>,
                                      cute::GMMA::Layout_K_SW64_Atom<Element>>;
  static_assert(decltype(cute::size<1>(SmemAtom{}))::value == kBoxCols, "an atom row is one box row");
};

template <class Element_, int kHeadDim_, int kBlockM_, int kBlockN_, int kHeadDimV_ = kHeadDim_>
struct Sm90FmhaFwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;    // columns of Q and K
  static constexpr int kHeadDimV = kHeadDimV_;  // columns of V and O
  static constexpr int kBlockM = kBlockM_;  // query rows per CTA (the Q tile's row product must fit)
  static constexpr int kBlockN = kBlockN_;  // key rows per KV stage (the KV tile's row product must fit)
  static constexpr int kStages = 2;
  static constexpr int kConsumerWarpgroups = kBlockM / 64;  // wgmma M is 64 per warpgroup
  static constexpr int kThreads = 128 * (1 + kConsumerWarpgroups);
  static constexpr int kConsumerThreads = 128 * kConsumerWarpgroups;
  // Register budget per thread after setmaxnreg: the producer keeps enough for the TMA loop and the per-tile geometry
  // (its int32 divisions by runtime tile extents spill at 40), the consumers take the rest (56 * 128 + 224 * 256 =
  // 64512 of the SM's 65536).
  static constexpr int kProducerRegs = 56;
  static constexpr int kConsumerRegs = 224;
  // Warpgroup ping-pong (FlashAttention-3's scheduler barriers): the consumer warpgroups take turns to issue their
  // GEMMs (S = Q K^T of tile e with O += P V of tile e - 1), so one warpgroup's softmax runs under the other's GEMMs
  // instead of both leaving the tensor cores idle together. Within a warpgroup the softmax of tile e also runs under
  // its own P V of tile e - 1 (intra-warpgroup overlap, always on): the accumulator registers hold S, O and P at once,
  // which kConsumerRegs has room for.
  static constexpr bool kPingPong = true;
  // Whether the launchers have a persistent variant (sm90_tile_scheduler.hpp). Not at D_v 256: the output
  // accumulator takes 128 of the consumer's 224 registers, and the persistent CTA's work-tile state then spills
  // (ptxas, nvcc 13.0: 28-56 bytes per kernel, some of it in the KV loop); those launches run one CTA per work tile,
  // whose tiles are long enough (64-row KV tiles of 256 columns) that the prologue and epilogue matter least.
  static constexpr bool kHasPersistent = kHeadDimV < 256;
  // The swizzled rows of Q / K (kHeadDim columns) and of V / O (kHeadDimV columns).
  using RowsQK = Sm90SwizzledRows<Element, kHeadDim>;
  using RowsVO = Sm90SwizzledRows<Element, kHeadDimV>;
  static constexpr int kSwizzleBytes = RowsQK::kSwizzleBytes;
  static constexpr int kBoxCols = RowsQK::kBoxCols;  // Q / K columns per TMA box and smem block
  static constexpr int kBoxesPerRow = RowsQK::kBoxesPerRow;
  static constexpr CUtensorMapSwizzle kTmaSwizzle = RowsQK::kTmaSwizzle;
  static constexpr int kSwizzleBytesV = RowsVO::kSwizzleBytes;
  static constexpr int kBoxColsV = RowsVO::kBoxCols;  // V / O columns per TMA box and smem block
  static constexpr int kBoxesPerRowV = RowsVO::kBoxesPerRow;
  static constexpr CUtensorMapSwizzle kTmaSwizzleV = RowsVO::kTmaSwizzle;

  static_assert(kBlockM == 128, "two consumer warpgroups of 64 rows (the producer/consumer register split assumes 3)");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "wgmma N and the P V K-steps come in 16s");
  static_assert(std::is_same_v<Element, cutlass::half_t> || std::is_same_v<Element, cutlass::bfloat16_t>);

  // S = Q K^T: per warpgroup 64 x kBlockN x kHeadDim, A and B K-major in smem. The atom layout stacks the consumer
  // warpgroups along M, so each warpgroup's rows (and softmax statistics) are its own.
  using AtomLayout = cute::Layout<cute::Shape<cute::Int<kConsumerWarpgroups>, cute::_1, cute::_1>>;
  using TiledMmaQK = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kBlockN>, cute::Int<kHeadDim>>>(),
      AtomLayout{}));
  // O += P V: per warpgroup 64 x kHeadDimV x kBlockN, A (P) from registers, B (V) MN-major: V sits in smem as
  // (keys, D_v) rows, i.e. D_v contiguous, which is the N dim of this GEMM.
  using TiledMmaPV = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::_64, cute::Int<kHeadDimV>, cute::Int<kBlockN>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>(),
      AtomLayout{}));

  // tile_to_shape stacks atoms along rows first: columns [kBoxCols j, kBoxCols (j + 1)) of all rows form one
  // contiguous block of kRows * kSwizzleBytes bytes, the destination of box j (V: kBoxColsV, kSwizzleBytesV).
  using SmemAtom = typename RowsQK::SmemAtom;
  using SmemAtomV = typename RowsVO::SmemAtom;
  using SmemLayoutQ = decltype(cute::tile_to_shape(SmemAtom{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(cute::tile_to_shape(
      SmemAtom{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDim>, cute::Int<kStages>>{}));
  using SmemLayoutV = decltype(cute::tile_to_shape(
      SmemAtomV{}, cute::Shape<cute::Int<kBlockN>, cute::Int<kHeadDimV>, cute::Int<kStages>>{}));
  // V as the (D_v, keys, stage) B operand of P V: the same bytes, keys fastest in the coordinate order of SmemLayoutV.
  using SmemLayoutVt = decltype(cute::composition(
      SmemLayoutV{},
      cute::make_ordered_layout(cute::Shape<cute::Int<kHeadDimV>, cute::Int<kBlockN>, cute::Int<kStages>>{},
                                cute::Step<cute::_2, cute::_1, cute::_3>{})));
  // The output tile, staged in the Q buffer in rows of kHeadDimV columns with V's swizzle (SmemLayoutQ's bytes for
  // D_v = D); the epilogue reads it back by V / O box rows. The swizzle acts on element offsets from the 1024-byte
  // aligned buffer (as_position_independent_swizzle_layout), which keeps the epilogue's accesses STS / LDS on 32-bit
  // shared addresses: CuTe's smem_ptr_flag form of the same layout swizzles the pointer as a 64-bit integer, which
  // loses the shared address space (generic ST.E / LD.E, two registers per address).
  using SmemLayoutO = decltype(cute::as_position_independent_swizzle_layout(
      cute::tile_to_shape(SmemAtomV{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDimV>>{})));
  static_assert(kBlockM * kHeadDimV <= cute::cosize_v<SmemLayoutQ>, "O is staged in the Q buffer");

  static constexpr int kQBytesPerBox = kBlockM * kSwizzleBytes;  // smem stride between the boxes of one Q tile
  static constexpr int kKBytesPerBox = kBlockN * kSwizzleBytes;
  static constexpr int kKStageBytes = kKBytesPerBox * kBoxesPerRow;
  static constexpr int kVBytesPerBox = kBlockN * kSwizzleBytesV;
  static constexpr int kVStageBytes = kVBytesPerBox * kBoxesPerRowV;

  // The output tile is staged in the Q buffer with 32-bit stores (the accumulator holds pairs of adjacent columns).
  using SmemCopyAtomO = cute::Copy_Atom<cute::UniversalCopy<uint32_t>, Element>;
  static constexpr int kChunk = 16 / sizeof(Element);  // elements per 16-byte global store
  static constexpr int kChunksPerRow = kHeadDimV / kChunk;  // of an output row
  // The epilogue's 128 threads per warpgroup copy up to 16 chunks (128 columns) of a row side by side, so a thread's
  // chunks lie kOutRowStep rows apart (8 for D_v 128 and 256, 16 for 64, 32 for 32); wider rows take kOutColPasses
  // passes of 128 columns each (D_v 256: 2), kOutPassElems elements apart in smem (128 columns = whole boxes of
  // kBlockM rows).
  static constexpr int kOutThreadsPerRow = std::min(kChunksPerRow, 16);
  static constexpr int kOutColPasses = kChunksPerRow / kOutThreadsPerRow;
  static constexpr int kOutRowStep = 128 / kOutThreadsPerRow;
  static constexpr int kOutPassElems = kOutThreadsPerRow * kChunk * kBlockM;
  static_assert(kOutColPasses == 1 || (kOutThreadsPerRow * kChunk) % kBoxColsV == 0, "a pass spans whole boxes");

  // What only a persistent CTA (sm90_tile_scheduler.hpp) keeps: a second schedule state (local work tile i, the CTA's
  // i-th, uses `state` for even i and odd_state for odd i: a consumer thread builds tile i + 1's while both roles still
  // run tile i), the work tiles themselves (q_tile -1: no more work), the launch's work space, the barriers on which
  // that thread publishes a state to the producer, and the one on which the consumer warps release the Q buffer (Q,
  // then the staged output).
  template <class State>
  struct PersistentStorage {
    State odd_state;
    Sm90TileScheduler work;
    Sm90WorkTile tile[2];
    alignas(8) uint64_t state_full[2];
    uint64_t q_empty;
  };
  struct NoStorage {};

  // State: the CTA's schedule, kept in smem (GNA: the tile iterator; 1-D families: sm90_schedules.hpp's schedules).
  template <class State, bool kPersistent = false>
  struct SharedStorageFor {
    // 1024-byte alignment: the 128-byte swizzle pattern repeats every 8 rows of 128 bytes (the 64-byte one every 8
    // rows of 64 bytes), and TMA and GMMA agree on it only from a boundary of the pattern.
    alignas(1024) Element q[cute::cosize_v<SmemLayoutQ>];  // also the output tile in the epilogue (SmemLayoutO)
    alignas(1024) Element k[cute::cosize_v<SmemLayoutK>];
    alignas(1024) Element v[cute::cosize_v<SmemLayoutV>];
    int64_t q_token[kBlockM];         // flat token of each Q smem row, -1 for rows that are not rows of the tile
    int32_t q_begin[kRank][kBlockM];  // group-local window of each Q smem row, per dim
    int32_t q_end[kRank][kBlockM];
    int32_t kv_x[kStages][kRank][kBlockN];  // group-local coordinate of each KV smem row (-1 in dim 0: not a tile row)
    int32_t kv_mask[kStages];  // how the stage's keys are masked (sm90_schedules.hpp: kKvMaskNone, ...)
    State state;  // the Q tile and the KV tiles it visits
    alignas(8) uint64_t q_full;
    uint64_t k_full[kStages];
    uint64_t v_full[kStages];
    // A stage's halves are released apart: K (with kv_x / kv_mask) once the consumers have masked S of its tile, V once
    // the P V GEMM of that tile has completed, one KV tile later; one barrier for both would keep the next K waiting
    // on that P V.
    uint64_t k_empty[kStages];
    uint64_t v_empty[kStages];
    // Last, so that the non-persistent layout (every offset above) is the same with or without it.
    std::conditional_t<kPersistent, PersistentStorage<State>, NoStorage> persistent;
  };
  using SharedStorage = SharedStorageFor<sm80::GnaKvTileIterator<kRank>>;
};

}  // namespace natten_like::sm90
