// Schemas of every natten_like operator (the torch.library namespace `natten_like`) and the Python module entry point.
// Kernels register their implementations per dispatch key in their own files (gna_cpu.cpp, ...); fake (meta)
// implementations and autograd live in python/natten_like/ops.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(natten_like, m) {
  m.def(
      "gna_forward(Tensor q, Tensor k, Tensor v, Tensor? additional_k, Tensor? additional_v, int[] window, int[] stride, "
      "int[] dilation, bool[] is_causal, float scale, int[] q_tile, int[] kv_tile) -> (Tensor out, Tensor lse)");
  m.def(
      "gna_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? additional_k, Tensor? additional_v, Tensor out, "
      "Tensor lse, Tensor? grad_lse, int[] window, int[] stride, int[] dilation, bool[] is_causal, float scale, int[] q_tile, int[] kv_tile) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_additional_k, Tensor grad_additional_v)");
  // Introspection of the C++ GNA policy for tests and the simulator cross-check (CPU, int64 results).
  m.def(
      "gna_policy_1d(int length, int window, int stride, bool is_causal, int q_tile, int kv_tile) -> (Tensor windows, "
      "Tensor kv_tiles, Tensor full, Tensor q_tiles)");
  m.def(
      "gna_visits(int[] shape, int[] window, int[] stride, int[] dilation, bool[] is_causal, int[] q_tile, int[] kv_tile) "
      "-> Tensor");
}

// The extension is imported as natten_like._C; importing it runs the registrations above.
static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "natten_like compiled operators", -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
