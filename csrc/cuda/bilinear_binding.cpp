// Torch binding of the bilinear CUDA kernels (csrc/cuda/bilinear.cu): checks, allocation, stream, dispatch.
// Compiled only when torch has CUDA and nvcc is found (setup.py). float32 and float64; the Triton backend covers
// float16/bfloat16 on GPU.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "bilinear_checks.h"
#include "cuda/bilinear.h"
#include "cuda/check_launch.h"

namespace fer_kernels {
namespace {

std::tuple<at::Tensor, at::Tensor> bilinear_pool_cuda(const at::Tensor& a, const at::Tensor& b, double eps,
                                                      bool signed_sqrt, bool l2_normalize, bool mean) {
  check_bilinear_ab(a, b, at::kCUDA);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), ca = a.size(1), cb = b.size(1), l = a.size(2) * a.size(3);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor z = at::empty({n, ca * cb}, a.options());
  at::Tensor norms = at::empty({n}, a.options());
  at::Tensor ws = at::empty({n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_pool_cuda", [&] {
    check_launch(cuda::bilinear_pool_forward<scalar_t>(ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(),
                                                       z.data_ptr<scalar_t>(), norms.data_ptr<scalar_t>(),
                                                       ws.data_ptr<scalar_t>(), n, ca, cb, l, eps, signed_sqrt,
                                                       l2_normalize, mean, c10::cuda::getCurrentCUDAStream().stream()),
                 "bilinear_pool_cuda");
  });
  return {z, norms};
}

std::tuple<at::Tensor, at::Tensor> bilinear_pool_backward_cuda(const at::Tensor& grad_z, const at::Tensor& a,
                                                               const at::Tensor& b, const at::Tensor& z,
                                                               const at::Tensor& norms, double eps,
                                                               bool signed_sqrt, bool l2_normalize, bool mean) {
  (void)eps;  // |s| = sqrt(|Y| + eps) is read back from z
  check_bilinear_pool_backward(grad_z, a, b, z, norms, at::kCUDA);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), ca = a.size(1), cb = b.size(1), l = a.size(2) * a.size(3);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), gz = grad_z.contiguous(), zc = z.contiguous(),
                   nc = norms.contiguous();
  at::Tensor da = at::empty(a.sizes(), a.options());
  at::Tensor db = at::empty(b.sizes(), b.options());
  at::Tensor ws = at::empty({3 * n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_pool_backward_cuda", [&] {
    check_launch(cuda::bilinear_pool_backward<scalar_t>(gz.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(),
                                                        bc.data_ptr<scalar_t>(), zc.data_ptr<scalar_t>(),
                                                        nc.data_ptr<scalar_t>(), da.data_ptr<scalar_t>(),
                                                        db.data_ptr<scalar_t>(), ws.data_ptr<scalar_t>(), n, ca, cb,
                                                        l, signed_sqrt, l2_normalize, mean,
                                                        c10::cuda::getCurrentCUDAStream().stream()),
                 "bilinear_pool_backward_cuda");
  });
  return {da, db};
}

std::tuple<at::Tensor, at::Tensor> bilinear_classifier_cuda(const at::Tensor& a, const at::Tensor& b,
                                                            const at::Tensor& weight,
                                                            const c10::optional<at::Tensor>& bias, double eps) {
  check_bilinear_classifier(a, b, weight, bias, at::kCUDA);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), ca = a.size(1), cb = b.size(1), l = a.size(2) * a.size(3), k = weight.size(0);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), wc = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bias_c = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor logits = at::empty({n, k}, a.options());
  at::Tensor norms = at::empty({n}, a.options());
  at::Tensor ws = at::empty({n * (k + 1)}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_classifier_cuda", [&] {
    check_launch(cuda::bilinear_classifier_forward<scalar_t>(
                     ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(),
                     has_bias ? bias_c.data_ptr<scalar_t>() : nullptr, logits.data_ptr<scalar_t>(),
                     norms.data_ptr<scalar_t>(), ws.data_ptr<scalar_t>(), n, ca, cb, l, k, eps,
                     c10::cuda::getCurrentCUDAStream().stream()),
                 "bilinear_classifier_cuda");
  });
  return {logits, norms};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilinear_classifier_backward_cuda(
    const at::Tensor& grad_logits, const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& norms, const at::Tensor& logits, double eps) {
  check_bilinear_classifier_backward(grad_logits, a, b, weight, bias, norms, logits, at::kCUDA);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), ca = a.size(1), cb = b.size(1), l = a.size(2) * a.size(3), k = weight.size(0);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), wc = weight.contiguous(), gl = grad_logits.contiguous(),
                   nc = norms.contiguous(), lc = logits.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bias_c = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor da = at::empty(a.sizes(), a.options());
  at::Tensor db = at::empty(b.sizes(), b.options());
  at::Tensor dw = at::empty({k, ca * cb}, a.options());
  at::Tensor dbias = at::empty({k}, a.options());
  at::Tensor ws = at::empty({2 * n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_classifier_backward_cuda", [&] {
    check_launch(cuda::bilinear_classifier_backward<scalar_t>(
                     gl.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(),
                     wc.data_ptr<scalar_t>(), has_bias ? bias_c.data_ptr<scalar_t>() : nullptr,
                     nc.data_ptr<scalar_t>(), lc.data_ptr<scalar_t>(), da.data_ptr<scalar_t>(),
                     db.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>(),
                     ws.data_ptr<scalar_t>(), n, ca, cb, l, k, eps, c10::cuda::getCurrentCUDAStream().stream()),
                 "bilinear_classifier_backward_cuda");
  });
  return {da, db, dw, dbias};
}

}  // namespace
}  // namespace fer_kernels

// Why here: the CUDA kernels of the bilinear ops register beside their binding (CONVENTIONS rule 1).
TORCH_LIBRARY_IMPL(fer_kernels, CUDA, m) {
  m.impl("bilinear_pool", &fer_kernels::bilinear_pool_cuda);
  m.impl("_bilinear_pool_backward", &fer_kernels::bilinear_pool_backward_cuda);
  m.impl("bilinear_classifier", &fer_kernels::bilinear_classifier_cuda);
  m.impl("_bilinear_classifier_backward", &fer_kernels::bilinear_classifier_backward_cuda);
}
