// Compressed-latent attention (DeepSeek MLA, absorbed form) decode on the CPU: one shared latent KV head per token, many
// query heads, few queries. Keys are whole cache rows [latent | rope], values their first dim_v (= latent) entries.
//
// Per batch, all heads x S_q query rows form the Q tile (q [B, S_q, H, D] is row-major, so they are contiguous), split
// into row tiles of at most kLatentRows. The cache is walked in chunks of kLatentChunk tokens (paged through a block table
// or contiguous); chunks are split over `num_splits` work items per (batch, row tile) so that short batches of long caches
// still fill the cores. Each split runs an online softmax and leaves an unnormalised partial (acc, max, sum); an exact
// logsumexp merge combines them. Causal (speculative / multi-token decode) aligns query s to cache position
// L_b - S_q + s.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "natten_like/cpu/gemm.hpp"
#include "natten_like/cpu/vec_ops.hpp"
#include "natten_like/policy/common.hpp"

namespace natten_like::cpu {

constexpr int64_t kLatentChunk = 64;   // cache tokens per KV chunk
constexpr int64_t kLatentRows = 128;   // query rows (heads x S_q) per row tile

template <class T>
struct LatentParams {
  const T* q = nullptr;                // [B, S_q, H, dim]
  const T* cache = nullptr;            // contiguous [B, s_kv, dim] or paged [pages, page_size, dim]
  const int64_t* seqlens = nullptr;    // [B] cache lengths
  const int64_t* block_table = nullptr;  // [B, max_pages]; null = contiguous cache
  T* out = nullptr;                    // [B, S_q, H, dim_v]
  float* lse = nullptr;                // [B, S_q, H]
  int64_t batch = 0, sq = 0, heads = 0, dim = 0, dim_v = 0;
  int64_t s_kv = 0;                    // contiguous cache: tokens per batch
  int64_t page_size = 0, max_pages = 0;
  float scale = 1.0f;
  bool causal = false;
  int64_t num_splits = 1;

