// fer_kernels: the one TORCH_LIBRARY block. Every op schema of the library is declared here; the kernels
// live beside their op family (csrc/cpu/<op>.cpp, csrc/cuda/<op>_binding.cpp) and register themselves with
// TORCH_LIBRARY_IMPL. Autograd and fake (meta) kernels are registered once, in Python (fer_kernels/ops/).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing fer_kernels._C loads this library, which runs the static registrations below. The module
// itself is empty; the ops live under torch.ops.fer_kernels.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fer_kernels, m) {
  // Reports how this library was built ("cpu" or "cpu+cuda"), so Python can tell which backends exist.
  m.def("_build_info() -> str");

  // ---- dense_block: DenseNet-BC block, BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 + concatenation ----
  // Forward: returns (out (N, C0+L*k, H, W), h (L, N, 4k, H, W) saved for backward, or empty in eval,
  // per-channel batch mean/var of out (C0+L*k,) and of h (L, 4k), float64; empty in eval). Running buffers
  // are read in eval (norm*_mean/var) and never written: Python updates them from the returned statistics.
  m.def("dense_block(Tensor x, Tensor[] norm1_weight, Tensor[] norm1_bias, Tensor[] norm1_mean, "
        "Tensor[] norm1_var, Tensor[] conv1_weight, Tensor[] norm2_weight, Tensor[] norm2_bias, "
        "Tensor[] norm2_mean, Tensor[] norm2_var, Tensor[] conv2_weight, bool training, float eps) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Backward as an op, so the dispatcher and torch.compile see it: grads of x and of every per-layer list.
  m.def("_dense_block_backward(Tensor grad_out, Tensor out, Tensor h, Tensor xmean, Tensor xvar, "
        "Tensor hmean, Tensor hvar, Tensor[] norm1_weight, Tensor[] norm1_bias, Tensor[] norm1_mean, "
        "Tensor[] norm1_var, Tensor[] conv1_weight, Tensor[] norm2_weight, Tensor[] norm2_bias, "
        "Tensor[] norm2_mean, Tensor[] norm2_var, Tensor[] conv2_weight, bool training, float eps) "
        "-> (Tensor, Tensor[], Tensor[], Tensor[], Tensor[], Tensor[], Tensor[])");
  // ---- end dense_block ----

  // ---- fusion_conv: concatenation + 1x1 convolution + average pool ----
  // (schemas of the fusion_conv family go here)
  // ---- end fusion_conv ----

  // ---- bilinear: outer-product sum pooling, signed sqrt, L2 norm (+ classifier) ----
  // (schemas of the bilinear family go here)
  // ---- end bilinear ----
}

namespace {
std::string build_info() {
#ifdef FER_KERNELS_WITH_CUDA
  return "cpu+cuda";
#else
  return "cpu";
#endif
}
}  // namespace

TORCH_LIBRARY_IMPL(fer_kernels, CompositeExplicitAutograd, m) { m.impl("_build_info", &build_info); }
