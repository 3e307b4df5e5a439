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
  // The CPU kernels' instruction set (csrc/cpu/isa.h): the active one, those this CPU can run, and a switch for
  // tests ("scalar", "avx2", "avx512" or "auto"; returns the one that was active).
  m.def("_cpu_isa() -> str");
  m.def("_cpu_isas() -> str[]");
  m.def("_set_cpu_isa(str isa) -> str");

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
  // fusion_conv(xs, W, b, p) -> (y, P): y = W * P + b with P = AvgPool_p(cat(xs)) (N, C, H//p, W//p), the pooled
  // concatenation, returned because it is all the backward needs (dW); the concatenation is never written.
  m.def("fusion_conv(Tensor[] xs, Tensor weight, Tensor? bias, int pool) -> (Tensor, Tensor)");
  // -> (grad_xs (one per input, channels as given; empty when input_grad is false), grad_weight, grad_bias).
  m.def(
      "_fusion_conv_backward(Tensor grad_out, Tensor? grad_pooled, Tensor pooled, Tensor weight, int[] channels, "
      "int height, int width, int pool, bool input_grad) -> (Tensor[], Tensor, Tensor)");
  // transition(x, gamma, beta, mean?, var?, W, b, eps, p) -> (y, mean, var): y = W * AvgPool_p(relu(BN(x))) + b.
  // mean/var None: batch statistics (biased var), returned so Python updates the running buffers; given: used
  // as is (running statistics) and returned as copies. Never mutates its inputs.
  m.def(
      "transition(Tensor x, Tensor norm_weight, Tensor norm_bias, Tensor? mean, Tensor? var, Tensor conv_weight, "
      "Tensor? conv_bias, float eps, int pool) -> (Tensor, Tensor, Tensor)");
  // -> (grad_x, grad_norm_weight, grad_norm_bias, grad_conv_weight, grad_conv_bias); batch_stats says whether
  // mean/var were x's batch statistics (their gradient then flows into grad_x).
  m.def(
      "_transition_backward(Tensor grad_out, Tensor x, Tensor norm_weight, Tensor norm_bias, Tensor mean, "
      "Tensor var, Tensor conv_weight, bool batch_stats, float eps, int pool) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
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
