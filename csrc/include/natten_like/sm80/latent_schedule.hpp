// Index logic of the sm80 latent (MLA decode) forward, plain C++ so the host test (tests/test_sm80_latent_host.py) runs
// the very functions the kernel runs:
// - query rows: per batch the S_q x H queries are rows r = s * H + h (q [B, S_q, H, D] is row-major, so a batch's rows
//   are contiguous); M tile t holds rows [64 t, 64 t + 64) (decode packs heads as rows: S_q is tiny, H is 16..128);
// - row_limit: row r sees cache positions [0, limit): L_b, or with causal L_b - S_q + s + 1 (clamped to [0, L_b]);
// - splits: an M tile visits KV tiles of 64 positions up to its last row's limit (limits grow with r), and split s of
//   num_splits takes the s-th contiguous share of those tiles (per batch: a short cache gets short splits);
// - a cache position's row: contiguous b * s_kv + pos, paged block_table[b][pos / page_size] * page_size + pos %
//   page_size, both int64 (pages * page_size * 576 passes 2^31);
// - the contents the kernels check themselves (the binding does not read device-resident lengths and block tables, so
//   that a call can be captured in a CUDA graph): a length outside [0, capacity] is taken as 0 and gives all the
//   batch entry's queries NaN; a block-table entry outside [0, num_pages) is not read through, and the CTAs that
//   load its page give their rows NaN (every query that would see the page, and the other rows of those CTAs).
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

// Positions a batch entry's cache can hold: s_kv contiguous, max_pages * page_size paged.
NL_HOST_DEVICE int64_t capacity(bool paged, int64_t s_kv, int64_t page_size, int64_t max_pages) {
  return paged ? max_pages * page_size : s_kv;
}

// Batch entry b's length as the kernels use it, and whether it was valid: L_b in [0, capacity], else 0.
struct CheckedLength {
  int64_t len;
  bool valid;
};
NL_HOST_DEVICE CheckedLength checked_length(int64_t given, int64_t capacity) {
  const bool valid = given >= 0 && given <= capacity;
  return {valid ? given : 0, valid};
}

// Page of the cache holding position pos of batch b: block_table[b][pos / page_size], or -1 where that entry is not a
// page of the cache (outside [0, num_pages)).
NL_HOST_DEVICE int64_t checked_page(const int64_t* block_table, int64_t max_pages, int64_t page_size,
                                    int64_t num_pages, int64_t b, int64_t pos) {
  const int64_t page = block_table[b * max_pages + pos / page_size];
  return page >= 0 && page < num_pages ? page : -1;
}

// Cache row (in units of rows of `dim` elements) holding position pos < L_b of batch b, or -1 where the block table
// names no page of the cache (see checked_page).
NL_HOST_DEVICE int64_t cache_row(const int64_t* block_table, int64_t max_pages, int64_t page_size, int64_t num_pages,
                                 int64_t s_kv, int64_t b, int64_t pos) {
  if (block_table == nullptr) return b * s_kv + pos;
  const int64_t page = checked_page(block_table, max_pages, page_size, num_pages, b, pos);
  return page < 0 ? -1 : page * page_size + pos % page_size;
}

}  // namespace natten_like::sm80::latent
