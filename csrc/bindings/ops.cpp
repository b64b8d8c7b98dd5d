// Schemas of every natten_like operator (the torch.library namespace `natten_like`) and the Python module entry point.
// Kernels register their implementations per dispatch key in their own files (gna_cpu.cpp, ...); fake (meta)
// implementations and autograd live in python/natten_like/ops.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(natten_like, m) {
  // GNA (dense attention too, as window = length). q_tile / kv_tile are the tile shapes the kernel runs (the table in
  // simulator/tile_configs.py, per target); `kernel` names the kernel family they are for: "auto", "cpu", "sm80", "sm90"
  // (csrc/bindings/gna_cuda.cpp says what "auto" picks on CUDA).
  m.def(
      "gna_forward(Tensor q, Tensor k, Tensor v, Tensor? additional_k, Tensor? additional_v, int[] window, int[] stride, "
      "int[] dilation, bool[] is_causal, float scale, int[] q_tile, int[] kv_tile, str kernel=\"auto\") -> (Tensor out, "
      "Tensor lse)");
  m.def(
      "gna_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? additional_k, Tensor? additional_v, Tensor out, "
      "Tensor lse, Tensor? grad_lse, int[] window, int[] stride, int[] dilation, bool[] is_causal, float scale, int[] q_tile, int[] kv_tile, "
      "str kernel=\"auto\") -> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_additional_k, Tensor grad_additional_v)");
  // Introspection of the C++ GNA policy for tests and the simulator cross-check (CPU, int64 results).
  m.def(
      "gna_policy_1d(int length, int window, int stride, bool is_causal, int q_tile, int kv_tile) -> (Tensor windows, "
      "Tensor kv_tiles, Tensor full, Tensor q_tiles)");
  m.def(
      "gna_visits(int[] shape, int[] window, int[] stride, int[] dilation, bool[] is_causal, int[] q_tile, int[] kv_tile) "
      "-> Tensor");
  // Block-sparse (block_sparse_cpu.cpp): FlexAttention-layout int64 block lists; cu_seqlens_q/kv switch to packed [total, H, D].
  m.def(
      "block_sparse_forward(Tensor q, Tensor k, Tensor v, Tensor kv_num_blocks, Tensor kv_indices, Tensor? full_kv_num_blocks, "
      "Tensor? full_kv_indices, Tensor? cu_seqlens_q, Tensor? cu_seqlens_kv, int q_block, int kv_block, bool is_causal, "
      "float scale) -> (Tensor out, Tensor lse)");
  m.def(
      "block_sparse_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? grad_lse, "
      "Tensor kv_num_blocks, Tensor kv_indices, Tensor? full_kv_num_blocks, Tensor? full_kv_indices, Tensor? cu_seqlens_q, "
      "Tensor? cu_seqlens_kv, int q_block, int kv_block, bool is_causal, float scale) -> (Tensor grad_q, Tensor grad_k, "
      "Tensor grad_v)");
  // Per (list batch, list head), the block-sparse policy's tile visits for one sequence: kinds [Bm, Hm, QB, KB] from
  // for_each_kv_tile and the transposed [Bm, Hm, KB, QB] from for_each_q_tile (0 = not visited, 1 = partial, 2 = full).
  m.def(
      "block_sparse_visits(Tensor kv_num_blocks, Tensor kv_indices, Tensor? full_kv_num_blocks, Tensor? full_kv_indices, "
      "int seqlen_q, int seqlen_kv, int q_block, int kv_block, bool is_causal) -> (Tensor kv_visits, Tensor q_visits)");
  // Strided-shard / S2-Attention (strided_shard_cpu.cpp).
  m.def(
      "strided_shard_forward(Tensor q, Tensor k, Tensor v, int block_size, int local_blocks, int vert_stride, bool is_causal, "
      "bool homo_head, int num_dense_heads, int head_sliding_offset, float scale) -> (Tensor out, Tensor lse)");
  m.def(
      "strided_shard_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? grad_lse, "
      "int block_size, int local_blocks, int vert_stride, bool is_causal, bool homo_head, int num_dense_heads, "
      "int head_sliding_offset, float scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  // Per query head, the S2 policy's tile visits: kinds [H, Q tiles, KV tiles] from for_each_kv_tile and the transposed
  // [H, KV tiles, Q tiles] from for_each_q_tile (0 = not visited, 1 = partial, 2 = full).
  m.def(
      "strided_shard_visits(int num_heads, int num_kv_heads, int seqlen_q, int seqlen_kv, int block_size, int local_blocks, "
      "int vert_stride, bool is_causal, bool homo_head, int num_dense_heads, int head_sliding_offset) -> (Tensor kv_visits, "
      "Tensor q_visits)");
  // Compressed-latent (MLA) decode (latent_cpu.cpp), forward only; num_splits = 0 picks the split-KV count.
  m.def(
      "latent_forward(Tensor q, Tensor kv_cache, Tensor? cache_seqlens, Tensor? block_table, int latent_dim, bool is_causal, "
      "float scale, int num_splits) -> (Tensor out, Tensor lse)");
}

// The extension is imported as natten_like._C; importing it runs the registrations above.
static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "natten_like compiled operators", -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
