// The GEMM halves of the fusion_conv family, device-agnostic ATen calls (BLAS on CPU, cuBLAS on CUDA) shared by
// the CPU kernels (csrc/cpu/fusion_conv.cpp) and the CUDA binding (csrc/cuda/fusion_conv_binding.cpp); the pooling
// halves are the device kernels. Arguments as checked by fusion_conv_checks.h; pooled and dy contiguous.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fer_kernels {
namespace fusion_conv {

// out (N, C_out, Ho, Wo) = W (C_out, C) @ P (N, C, Ho*Wo) + b.
inline at::Tensor pooled_gemm(const at::Tensor& pooled, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias) {
  const int64_t n = pooled.size(0), c = pooled.size(1), ho = pooled.size(2), wo = pooled.size(3);
  const int64_t c_out = weight.size(0);
  const at::Tensor w2 = weight.reshape({c_out, c});
  const at::Tensor p3 = pooled.view({n, c, ho * wo});
  at::Tensor out;
  if (bias.has_value() && bias->defined()) {
    out = at::baddbmm(bias->view({1, c_out, 1}).expand({n, c_out, ho * wo}), w2.expand({n, c_out, c}), p3);
  } else {
    out = at::matmul(w2, p3);
  }
  return out.view({n, c_out, ho, wo});
}

// dP (N, C, Ho, Wo) = W^T dy (+ grad_pooled, the gradient of the returned P), contiguous.
inline at::Tensor pooled_grad(const at::Tensor& dy, const std::optional<at::Tensor>& grad_pooled,
                              const at::Tensor& weight, int64_t c) {
  const int64_t n = dy.size(0), c_out = dy.size(1), ho = dy.size(2), wo = dy.size(3);
  const at::Tensor wt = weight.reshape({c_out, c}).t().contiguous();  // a transposed view makes bmm copy per batch
  const at::Tensor dy3 = dy.view({n, c_out, ho * wo});
  at::Tensor dp;
  if (grad_pooled.has_value() && grad_pooled->defined()) {
    dp = at::baddbmm(grad_pooled->reshape({n, c, ho * wo}), wt.expand({n, c, c_out}), dy3);
  } else {
    dp = at::matmul(wt, dy3);
  }
  return dp.view({n, c, ho, wo}).contiguous();
}

// dW (C_out, C, 1, 1) = sum_n dy_n P_n^T; db = sum dy.
inline std::tuple<at::Tensor, at::Tensor> weight_grads(const at::Tensor& dy, const at::Tensor& pooled,
                                                       const at::Tensor& weight) {
  const int64_t n = pooled.size(0), c = pooled.size(1), l = pooled.size(2) * pooled.size(3);
  const int64_t c_out = dy.size(1);
  at::Tensor gw = at::bmm(dy.view({n, c_out, l}), pooled.view({n, c, l}).transpose(1, 2)).sum(0);
  return {gw.view(weight.sizes()), dy.sum({0, 2, 3})};
}

}  // namespace fusion_conv
}  // namespace fer_kernels
