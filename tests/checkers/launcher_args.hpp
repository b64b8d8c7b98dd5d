// Launcher arguments for the checkers that call kernel launchers without a GPU (their error codes come before any
// CUDA call): a contiguous heads-last problem over a small static buffer the launchers may inspect but never read
// through. tests/toolchain.py puts tests/checkers on the include path.
#pragma once

#include <cstdint>

#include "natten_like/sm80/sm80_fmha_fwd_params.hpp"

namespace checkers {

// q / out [B, N, H, D], k / v [B, N, H_kv, D], contiguous, every pointer at one 256-byte aligned buffer.
inline void fill_contiguous_args(natten_like::sm80::FmhaFwdArgs& p, int64_t B, int64_t N, int64_t H, int64_t Hkv,
                                 int64_t D) {
  static char buf[256] __attribute__((aligned(256)));
  p.q = p.k = p.v = buf;
  p.out = buf;
  p.lse = nullptr;
  p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = D;
  p.q_token_stride = p.o_token_stride = H * D;
  p.k_token_stride = p.v_token_stride = Hkv * D;
  p.q_batch_stride = p.o_batch_stride = N * H * D;
  p.k_batch_stride = p.v_batch_stride = N * Hkv * D;
  p.batch = B;
  p.tokens = N;
  p.heads = static_cast<int>(H);
  p.kv_heads = static_cast<int>(Hkv);
  p.head_dim = p.head_dim_v = static_cast<int>(D);
  p.scale = 1.f;
}

}  // namespace checkers
