// The work-tile scheduler of the sm90 forward (sm90_fmha_fwd_kernel.hpp): which (Q tile, head, batch) a CTA runs.
//
// Non-persistent launches keep one CTA per work tile (grid (Q tiles, heads, batch)). A persistent launch runs
// min(work tiles, resident CTA capacity) CTAs on a 1-D grid; CTA c walks the work tiles c, c + grid, c + 2 grid, ...
// (a static, deterministic round robin: the producer and the consumer warpgroups compute the same sequence without
// talking to each other). Work tile w is linearised with the Q tile fastest, then the head, then the batch entry:
// the CTAs resident at one time run consecutive Q tiles of one (batch, head) and so read the same K / V rows (and, with
// grouped-query attention, consecutive heads share their KV head too), which keeps them in L2.
//
// Plain C++ with NL_HOST_DEVICE: tests/test_sm90_schedules_host.py checks that every work tile is visited exactly once
// across the CTAs, in the intended order, for random sizes up to the launchers' limits (products beyond 2^31: all
// arithmetic is int64), and that the grid never exceeds the work.
#pragma once

#include <cstdint>

#include "natten_like/policy/common.hpp"

namespace natten_like::sm90 {

// One work tile: the kernel's Q tile index, query head and batch entry.
struct Sm90WorkTile {
  int64_t q_tile;
  int h;
  int64_t b;
};

// The launch's work space (q_tiles x heads x batch). The launchers keep q_tiles < 2^31 and heads, batch < 2^16, so the
// product stays below 2^63.
struct Sm90TileScheduler {
  int64_t q_tiles;
  int64_t heads;
  int64_t batch;

  NL_HOST_DEVICE int64_t total() const { return q_tiles * heads * batch; }
  // Work tile w in [0, total()): Q tile fastest within a (batch, head), then the head, then the batch entry.
  NL_HOST_DEVICE Sm90WorkTile tile(int64_t w) const {
    const int64_t hb = w / q_tiles;
    return Sm90WorkTile{w - hb * q_tiles, static_cast<int>(hb % heads), hb / heads};
  }
  NL_HOST_DEVICE int64_t linear(const Sm90WorkTile& t) const { return (t.b * heads + t.h) * q_tiles + t.q_tile; }
};

// CTAs of a persistent grid: the resident capacity (SMs x CTAs per SM, at least 1), never more than the work.
NL_HOST_DEVICE int64_t sm90_persistent_grid(int64_t work, int64_t sms, int64_t ctas_per_sm) {
  int64_t capacity = (sms > 0 ? sms : 1) * (ctas_per_sm > 0 ? ctas_per_sm : 1);
  return work < capacity ? work : capacity;
}

// How a launcher chooses between the two grids: kAuto applies sm90_use_persistent; kOff / kOn force one (tests,
// benchmarks). The launchers read it from the params' sm90_persistence (these values; others are invalid).
enum class Sm90Persistence { kAuto = 0, kOff = 1, kOn = 2 };

// Waves of resident CTAs from which kAuto goes persistent. Below it each CTA would run at most one or two work tiles,
// so there is little prologue (barrier init, descriptor prefetch, smem zeroing, launch) to amortise and nothing to
// overlap, and the hardware's dynamic block scheduler balances uneven work tiles (border tiles of a neighbourhood,
// block-sparse rows of different lengths) better than a static round robin. From it on, many small work tiles make the
// per-CTA prologue and the exposed Q load / epilogue of every tile a real fraction of the run; the persistent CTA
// overlaps the next tile's loads with the current epilogue, and the round robin's imbalance is at most one work tile
// per CTA out of four or more.
constexpr int64_t kSm90PersistentMinWaves = 4;

// Work tiles per persistent CTA below this: the kernel counts a CTA's work tiles in uint32 (the local index from which
// it computes the next work tile must not wrap; the KV ring's count may, its phases only need it mod 4).
constexpr int64_t kSm90MaxWorkPerCta = int64_t{1} << 31;

// Whether to launch the persistent grid for `work` tiles on `capacity` resident CTAs. kOn and kAuto fall back to the
// one-tile grid when a CTA would run kSm90MaxWorkPerCta work tiles or more (beyond any real launch).
NL_HOST_DEVICE bool sm90_use_persistent(Sm90Persistence mode, int64_t work, int64_t capacity) {
  if (mode == Sm90Persistence::kOff || capacity <= 0 || work <= 0) return false;
  if ((work + capacity - 1) / capacity >= kSm90MaxWorkPerCta) return false;
  return mode == Sm90Persistence::kOn || work >= kSm90PersistentMinWaves * capacity;
}

}  // namespace natten_like::sm90
