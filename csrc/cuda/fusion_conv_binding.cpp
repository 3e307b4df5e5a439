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

#include "cuda/check_launch.h"
#include "cuda/fusion_conv.h"
#include "fusion_conv_checks.h"
#include "fusion_conv_gemm.h"

namespace fer_kernels {

std::tuple<at::Tensor, at::Tensor> fusion_conv_cuda(at::TensorList xs, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias, int64_t pool) {
  const int64_t c_total = check_fusion_conv(xs, weight, bias, pool, at::kCUDA);
  TORCH_CHECK(static_cast<int64_t>(xs.size()) <= cuda::kMaxFusionInputs, "xs: the CUDA kernels take at most ",
              cuda::kMaxFusionInputs, " inputs, got ", xs.size());
  const int64_t n = xs[0].size(0), h = xs[0].size(2), w = xs[0].size(3);
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
  return {fusion_conv::pooled_gemm(pooled, weight, bias), pooled};
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor> fusion_conv_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_pooled, const at::Tensor& pooled,
    const at::Tensor& weight, at::IntArrayRef channels, int64_t height, int64_t width, int64_t pool,
    bool input_grad) {
  check_fusion_conv_backward(grad_out, grad_pooled, pooled, weight, channels, height, width, pool, at::kCUDA);
  const int64_t n = pooled.size(0), c_total = pooled.size(1);
  const c10::cuda::CUDAGuard guard(pooled.device());
  const at::Tensor dy = grad_out.contiguous();
  const at::Tensor p_c = pooled.contiguous();
  auto [gw, gb] = fusion_conv::weight_grads(dy, p_c, weight);
  std::vector<at::Tensor> gxs;
  if (!input_grad) return {gxs, gw, gb};
  TORCH_CHECK(static_cast<int64_t>(channels.size()) <= cuda::kMaxFusionInputs, "channels: the CUDA kernels take "
              "at most ", cuda::kMaxFusionInputs, " inputs, got ", channels.size());

  const at::Tensor dp = fusion_conv::pooled_grad(dy, grad_pooled, weight, c_total);
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
