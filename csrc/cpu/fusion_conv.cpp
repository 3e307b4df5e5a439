// fusion_conv CPU kernels: concatenation + 1x1 convolution + average pool, and the DenseNet transition
// (BN-ReLU prologue), forward and backward.
//
// Math. y = AvgPool_p(W * cat(xs) + b) = W * P + b with P = AvgPool_p(cat(xs)) (N, C, Ho, Wo): the 1x1 conv
// and the pool are both linear, so they commute; pool first, then one GEMM on p^2 fewer pixels. The
// concatenation is never written: each input is pooled straight into its channel slice of P.
// Transition: a = relu(x * s_c + t_c) (s = gamma * invstd, t = beta - mean * s) is not linear, so the ReLU is
// applied per pixel before pooling; P = AvgPool_p(a) and y = W * P + b is still exact.
// Backward: dP = W^T dy (+ the gradient of the returned P), dx_i = dP_i spread over each window / p^2 (zero in
// the rows/columns that floor-mode pooling drops), dW = sum_n dy_n P_n^T, db = sum dy. Transition: dz =
// spread(dP) * [z > 0], dgamma = sum dz * xhat, dbeta = sum dz, and the BatchNorm backward
// dx = s * (dz - mean(dz) - xhat * mean(dz * xhat)) (training) or dx = s * dz (running statistics).
//
// Tiling. Pooling and the BN passes run on whole (n, c) planes (contiguous H x W), parallel over planes or
// channels with at::parallel_for; rows are processed as contiguous vectorisable loops. The two GEMMs use
// ATen's batched matmul on the pooled tensor.
//
// Saved for backward. fusion_conv: P (returned as the op's second output) and W; the inputs are not needed.
// transition: x, the statistics used (mean, var) and the weights; P is recomputed inside the backward's
// reduction pass, which reads x anyway.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "fusion_conv_checks.h"
#include "fusion_conv_gemm.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

FER_ISA_BEGIN
namespace {

using at::Tensor;

// d[ox] = row[ox * p .. ox * p + p) summed, times scale (1 / p^2), for ox < wo: the horizontal half of a pooled row.
template <typename T>
inline void pool_row(const T* __restrict row, T* __restrict d, int64_t wo, int p, T scale) {
  if (p == 1) {
    for (int64_t ox = 0; ox < wo; ++ox) d[ox] = row[ox];
  } else if (p == 2) {
    for (int64_t ox = 0; ox < wo; ++ox) d[ox] = (row[2 * ox] + row[2 * ox + 1]) * scale;
  } else {
    for (int64_t ox = 0; ox < wo; ++ox) {
      T acc = T(0);
      for (int dx = 0; dx < p; ++dx) acc += row[ox * p + dx];
      d[ox] = acc * scale;
    }
  }
}

// dst (Ho x Wo) = average of each p x p window of f(src) (src H x W, row stride w); row: wo * p scratch values.
template <typename T, typename F>
inline void pool_plane_of(const T* __restrict src, T* __restrict dst, int64_t w, int64_t ho, int64_t wo, int p,
                          T* __restrict row, const F& f) {
  const T scale = T(1) / T(p * p);
  const int64_t wp = wo * p;
  for (int64_t oy = 0; oy < ho; ++oy) {
    const T* r = src + oy * p * w;
    for (int64_t x = 0; x < wp; ++x) row[x] = f(r[x]);
    for (int dy = 1; dy < p; ++dy) {
      const T* rr = r + dy * w;
      for (int64_t x = 0; x < wp; ++x) row[x] += f(rr[x]);
    }
    pool_row(row, dst + oy * wo, wo, p, scale);
  }
}

// dst (Ho x Wo) = average of each p x p window of src (H x W, row stride w).
template <typename T>
void pool_plane(const T* __restrict src, T* __restrict dst, int64_t w, int64_t ho, int64_t wo, int p,
                T* __restrict row) {
  if (p == 1) {
    for (int64_t y = 0; y < ho; ++y) std::memcpy(dst + y * wo, src + y * w, sizeof(T) * wo);
    return;
  }
  pool_plane_of(src, dst, w, ho, wo, p, row, [](T v) { return v; });
}

// Same with the per-channel BN-ReLU prologue: dst = AvgPool_p(max(src * s + t, 0)).
template <typename T>
void bn_relu_pool_plane(const T* __restrict src, T* __restrict dst, int64_t w, int64_t ho, int64_t wo, int p,
                        T s, T t, T* __restrict row) {
  pool_plane_of(src, dst, w, ho, wo, p, row, [s, t](T v) { return std::max(v * s + t, T(0)); });
}

// dst (H x W) = src (Ho x Wo) spread over each window / p^2, zero where floor pooling dropped pixels.
template <typename T>
void spread_plane(const T* __restrict src, T* __restrict dst, int64_t h, int64_t w, int64_t ho, int64_t wo,
                  int p) {
  const T scale = T(1) / T(p * p);
  const int64_t wp = wo * p;
  for (int64_t oy = 0; oy < ho; ++oy) {
    const T* s = src + oy * wo;
    T* d0 = dst + oy * p * w;
    if (p == 1) {
      for (int64_t x = 0; x < wo; ++x) d0[x] = s[x];
    } else if (p == 2) {
      for (int64_t ox = 0; ox < wo; ++ox) {
        const T g = s[ox] * scale;
        d0[2 * ox] = g;
        d0[2 * ox + 1] = g;
      }
    } else {
      for (int64_t ox = 0; ox < wo; ++ox) {
        const T g = s[ox] * scale;
        for (int dx = 0; dx < p; ++dx) d0[ox * p + dx] = g;
      }
    }
    for (int64_t x = wp; x < w; ++x) d0[x] = T(0);
    for (int dy = 1; dy < p; ++dy) std::memcpy(d0 + dy * w, d0, sizeof(T) * w);
  }
  for (int64_t y = ho * p; y < h; ++y) std::fill(dst + y * w, dst + (y + 1) * w, T(0));
}

int64_t plane_grain(int64_t plane) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(plane, 1)); }

}  // namespace

