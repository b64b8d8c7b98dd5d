// The block-sparse plan shared by the CPU and CUDA bindings: checked compressed lists (on the host), sequence and tile
// offsets of a plain or packed batch, and the policy of each (batch, head). The CUDA binding validates host copies of
// the lists here and hands the kernel device copies of the same arrays.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "natten_like/policy/block_sparse.hpp"

namespace natten_like::block_sparse_plan {

using policy::BlockList;
using policy::BlockListArray;
using policy::BlockSparsePolicy;

// The lists of one direction: counts [Bm, Hm, R], indices [Bm, Hm, R, cap] (Bm in {1, B}, Hm in {1, H}).
struct Lists {
  at::Tensor num, idx;
  bool defined() const { return num.defined(); }
};

inline Lists checked_lists(const at::Tensor& num, const at::Tensor& idx, int64_t batch, int64_t heads, int64_t rows, int64_t cols,
                    const char* name) {
  TORCH_CHECK(num.scalar_type() == at::kLong && idx.scalar_type() == at::kLong, "natten_like::block_sparse: ", name,
              " block lists must be int64");
  TORCH_CHECK(num.dim() == 3 && idx.dim() == 4 && num.size(0) == idx.size(0) && num.size(1) == idx.size(1) &&
                  num.size(2) == idx.size(2),
              "natten_like::block_sparse: ", name, " lists must be num [B|1, H|1, QB] and indices [B|1, H|1, QB, cap]");
  TORCH_CHECK((num.size(0) == 1 || num.size(0) == batch) && (num.size(1) == 1 || num.size(1) == heads),
              "natten_like::block_sparse: ", name, " lists' batch/head dims must be 1 or ", batch, "/", heads);
  TORCH_CHECK(num.size(2) == rows, "natten_like::block_sparse: ", name, " lists need ", rows, " query blocks, got ",
              num.size(2));
  Lists l{num.contiguous(), idx.contiguous()};
  const int64_t* n = l.num.data_ptr<int64_t>();
  const int64_t* x = l.idx.data_ptr<int64_t>();
  const int64_t cap = l.idx.size(3);
  // A block listed twice in a row would count its keys twice, and overflow the transposed lists (at most one entry per
  // query block): refused, as the Python API does.
  std::vector<int64_t> seen(static_cast<size_t>(cols), -1);
  for (int64_t r = 0; r < l.num.numel(); ++r) {
    TORCH_CHECK(n[r] >= 0 && n[r] <= cap, "natten_like::block_sparse: ", name, " block count out of [0, ", cap, "]");
    for (int64_t i = 0; i < n[r]; ++i) {
      const int64_t c = x[r * cap + i];
      TORCH_CHECK(c >= 0 && c < cols, "natten_like::block_sparse: ", name, " KV block index out of [0, ", cols, ")");
      TORCH_CHECK(seen[c] != r, "natten_like::block_sparse: ", name, " lists hold KV block ", c, " twice in a row");
      seen[c] = r;
    }
  }
  return l;
}

// No KV block in both the partial and the full list of a query block (its keys would count twice), over the
// broadcast batch / head dims of either list.
inline void check_disjoint(const Lists& partial, const Lists& full, int64_t batch, int64_t heads, int64_t cols) {
  const int64_t rows = partial.num.size(2), pcap = partial.idx.size(3), fcap = full.idx.size(3);
  std::vector<int64_t> seen(static_cast<size_t>(cols), -1);
  int64_t stamp = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t pg = (partial.num.size(0) > 1 ? b : 0) * partial.num.size(1) + (partial.num.size(1) > 1 ? h : 0);
      const int64_t fg = (full.num.size(0) > 1 ? b : 0) * full.num.size(1) + (full.num.size(1) > 1 ? h : 0);
      for (int64_t r = 0; r < rows; ++r, ++stamp) {
        const int64_t* pn = partial.num.data_ptr<int64_t>() + pg * rows + r;
        const int64_t* px = partial.idx.data_ptr<int64_t>() + (pg * rows + r) * pcap;
        for (int64_t i = 0; i < *pn; ++i) seen[px[i]] = stamp;
        const int64_t* fn = full.num.data_ptr<int64_t>() + fg * rows + r;
        const int64_t* fx = full.idx.data_ptr<int64_t>() + (fg * rows + r) * fcap;
        for (int64_t i = 0; i < *fn; ++i) {
          TORCH_CHECK(seen[fx[i]] != stamp, "natten_like::block_sparse: KV block ", fx[i],
                      " is in both the partial and the full list of query block ", r);
        }
      }
    }
  }
}

