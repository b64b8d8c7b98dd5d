// Shared pieces of the host checkers that tests/*.py compile (tests/toolchain.py puts tests/checkers on the include
// path): random GNA and block-sparse problems, the GNA ones' padding to rank 3 exactly as the CUDA bindings pad them,
// and the (query, key) pairs a policy attends, the definition every schedule checker compares against.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "natten_like/policy/block_sparse.hpp"
#include "natten_like/policy/gna.hpp"

namespace checkers {

inline int64_t pick(std::mt19937& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// A random rank-R GNA problem (dilation groups of unequal length, stride, causal dims, tile shapes up to the sm80
// table's) in `pol`, and the same problem padded to rank 3 with leading dims of length 1 (window, stride, dilation and
// tiles 1) in `pad`, as csrc/bindings/gna_cuda.cpp pads it.
template <int R>
void random_gna_problem(std::mt19937& rng, natten_like::policy::GnaPolicy<R>& pol,
                        natten_like::policy::GnaPolicy<3>& pad) {
  using natten_like::policy::GnaDim;
  const int off = 3 - R;
  for (int i = 0; i < off; ++i) {
    pad.dim[i] = GnaDim{1, 1, 1, 1, false};
    pad.tq[i] = pad.tk[i] = 1;
  }
  for (int i = 0; i < R; ++i) {
    const int64_t L = pick(rng, 2, R == 1 ? 150 : (R == 2 ? 24 : 11));
    const int64_t d = pick(rng, 1, std::max<int64_t>(1, L / 2));
    const int64_t lg = L / d;  // shortest group
    const int64_t k = pick(rng, std::min<int64_t>(2, lg), lg);
    const int64_t s = pick(rng, 1, k);
    pol.dim[i] = GnaDim{L, k, s, d, pick(rng, 0, 1) == 1};
    pol.tq[i] = pick(rng, 1, R == 1 ? 64 : (R == 2 ? 8 : 4));
    pol.tk[i] = pick(rng, 1, R == 1 ? 64 : (R == 2 ? 8 : 4));
    pad.dim[off + i] = pol.dim[i];
    pad.tq[off + i] = pol.tq[i];
    pad.tk[off + i] = pol.tk[i];
  }
}

// A random block-sparse problem in the layout policy/block_sparse.hpp reads: a plain batch (one sequence) or packed
// varlen sequences (1-3, empty query sequences allowed) of up to max_len tokens, block sizes drawn from `sizes`, and
// per (batch entry or sequence, head, query block) random disjoint full and partial lists, each list array broadcast
// over batch entries and / or heads at random (stride 0), as block_sparse_plan.hpp lays them out.
struct RandomBlockSparse {
  bool packed;
  int64_t seqs, qbs, kbs;
  int64_t QB, KB;   // query / KV blocks of the longest sequence (QB at least 1)
  int64_t lb, lh;   // list arrays' batch-or-sequence and head extents (1: broadcast)
  int64_t cap;      // list capacity (KB)
  std::vector<int64_t> q_seq{0}, kv_seq{0}, q_tiles{0}, kv_tiles{0};
  std::vector<int64_t> pnum, pidx, fnum, fidx;  // partial / full lists: counts [lb, lh, QB], indices [lb, lh, QB, cap]

  RandomBlockSparse(std::mt19937& rng, bool packed_, int64_t batch, int64_t heads, const std::vector<int64_t>& sizes,
                    int64_t max_len)
      : packed(packed_) {
    seqs = packed ? pick(rng, 1, 3) : 1;
    qbs = sizes[pick(rng, 0, static_cast<int64_t>(sizes.size()) - 1)];
    kbs = sizes[pick(rng, 0, static_cast<int64_t>(sizes.size()) - 1)];
    int64_t max_q = 0, max_kv = 0;
    for (int64_t s = 0; s < seqs; ++s) {
      const int64_t nq = pick(rng, 0, max_len), nkv = pick(rng, 1, max_len);
      q_seq.push_back(q_seq.back() + nq);
      kv_seq.push_back(kv_seq.back() + nkv);
      q_tiles.push_back(q_tiles.back() + natten_like::policy::ceil_div(nq, qbs));
      kv_tiles.push_back(kv_tiles.back() + natten_like::policy::ceil_div(nkv, kbs));
      max_q = std::max(max_q, nq);
      max_kv = std::max(max_kv, nkv);
    }
    QB = std::max<int64_t>(1, natten_like::policy::ceil_div(max_q, qbs));
    KB = natten_like::policy::ceil_div(max_kv, kbs);
    lb = packed ? seqs : (pick(rng, 0, 1) ? batch : 1);
    lh = pick(rng, 0, 1) ? heads : 1;
    cap = KB;
    const int64_t lists = lb * lh * QB;
    pnum.assign(lists, 0), pidx.assign(lists * cap, 0), fnum.assign(lists, 0), fidx.assign(lists * cap, 0);
    for (int64_t g = 0; g < lists; ++g) {
      std::vector<int64_t> cols(KB);
      std::iota(cols.begin(), cols.end(), 0);
      std::shuffle(cols.begin(), cols.end(), rng);
      const int64_t n = pick(rng, 0, KB), nf = pick(rng, 0, n);
      fnum[g] = nf;
      pnum[g] = n - nf;
      for (int64_t i = 0; i < nf; ++i) fidx[g * cap + i] = cols[i];
      for (int64_t i = nf; i < n; ++i) pidx[g * cap + i - nf] = cols[i];
    }
  }

  // rows x c lists (counts `num`, indices `idx`) over [lb, lh], broadcast extents with stride 0.
  natten_like::policy::BlockListArray array(const std::vector<int64_t>& num, const std::vector<int64_t>& idx,
                                            int64_t rows, int64_t c) const {
    natten_like::policy::BlockListArray a;
    a.num = num.data();
    a.idx = idx.data();
    a.num_stride_b = lb > 1 ? lh * rows : 0;
    a.num_stride_h = lh > 1 ? rows : 0;
    a.idx_stride_b = lb > 1 ? lh * rows * c : 0;
    a.idx_stride_h = lh > 1 ? rows * c : 0;
    a.cap = c;
    return a;
  }
  natten_like::policy::BlockListArray partial() const { return array(pnum, pidx, QB, cap); }
  natten_like::policy::BlockListArray full() const { return array(fnum, fidx, QB, cap); }

  // The pattern's block sizes, causality and sequence / tile offsets (pointing into this object).
  void set_pattern(natten_like::policy::BlockSparsePolicy& pattern, bool causal) const {
    pattern.q_block = qbs;
    pattern.kv_block = kbs;
    pattern.causal = causal;
    pattern.num_seqs = seqs;
    pattern.q_seq = q_seq.data();
    pattern.kv_seq = kv_seq.data();
    pattern.q_tiles = q_tiles.data();
    pattern.kv_tiles = kv_tiles.data();
  }
};

// Calls emit(query token, key token) once for every pair `pol` attends (any policy of policy/: GNA, strided-shard,
// block-sparse), from its definition: the KV tiles each Q tile visits (for_each_kv_tile), their rows and the element
// mask of partial tiles (fill_mask).
template <class Policy, class Emit>
void for_each_policy_pair(const Policy& pol, Emit&& emit) {
  std::vector<int64_t> qr(pol.max_q_rows()), kr(pol.max_kv_rows());
  std::vector<unsigned char> mask(pol.max_q_rows() * pol.max_kv_rows());
  for (int64_t t = 0; t < pol.num_q_tiles(); ++t) {
    const int64_t nq = pol.q_tile_rows(t, qr.data());
    pol.for_each_kv_tile(t, [&](int64_t u, bool full) {
      const int64_t nk = pol.kv_tile_rows(u, kr.data());
      pol.fill_mask(t, u, mask.data());
      for (int64_t i = 0; i < nq; ++i)
        for (int64_t j = 0; j < nk; ++j)
          if (full || mask[i * nk + j]) emit(qr[i], kr[j]);
    });
  }
}

}  // namespace checkers