using fusion_conv::pooled_gemm;
using fusion_conv::pooled_grad;
using fusion_conv::weight_grads;

// ----------------------------------------------------------------------------------------------------------
// fusion_conv

std::tuple<Tensor, Tensor> fusion_conv_cpu(at::TensorList xs, const Tensor& weight,
                                           const std::optional<Tensor>& bias, int64_t pool) {
  const int64_t c_total = check_fusion_conv(xs, weight, bias, pool, at::kCPU);
  const int64_t n = xs[0].size(0), h = xs[0].size(2), w = xs[0].size(3);
  const int p = static_cast<int>(pool);
  const int64_t ho = h / p, wo = w / p;
  Tensor pooled = at::empty({n, c_total, ho, wo}, xs[0].options());
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "fusion_conv_cpu", [&] {
    int64_t off = 0;
    for (const Tensor& xi : xs) {
      const Tensor x = xi.contiguous();
      const int64_t ci = x.size(1);
      const scalar_t* src = x.const_data_ptr<scalar_t>();
      scalar_t* dst = pooled.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, n * ci, plane_grain(h * w), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> row(wo * p);
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t b = idx / ci, c = idx % ci;
          pool_plane<scalar_t>(src + idx * h * w, dst + ((b * c_total + off + c) * ho) * wo, w, ho, wo, p,
                               row.data());
        }
      });
      off += ci;
    }
  });
  return {pooled_gemm(pooled, weight, bias), pooled};
}

std::tuple<std::vector<Tensor>, Tensor, Tensor> fusion_conv_backward_cpu(
    const Tensor& grad_out, const std::optional<Tensor>& grad_pooled, const Tensor& pooled, const Tensor& weight,
    at::IntArrayRef channels, int64_t height, int64_t width, int64_t pool, bool input_grad) {
  check_fusion_conv_backward(grad_out, grad_pooled, pooled, weight, channels, height, width, pool, at::kCPU);
  const int64_t n = pooled.size(0), c_total = pooled.size(1), ho = pooled.size(2), wo = pooled.size(3);
  const Tensor dy = grad_out.contiguous();
  const Tensor p_c = pooled.contiguous();
  auto [gw, gb] = weight_grads(dy, p_c, weight);
  std::vector<Tensor> gxs;
  if (!input_grad) return {gxs, gw, gb};

  const Tensor dp = pooled_grad(dy, grad_pooled, weight, c_total);  // (N, C, Ho, Wo)
  const int p = static_cast<int>(pool);
  AT_DISPATCH_FLOATING_TYPES(pooled.scalar_type(), "fusion_conv_backward_cpu", [&] {
    int64_t off = 0;
    const scalar_t* src = dp.const_data_ptr<scalar_t>();
    for (int64_t ci : channels) {
      Tensor gx = at::empty({n, ci, height, width}, pooled.options());
      scalar_t* dst = gx.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, n * ci, plane_grain(height * width), [&](int64_t begin, int64_t end) {
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t b = idx / ci, c = idx % ci;
          spread_plane<scalar_t>(src + ((b * c_total + off + c) * ho) * wo, dst + idx * height * width, height,
                                 width, ho, wo, p);
        }
      });
      gxs.push_back(gx);
      off += ci;
    }
  });
  return {gxs, gw, gb};
}

// ----------------------------------------------------------------------------------------------------------
// transition: BN (batch or running statistics) - ReLU - conv1x1 - AvgPool_p

