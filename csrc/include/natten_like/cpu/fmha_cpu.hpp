// Fused tiled attention on the CPU, driven by a sparsity policy (see policy/*.hpp): forward with online softmax and
// logsumexp, backward in two deterministic passes (dQ over Q tiles; dK/dV over KV tiles through the policy's inverse map).
//
// Work is split over (batch, head, tile) with at::parallel_for; tiles are gathered to float32 scratch (which is also where
// fp16/bf16 are widened) and multiplied with torch's BLAS (cpu/gemm.hpp). Memory is O(tokens x D) plus per-thread tile scratch.
//
// A Policy (one per family) answers, per batch and query head through a provider `const Policy& provider(b, h)`:
//   num_q_tiles(), num_kv_tiles(), max_q_rows(), max_kv_rows(),
//   q_tile_rows(t, int64_t* rows) / kv_tile_rows(u, int64_t* rows) -> row count (token indices),
//   for_each_kv_tile(t, f(u, full)), for_each_q_tile(u, f(t, full)), fill_mask(t, u, uint8_t* mask [q rows x kv rows]),
// the same static-tile interface the GPU mainloops use. A policy may instead offer exact-box chunks (ChunkPolicy below:
// the KV rows a Q tile needs, not snapped to a tile grid, which saves work where rows are gathered anyway).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "natten_like/cpu/gemm.hpp"
#include "natten_like/cpu/vec_ops.hpp"
#include "natten_like/policy/common.hpp"

namespace natten_like::cpu {

// Contiguous heads-last problem: q [B, Nq, H, D], k [B, Nkv, Hkv, D], v [B, Nkv, Hkv, Dv], out [B, Nq, H, Dv],
// lse [B, Nq, H] (float32); optional additional KV [B, Nadd, Hkv, D / Dv] attended by every query.
template <class T>
struct FmhaParams {
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  const T* add_k = nullptr;
  const T* add_v = nullptr;
  T* out = nullptr;
  float* lse = nullptr;
  int64_t batch = 0, nq = 0, nkv = 0, nadd = 0, heads = 0, kv_heads = 0, dim = 0, dim_v = 0;
  float scale = 1.0f;
  // Backward only.
  const T* grad_out = nullptr;   // [B, Nq, H, Dv]
  T* grad_q = nullptr;           // [B, Nq, H, D]
  T* grad_k = nullptr;           // [B, Nkv, Hkv, D]
  T* grad_v = nullptr;           // [B, Nkv, Hkv, Dv]
  T* grad_add_k = nullptr;       // [B, Nadd, Hkv, D]
  T* grad_add_v = nullptr;       // [B, Nadd, Hkv, Dv]
  const float* lse_in = nullptr; // [B, Nq, H]
  const float* delta = nullptr;  // [B, Nq, H]: rowsum(dO * O)