  const T* cache_row(int64_t b, int64_t j) const {
    if (!block_table) return cache + (b * s_kv + j) * dim;
    const int64_t page = block_table[b * max_pages + j / page_size];
    return cache + (page * page_size + j % page_size) * dim;
  }
};

// Split-KV count for a problem: enough (batch, row tile, split) items for every thread twice, no more splits than chunks.
inline int64_t latent_auto_splits(int64_t items, int64_t max_chunks) {
  const int64_t want = policy::ceil_div(2 * at::get_num_threads(), std::max<int64_t>(items, 1));
  return std::clamp<int64_t>(want, 1, std::max<int64_t>(max_chunks, 1));
}

template <class T>
void latent_forward(const LatentParams<T>& p) {
  const int64_t rows = p.sq * p.heads;
  const int64_t n_tiles = policy::ceil_div(rows, kLatentRows);
  const int64_t splits = p.num_splits;
  const int64_t items = p.batch * n_tiles * splits;
  // Partials of every split: acc [B, splits, rows, dim_v], running max and sum [B, splits, rows].
  std::vector<float> part_acc(static_cast<size_t>(p.batch * splits * rows * p.dim_v));
  std::vector<float> part_m(static_cast<size_t>(p.batch * splits * rows)), part_l(part_m.size());

  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const int64_t max_r = std::min(rows, kLatentRows);
    std::vector<float> qb(max_r * p.dim), s(max_r * kLatentChunk), kb(kLatentChunk * p.dim), vb(kLatentChunk * p.dim_v);
    std::vector<unsigned char> mask(max_r * kLatentChunk);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t split = item % splits;
      const int64_t tile = (item / splits) % n_tiles;
      const int64_t b = item / (splits * n_tiles);
      const int64_t r0 = tile * kLatentRows, nr = std::min(kLatentRows, rows - r0);
      const int64_t len = p.seqlens[b];
      const int64_t n_chunks = policy::ceil_div(len, kLatentChunk);
      const int64_t per_split = policy::ceil_div(n_chunks, splits);
      const int64_t c_begin = std::min(split * per_split, n_chunks), c_end = std::min(c_begin + per_split, n_chunks);
      const size_t pr = static_cast<size_t>((b * splits + split) * rows + r0);
      float* acc = part_acc.data() + pr * p.dim_v;
      float* m = part_m.data() + pr;
      float* l = part_l.data() + pr;
      std::fill(acc, acc + nr * p.dim_v, 0.0f);
      std::fill(m, m + nr, kNegInf);
      std::fill(l, l + nr, 0.0f);
      if (c_begin == c_end) continue;

      const T* qsrc = p.q + (b * rows + r0) * p.dim;
      for (int64_t i = 0; i < nr * p.dim; ++i) qb[i] = static_cast<float>(qsrc[i]);
      // Cache position of the query of row r: queries sit at the end of the cache (causal only).
      auto q_pos = [&](int64_t r) { return len - p.sq + (r0 + r) / p.heads; };
      const int64_t pos_lo = q_pos(0), pos_hi = q_pos(nr - 1);

      for (int64_t c = c_begin; c < c_end; ++c) {
        const int64_t j0 = c * kLatentChunk, nk = std::min(kLatentChunk, len - j0);
        if (p.causal && j0 > pos_hi) break;  // every later key is in every row's future
        for (int64_t j = 0; j < nk; ++j) {
          const T* src = p.cache_row(b, j0 + j);
          float* dst = kb.data() + j * p.dim;
          for (int64_t e = 0; e < p.dim; ++e) dst[e] = static_cast<float>(src[e]);
          std::copy(dst, dst + p.dim_v, vb.data() + j * p.dim_v);
        }
        const bool masked = p.causal && j0 + nk - 1 > pos_lo;
        if (masked)
          for (int64_t r = 0; r < nr; ++r)
            for (int64_t j = 0; j < nk; ++j) mask[r * nk + j] = j0 + j <= q_pos(r) ? 1 : 0;
        gemm_abt(nr, nk, p.dim, qb.data(), kb.data(), 0.0f, s.data());
        for (int64_t r = 0; r < nr; ++r) {
          const float alpha =
              softmax_row_update(s.data() + r * nk, masked ? mask.data() + r * nk : nullptr, nk, p.scale, m[r], l[r]);
          if (alpha != 1.0f) scale_row(acc + r * p.dim_v, p.dim_v, alpha);
        }
        gemm_ab(nr, p.dim_v, nk, s.data(), vb.data(), 1.0f, acc);
      }
    }
  });

  // Exact merge of the splits: out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M), lse = M + log(sum).
  at::parallel_for(0, p.batch * rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> o(p.dim_v);
    for (int64_t br = begin; br < end; ++br) {
      const int64_t b = br / rows, r = br % rows;
      float mx = kNegInf;
      for (int64_t sp = 0; sp < splits; ++sp) mx = std::max(mx, part_m[(b * splits + sp) * rows + r]);
      std::fill(o.begin(), o.end(), 0.0f);
      float sum = 0.0f;
      for (int64_t sp = 0; sp < splits; ++sp) {
        const size_t i = static_cast<size_t>((b * splits + sp) * rows + r);
        if (part_l[i] == 0.0f) continue;  // the split saw no key
        // A split with a NaN score has sum NaN (and max -inf when all its scores were NaN): it makes the row NaN.
        const float w = part_m[i] == kNegInf ? 1.0f : std::exp(part_m[i] - mx);
        sum += part_l[i] * w;
        const float* a = part_acc.data() + i * p.dim_v;
        for (int64_t e = 0; e < p.dim_v; ++e) o[e] += w * a[e];
      }
      const bool empty = sum == 0.0f;
      T* dst = p.out + br * p.dim_v;
      for (int64_t e = 0; e < p.dim_v; ++e) dst[e] = static_cast<T>(empty ? 0.0f : o[e] / sum);
      p.lse[br] = empty ? kNegInf : mx + std::log(sum);
    }
  });
}

}  // namespace natten_like::cpu
