// The block-sparse plan shared by the CPU and CUDA bindings: compressed lists checked (and, for a backward, transposed)
// on q's device with tensor ops and one host sync, sequence and tile offsets of a plain or packed batch (from host
// copies of cu_seqlens), and, on the CPU, the policy of each (batch, head). The CUDA kernels get device arrays of the
// same lists.
#pragma once

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <utility>
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

// The lists of one direction, shapes and dtype checked, as contiguous int64 tensors on `device` (their contents are
// checked by check_contents).
inline Lists shaped_lists(const at::Tensor& num, const at::Tensor& idx, int64_t batch, int64_t heads, int64_t rows,
                          const char* name, at::Device device) {
  TORCH_CHECK(num.scalar_type() == at::kLong && idx.scalar_type() == at::kLong, "natten_like::block_sparse: ", name,
              " block lists must be int64");
  TORCH_CHECK(num.dim() == 3 && idx.dim() == 4 && num.size(0) == idx.size(0) && num.size(1) == idx.size(1) &&
                  num.size(2) == idx.size(2),
              "natten_like::block_sparse: ", name, " lists must be num [B|1, H|1, QB] and indices [B|1, H|1, QB, cap]");
  TORCH_CHECK((num.size(0) == 1 || num.size(0) == batch) && (num.size(1) == 1 || num.size(1) == heads),
              "natten_like::block_sparse: ", name, " lists' batch/head dims must be 1 or ", batch, "/", heads);
  TORCH_CHECK(num.size(2) == rows, "natten_like::block_sparse: ", name, " lists need ", rows, " query blocks, got ",
              num.size(2));
  return Lists{num.to(device).contiguous(), idx.to(device).contiguous()};
}

// Which slots of a list hold a block: [Bm, Hm, R, cap] bool.
inline at::Tensor listed_slots(const Lists& l) {
  return at::arange(l.idx.size(3), l.idx.options()) < l.num.unsqueeze(-1);
}

// One key per slot: the listed KV block, or a negative number of its own for an unlisted slot (-1 - base - slot), so
// that two equal keys in a row are one block listed twice.
inline at::Tensor slot_keys(const Lists& l, const at::Tensor& listed, int64_t base) {
  return at::where(listed, l.idx, -1 - base - at::arange(l.idx.size(3), l.idx.options()));
}

// `keys` [..., n] sorted along the last dim, and where a sorted key equals the next one (a key twice in its row;
// [..., n - 1] bool).
inline std::pair<at::Tensor, at::Tensor> sorted_repeats(const at::Tensor& keys) {
  const int64_t n = keys.size(-1);
  const at::Tensor s = std::get<0>(keys.sort(-1));
  if (n < 2) return {s, at::zeros_like(s, s.options().dtype(at::kBool))};
  return {s, s.narrow(-1, 1, n - 1) == s.narrow(-1, 0, n - 1)};
}

// 0-dim bool: some row of `keys` [..., n] holds a key twice.
inline at::Tensor repeats(const at::Tensor& keys) { return sorted_repeats(keys).second.any(); }

// The error path: (query block, KV block) of the first row of `keys` [..., R, n] holding a KV block twice.
inline std::pair<int64_t, int64_t> first_repeat(const at::Tensor& keys) {
  const auto [s, eq] = sorted_repeats(keys.cpu());
  const int64_t n = std::max<int64_t>(eq.size(-1), 1);
  const int64_t pos = eq.flatten().nonzero().flatten()[0].item<int64_t>();
  return {(pos / n) % keys.size(-2), s.flatten()[pos / n * s.size(-1) + pos % n].item<int64_t>()};
}

// The transposed lists of one direction (per KV block c, the query blocks whose list holds c, in increasing order),
// built on the lists' device in two steps around the one host sync of check_contents: `keys` / `counts` first, then,
// with the longest transposed list known, the arrays.
struct Transpose {
  at::Tensor sorted, order, counts;  // slot keys g * cols + c (spill bucket G * cols: unlisted), stably sorted