namespace {

// Per-channel biased mean and variance of x (N, C, H, W), accumulated in double around a shift (the
// channel's first value) so that large means do not cancel.
template <typename T>
void batch_stats(const Tensor& x, Tensor& mean, Tensor& var) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  const T* src = x.const_data_ptr<T>();
  T* m = mean.mutable_data_ptr<T>();
  T* v = var.mutable_data_ptr<T>();
  const double count = static_cast<double>(n * hw);
  at::parallel_for(0, c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      const double shift = static_cast<double>(src[ch * hw]);
      double s = 0.0, ss = 0.0;
      for (int64_t b = 0; b < n; ++b) {
        const T* plane = src + (b * c + ch) * hw;
        double ps = 0.0, pss = 0.0;
#pragma omp simd reduction(+ : ps, pss)
        for (int64_t i = 0; i < hw; ++i) {
          const double d = static_cast<double>(plane[i]) - shift;
          ps += d;
          pss += d * d;
        }
        s += ps;
        ss += pss;
      }
      const double mu = s / count;
      m[ch] = static_cast<T>(shift + mu);
      v[ch] = static_cast<T>(std::max(ss / count - mu * mu, 0.0));
    }
  });
}

// A BatchNorm with statistics mean and var, per channel: a = relu(x * scale + shift) and xhat = (x - mean) * invstd,
// scale = gamma * invstd, shift = beta - mean * scale, invstd = 1 / sqrt(var + eps) (each rounded once to T).
template <typename T>
struct BnChannels {
  std::vector<T> scale, shift, mean, invstd;
};
template <typename T>
BnChannels<T> bn_channels(const Tensor& gamma, const Tensor& beta, const Tensor& mean, const Tensor& var, double eps) {
  const int64_t c = gamma.numel();
  const Tensor g = gamma.contiguous(), b = beta.contiguous(), m = mean.contiguous(), v = var.contiguous();
  const T* gp = g.const_data_ptr<T>();
  const T* bp = b.const_data_ptr<T>();
  const T* mp = m.const_data_ptr<T>();
  const T* vp = v.const_data_ptr<T>();
  BnChannels<T> out{std::vector<T>(c), std::vector<T>(c), std::vector<T>(mp, mp + c), std::vector<T>(c)};
  for (int64_t ch = 0; ch < c; ++ch) {
    const double inv = 1.0 / std::sqrt(static_cast<double>(vp[ch]) + eps);
    out.scale[ch] = static_cast<T>(gp[ch] * inv);
    out.shift[ch] = static_cast<T>(bp[ch] - mp[ch] * gp[ch] * inv);
    out.invstd[ch] = static_cast<T>(inv);
  }
  return out;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> transition_cpu(const Tensor& x_in, const Tensor& norm_weight,
                                                  const Tensor& norm_bias, const std::optional<Tensor>& mean_in,
                                                  const std::optional<Tensor>& var_in, const Tensor& conv_weight,
                                                  const std::optional<Tensor>& conv_bias, double eps,
                                                  int64_t pool) {
  check_transition(x_in, norm_weight, norm_bias, mean_in, var_in, conv_weight, conv_bias, pool, at::kCPU);
  const int64_t n = x_in.size(0), c = x_in.size(1), h = x_in.size(2), w = x_in.size(3);
  const bool batch = !mean_in.has_value();
  const Tensor x = x_in.contiguous();
  const int p = static_cast<int>(pool);
  const int64_t ho = h / p, wo = w / p;
  Tensor mean, var;
  if (batch) {
    mean = at::empty({c}, x.options());
    var = at::empty({c}, x.options());
  } else {
    mean = mean_in->contiguous().clone();
    var = var_in->contiguous().clone();
  }
  Tensor pooled = at::empty({n, c, ho, wo}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "transition_cpu", [&] {
    if (batch) batch_stats<scalar_t>(x, mean, var);
    const BnChannels<scalar_t> bn = bn_channels<scalar_t>(norm_weight, norm_bias, mean, var, eps);
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = pooled.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n * c, plane_grain(h * w), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> row(wo * p);
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t ch = idx % c;
        bn_relu_pool_plane<scalar_t>(src + idx * h * w, dst + idx * ho * wo, w, ho, wo, p, bn.scale[ch], bn.shift[ch],
                                     row.data());
      }
    });
  });
  return {pooled_gemm(pooled, conv_weight, conv_bias), mean, var};
}

