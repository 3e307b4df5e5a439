// The CPU kernels' entry points, declared once for every ISA build (namespace fer_kernels::<isa>, each under its
// ISA's code generation, as its definition is), and FER_CPU_IMPL: the function registered with the dispatcher,
// which calls the active ISA's kernel. The op files define the entry points (csrc/cpu/<op>.cpp) and register them
// with FER_REGISTER_CPU_OP.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "cpu/isa.h"

#define FER_CPU_ENTRY_POINTS                                                                                         \
  /* dense_block.cpp */                                                                                              \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dense_block_cpu(               \
      const at::Tensor& x, at::TensorList norm1_weight, at::TensorList norm1_bias, at::TensorList norm1_mean,        \
      at::TensorList norm1_var, at::TensorList conv1_weight, at::TensorList norm2_weight, at::TensorList norm2_bias, \
      at::TensorList norm2_mean, at::TensorList norm2_var, at::TensorList conv2_weight, bool training, double eps);  \
  std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,                 \
             std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>                              \
  dense_block_backward_cpu(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& h,                   \
                           const at::Tensor& xmean, const at::Tensor& xvar, const at::Tensor& hmean,                 \
                           const at::Tensor& hvar, at::TensorList norm1_weight, at::TensorList norm1_bias,           \
                           at::TensorList norm1_mean, at::TensorList norm1_var, at::TensorList conv1_weight,         \
                           at::TensorList norm2_weight, at::TensorList norm2_bias, at::TensorList norm2_mean,        \
                           at::TensorList norm2_var, at::TensorList conv2_weight, bool training, double eps);        \
  /* fusion_conv.cpp */                                                                                              \
  std::tuple<at::Tensor, at::Tensor> fusion_conv_cpu(at::TensorList xs, const at::Tensor& weight,                    \
                                                     const std::optional<at::Tensor>& bias, int64_t pool);           \
  std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> fusion_conv_backward_cpu(                              \
      const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_pooled, const at::Tensor& pooled,            \
      const at::Tensor& weight, at::IntArrayRef channels, int64_t height, int64_t width, int64_t pool,               \
      bool input_grad);                                                                                              \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> transition_cpu(                                                     \
      const at::Tensor& x, const at::Tensor& norm_weight, const at::Tensor& norm_bias,                               \
      const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& var, const at::Tensor& conv_weight,    \
      const std::optional<at::Tensor>& conv_bias, double eps, int64_t pool);                                         \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> transition_backward_cpu(                    \
      const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& norm_weight, const at::Tensor& norm_bias,   \
      const at::Tensor& mean, const at::Tensor& var, const at::Tensor& conv_weight, bool batch_stats, double eps,    \
      int64_t pool);                                                                                                 \
  /* bilinear.cpp */                                                                                                 \
  std::tuple<at::Tensor, at::Tensor> bilinear_pool_cpu(const at::Tensor& a, const at::Tensor& b, double eps,         \
                                                       bool signed_sqrt, bool l2_normalize, bool mean);              \
  std::tuple<at::Tensor, at::Tensor> bilinear_pool_backward_cpu(                                                     \
      const at::Tensor& grad_z, const at::Tensor& a, const at::Tensor& b, const at::Tensor& z,                       \
      const at::Tensor& norms, double eps, bool signed_sqrt, bool l2_normalize, bool mean);                          \
  std::tuple<at::Tensor, at::Tensor> bilinear_classifier_cpu(const at::Tensor& a, const at::Tensor& b,              \
                                                             const at::Tensor& weight,                               \
                                                             const std::optional<at::Tensor>& bias, double eps);     \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilinear_classifier_backward_cpu(                       \
      const at::Tensor& grad_logits, const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,             \
      const std::optional<at::Tensor>& bias, const at::Tensor& norms, const at::Tensor& logits, double eps);

namespace fer_kernels {
namespace scalar {
FER_CPU_ENTRY_POINTS
}
}  // namespace fer_kernels

#if FER_X86
FER_AVX2_BEGIN
namespace fer_kernels {
namespace avx2 {
FER_CPU_ENTRY_POINTS
}
}  // namespace fer_kernels
FER_AVX2_END

FER_AVX512_BEGIN
namespace fer_kernels {
namespace avx512 {
FER_CPU_ENTRY_POINTS
}
}  // namespace fer_kernels
FER_AVX512_END
#endif

namespace fer_kernels {

// CpuDispatch<decltype(&scalar::f), &scalar::f, &avx2::f, &avx512::f>::call(args...) runs the active ISA's f.
template <typename F, F Scalar, F Avx2, F Avx512>
struct CpuDispatch;
template <typename R, typename... A, R (*Scalar)(A...), R (*Avx2)(A...), R (*Avx512)(A...)>
struct CpuDispatch<R (*)(A...), Scalar, Avx2, Avx512> {
  static R call(A... a) {
    switch (active_isa()) {
      case Isa::avx512: return Avx512(a...);
      case Isa::avx2: return Avx2(a...);
      default: return Scalar(a...);
    }
  }
};

}  // namespace fer_kernels

#if FER_X86
#define FER_CPU_IMPL(fn)                                                                                    \
  &::fer_kernels::CpuDispatch<decltype(&::fer_kernels::scalar::fn), &::fer_kernels::scalar::fn,           \
                              &::fer_kernels::avx2::fn, &::fer_kernels::avx512::fn>::call
#else
#define FER_CPU_IMPL(fn) &::fer_kernels::scalar::fn
#endif

// FER_REGISTER_CPU_OP(op): the CPU kernels of op and of its backward op _op_backward (op_cpu and op_backward_cpu,
// CONVENTIONS rule 7) registered with the dispatcher, once: in the scalar build of the op file.
#if defined(FER_ISA_LEVEL) && FER_ISA_LEVEL == 0
#define FER_REGISTER_CPU_OP(op)                                      \
  TORCH_LIBRARY_IMPL(fer_kernels, CPU, m) {                          \
    m.impl(#op, FER_CPU_IMPL(op##_cpu));                             \
    m.impl("_" #op "_backward", FER_CPU_IMPL(op##_backward_cpu));    \
  }
#else
#define FER_REGISTER_CPU_OP(op)
#endif
