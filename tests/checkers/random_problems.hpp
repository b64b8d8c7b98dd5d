// Shared pieces of the host checkers that tests/*.py compile (tests/toolchain.py puts tests/checkers on the include
// path): random GNA problems, their padding to rank 3 exactly as the CUDA bindings pad them, and the (query, key)
// pairs a policy attends, the definition every schedule checker compares against.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

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