// Per KV block c, the query blocks whose list holds c, in increasing order: num [Bm, Hm, C], idx [Bm, Hm, C, R].
inline Lists transpose_lists(const Lists& l, int64_t cols) {
  const int64_t bh = l.num.size(0) * l.num.size(1), rows = l.num.size(2), cap = l.idx.size(3);
  auto tnum = at::zeros({l.num.size(0), l.num.size(1), cols}, at::kLong);
  auto tidx = at::zeros({l.num.size(0), l.num.size(1), cols, std::max<int64_t>(rows, 1)}, at::kLong);
  const int64_t* n = l.num.data_ptr<int64_t>();
  const int64_t* x = l.idx.data_ptr<int64_t>();
  int64_t* tn = tnum.data_ptr<int64_t>();
  int64_t* tx = tidx.data_ptr<int64_t>();
  const int64_t tcap = tidx.size(3);
  at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < n[g * rows + r]; ++i) {
          const int64_t c = x[(g * rows + r) * cap + i];
          tx[(g * cols + c) * tcap + tn[g * cols + c]++] = r;
        }
  });
  return Lists{tnum, tidx};
}

// The lists as a BlockListArray (element strides; broadcast dims stride 0), over `data` (the lists' own pointers, or
// the same lists copied to a device).
inline BlockListArray list_array(const Lists& l, const int64_t* num, const int64_t* idx) {
  BlockListArray a;
  if (!l.defined()) return a;
  a.num = num;
  a.idx = idx;
  a.num_stride_b = l.num.size(0) > 1 ? l.num.stride(0) : 0;
  a.num_stride_h = l.num.size(1) > 1 ? l.num.stride(1) : 0;
  a.idx_stride_b = l.idx.size(0) > 1 ? l.idx.stride(0) : 0;
  a.idx_stride_h = l.idx.size(1) > 1 ? l.idx.stride(1) : 0;
  a.cap = l.idx.size(3);
  return a;
}

// The block list of (batch b, head h), sequences of a packed batch strided along the lists' batch dim.
inline BlockList view(const Lists& l, int64_t b, int64_t h, bool packed) {
  if (!l.defined()) return BlockList{};
  return list_array(l, l.num.data_ptr<int64_t>(), l.idx.data_ptr<int64_t>()).at(b, h, packed);
}

// Everything the kernel's provider hands out: one policy per (batch, head), or per head for a packed batch (whose
// sequences are the policy's segments and whose kernel batch is 1).
struct Plan {
  bool packed = false;
  int64_t batch = 1, heads = 1, nq = 0, nkv = 0, q_blocks = 0, kv_blocks = 0;
  std::vector<int64_t> q_seq, kv_seq, q_tiles, kv_tiles;
  Lists kv_partial, kv_full, q_partial, q_full;
  std::vector<BlockSparsePolicy> pols;

  const BlockSparsePolicy& operator()(int64_t b, int64_t h) const { return pols[packed ? h : b * heads + h]; }
};

