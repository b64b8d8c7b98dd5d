// The online softmax of every attention kernel (sm80 and sm90, GNA / block-sparse / S2 / MLA), on rows of an fp32
// score accumulator held by the lanes of a quad: reductions over those lanes and the per-row update.
#pragma once

#include <cmath>

#include <cute/config.hpp>

namespace natten_like::sm80::detail {

// Reductions over the kWidth lanes (a power of two, lane-aligned) that share an accumulator row: 4 in the mma.sync and
// wgmma accumulators.
template <int kWidth = 4>
CUTE_DEVICE float quad_max(float x) {
  for (int o = 1; o < kWidth; o *= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, o));
  return x;
}

template <int kWidth = 4>
CUTE_DEVICE float quad_sum(float x) {
  for (int o = 1; o < kWidth; o *= 2) x += __shfl_xor_sync(0xffffffff, x, o);
  return x;
}

// Row mi of the online softmax, in the log2 domain of the scores: m is the row's new running max (of the previous one
// and this tile's scores, over every lane and thread holding the row). Exponentiates this thread's scores s(mi, _) in
// place against it, folds them into the thread's partial sum (reduced over the lanes once, in the epilogue) and returns
// the factor the output accumulated so far is to be scaled by. A row that has seen no key yet keeps max -inf:
// exponents are taken against 0 then, giving exact zeros, and a factor of exactly 0 on an output that is still 0.
template <class RowCol>
CUTE_DEVICE float softmax_update_row(RowCol& s, int mi, float m, float& row_max, float& row_sum) {
  const float m_ref = m == -INFINITY ? 0.f : m;
  const float correction = exp2f(row_max - m_ref);
  row_max = m;
  float sum = 0.f;
  CUTE_UNROLL
  for (int ni = 0; ni < cute::size<1>(s); ++ni) {
    s(mi, ni) = exp2f(s(mi, ni) - m_ref);
    sum += s(mi, ni);
  }
  row_sum = row_sum * correction + sum;
  return correction;
}

// The epilogue's factor 1 / sum for a row whose exponentials sum to `sum` (over every lane and key): 0 for a row that
// saw no key (sum exactly 0: every score -inf). A row that saw any key has sum >= 1 (its max contributes exp2(0));
// a NaN score (NaN query or key) makes sum NaN, and the factor NaN: the row's output is NaN, as in dense attention,
// never a finite answer to a NaN input.
CUTE_DEVICE float row_inv_sum(float sum) { return sum == 0.f ? 0.f : 1.f / sum; }

// The row's natural-log logsumexp from its max in the log2 domain of the scores and its sum: ln 2 * (max + log2(sum)),
// -inf for a row that saw no key, NaN with a NaN score (as row_inv_sum).
CUTE_DEVICE float row_lse(float row_max_log2, float sum) {
  return sum == 0.f ? -INFINITY : (row_max_log2 + log2f(sum)) * static_cast<float>(M_LN2);
}

}  // namespace natten_like::sm80::detail
