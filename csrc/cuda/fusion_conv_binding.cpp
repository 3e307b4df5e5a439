// fusion_conv CUDA binding: adapts torch tensors to the pure-CUDA pool kernels of fusion_conv.cu.
//
// Math: y = W * P + b with P = AvgPool_p(cat(xs)) written by fusion_pool_concat (the concatenation is never
// materialised); the 1x1 conv is a batched GEMM on the pooled pixels (cuBLAS through at::baddbmm / matmul).
// Backward: dP = W^T dy (+ the gradient of the returned P), dx_i = spread(dP_i) / p^2 by
// fusion_pool_concat_backward; dW = sum_n dy_n P_n^T, db = sum dy.
// Saved for backward (by the Python autograd formula): P and W, as on CPU.
// dtypes: float32 and float64 (the .cu kernels are instantiated for those); at most kMaxFusionInputs inputs.
// Compiled only where torch has CUDA and nvcc is found (setup.py); the transition has no CUDA kernel here
// (its GPU path is Triton).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "checks.h"
#include "cuda/fusion_conv.h"

namespace fer_kernels {

// Shared with the CPU kernels (csrc/cpu/fusion_conv.cpp): input checks and the device-agnostic GEMM halves.
namespace fusion_conv_detail {
void check_pool(int64_t pool, int64_t h, int64_t w);
void check_weight(const at::Tensor& weight, const at::Tensor& ref, int64_t c_in,
                  const std::optional<at::Tensor>& bias);
at::Tensor pooled_gemm(const at::Tensor& pooled, const at::Tensor& weight, const std::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor> weight_grads(const at::Tensor& dy, const at::Tensor& pooled,
                                                const at::Tensor& weight);
}  // namespace fusion_conv_detail

namespace {

void check_cuda_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              ": the CUDA kernels take float32 or float64, got ", t.scalar_type(),
              " (use the triton backend for float16/bfloat16)");
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fusion_conv_cuda(at::TensorList xs, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias, int64_t pool) {
  TORCH_CHECK(!xs.empty(), "xs: expected at least one input tensor (N, C_i, H, W)");
  TORCH_CHECK(static_cast<int64_t>(xs.size()) <= cuda::kMaxFusionInputs, "xs: the CUDA kernels take at most ",
              cuda::kMaxFusionInputs, " inputs, got ", xs.size());
  check_dim(xs[0], 4, "xs[0]", "(N, C_i, H, W)");
  check_cuda_float(xs[0], "xs[0]");
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
  fusion_conv_detail::check_pool(pool, h, w);
  fusion_conv_detail::check_weight(weight, xs[0], c_total, bias);
  const c10::cuda::CUDAGuard guard(xs[0].device());
  std::vector<at::Tensor> xc;
  xc.reserve(xs.size());
  for (const at::Tensor& x : xs) xc.push_back(x.contiguous());
  const int p = static_cast<int>(pool);
  at::Tensor pooled = at::empty({n, c_total, h / p, w / p}, xs[0].options());
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "fusion_conv_cuda", [&] {
    cuda::FusionInputs<scalar_t> in{};
    in.num = static_cast<int>(xc.size());
    for (size_t i = 0; i < xc.size(); ++i) {
      in.ptr[i] = xc[i].const_data_ptr<scalar_t>();
      in.channels[i] = xc[i].size(1);
    }
    check_launch(cuda::fusion_pool_concat<scalar_t>(in, pooled.mutable_data_ptr<scalar_t>(), n, h, w, p,
                                                    c10::cuda::getCurrentCUDAStream().stream()),
                 "fusion_pool_concat");
  });
  return {fusion_conv_detail::pooled_gemm(pooled, weight, bias), pooled};
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> fusion_conv_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_pooled, const at::Tensor& pooled,
    const at::Tensor& weight, at::IntArrayRef channels, int64_t height, int64_t width, int64_t pool,
    bool input_grad) {
  check_dim(grad_out, 4, "grad_out", "(N, C_out, Ho, Wo)");
  check_dim(pooled, 4, "pooled", "(N, C, Ho, Wo)");
  check_cuda_float(pooled, "pooled");
  check_same(grad_out, pooled, "grad_out", "pooled");
  const int64_t n = pooled.size(0), c_total = pooled.size(1), ho = pooled.size(2), wo = pooled.size(3);
  const int64_t c_out = weight.size(0);
  int64_t c_sum = 0;
  for (int64_t c : channels) c_sum += c;
  TORCH_CHECK(c_sum == c_total, "channels: sum ", c_sum, " does not match pooled with ", c_total, " channels");
  fusion_conv_detail::check_pool(pool, height, width);
  TORCH_CHECK(height / pool == ho && width / pool == wo, "pooled: expected spatial size ", height / pool, "x",
              width / pool, " for height=", height, ", width=", width, ", pool=", pool, ", got ", pooled.sizes());
  fusion_conv_detail::check_weight(weight, pooled, c_total, std::nullopt);
  TORCH_CHECK(grad_out.size(0) == n && grad_out.size(1) == c_out && grad_out.size(2) == ho &&
                  grad_out.size(3) == wo,
              "grad_out: expected shape (", n, ", ", c_out, ", ", ho, ", ", wo, "), got ", grad_out.sizes());
  const c10::cuda::CUDAGuard guard(pooled.device());
  const at::Tensor dy = grad_out.contiguous();
  const at::Tensor p_c = pooled.contiguous();
  auto [gw, gb] = fusion_conv_detail::weight_grads(dy, p_c, weight);
  std::vector<at::Tensor> gxs;
  if (!input_grad) return {gxs, gw, gb};
  TORCH_CHECK(static_cast<int64_t>(channels.size()) <= cuda::kMaxFusionInputs, "channels: the CUDA kernels take "
              "at most ", cuda::kMaxFusionInputs, " inputs, got ", channels.size());

  const at::Tensor wt = weight.reshape({c_out, c_total}).t().contiguous();
  at::Tensor dp;
  if (grad_pooled.has_value() && grad_pooled->defined()) {
    TORCH_CHECK(grad_pooled->sizes() == pooled.sizes(), "grad_pooled: expected shape ", pooled.sizes(), ", got ",
                grad_pooled->sizes());
    dp = at::baddbmm(grad_pooled->reshape({n, c_total, ho * wo}), wt.expand({n, c_total, c_out}),
                     dy.view({n, c_out, ho * wo}));
  } else {
    dp = at::matmul(wt, dy.view({n, c_out, ho * wo}));
  }
  dp = dp.contiguous();
  for (int64_t ci : channels) gxs.push_back(at::empty({n, ci, height, width}, pooled.options()));
  AT_DISPATCH_FLOATING_TYPES(pooled.scalar_type(), "fusion_conv_backward_cuda", [&] {
    std::vector<scalar_t*> ptrs;
    for (at::Tensor& g : gxs) ptrs.push_back(g.mutable_data_ptr<scalar_t>());
    check_launch(cuda::fusion_pool_concat_backward<scalar_t>(dp.const_data_ptr<scalar_t>(), ptrs.data(),
                                                             channels.data(), static_cast<int>(channels.size()),
                                                             n, height, width, static_cast<int>(pool),
                                                             c10::cuda::getCurrentCUDAStream().stream()),
                 "fusion_pool_concat_backward");
  });
  return {gxs, gw, gb};
}

}  // namespace fer_kernels

// Why: the CUDA kernels of fusion_conv; the autograd and fake kernels registered in Python serve them too.
TORCH_LIBRARY_IMPL(fer_kernels, CUDA, m) {
  m.impl("fusion_conv", &fer_kernels::fusion_conv_cuda);
  m.impl("_fusion_conv_backward", &fer_kernels::fusion_conv_backward_cuda);
}