namespace {

// The per-channel passes of the transition backward (see transition_backward_cpu).
template <typename T>
void transition_backward_kernel(const Tensor& x, const Tensor& dp, const Tensor& norm_weight,
                                const Tensor& norm_bias, const Tensor& mean_in, const Tensor& var_in,
                                Tensor& pooled, Tensor& gx, Tensor& g_gamma, Tensor& g_beta, int p, double eps,
                                bool batch_stats_used) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t ho = h / p, wo = w / p;
  const double count = static_cast<double>(n * h * w);
  const BnChannels<T> bn = bn_channels<T>(norm_weight, norm_bias, mean_in, var_in, eps);
  const T* src = x.const_data_ptr<T>();
  const T* dps = dp.const_data_ptr<T>();
  T* pl = pooled.mutable_data_ptr<T>();
  T* gxp = gx.mutable_data_ptr<T>();
  T* ggp = g_gamma.mutable_data_ptr<T>();
  T* gbp = g_beta.mutable_data_ptr<T>();
  const int64_t hw = h * w;
  // One task per channel, whole planes at a time (long vectorised loops): pass 1 spreads the plane's dP / p^2
  // to full resolution (zero where floor pooling dropped pixels), recomputes a = relu(z) (pooled into P for
  // dW) and reduces sum(dz) and sum(dz * xhat); pass 2 writes dx. The channel's N planes are re-read while
  // still in cache.
  at::parallel_for(0, c, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> gbuf(hw), abuf(hw), row(w);
    T* __restrict gfull = gbuf.data();
    T* __restrict act = abuf.data();
    for (int64_t ch = begin; ch < end; ++ch) {
      const T inv = bn.invstd[ch], mu = bn.mean[ch], s = bn.scale[ch], t = bn.shift[ch];
      double sdz = 0.0, sdzx = 0.0;
      for (int64_t b = 0; b < n; ++b) {
        const T* __restrict plane = src + (b * c + ch) * hw;
        spread_plane<T>(dps + (b * c + ch) * ho * wo, gfull, h, w, ho, wo, p);
        T rs = T(0), rsx = T(0);
#pragma omp simd reduction(+ : rs, rsx)
        for (int64_t i = 0; i < hw; ++i) {
          const T z = plane[i] * s + t;
          const bool on = z > T(0);
          const T dz = on ? gfull[i] : T(0);
          act[i] = on ? z : T(0);
          rs += dz;
          rsx += dz * ((plane[i] - mu) * inv);
        }
        sdz += rs;
        sdzx += rsx;
        pool_plane<T>(act, pl + (b * c + ch) * ho * wo, w, ho, wo, p, row.data());
      }
      ggp[ch] = static_cast<T>(sdzx);
      gbp[ch] = static_cast<T>(sdz);
      const T k0 = batch_stats_used ? static_cast<T>(sdz / count) : T(0);
      const T k1 = batch_stats_used ? static_cast<T>(sdzx / count) : T(0);
      for (int64_t b = 0; b < n; ++b) {
        const T* __restrict plane = src + (b * c + ch) * hw;
        T* __restrict gplane = gxp + (b * c + ch) * hw;
        spread_plane<T>(dps + (b * c + ch) * ho * wo, gfull, h, w, ho, wo, p);
#pragma omp simd
        for (int64_t i = 0; i < hw; ++i) {
          const T z = plane[i] * s + t;
          const T dz = z > T(0) ? gfull[i] : T(0);
          gplane[i] = s * (dz - k0 - (plane[i] - mu) * inv * k1);
        }
      }
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> transition_backward_cpu(
    const Tensor& grad_out, const Tensor& x_in, const Tensor& norm_weight, const Tensor& norm_bias,
    const Tensor& mean_in, const Tensor& var_in, const Tensor& conv_weight, bool batch_stats_used, double eps,
    int64_t pool) {
  check_transition_backward(grad_out, x_in, norm_weight, norm_bias, mean_in, var_in, conv_weight, pool, at::kCPU);
  const int64_t n = x_in.size(0), c = x_in.size(1), h = x_in.size(2), w = x_in.size(3);
  const int p = static_cast<int>(pool);
  const int64_t ho = h / p, wo = w / p;
  const Tensor x = x_in.contiguous();
  const Tensor dy = grad_out.contiguous();
  const Tensor dp = pooled_grad(dy, std::nullopt, conv_weight, c);  // the gradient of the pooled activation
  Tensor pooled = at::empty({n, c, ho, wo}, x.options());
  Tensor gx = at::empty_like(x);
  Tensor g_gamma = at::empty({c}, x.options());
  Tensor g_beta = at::empty({c}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "transition_backward_cpu", [&] {
    transition_backward_kernel<scalar_t>(x, dp, norm_weight, norm_bias, mean_in, var_in, pooled, gx, g_gamma,
                                         g_beta, p, eps, batch_stats_used);
  });
  auto [gw, gb] = weight_grads(dy, pooled, conv_weight);
  return {gx, g_gamma, g_beta, gw, gb};
}

FER_ISA_END

// Why here: each kernel file registers its own CPU kernels (CONVENTIONS rule 1).
FER_REGISTER_CPU_OP(fusion_conv)
FER_REGISTER_CPU_OP(transition)
