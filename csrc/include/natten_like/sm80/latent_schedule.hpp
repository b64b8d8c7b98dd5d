// Index logic of the sm80 latent (MLA decode) forward, plain C++ so the host test (tests/test_sm80_latent_host.py) runs
// the very functions the kernel runs:
// - query rows: per batch the S_q x H queries are rows r = s * H + h (q [B, S_q, H, D] is row-major, so a batch's rows
//   are contiguous); M tile t holds rows [64 t, 64 t + 64) (decode packs heads as rows: S_q is tiny, H is 16..128);
// - row_limit: row r sees cache positions [0, limit): L_b, or with causal L_b - S_q + s + 1 (clamped to [0, L_b]);
// - splits: an M tile visits KV tiles of 64 positions up to its last row's limit (limits grow with r), and split s of
//   num_splits takes the s-th contiguous share of those tiles (per batch: a short cache gets short splits);
// - a cache position's row: contiguous b * s_kv + pos, paged block_table[b][pos / page_size] * page_size + pos %
//   page_size, both int64 (pages * page_size * 576 passes 2^31).
#pragma once

#include <cstdint>

#include "natten_like/policy/common.hpp"

namespace natten_like::sm80::latent {

constexpr int kBlockM = 64;  // query rows per CTA
constexpr int kBlockN = 64;  // cache positions per KV tile

NL_HOST_DEVICE int64_t num_rows(int64_t sq, int64_t heads) { return sq * heads; }
NL_HOST_DEVICE int64_t num_m_tiles(int64_t rows) { return policy::ceil_div(rows, kBlockM); }

// Rows [begin, end) of M tile t.
NL_HOST_DEVICE policy::Range m_tile_rows(int64_t rows, int64_t t) {
  return {t * kBlockM, policy::min64((t + 1) * kBlockM, rows)};
}

// Exclusive end of the cache positions query row r (= s * heads + h) sees.
NL_HOST_DEVICE int64_t row_limit(int64_t len, int64_t sq, int64_t heads, bool causal, int64_t r) {
  if (!causal) return len;
  return policy::clamp64(len - sq + r / heads + 1, 0, len);
}

// KV tiles [begin, end) (tile i = positions [64 i, 64 i + 64)) that split `split` of `num_splits` visits for M tile
// `t`: the tiles up to the tile's last row's limit, cut into num_splits contiguous shares of ceil(tiles / num_splits).
NL_HOST_DEVICE policy::Range split_kv_tiles(int64_t len, int64_t sq, int64_t heads, bool causal, int64_t t,
                                            int64_t num_splits, int64_t split) {
  const policy::Range rows = m_tile_rows(num_rows(sq, heads), t);
  const int64_t end_pos = rows.size() > 0 ? row_limit(len, sq, heads, causal, rows.end - 1) : 0;
  const int64_t tiles = policy::ceil_div(end_pos, kBlockN);
  const int64_t share = policy::ceil_div(tiles, num_splits);
  const int64_t begin = policy::min64(split * share, tiles);
  return {begin, policy::min64(begin + share, tiles)};
}

// Keys [0, n) of the KV tile starting at tile_begin that a row with limit `limit` sees (the kernel's mask).
NL_HOST_DEVICE int tile_key_limit(int64_t limit, int64_t tile_begin) {
  return static_cast<int>(policy::clamp64(limit - tile_begin, 0, kBlockN));
}

// Cache row (in units of rows of `dim` elements) holding position pos < L_b of batch b.
NL_HOST_DEVICE int64_t cache_row(const int64_t* block_table, int64_t max_pages, int64_t page_size, int64_t s_kv,
                                 int64_t b, int64_t pos) {
  if (block_table == nullptr) return b * s_kv + pos;
  return block_table[b * max_pages + pos / page_size] * page_size + pos % page_size;
}

}  // namespace natten_like::sm80::latent