  int64_t q_row(int64_t b, int64_t tok, int64_t h) const { return ((b * nq + tok) * heads + h); }
  int64_t kv_row(int64_t b, int64_t tok, int64_t hk) const { return ((b * nkv + tok) * kv_heads + hk); }
  int64_t add_row(int64_t b, int64_t tok, int64_t hk) const { return ((b * nadd + tok) * kv_heads + hk); }
};

namespace detail {

// dst[i][:] = float(src[row(rows[i])][:]) for i < n; dst has leading dimension `width`.
template <class T, class RowFn>
inline void gather(const T* src, const int64_t* rows, int64_t n, int64_t width, RowFn row, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const T* p = src + row(rows[i]) * width;
    float* d = dst + i * width;
    for (int64_t c = 0; c < width; ++c) d[c] = static_cast<float>(p[c]);
  }
}

// A block of float32 rows: `ptr[i * ld + c]`.
struct Rows {
  const float* ptr;
  int64_t ld;
};

// The rows of a tile as float32: float32 inputs whose rows are consecutive tokens (1-D windows, the inner runs of a box)
// are used in place through a strided view; anything else is gathered (and widened) into `scratch`.
template <class T, class RowFn>
inline Rows load(const T* src, const int64_t* rows, int64_t n, int64_t width, RowFn row, float* scratch) {
  if constexpr (std::is_same_v<T, float>) {
    bool consecutive = n > 1;
    for (int64_t i = 1; i < n && consecutive; ++i) consecutive = rows[i] == rows[0] + i;
    if (consecutive) {
      const int64_t first = row(rows[0]);
      return Rows{src + first * width, (row(rows[0] + 1) - first) * width};
    }
  }
  gather(src, rows, n, width, row, scratch);
  return Rows{scratch, width};
}

template <class T, class RowFn>
inline void scatter(const float* src, const int64_t* rows, int64_t n, int64_t width, RowFn row, float alpha, T* dst) {
  for (int64_t i = 0; i < n; ++i) {
    T* d = dst + row(rows[i]) * width;
    const float* s = src + i * width;
    for (int64_t c = 0; c < width; ++c) d[c] = static_cast<T>(alpha * s[c]);
  }
}

template <class Pol>
concept ChunkPolicy = requires(const Pol& p, int64_t* rows, unsigned char* mask) {
  p.max_chunk_rows(int64_t{}, bool{});
  p.for_each_kv_chunk(int64_t{}, int64_t{}, rows, mask, [](int64_t, bool) {});
  p.for_each_q_chunk(int64_t{}, int64_t{}, rows, mask, [](int64_t, bool) {});
};

// Row budget of one exact-box chunk: large enough for efficient BLAS calls, small enough to stay in L2.
constexpr int64_t kChunkRows = 256;

template <class Pol>
int64_t max_kv_rows_of(const Pol& pol) {
  if constexpr (ChunkPolicy<Pol>) return pol.max_chunk_rows(kChunkRows, true);
  else return pol.max_kv_rows();
}
template <class Pol>
int64_t max_q_chunk_rows_of(const Pol& pol) {
  if constexpr (ChunkPolicy<Pol>) return pol.max_chunk_rows(kChunkRows, false);
  else return pol.max_q_rows();
}

// A tile's rows, at most the tokens there are: a block-sparse or S2 block can be far longer than the sequence, and the
// scratch holds (query rows) x (key rows) scores.
inline int64_t clamp_rows(int64_t rows, int64_t tokens) { return std::min(rows, std::max<int64_t>(tokens, 1)); }
// Key rows of the scratch: `rows` (which covers an additional tile's) where there is additional KV, else clamped to N_kv.
template <class T>
int64_t scratch_kv_rows(int64_t rows, const FmhaParams<T>& p) {
  return p.nadd > 0 ? rows : clamp_rows(rows, p.nkv);
}

// Calls f(n, mask_or_null) for each block of KV rows Q tile t attends to, rows[0:n] filled; mask [q rows x n] when partial.
template <class Pol, class F>
void visit_kv(const Pol& pol, int64_t t, int64_t* rows, unsigned char* mask, F&& f) {
  if constexpr (ChunkPolicy<Pol>) {
    pol.for_each_kv_chunk(t, kChunkRows, rows, mask, [&](int64_t n, bool full) { f(n, full ? nullptr : mask); });
  } else {
    pol.for_each_kv_tile(t, [&](int64_t u, bool full) {
      const int64_t n = pol.kv_tile_rows(u, rows);
      if (n == 0) return;
      if (!full) pol.fill_mask(t, u, mask);
      f(n, full ? nullptr : mask);
    });
  }
}

// Calls f(n, mask_or_null) for each block of query rows that attend to KV tile u; mask [n x kv rows] when partial.
template <class Pol, class F>
void visit_q(const Pol& pol, int64_t u, int64_t* rows, unsigned char* mask, F&& f) {
  if constexpr (ChunkPolicy<Pol>) {
    pol.for_each_q_chunk(u, kChunkRows, rows, mask, [&](int64_t n, bool full) { f(n, full ? nullptr : mask); });
  } else {
    pol.for_each_q_tile(u, [&](int64_t t, bool full) {
      const int64_t n = pol.q_tile_rows(t, rows);
      if (n == 0) return;
      if (!full) pol.fill_mask(t, u, mask);
      f(n, full ? nullptr : mask);
    });
  }
}

struct Scratch {
  std::vector<float> buf;
  std::vector<int64_t> rows;
  std::vector<unsigned char> mask;
  float* take(size_t& offset, size_t n) {
    float* p = buf.data() + offset;
    offset += n;
    return p;
  }
};

}  // namespace detail