  Transpose(const Lists& l, const at::Tensor& valid, int64_t cols) {
    const int64_t groups = l.num.size(0) * l.num.size(1);
    const at::Tensor g = at::arange(groups, l.idx.options()).view({l.num.size(0), l.num.size(1), 1, 1});
    const at::Tensor keys = at::where(valid, g * cols + l.idx, groups * cols).flatten();
    // The slots are in (g, r, slot) order: a stable sort keeps each key's query blocks r increasing.
    std::tie(sorted, order) = keys.sort(/*stable=*/true, 0, false);
    counts = at::zeros({groups * cols + 1}, keys.options()).index_add_(0, keys, at::ones_like(keys));
  }
  // 0-dim int64: the longest transposed list.
  at::Tensor longest() const {
    return counts.size(0) > 1 ? counts.narrow(0, 0, counts.size(0) - 1).max() : at::zeros({}, counts.options());
  }
  // num [Bm, Hm, C], idx [Bm, Hm, C, max(cap, 1)] of the lists `l`.
  Lists lists(const Lists& l, int64_t cols, int64_t cap) const {
    const int64_t bm = l.num.size(0), hm = l.num.size(1), rows = l.num.size(2), slots = l.idx.size(3);
    const int64_t buckets = bm * hm * cols;
    cap = std::max<int64_t>(cap, 1);
    const at::Tensor start = counts.cumsum(0) - counts;
    const at::Tensor rank = at::arange(sorted.size(0), sorted.options()) - start.index_select(0, sorted);
    // Spilled (unlisted) slots all go to one dump element past the arrays.
    const at::Tensor flat = at::where(sorted < buckets, sorted * cap + rank, buckets * cap);
    at::Tensor idx = at::zeros({buckets * cap + 1}, sorted.options());
    idx.index_put_({flat}, at::floor_divide(order, std::max<int64_t>(slots, 1)).remainder(std::max<int64_t>(rows, 1)));
    return Lists{counts.narrow(0, 0, buckets).view({bm, hm, cols}),
                 idx.narrow(0, 0, buckets * cap).view({bm, hm, cols, cap})};
  }
};

