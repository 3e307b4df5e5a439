// The fusion_conv family's argument checks (fusion_conv and transition, forward and backward), shared by the CPU
// kernels (csrc/cpu/fusion_conv.cpp) and the CUDA binding (csrc/cuda/fusion_conv_binding.cpp): the shapes the
// kernels index with (checks.h says what belongs here).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "checks.h"

namespace fer_kernels {

// 1 <= pool <= h, w: the kernels divide by pool and hold it in an int.
inline void check_pool(int64_t pool, int64_t h, int64_t w) {
  TORCH_CHECK(pool >= 1 && h >= pool && w >= pool, "pool: expected 1 <= pool <= H, W, got pool=", pool,
              " for spatial size ", h, "x", w);
}

// weight (C_out, c_in, 1, 1) and bias (C_out) or none, of ref's device and dtype (ref_name names ref).
inline void check_conv1x1_weight(const at::Tensor& weight, const at::Tensor& ref, const char* ref_name, int64_t c_in,
                                 const std::optional<at::Tensor>& bias) {
  check_dim(weight, 4, "weight", "(C_out, C_in, 1, 1)");
  check_same(weight, ref, "weight", ref_name);
  TORCH_CHECK(weight.size(1) == c_in && weight.size(2) == 1 && weight.size(3) == 1,
              "weight: expected shape (C_out, ", c_in, ", 1, 1), got ", weight.sizes());
  if (bias.has_value() && bias->defined()) check_like(*bias, ref, {weight.size(0)}, "bias", ref_name, "(C_out,)");
}

// xs: one or more (N, C_i, H, W) on `device`, of one dtype (float32 or float64), N, H and W shared; weight and bias
// as check_conv1x1_weight; pool as check_pool. Returns sum C_i.
inline int64_t check_fusion_conv(at::TensorList xs, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 int64_t pool, at::DeviceType device) {
  TORCH_CHECK(!xs.empty(), "xs: expected at least one input tensor (N, C_i, H, W)");
  check_dim(xs[0], 4, "xs[0]", "(N, C_i, H, W)");
  check_kernel_tensor(xs[0], "xs[0]", device);
  const int64_t n = xs[0].size(0), h = xs[0].size(2), w = xs[0].size(3);
  int64_t c_total = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const std::string name = "xs[" + std::to_string(i) + "]";
    check_dim(xs[i], 4, name.c_str(), "(N, C_i, H, W)");
    check_same(xs[i], xs[0], name.c_str(), "xs[0]");
    TORCH_CHECK(xs[i].size(0) == n && xs[i].size(2) == h && xs[i].size(3) == w, name,
                ": batch and spatial sizes must match xs[0] (N=", n, ", H=", h, ", W=", w, "), got shape ",
                xs[i].sizes());
    c_total += xs[i].size(1);
  }
  check_pool(pool, h, w);
  check_conv1x1_weight(weight, xs[0], "xs[0]", c_total, bias);
  return c_total;
}

// pooled (N, C, height / pool, width / pool) on `device` with C = sum(channels); weight (C_out, C, 1, 1); grad_out
// (N, C_out, Ho, Wo) and grad_pooled (pooled's shape, or none), of pooled's device and dtype.
inline void check_fusion_conv_backward(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_pooled,
                                       const at::Tensor& pooled, const at::Tensor& weight, at::IntArrayRef channels,
                                       int64_t height, int64_t width, int64_t pool, at::DeviceType device) {
  check_dim(pooled, 4, "pooled", "(N, C, Ho, Wo)");
  check_kernel_tensor(pooled, "pooled", device);
  int64_t c_sum = 0;
  for (int64_t c : channels) {
    TORCH_CHECK(c >= 0, "channels: expected sizes >= 0, got ", channels);
    c_sum += c;
  }
  TORCH_CHECK(c_sum == pooled.size(1), "channels: sum ", c_sum, " does not match pooled with ", pooled.size(1),
              " channels");
  check_pool(pool, height, width);
  const int64_t n = pooled.size(0), ho = height / pool, wo = width / pool;
  TORCH_CHECK(pooled.size(2) == ho && pooled.size(3) == wo, "pooled: expected spatial size ", ho, "x", wo,
              " for height=", height, ", width=", width, ", pool=", pool, ", got ", pooled.sizes());
  check_conv1x1_weight(weight, pooled, "pooled", c_sum, std::nullopt);
  check_like(grad_out, pooled, {n, weight.size(0), ho, wo}, "grad_out", "pooled", "(N, C_out, Ho, Wo)");
  if (grad_pooled.has_value() && grad_pooled->defined())
    check_like(*grad_pooled, pooled, pooled.sizes(), "grad_pooled", "pooled", "(N, C, Ho, Wo)");
}

// x (N, C, H, W) on `device`; norm_weight, norm_bias and, both or neither, mean and var (C), of x's device and dtype.
inline void check_transition_norm(const at::Tensor& x, const at::Tensor& norm_weight, const at::Tensor& norm_bias,
                                  const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& var,
                                  at::DeviceType device) {
  check_dim(x, 4, "x", "(N, C, H, W)");
  check_kernel_tensor(x, "x", device);
  const int64_t c = x.size(1);
  auto check_vec = [&](const at::Tensor& t, const char* name) {
    check_same(t, x, name, "x");
    TORCH_CHECK(t.dim() == 1 && t.size(0) == c, name, ": expected shape (", c, ") for x with ", c,
                " channels, got ", t.sizes());
  };
  check_vec(norm_weight, "norm_weight");
  check_vec(norm_bias, "norm_bias");
  TORCH_CHECK(mean.has_value() == var.has_value(),
              "mean and var: pass both (running statistics) or neither (batch statistics)");
  if (mean.has_value()) {
    check_vec(*mean, "mean");
    check_vec(*var, "var");
  }
}

// The transition's arguments as check_transition_norm, conv_weight (C_out, C, 1, 1) and conv_bias as
// check_conv1x1_weight, pool as check_pool; batch statistics need a value per channel.
inline void check_transition(const at::Tensor& x, const at::Tensor& norm_weight, const at::Tensor& norm_bias,
                             const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& var,
                             const at::Tensor& conv_weight, const std::optional<at::Tensor>& conv_bias, int64_t pool,
                             at::DeviceType device) {
  check_transition_norm(x, norm_weight, norm_bias, mean, var, device);
  check_pool(pool, x.size(2), x.size(3));
  check_conv1x1_weight(conv_weight, x, "x", x.size(1), conv_bias);
  TORCH_CHECK(mean.has_value() || x.size(0) > 0, "x: batch statistics need a sample, got shape ", x.sizes());
}

// As check_transition (mean and var given), and grad_out (N, C_out, H / pool, W / pool).
inline void check_transition_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& norm_weight,
                                      const at::Tensor& norm_bias, const at::Tensor& mean, const at::Tensor& var,
                                      const at::Tensor& conv_weight, int64_t pool, at::DeviceType device) {
  check_transition(x, norm_weight, norm_bias, mean, var, conv_weight, std::nullopt, pool, device);
  check_like(grad_out, x, {x.size(0), conv_weight.size(0), x.size(2) / pool, x.size(3) / pool}, "grad_out", "x",
             "(N, C_out, H / pool, W / pool)");
}

}  // namespace fer_kernels
