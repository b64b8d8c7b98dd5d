// A random strided-shard (S2) problem for the schedule checkers (its params type needs the CUDA toolkit's headers, so it
// stands apart from random_problems.hpp): block sizes below and above the 64-row kernel block, dense and sharded KV
// heads, GQA groups of `group`, causal or not.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "natten_like/sm80/sm80_fmha_fwd_params.hpp"
#include "random_problems.hpp"

namespace checkers {

inline void random_s2_problem(std::mt19937& rng, natten_like::sm80::StridedShardFwdParams& p, int group,
                              int64_t kernel_block) {
  const int64_t block = std::vector<int64_t>{8, 16, 64, 128, 192}[pick(rng, 0, 4)];
  p.kv_heads = static_cast<int>(pick(rng, 1, 3));
  p.heads = p.kv_heads * group;
  p.pattern.nkv = pick(rng, 1, 6 * block);
  p.pattern.nq = pick(rng, 1, p.pattern.nkv);
  p.pattern.block = block;
  p.pattern.local = pick(rng, 1, 3);
  p.pattern.vert_stride = pick(rng, 1, 5);
  p.pattern.causal = pick(rng, 0, 1) == 1;
  const bool homo = pick(rng, 0, 3) == 0;
  p.head_step = homo ? 0 : std::max<int64_t>(1, p.pattern.vert_stride / p.heads);
  p.sliding_offset = pick(rng, 0, 3);
  p.dense_heads = static_cast<int>(pick(rng, 0, p.kv_heads));
  p.q_split = block > kernel_block ? static_cast<int>(block / kernel_block) : 1;
  p.kv_split = p.q_split;
}

}  // namespace checkers
