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

#include "checks.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

FER_ISA_BEGIN
namespace {

using at::Tensor;

// dst (Ho x Wo) = average of each p x p window of src (H x W, row stride w).
template <typename T>
void pool_plane(const T* __restrict src, T* __restrict dst, int64_t w, int64_t ho, int64_t wo, int p,
                T* __restrict row) {
  const T scale = T(1) / T(p * p);
  const int64_t wp = wo * p;
  if (p == 1) {
    for (int64_t y = 0; y < ho; ++y) std::memcpy(dst + y * wo, src + y * w, sizeof(T) * wo);
    return;
  }
  for (int64_t oy = 0; oy < ho; ++oy) {
    const T* r = src + oy * p * w;
    for (int64_t x = 0; x < wp; ++x) row[x] = r[x];
    for (int dy = 1; dy < p; ++dy) {
      const T* rr = r + dy * w;
      for (int64_t x = 0; x < wp; ++x) row[x] += rr[x];
    }
    T* d = dst + oy * wo;
    if (p == 2) {
      for (int64_t ox = 0; ox < wo; ++ox) d[ox] = (row[2 * ox] + row[2 * ox + 1]) * scale;
    } else {
      for (int64_t ox = 0; ox < wo; ++ox) {
        T acc = T(0);
        for (int dx = 0; dx < p; ++dx) acc += row[ox * p + dx];
        d[ox] = acc * scale;
      }
    }
  }
}

// Same with the per-channel BN-ReLU prologue: dst = AvgPool_p(max(src * s + t, 0)).
template <typename T>
void bn_relu_pool_plane(const T* __restrict src, T* __restrict dst, int64_t w, int64_t ho, int64_t wo, int p,
                        T s, T t, T* __restrict row) {
  const T scale = T(1) / T(p * p);
  const int64_t wp = wo * p;
  for (int64_t oy = 0; oy < ho; ++oy) {
    const T* r = src + oy * p * w;
    for (int64_t x = 0; x < wp; ++x) row[x] = std::max(r[x] * s + t, T(0));
    for (int dy = 1; dy < p; ++dy) {
      const T* rr = r + dy * w;
      for (int64_t x = 0; x < wp; ++x) row[x] += std::max(rr[x] * s + t, T(0));
    }
    T* d = dst + oy * wo;
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

// Input checks and the GEMM halves: device-agnostic, shared with the CUDA binding.
namespace fusion_conv_detail {

// ---- input checks for direct torch.ops calls (the Python wrappers check first, naming user arguments) ----

void check_pool(int64_t pool, int64_t h, int64_t w) {
  TORCH_CHECK(pool >= 1, "pool: expected an int >= 1, got ", pool);
  TORCH_CHECK(h >= pool && w >= pool, "xs: spatial size ", h, "x", w, " is smaller than pool=", pool);
}

void check_weight(const Tensor& weight, const Tensor& ref, int64_t c_in, const std::optional<Tensor>& bias) {
  check_dim(weight, 4, "weight", "(C_out, C_in, 1, 1)");
  check_same(weight, ref, "weight", "xs[0]");
  TORCH_CHECK(weight.size(1) == c_in && weight.size(2) == 1 && weight.size(3) == 1,
              "weight: expected shape (C_out, ", c_in, ", 1, 1), got ", weight.sizes());
  if (bias.has_value()) {
    check_dim(*bias, 1, "bias", "(C_out,)");
    check_same(*bias, ref, "bias", "xs[0]");
    TORCH_CHECK(bias->size(0) == weight.size(0), "bias: expected shape (", weight.size(0), "), got ",
                bias->sizes());
  }
}

// out (N, C_out, Ho, Wo) = W (C_out, C) @ P (N, C, L) + b.
Tensor pooled_gemm(const Tensor& pooled, const Tensor& weight, const std::optional<Tensor>& bias) {
  const int64_t n = pooled.size(0), c = pooled.size(1), ho = pooled.size(2), wo = pooled.size(3);
  const int64_t c_out = weight.size(0);
  const Tensor w2 = weight.reshape({c_out, c});
  const Tensor p3 = pooled.view({n, c, ho * wo});
  Tensor out;
  if (bias.has_value()) {
    out = at::baddbmm(bias->view({1, c_out, 1}).expand({n, c_out, ho * wo}), w2.expand({n, c_out, c}), p3);
  } else {
    out = at::matmul(w2, p3);
  }
  return out.view({n, c_out, ho, wo});
}

// dW (C_out, C, 1, 1) = sum_n dy_n P_n^T; db = sum dy.
std::tuple<Tensor, Tensor> weight_grads(const Tensor& dy, const Tensor& pooled, const Tensor& weight) {
  const int64_t n = pooled.size(0), c = pooled.size(1), l = pooled.size(2) * pooled.size(3);
  const int64_t c_out = dy.size(1);
  Tensor gw = at::bmm(dy.view({n, c_out, l}), pooled.view({n, c, l}).transpose(1, 2)).sum(0);
  return {gw.view(weight.sizes()), dy.sum({0, 2, 3})};
}

}  // namespace fusion_conv_detail

using fusion_conv_detail::check_pool;
using fusion_conv_detail::check_weight;
using fusion_conv_detail::pooled_gemm;
using fusion_conv_detail::weight_grads;

// ----------------------------------------------------------------------------------------------------------
// fusion_conv

std::tuple<Tensor, Tensor> fusion_conv_cpu(at::TensorList xs, const Tensor& weight,
                                           const std::optional<Tensor>& bias, int64_t pool) {
  TORCH_CHECK(!xs.empty(), "xs: expected at least one input tensor (N, C_i, H, W)");
  check_dim(xs[0], 4, "xs[0]", "(N, C_i, H, W)");
  check_float(xs[0], "xs[0]");
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
  check_weight(weight, xs[0], c_total, bias);
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
  check_dim(grad_out, 4, "grad_out", "(N, C_out, Ho, Wo)");
  check_dim(pooled, 4, "pooled", "(N, C, Ho, Wo)");
  check_float(pooled, "pooled");
  check_same(grad_out, pooled, "grad_out", "pooled");
  const int64_t n = pooled.size(0), c_total = pooled.size(1), ho = pooled.size(2), wo = pooled.size(3);
  const int64_t c_out = weight.size(0);
  int64_t c_sum = 0;
  for (int64_t c : channels) c_sum += c;
  TORCH_CHECK(c_sum == c_total, "channels: sum ", c_sum, " does not match pooled with ", c_total, " channels");
  check_pool(pool, height, width);
  TORCH_CHECK(height / pool == ho && width / pool == wo, "pooled: expected spatial size ", height / pool, "x",
              width / pool, " for height=", height, ", width=", width, ", pool=", pool, ", got ", pooled.sizes());
  check_weight(weight, pooled, c_total, std::nullopt);
  TORCH_CHECK(grad_out.size(0) == n && grad_out.size(1) == c_out && grad_out.size(2) == ho &&
                  grad_out.size(3) == wo,
              "grad_out: expected shape (", n, ", ", c_out, ", ", ho, ", ", wo, "), got ", grad_out.sizes());
  const Tensor dy = grad_out.contiguous();
  const Tensor p_c = pooled.contiguous();
  auto [gw, gb] = weight_grads(dy, p_c, weight);
  std::vector<Tensor> gxs;
  if (!input_grad) return {gxs, gw, gb};

  const Tensor wt = weight.reshape({c_out, c_total}).t().contiguous();  // (a transposed view makes bmm copy per batch)
  Tensor dp;  // (N, C, Ho, Wo) = W^T dy (+ grad of the returned pooled tensor)
  if (grad_pooled.has_value() && grad_pooled->defined()) {
    TORCH_CHECK(grad_pooled->sizes() == pooled.sizes(), "grad_pooled: expected shape ", pooled.sizes(), ", got ",
                grad_pooled->sizes());
    dp = at::baddbmm(grad_pooled->reshape({n, c_total, ho * wo}), wt.expand({n, c_total, c_out}),
                     dy.view({n, c_out, ho * wo}));
  } else {
    dp = at::matmul(wt, dy.view({n, c_out, ho * wo}));
  }
  dp = dp.contiguous();
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

void check_transition_params(const Tensor& x, const Tensor& norm_weight, const Tensor& norm_bias,
                             const std::optional<Tensor>& mean, const std::optional<Tensor>& var) {
  check_dim(x, 4, "x", "(N, C, H, W)");
  check_float(x, "x");
  const int64_t c = x.size(1);
  auto check_vec = [&](const Tensor& t, const char* name) {
    check_dim(t, 1, name, "(C,)");
    check_same(t, x, name, "x");
    TORCH_CHECK(t.size(0) == c, name, ": expected shape (", c, ") for x with ", c, " channels, got ", t.sizes());
  };
  check_vec(norm_weight, "norm_weight");
  check_vec(norm_bias, "norm_bias");
  TORCH_CHECK(mean.has_value() == var.has_value(), "mean and var: pass both (running statistics) or neither "
              "(batch statistics)");
  if (mean.has_value()) {
    check_vec(*mean, "mean");
    check_vec(*var, "var");
  }
}

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

}  // namespace

std::tuple<Tensor, Tensor, Tensor> transition_cpu(const Tensor& x_in, const Tensor& norm_weight,
                                                  const Tensor& norm_bias, const std::optional<Tensor>& mean_in,
                                                  const std::optional<Tensor>& var_in, const Tensor& conv_weight,
                                                  const std::optional<Tensor>& conv_bias, double eps,
                                                  int64_t pool) {
  check_transition_params(x_in, norm_weight, norm_bias, mean_in, var_in);
  const int64_t n = x_in.size(0), c = x_in.size(1), h = x_in.size(2), w = x_in.size(3);
  check_pool(pool, h, w);
  check_weight(conv_weight, x_in, c, conv_bias);
  const bool batch = !mean_in.has_value();
  TORCH_CHECK(!batch || n * h * w > 1, "x: expected more than 1 value per channel when using batch statistics, "
              "got shape ", x_in.sizes());
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
    std::vector<scalar_t> scale(c), shift(c);
    const Tensor g = norm_weight.contiguous(), bta = norm_bias.contiguous();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* bp = bta.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    const scalar_t* vp = var.const_data_ptr<scalar_t>();
    for (int64_t ch = 0; ch < c; ++ch) {
      const double inv = 1.0 / std::sqrt(static_cast<double>(vp[ch]) + eps);
      scale[ch] = static_cast<scalar_t>(gp[ch] * inv);
      shift[ch] = static_cast<scalar_t>(bp[ch] - mp[ch] * gp[ch] * inv);
    }
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = pooled.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n * c, plane_grain(h * w), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> row(wo * p);
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t ch = idx % c;
        bn_relu_pool_plane<scalar_t>(src + idx * h * w, dst + idx * ho * wo, w, ho, wo, p, scale[ch], shift[ch],
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
  const Tensor g = norm_weight.contiguous(), bta = norm_bias.contiguous();
  const Tensor mn = mean_in.contiguous(), vr = var_in.contiguous();
  const T* gp = g.const_data_ptr<T>();
  const T* bp = bta.const_data_ptr<T>();
  const T* mp = mn.const_data_ptr<T>();
  const T* vp = vr.const_data_ptr<T>();
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
      const double inv_d = 1.0 / std::sqrt(static_cast<double>(vp[ch]) + eps);
      const T inv = static_cast<T>(inv_d);
      const T mu = mp[ch];
      const T s = static_cast<T>(gp[ch] * inv_d);
      const T t = static_cast<T>(bp[ch] - mp[ch] * gp[ch] * inv_d);
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
  check_transition_params(x_in, norm_weight, norm_bias, mean_in, var_in);
  const int64_t n = x_in.size(0), c = x_in.size(1), h = x_in.size(2), w = x_in.size(3);
  check_pool(pool, h, w);
  check_weight(conv_weight, x_in, c, std::nullopt);
  const int p = static_cast<int>(pool);
  const int64_t ho = h / p, wo = w / p, c_out = conv_weight.size(0);
  check_dim(grad_out, 4, "grad_out", "(N, C_out, Ho, Wo)");
  check_same(grad_out, x_in, "grad_out", "x");
  TORCH_CHECK(grad_out.size(0) == n && grad_out.size(1) == c_out && grad_out.size(2) == ho &&
                  grad_out.size(3) == wo,
              "grad_out: expected shape (", n, ", ", c_out, ", ", ho, ", ", wo, "), got ", grad_out.sizes());
  const Tensor x = x_in.contiguous();
  const Tensor dy = grad_out.contiguous();
  // dP (N, C, Ho, Wo) = W^T dy: the gradient of the pooled activation.
  const Tensor dp = at::matmul(conv_weight.reshape({c_out, c}).t().contiguous(), dy.view({n, c_out, ho * wo})).contiguous();
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

// Why: the CPU kernels of the fusion_conv family; autograd and fake kernels are registered in Python.
#if FER_ISA_LEVEL == 0  // registered once; FER_CPU_IMPL calls the active ISA's kernel
TORCH_LIBRARY_IMPL(fer_kernels, CPU, m) {
  m.impl("fusion_conv", FER_CPU_IMPL(fusion_conv_cpu));
  m.impl("_fusion_conv_backward", FER_CPU_IMPL(fusion_conv_backward_cpu));
  m.impl("transition", FER_CPU_IMPL(transition_cpu));
  m.impl("_transition_backward", FER_CPU_IMPL(transition_backward_cpu));
}
#endif
