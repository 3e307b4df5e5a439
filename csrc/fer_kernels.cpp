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
  // (schemas of the dense_block family go here)
  // ---- end dense_block ----

  // ---- fusion_conv: concatenation + 1x1 convolution + average pool ----
  // (schemas of the fusion_conv family go here)
  // ---- end fusion_conv ----

  // ---- bilinear: outer-product sum pooling, signed sqrt, L2 norm (+ classifier) ----
  // Forward ops return the norms ||s|| per sample besides their output: backward needs them, nothing larger.
  m.def("bilinear_pool(Tensor a, Tensor b, float eps, bool signed_sqrt, bool l2_normalize, bool mean) "
        "-> (Tensor, Tensor)");
  m.def("_bilinear_pool_backward(Tensor grad_z, Tensor a, Tensor b, Tensor z, Tensor norms, float eps, "
        "bool signed_sqrt, bool l2_normalize, bool mean) -> (Tensor, Tensor)");
  m.def("bilinear_classifier(Tensor a, Tensor b, Tensor weight, Tensor? bias, float eps) -> (Tensor, Tensor)");
  m.def("_bilinear_classifier_backward(Tensor grad_logits, Tensor a, Tensor b, Tensor weight, Tensor? bias, "
        "Tensor norms, Tensor logits, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
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
