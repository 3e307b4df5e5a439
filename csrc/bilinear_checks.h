// The bilinear ops' argument checks, shared by the CPU kernels (csrc/cpu/bilinear.cpp) and the CUDA binding
// (csrc/cuda/bilinear_binding.cpp): the shapes the kernels index with (checks.h says what belongs here).
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "checks.h"

namespace fer_kernels {

// a (N, Ca, H, W) on `device`, float32 or float64; b (N, Cb, H, W) of a's device and dtype.
inline void check_bilinear_ab(const at::Tensor& a, const at::Tensor& b, at::DeviceType device) {
  check_kernel_tensor(a, "a", device);
  check_dim(a, 4, "a", "(N, Ca, H, W)");
  check_dim(b, 4, "b", "(N, Cb, H, W)");
  check_same(b, a, "b", "a");
  TORCH_CHECK(a.size(0) == b.size(0) && a.size(2) == b.size(2) && a.size(3) == b.size(3),
              "b: batch and spatial sizes must match a (N=", a.size(0), ", H=", a.size(2), ", W=", a.size(3),
              "), got shape ", b.sizes());
}

// a, b as above; grad_z and z (N, Ca*Cb), norms (N).
inline void check_bilinear_pool_backward(const at::Tensor& grad_z, const at::Tensor& a, const at::Tensor& b,
                                         const at::Tensor& z, const at::Tensor& norms, at::DeviceType device) {
  check_bilinear_ab(a, b, device);
  const int64_t n = a.size(0), d = a.size(1) * b.size(1);
  check_like(grad_z, a, {n, d}, "grad_z", "a", "(N, Ca*Cb)");
  check_like(z, a, {n, d}, "z", "a", "(N, Ca*Cb)");
  check_like(norms, a, {n}, "norms", "a", "(N,)");
}

// a, b as above; weight (K, Ca*Cb) and bias (K) or none, of a's device and dtype.
inline void check_bilinear_classifier(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, at::DeviceType device) {
  check_bilinear_ab(a, b, device);
  check_dim(weight, 2, "weight", "(K, Ca*Cb)");
  check_same(weight, a, "weight", "a");
  TORCH_CHECK(weight.size(1) == a.size(1) * b.size(1), "weight: expected shape (K, ", a.size(1) * b.size(1),
              ") = (K, Ca*Cb), got ", weight.sizes());
  if (bias.has_value() && bias->defined()) check_like(*bias, a, {weight.size(0)}, "bias", "a", "(K,)");
}

// The classifier's arguments as above; grad_logits and logits (N, K), norms (N).
inline void check_bilinear_classifier_backward(const at::Tensor& grad_logits, const at::Tensor& a,
                                               const at::Tensor& b, const at::Tensor& weight,
                                               const std::optional<at::Tensor>& bias, const at::Tensor& norms,
                                               const at::Tensor& logits, at::DeviceType device) {
  check_bilinear_classifier(a, b, weight, bias, device);
  const int64_t n = a.size(0), k = weight.size(0);
  check_like(grad_logits, a, {n, k}, "grad_logits", "a", "(N, K)");
  check_like(logits, a, {n, k}, "logits", "a", "(N, K)");
  check_like(norms, a, {n}, "norms", "a", "(N,)");
}

}  // namespace fer_kernels