// Forward. Writes out and lse for every query row (rows with no visible key: out = 0, lse = -inf).
template <class T, class Provider>
void fmha_forward(const FmhaParams<T>& p, const Provider& provider) {
  using namespace detail;
  const auto& pol0 = provider(0, 0);
  const int64_t n_q_tiles = pol0.num_q_tiles();
  const int64_t add_tile = max_kv_rows_of(pol0);
  const int64_t max_q = clamp_rows(pol0.max_q_rows(), p.nq), max_k = scratch_kv_rows(add_tile, p);
  const int64_t n_add_tiles = policy::ceil_div(p.nadd, add_tile);
  const int64_t group = p.heads / p.kv_heads;
  const int64_t items = p.batch * p.heads * n_q_tiles;

  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    Scratch sc;
    sc.buf.resize(max_q * p.dim + max_q * p.dim_v + max_q * max_k + max_k * p.dim + max_k * p.dim_v + 2 * max_q);
    sc.rows.resize(max_q + max_k);
    sc.mask.resize(max_q * max_k);
    size_t off = 0;
    float* qb = sc.take(off, max_q * p.dim);
    float* acc = sc.take(off, max_q * p.dim_v);
    float* s = sc.take(off, max_q * max_k);
    float* kb = sc.take(off, max_k * p.dim);
    float* vb = sc.take(off, max_k * p.dim_v);
    float* m = sc.take(off, max_q);
    float* l = sc.take(off, max_q);
    int64_t* qrows = sc.rows.data();
    int64_t* krows = sc.rows.data() + max_q;

    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item % n_q_tiles;
      const int64_t h = (item / n_q_tiles) % p.heads;
      const int64_t b = item / (n_q_tiles * p.heads);
      const int64_t hk = h / group;
      const auto& pol = provider(b, h);
      const int64_t nq = pol.q_tile_rows(t, qrows);
      if (nq == 0) continue;
      auto qrow = [&](int64_t tok) { return p.q_row(b, tok, h); };
      auto kvrow = [&](int64_t tok) { return p.kv_row(b, tok, hk); };
      auto addrow = [&](int64_t tok) { return p.add_row(b, tok, hk); };
      const Rows qv = load(p.q, qrows, nq, p.dim, qrow, qb);
      std::fill(acc, acc + nq * p.dim_v, 0.0f);
      std::fill(m, m + nq, kNegInf);
      std::fill(l, l + nq, 0.0f);

      // One KV tile: S = Q K^T, online softmax (masked when the tile is partial), acc += P V.
      auto step = [&](int64_t nk, const unsigned char* mask, Rows kt, Rows vt) {
        gemm_abt(nq, nk, p.dim, qv.ptr, qv.ld, kt.ptr, kt.ld, 0.0f, s, nk);
        for (int64_t i = 0; i < nq; ++i) {
          float alpha = softmax_row_update(s + i * nk, mask ? mask + i * nk : nullptr, nk, p.scale, m[i], l[i]);
          if (alpha != 1.0f) scale_row(acc + i * p.dim_v, p.dim_v, alpha);
        }
        gemm_ab(nq, p.dim_v, nk, s, nk, vt.ptr, vt.ld, 1.0f, acc, p.dim_v);
      };
      visit_kv(pol, t, krows, sc.mask.data(), [&](int64_t nk, const unsigned char* mask) {
        step(nk, mask, load(p.k, krows, nk, p.dim, kvrow, kb), load(p.v, krows, nk, p.dim_v, kvrow, vb));
      });
      for (int64_t a = 0; a < n_add_tiles; ++a) {
        const int64_t nk = std::min(add_tile, p.nadd - a * add_tile);
        for (int64_t j = 0; j < nk; ++j) krows[j] = a * add_tile + j;
        step(nk, nullptr, load(p.add_k, krows, nk, p.dim, addrow, kb), load(p.add_v, krows, nk, p.dim_v, addrow, vb));
      }
      for (int64_t i = 0; i < nq; ++i) {
        const bool empty = l[i] == 0.0f;
        scale_row(acc + i * p.dim_v, p.dim_v, empty ? 0.0f : 1.0f / l[i]);
        p.lse[qrow(qrows[i])] = empty ? kNegInf : m[i] + std::log(l[i]);
      }
      scatter(acc, qrows, nq, p.dim_v, qrow, 1.0f, p.out);
    }
  });
}

