// fusion_conv CUDA kernels: average pool of a virtual concatenation, forward and backward.
// Math: pooled = AvgPool_p(cat(xs)) channel by channel (floor semantics); the 1x1 conv is applied to the
// pooled tensor afterwards (W * AvgPool(x) == AvgPool(W * x) exactly), so the concatenation is never
// written. Tiling: one thread per pooled output element, grid-stride; each input is read once.
// Saves nothing for backward: the backward spreads grad_pooled / p^2 over each window.
#include "fusion_conv.h"

namespace fer_kernels {
namespace cuda {
namespace {

// Grid-stride loop over [0, total): every thread's first index and its stride.
__device__ __forceinline__ int64_t first_index() { return blockIdx.x * (int64_t)blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_stride() { return (int64_t)gridDim.x * blockDim.x; }

// (b, c, y, x) of flat index idx of a contiguous (N, C, H, W) tensor.
struct Nchw {
  int64_t b, c, y, x;
};
__device__ __forceinline__ Nchw unravel(int64_t idx, int64_t c, int64_t h, int64_t w) {
  return {idx / (w * h * c), (idx / (w * h)) % c, (idx / w) % h, idx % w};
}

template <typename T>
__global__ void fusion_pool_concat_kernel(FusionInputs<T> xs, T* pooled, int64_t n, int64_t c_total, int64_t h,
                                          int64_t w, int p) {
  const int64_t ho = h / p, wo = w / p;
  const int64_t total = n * c_total * ho * wo;
  const T scale = T(1) / T(p * p);
  for (int64_t idx = first_index(); idx < total; idx += grid_stride()) {
    const Nchw o = unravel(idx, c_total, ho, wo);
    int64_t c = o.c;
    int i = 0;
    while (c >= xs.channels[i]) {
      c -= xs.channels[i];
      ++i;
    }
    const T* src = xs.ptr[i] + ((o.b * xs.channels[i] + c) * h + o.y * p) * w + o.x * p;
    T acc = T(0);
    for (int dy = 0; dy < p; ++dy)
      for (int dx = 0; dx < p; ++dx) acc += src[dy * w + dx];
    pooled[idx] = acc * scale;
  }
}

template <typename T>
__global__ void fusion_pool_concat_backward_kernel(const T* grad_pooled, T* grad_x, int64_t n, int64_t c_in,
                                                   int64_t c_off, int64_t c_total, int64_t h, int64_t w, int p) {
  const int64_t ho = h / p, wo = w / p;
  const int64_t total = n * c_in * h * w;
  const T scale = T(1) / T(p * p);
  for (int64_t idx = first_index(); idx < total; idx += grid_stride()) {
    const Nchw i = unravel(idx, c_in, h, w);
    const int64_t oy = i.y / p, ox = i.x / p;
    T g = T(0);
    if (oy < ho && ox < wo) g = grad_pooled[((i.b * c_total + c_off + i.c) * ho + oy) * wo + ox] * scale;
    grad_x[idx] = g;
  }
}

inline unsigned grid_for(int64_t total, int threads) {
  int64_t blocks = (total + threads - 1) / threads;
  return (unsigned)(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

}  // namespace

template <typename T>
cudaError_t fusion_pool_concat(const FusionInputs<T>& xs, T* pooled, int64_t n, int64_t h, int64_t w, int p,
                               cudaStream_t stream) {
  int64_t c_total = 0;
  for (int i = 0; i < xs.num; ++i) c_total += xs.channels[i];
  const int64_t total = n * c_total * (h / p) * (w / p);
  if (total == 0) return cudaSuccess;
  constexpr int threads = 256;
  fusion_pool_concat_kernel<T><<<grid_for(total, threads), threads, 0, stream>>>(xs, pooled, n, c_total, h, w, p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t fusion_pool_concat_backward(const T* grad_pooled, T* const* grad_xs, const int64_t* channels,
                                        int num, int64_t n, int64_t h, int64_t w, int p, cudaStream_t stream) {
  int64_t c_total = 0;
  for (int i = 0; i < num; ++i) c_total += channels[i];
  int64_t c_off = 0;
  constexpr int threads = 256;
  for (int i = 0; i < num; ++i) {
    const int64_t total = n * channels[i] * h * w;
    if (total > 0) {
      fusion_pool_concat_backward_kernel<T><<<grid_for(total, threads), threads, 0, stream>>>(
          grad_pooled, grad_xs[i], n, channels[i], c_off, c_total, h, w, p);
      cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    c_off += channels[i];
  }
  return cudaSuccess;
}

template cudaError_t fusion_pool_concat<float>(const FusionInputs<float>&, float*, int64_t, int64_t, int64_t, int,
                                               cudaStream_t);
template cudaError_t fusion_pool_concat<double>(const FusionInputs<double>&, double*, int64_t, int64_t, int64_t,
                                                int, cudaStream_t);
template cudaError_t fusion_pool_concat_backward<float>(const float*, float* const*, const int64_t*, int, int64_t,
                                                        int64_t, int64_t, int, cudaStream_t);
template cudaError_t fusion_pool_concat_backward<double>(const double*, double* const*, const int64_t*, int,
                                                         int64_t, int64_t, int64_t, int, cudaStream_t);

}  // namespace cuda
}  // namespace fer_kernels