// Checks the contents of the lists (counts in [0, cap], listed KV blocks in [0, cols), no block twice in a row, no
// block in both the partial and the full list of a query block) on their device with one host sync, and returns
// their transposes when `backward`. A block listed twice would count its keys twice and overflow the transposed
// lists, which hold one entry per query block.
inline void check_contents(const Lists& partial, const Lists& full, int64_t cols, bool backward, Lists& q_partial,
                           Lists& q_full) {
  const Lists* lists[2] = {&partial, &full};
  at::Tensor keys[2];  // slot_keys of each list, the full list's unlisted ones below the partial list's
  std::vector<at::Tensor> flags;
  std::optional<Transpose> transposes[2];
  for (int i = 0; i < 2; ++i) {
    const Lists& l = *lists[i];
    if (!l.defined()) continue;
    const at::Tensor listed = listed_slots(l);
    const at::Tensor valid = listed & (l.idx >= 0) & (l.idx < cols);
    keys[i] = slot_keys(l, listed, i == 0 ? 0 : partial.idx.size(3));
    flags.push_back(((l.num < 0) | (l.num > l.idx.size(3))).any());
    flags.push_back((listed & ~valid).any());
    flags.push_back(repeats(keys[i]));
    if (backward) {
      transposes[i].emplace(l, valid, cols);
      flags.push_back(transposes[i]->longest());
    }
  }
  at::Tensor both;  // per row, the slot keys of both lists
  if (full.defined()) {
    // Each list has no repeat, so a key twice in the two lists' slots of a row is a block in both.
    const auto shape = at::infer_size(partial.num.sizes(), full.num.sizes());
    auto expand = [&](const at::Tensor& k) { return k.expand({shape[0], shape[1], shape[2], k.size(3)}); };
    both = at::cat({expand(keys[0]), expand(keys[1])}, -1);
    flags.push_back(repeats(both));
  }
  for (auto& f : flags) f = f.to(at::kLong);
  const at::Tensor host = at::stack(flags).cpu();  // the one sync
  const int64_t* v = host.data_ptr<int64_t>();
  const char* names[2] = {"kv", "full_kv"};
  int64_t longest[2] = {0, 0};
  for (int i = 0, j = 0; i < 2; ++i) {
    if (!lists[i]->defined()) continue;
    TORCH_CHECK(v[j] == 0, "natten_like::block_sparse: ", names[i], " block count out of [0, ",
                lists[i]->idx.size(3), "]");
    TORCH_CHECK(v[j + 1] == 0, "natten_like::block_sparse: ", names[i], " KV block index out of [0, ", cols, ")");
    if (v[j + 2] != 0) {
      const auto [r, c] = first_repeat(keys[i]);
      TORCH_CHECK(false, "natten_like::block_sparse: ", names[i], " lists hold KV block ", c,
                  " twice in a row (query block ", r, ")");
    }
    j += 3;
    if (backward) longest[i] = v[j++];
  }
  if (full.defined() && v[host.numel() - 1] != 0) {
    const auto [r, c] = first_repeat(both);
    TORCH_CHECK(false, "natten_like::block_sparse: KV block ", c,
                " is in both the partial and the full list of query block ", r);
  }
  if (!backward) return;
  q_partial = transposes[0]->lists(partial, cols, longest[0]);
  if (full.defined()) q_full = transposes[1]->lists(full, cols, longest[1]);
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
                    bool backward, at::Device device) {
  plan.q_blocks = policy::ceil_div(max_q, q_block);
  plan.kv_blocks = policy::ceil_div(max_kv, kv_block);
  plan.q_tiles.assign(seqs + 1, 0);
  plan.kv_tiles.assign(seqs + 1, 0);
  for (int64_t s = 0; s < seqs; ++s) {
    plan.q_tiles[s + 1] = plan.q_tiles[s] + policy::ceil_div(plan.q_seq[s + 1] - plan.q_seq[s], q_block);
    plan.kv_tiles[s + 1] = plan.kv_tiles[s] + policy::ceil_div(plan.kv_seq[s + 1] - plan.kv_seq[s], kv_block);
  }
  const int64_t list_batch = plan.packed ? seqs : plan.batch;
  plan.kv_partial = shaped_lists(kv_num, kv_idx, list_batch, plan.heads, plan.q_blocks, "kv", device);
  if (full_num.has_value()) {
    plan.kv_full = shaped_lists(*full_num, *full_idx, list_batch, plan.heads, plan.q_blocks, "full_kv", device);
  }
  check_contents(plan.kv_partial, plan.kv_full, plan.kv_blocks, backward, plan.q_partial, plan.q_full);
  if (device.type() != at::kCPU) return;  // the policies read the lists on the host (the CPU kernel)
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
  build_policies(plan, max_q, max_kv, seqs, kv_num, kv_idx, full_num, full_idx, q_block, kv_block, causal, backward,
                 q.device());
  return plan;
}

// A plan's offsets (copied to the device) and lists (made on it by the plan) for the CUDA bindings: they own the memory
// the kernels' pointers address, and fill the pattern and list arrays of the kernels' params. Freed when the binding
// returns; the caching allocator reuses their blocks only in stream order, after the kernels have read them.
struct PlanOnDevice {
  at::Tensor q_seq, kv_seq, q_tiles, kv_tiles;
  at::Tensor lists[4][2];  // kv_partial, kv_full, q_partial, q_full: {num, idx}, undefined when the plan has none

  PlanOnDevice(const Plan& plan, at::Device device) {
    auto copy = [&](const std::vector<int64_t>& x) { return at::tensor(x, at::kLong).to(device); };
    q_seq = copy(plan.q_seq), kv_seq = copy(plan.kv_seq), q_tiles = copy(plan.q_tiles), kv_tiles = copy(plan.kv_tiles);
    const Lists* source[4] = {&plan.kv_partial, &plan.kv_full, &plan.q_partial, &plan.q_full};
    for (int i = 0; i < 4; ++i) {
      if (source[i]->defined()) lists[i][0] = source[i]->num, lists[i][1] = source[i]->idx;
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