// Backward. Needs p.grad_out, p.lse_in, p.delta; writes grad_q, grad_k, grad_v (and grad_add_k/v when nadd > 0). Every
// gradient row is written exactly once (deterministic, no atomics).
template <class T, class Provider>
void fmha_backward(const FmhaParams<T>& p, const Provider& provider) {
  using namespace detail;
  const auto& pol0 = provider(0, 0);
  const int64_t n_q_tiles = pol0.num_q_tiles(), n_kv_tiles = pol0.num_kv_tiles();
  // Pass 1 pairs Q tiles with KV blocks, pass 2 KV tiles with query blocks: size scratch for the larger of each side.
  const int64_t max_q = clamp_rows(std::max(pol0.max_q_rows(), max_q_chunk_rows_of(pol0)), p.nq);
  const int64_t add_tile = max_kv_rows_of(pol0);
  const int64_t max_k = scratch_kv_rows(std::max(pol0.max_kv_rows(), add_tile), p);
  const int64_t n_add_tiles = policy::ceil_div(p.nadd, add_tile);
  const int64_t group = p.heads / p.kv_heads;
  const int64_t dmax = std::max(p.dim, p.dim_v);
  auto scratch_size = [&] {
    return max_q * p.dim + max_q * p.dim_v + 2 * max_q * max_k + max_k * p.dim + max_k * p.dim_v + max_q * dmax +
           max_k * dmax * 2 + 2 * max_q;
  };

  // Pass 2 walks (b, KV head, KV tile) items. When there are enough (b, KV head) units to fill the threads, one item per
  // unit walks all its KV tiles and also accumulates dQ (a unit owns the dQ rows of its query heads), which makes pass 1
  // unnecessary: 5 tile products per visit instead of 7.
  const int64_t kv_items = n_kv_tiles + n_add_tiles;
  const int64_t units = p.batch * p.kv_heads;
  const int64_t threads = at::get_num_threads();
  const bool fused = units >= threads && (units % threads == 0 || units >= 4 * threads);

  // Pass 1 (unless fused): dQ, parallel over (b, h, Q tile).
  if (!fused) at::parallel_for(0, p.batch * p.heads * n_q_tiles, 1, [&](int64_t begin, int64_t end) {
    Scratch sc;
    sc.buf.resize(scratch_size());
    sc.rows.resize(max_q + max_k);
    sc.mask.resize(max_q * max_k);
    size_t off = 0;
    float* qb = sc.take(off, max_q * p.dim);
    float* dob = sc.take(off, max_q * p.dim_v);
    float* s = sc.take(off, max_q * max_k);
    float* dp = sc.take(off, max_q * max_k);
    float* kb = sc.take(off, max_k * p.dim);
    float* vb = sc.take(off, max_k * p.dim_v);
    float* dq = sc.take(off, max_q * dmax);
    float* lse = sc.take(off, max_q);
    float* delta = sc.take(off, max_q);
    int64_t* qrows = sc.rows.data();
    int64_t* krows = sc.rows.data() + max_q;

    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item % n_q_tiles;
      const int64_t h = (item / n_q_tiles) % p.heads;
      const int64_t b = item / (n_q_tiles * p.heads);
      const int64_t hk = h / group;
      const auto& pol = provider(b, h);
      const int64_t nq = pol.q_tile_rows(t, qrows);
      if (nq == 0) continue;
      auto qrow = [&](int64_t tok) { return p.q_row(b, tok, h); };
      auto kvrow = [&](int64_t tok) { return p.kv_row(b, tok, hk); };
      auto addrow = [&](int64_t tok) { return p.add_row(b, tok, hk); };
      const Rows qv = load(p.q, qrows, nq, p.dim, qrow, qb);
      const Rows dov = load(p.grad_out, qrows, nq, p.dim_v, qrow, dob);
      for (int64_t i = 0; i < nq; ++i) {
        lse[i] = p.lse_in[qrow(qrows[i])];
        delta[i] = p.delta[qrow(qrows[i])];
      }
      std::fill(dq, dq + nq * p.dim, 0.0f);
      auto step = [&](int64_t nk, const unsigned char* mask, Rows kt, Rows vt) {
        gemm_abt(nq, nk, p.dim, qv.ptr, qv.ld, kt.ptr, kt.ld, 0.0f, s, nk);        // S = Q K^T
        gemm_abt(nq, nk, p.dim_v, dov.ptr, dov.ld, vt.ptr, vt.ld, 0.0f, dp, nk);  // dP = dO V^T
        for (int64_t i = 0; i < nq; ++i)
          softmax_row_backward(s + i * nk, dp + i * nk, mask ? mask + i * nk : nullptr, nk, p.scale, lse[i], delta[i]);
        gemm_ab(nq, p.dim, nk, dp, nk, kt.ptr, kt.ld, 1.0f, dq, p.dim);  // dQ += dS K
      };
      visit_kv(pol, t, krows, sc.mask.data(), [&](int64_t nk, const unsigned char* mask) {
        step(nk, mask, load(p.k, krows, nk, p.dim, kvrow, kb), load(p.v, krows, nk, p.dim_v, kvrow, vb));
      });
      for (int64_t a = 0; a < n_add_tiles; ++a) {
        const int64_t nk = std::min(add_tile, p.nadd - a * add_tile);
        for (int64_t j = 0; j < nk; ++j) krows[j] = a * add_tile + j;
        step(nk, nullptr, load(p.add_k, krows, nk, p.dim, addrow, kb), load(p.add_v, krows, nk, p.dim_v, addrow, vb));
      }
      scatter(dq, qrows, nq, p.dim, qrow, p.scale, p.grad_q);
    }
  });

  // Pass 2: dK, dV (and dQ when fused); additional-KV tiles come after the policy's KV tiles.
  at::parallel_for(0, fused ? units : units * kv_items, 1, [&](int64_t begin, int64_t end) {
    Scratch sc;
    sc.buf.resize(scratch_size() + (fused ? max_q * p.dim : 0));
    sc.rows.resize(max_q + max_k);
    sc.mask.resize(max_q * max_k);
    size_t off = 0;
    float* qb = sc.take(off, max_q * p.dim);
    float* dob = sc.take(off, max_q * p.dim_v);
    float* s = sc.take(off, max_q * max_k);
    float* dp = sc.take(off, max_q * max_k);
    float* kb = sc.take(off, max_k * p.dim);
    float* vb = sc.take(off, max_k * p.dim_v);
    float* dk = sc.take(off, max_k * dmax);
    float* dv = sc.take(off, max_k * dmax);
    float* lse = sc.take(off, max_q);
    float* delta = sc.take(off, max_q);
    float* dqc = fused ? sc.take(off, max_q * p.dim) : nullptr;
    int64_t* qrows = sc.rows.data();
    int64_t* krows = sc.rows.data() + max_q;
    std::vector<float> dq_acc(fused ? p.nq * group * p.dim : 0);  // [token][head in group][D]

    auto kv_tile = [&](int64_t b, int64_t hk, int64_t u) {
      const bool additional = u >= n_kv_tiles;
      const int64_t a = u - n_kv_tiles;
      int64_t nk;
      if (additional) {
        nk = std::min(add_tile, p.nadd - a * add_tile);
        for (int64_t j = 0; j < nk; ++j) krows[j] = a * add_tile + j;
      } else {
        nk = provider(b, hk * group).kv_tile_rows(u, krows);
      }
      if (nk == 0) return;
      auto kvrow = [&](int64_t tok) { return additional ? p.add_row(b, tok, hk) : p.kv_row(b, tok, hk); };
      const Rows kt = load(additional ? p.add_k : p.k, krows, nk, p.dim, kvrow, kb);
      const Rows vt = load(additional ? p.add_v : p.v, krows, nk, p.dim_v, kvrow, vb);
      std::fill(dk, dk + nk * p.dim, 0.0f);
      std::fill(dv, dv + nk * p.dim_v, 0.0f);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const auto& pol = provider(b, h);
        auto qrow = [&](int64_t tok) { return p.q_row(b, tok, h); };
        // One block of nq query rows (qrows filled) against this KV tile.
        auto step = [&](int64_t nq, const unsigned char* mask) {
          const Rows qv = load(p.q, qrows, nq, p.dim, qrow, qb);
          const Rows dov = load(p.grad_out, qrows, nq, p.dim_v, qrow, dob);
          for (int64_t i = 0; i < nq; ++i) {
            lse[i] = p.lse_in[qrow(qrows[i])];
            delta[i] = p.delta[qrow(qrows[i])];
          }
          gemm_abt(nq, nk, p.dim, qv.ptr, qv.ld, kt.ptr, kt.ld, 0.0f, s, nk);
          gemm_abt(nq, nk, p.dim_v, dov.ptr, dov.ld, vt.ptr, vt.ld, 0.0f, dp, nk);
          for (int64_t i = 0; i < nq; ++i)
            softmax_row_backward(s + i * nk, dp + i * nk, mask ? mask + i * nk : nullptr, nk, p.scale, lse[i], delta[i]);
          gemm_atb(nk, p.dim_v, nq, s, nk, dov.ptr, dov.ld, 1.0f, dv, p.dim_v);  // dV += P^T dO
          gemm_atb(nk, p.dim, nq, dp, nk, qv.ptr, qv.ld, 1.0f, dk, p.dim);       // dK += dS^T Q
          if (fused) {
            gemm_ab(nq, p.dim, nk, dp, nk, kt.ptr, kt.ld, 0.0f, dqc, p.dim);  // dQ (this block) = dS K
            for (int64_t i = 0; i < nq; ++i) {
              float* acc = dq_acc.data() + (qrows[i] * group + (h - hk * group)) * p.dim;
              const float* src = dqc + i * p.dim;
              for (int64_t c = 0; c < p.dim; ++c) acc[c] += src[c];
            }
          }
        };
        if (additional) {
          for (int64_t t = 0; t < n_q_tiles; ++t) {
            const int64_t nq = pol.q_tile_rows(t, qrows);
            if (nq > 0) step(nq, nullptr);
          }
        } else {
          visit_q(pol, u, qrows, sc.mask.data(), step);
        }
      }
      scatter(dk, krows, nk, p.dim, kvrow, p.scale, additional ? p.grad_add_k : p.grad_k);
      scatter(dv, krows, nk, p.dim_v, kvrow, 1.0f, additional ? p.grad_add_v : p.grad_v);
    };

    for (int64_t item = begin; item < end; ++item) {
      if (!fused) {
        const int64_t u = item % kv_items;
        kv_tile(item / (kv_items * p.kv_heads), (item / kv_items) % p.kv_heads, u);
        continue;
      }
      const int64_t b = item / p.kv_heads, hk = item % p.kv_heads;
      std::fill(dq_acc.begin(), dq_acc.end(), 0.0f);
      for (int64_t u = 0; u < kv_items; ++u) kv_tile(b, hk, u);
      for (int64_t tok = 0; tok < p.nq; ++tok)
        for (int64_t g = 0; g < group; ++g) {
          T* dst = p.grad_q + p.q_row(b, tok, hk * group + g) * p.dim;
          const float* src = dq_acc.data() + (tok * group + g) * p.dim;
          for (int64_t c = 0; c < p.dim; ++c) dst[c] = static_cast<T>(p.scale * src[c]);
        }
    }
  });
}

}  // namespace natten_like::cpu