inline std::vector<int64_t> offsets_of(const c10::optional<at::Tensor>& cu, const char* name) {
  TORCH_CHECK(cu->dim() == 1 && cu->numel() >= 2, "natten_like::block_sparse: ", name, " must be 1-D with B + 1 entries");
  auto c = cu->to(at::kLong).contiguous();
  std::vector<int64_t> v(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
  TORCH_CHECK(v[0] == 0, "natten_like::block_sparse: ", name, " must start at 0");
  for (size_t i = 1; i < v.size(); ++i)
    TORCH_CHECK(v[i] >= v[i - 1], "natten_like::block_sparse: ", name, " must be non-decreasing");
  return v;
}

// Tile offsets, checked lists (and their transposes for a backward) and the policies of a plan whose sequence offsets,
// batch and heads are set.
inline void build_policies(Plan& plan, int64_t max_q, int64_t max_kv, int64_t seqs, const at::Tensor& kv_num,
                    const at::Tensor& kv_idx, const c10::optional<at::Tensor>& full_num,
                    const c10::optional<at::Tensor>& full_idx, int64_t q_block, int64_t kv_block, bool causal,
                    bool backward) {
  plan.q_blocks = policy::ceil_div(max_q, q_block);
  plan.kv_blocks = policy::ceil_div(max_kv, kv_block);
  plan.q_tiles.assign(seqs + 1, 0);
  plan.kv_tiles.assign(seqs + 1, 0);
  for (int64_t s = 0; s < seqs; ++s) {
    plan.q_tiles[s + 1] = plan.q_tiles[s] + policy::ceil_div(plan.q_seq[s + 1] - plan.q_seq[s], q_block);
    plan.kv_tiles[s + 1] = plan.kv_tiles[s] + policy::ceil_div(plan.kv_seq[s + 1] - plan.kv_seq[s], kv_block);
  }
  const int64_t list_batch = plan.packed ? seqs : plan.batch;
  plan.kv_partial = checked_lists(kv_num, kv_idx, list_batch, plan.heads, plan.q_blocks, plan.kv_blocks, "kv");
  if (full_num.has_value()) {
    plan.kv_full = checked_lists(*full_num, *full_idx, list_batch, plan.heads, plan.q_blocks, plan.kv_blocks, "full_kv");
    check_disjoint(plan.kv_partial, plan.kv_full, list_batch, plan.heads, plan.kv_blocks);
  }
  if (backward) {
    plan.q_partial = transpose_lists(plan.kv_partial, plan.kv_blocks);
    if (plan.kv_full.defined()) plan.q_full = transpose_lists(plan.kv_full, plan.kv_blocks);
  }
  const int64_t npol = plan.packed ? plan.heads : plan.batch * plan.heads;
  plan.pols.resize(npol);
  for (int64_t i = 0; i < npol; ++i) {
    const int64_t b = plan.packed ? 0 : i / plan.heads, h = i % plan.heads;
    BlockSparsePolicy& p = plan.pols[i];
    p.q_block = q_block;
    p.kv_block = kv_block;
    p.causal = causal;
    p.num_seqs = seqs;
    p.q_seq = plan.q_seq.data();
    p.kv_seq = plan.kv_seq.data();
    p.q_tiles = plan.q_tiles.data();
    p.kv_tiles = plan.kv_tiles.data();
    p.kv_partial = view(plan.kv_partial, b, h, plan.packed);
    p.kv_full = view(plan.kv_full, b, h, plan.packed);
    p.q_partial = view(plan.q_partial, b, h, plan.packed);
    p.q_full = view(plan.q_full, b, h, plan.packed);
  }
}

inline Plan make_plan(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_num,
               const at::Tensor& kv_idx, const c10::optional<at::Tensor>& full_num,
               const c10::optional<at::Tensor>& full_idx, const c10::optional<at::Tensor>& cu_q,
               const c10::optional<at::Tensor>& cu_kv, int64_t q_block, int64_t kv_block, bool causal, bool backward) {
  TORCH_CHECK(q_block >= 1 && kv_block >= 1, "natten_like::block_sparse: q_block and kv_block must be positive");
  TORCH_CHECK(cu_q.has_value() == cu_kv.has_value(), "natten_like::block_sparse: cu_seqlens_q and cu_seqlens_kv go together");
  TORCH_CHECK(full_num.has_value() == full_idx.has_value(),
              "natten_like::block_sparse: full_kv_num_blocks and full_kv_indices go together");
  Plan plan;
  plan.packed = cu_q.has_value();
  const int tok_dims = plan.packed ? 1 : 2;
  TORCH_CHECK(q.dim() == tok_dims + 2 && k.dim() == q.dim() && v.dim() == q.dim(), "natten_like::block_sparse: q, k, v must be ",
              plan.packed ? "[total, H, D]" : "[B, N, H, D]");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "natten_like::block_sparse: q, k, v dtypes differ");
  TORCH_CHECK(k.sizes().slice(0, tok_dims) == v.sizes().slice(0, tok_dims) && k.size(-2) == v.size(-2),
              "natten_like::block_sparse: k and v shapes differ");
  TORCH_CHECK(q.size(-1) == k.size(-1), "natten_like::block_sparse: q and k head dims differ");
  TORCH_CHECK(k.size(-2) >= 1 && q.size(-2) % k.size(-2) == 0,
              "natten_like::block_sparse: query heads must be a multiple of KV heads");
  plan.heads = q.size(-2);
  int64_t max_q = 0, max_kv = 0, seqs = 1;
  if (plan.packed) {
    plan.q_seq = offsets_of(cu_q, "cu_seqlens_q");
    plan.kv_seq = offsets_of(cu_kv, "cu_seqlens_kv");
    TORCH_CHECK(plan.q_seq.size() == plan.kv_seq.size(), "natten_like::block_sparse: cu_seqlens_q/kv lengths differ");
    TORCH_CHECK(plan.q_seq.back() == q.size(0) && plan.kv_seq.back() == k.size(0),
                "natten_like::block_sparse: cu_seqlens must end at the packed lengths");
    seqs = static_cast<int64_t>(plan.q_seq.size()) - 1;
    plan.nq = q.size(0);
    plan.nkv = k.size(0);
    for (int64_t s = 0; s < seqs; ++s) {
      max_q = std::max(max_q, plan.q_seq[s + 1] - plan.q_seq[s]);
      max_kv = std::max(max_kv, plan.kv_seq[s + 1] - plan.kv_seq[s]);
    }
  } else {
    TORCH_CHECK(k.size(0) == q.size(0), "natten_like::block_sparse: q and k batch sizes differ");
    plan.batch = q.size(0);
    plan.nq = max_q = q.size(1);
    plan.nkv = max_kv = k.size(1);
    plan.q_seq = {0, max_q};
    plan.kv_seq = {0, max_kv};
  }
  build_policies(plan, max_q, max_kv, seqs, kv_num, kv_idx, full_num, full_idx, q_block, kv_block, causal, backward);
  return plan;
}

// Device copies of a plan's offsets and lists (the CUDA bindings): they own the memory the kernels' pointers address,
// and fill the pattern and list arrays of the kernels' params. Freed when the binding returns; the caching allocator
// reuses their blocks only in stream order, after the kernels have read them.
struct PlanOnDevice {
  at::Tensor q_seq, kv_seq, q_tiles, kv_tiles;
  at::Tensor lists[4][2];  // kv_partial, kv_full, q_partial, q_full: {num, idx}, undefined when the plan has none

  PlanOnDevice(const Plan& plan, at::Device device) {
    auto copy = [&](const std::vector<int64_t>& x) { return at::tensor(x, at::kLong).to(device); };
    q_seq = copy(plan.q_seq), kv_seq = copy(plan.kv_seq), q_tiles = copy(plan.q_tiles), kv_tiles = copy(plan.kv_tiles);
    const Lists* source[4] = {&plan.kv_partial, &plan.kv_full, &plan.q_partial, &plan.q_full};
    for (int i = 0; i < 4; ++i) {
      if (source[i]->defined()) lists[i][0] = source[i]->num.to(device), lists[i][1] = source[i]->idx.to(device);
    }
  }

  // The pattern (block sizes, causality, device offsets) of a plan built with these block sizes.
  BlockSparsePolicy pattern(const Plan& plan, int64_t q_block, int64_t kv_block, bool causal) const {
    BlockSparsePolicy pol;
    pol.q_block = q_block;
    pol.kv_block = kv_block;
    pol.causal = causal;
    pol.num_seqs = static_cast<int64_t>(plan.q_seq.size()) - 1;
    pol.q_seq = q_seq.data_ptr<int64_t>();
    pol.kv_seq = kv_seq.data_ptr<int64_t>();
    pol.q_tiles = q_tiles.data_ptr<int64_t>();
    pol.kv_tiles = kv_tiles.data_ptr<int64_t>();
    return pol;
  }

  // List i (0 kv_partial, 1 kv_full, 2 q_partial, 3 q_full) of `plan` over the device copies; empty when undefined.
  BlockListArray list(const Plan& plan, int i) const {
    const Lists* source[4] = {&plan.kv_partial, &plan.kv_full, &plan.q_partial, &plan.q_full};
    if (!lists[i][0].defined()) return BlockListArray{};
    return list_array(*source[i], lists[i][0].data_ptr<int64_t>(), lists[i][1].data_ptr<int64_t>());
  }
};

}  // namespace natten_like::block_sparse_plan
