// bilinear CUDA kernels: bilinear pooling and the fused bilinear classifier, forward and backward.
// Math (DESIGN section 4), per sample n, A = a[n] (Ca, L), B = b[n] (Cb, L):
//   Y = A B^T (/ L),  s = sign(Y) sqrt(|Y| + eps),  z = s / max(||s||, 1e-12),  logits = W z + bias.
// Tiling: a block of 256 threads owns a 32 x 32 tile of Y (each thread 4 rows of one column), accumulated over L
// in 32-wide chunks staged in shared memory. Forward: the pool stores s and adds the tile's ||s||^2 with one
// atomic per block, then scales; the classifier never stores s, it adds the tile's ||s||^2 and its K partial dot
// products W_k . s. Backward: a block owns a 32-row slab of dA (or of dB) for one sample and walks the other
// dimension tile by tile, forming dY = ds * sign(Y)^2 * 0.5 / sqrt(|Y| + eps) in shared memory (from the saved z
// for the pool; from recomputed Y tiles for the classifier, with <z, dz> = sum_k dl_k (logits_k - bias_k)) and
// multiplying it into its slab; the classifier's dW is accumulated with atomics. Nothing of size N*Ca*Cb is
// allocated. Saves for backward (in Python): a, b, norms and z (pool) or logits (classifier).
#include "bilinear.h"

#include <type_traits>

namespace fer_kernels {
namespace cuda {
namespace {

constexpr int TILE = 32;     // Y tile is TILE x TILE, L is staged TILE at a time
constexpr int THREADS = 256;  // 32 columns x 8 row groups; each thread owns rows ty, ty+8, ty+16, ty+24
constexpr int RPT = TILE * TILE / THREADS;  // rows per thread (4)

template <typename T>
__device__ __forceinline__ T block_sum(T v, T* red) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // red may still be read from a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  T total = T(0);
  if (threadIdx.x == 0)
    for (int w = 0; w < THREADS / 32; ++w) total += red[w];
  return total;  // valid in thread 0
}

// y[q] = Y[i0 + ty + 8q, j0 + tx] of sample n (0 outside the matrix).
template <typename T>
__device__ void y_tile(const T* __restrict__ a, const T* __restrict__ b, int64_t n, int64_t i0, int64_t j0,
                       int64_t ca, int64_t cb, int64_t l, T (*as)[TILE + 1], T (*bs)[TILE + 1], T y[RPT]) {
  const int tx = threadIdx.x % TILE, ty = threadIdx.x / TILE;
  for (int q = 0; q < RPT; ++q) y[q] = T(0);
  const T* an = a + n * ca * l;
  const T* bn = b + n * cb * l;
  for (int64_t l0 = 0; l0 < l; l0 += TILE) {
    for (int q = 0; q < RPT; ++q) {
      const int r = ty + 8 * q;  // row of the staged tile; tx walks L
      as[r][tx] = (i0 + r < ca && l0 + tx < l) ? an[(i0 + r) * l + l0 + tx] : T(0);
      bs[r][tx] = (j0 + r < cb && l0 + tx < l) ? bn[(j0 + r) * l + l0 + tx] : T(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < TILE; ++k) {
      const T bv = bs[tx][k];
      for (int q = 0; q < RPT; ++q) y[q] += as[ty + 8 * q][k] * bv;
    }
    __syncthreads();
  }
}

template <typename T>
__device__ __forceinline__ T signed_sqrt(T y, T eps, T* grad) {
  const T root = sqrt(fabs(y) + eps);
  *grad = y != T(0) ? T(0.5) / root : T(0);
  return y > T(0) ? root : (y < T(0) ? -root : T(0));
}

template <typename T>
__global__ void pool_forward_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ z,
                                    T* __restrict__ nrm2, int64_t n_total, int64_t ca, int64_t cb, int64_t l,
                                    T scale, T eps, bool signed_sqrt_on) {
  __shared__ T as[TILE][TILE + 1], bs[TILE][TILE + 1], red[THREADS / 32];
  const int64_t j0 = (int64_t)blockIdx.x * TILE;
  const int tx = threadIdx.x % TILE, ty = threadIdx.x / TILE;
  // Block-uniform loops: gridDim.y/z are capped at 65535, batch and row tiles may be larger.
  for (int64_t n = blockIdx.z; n < n_total; n += gridDim.z) {
    for (int64_t i0 = (int64_t)blockIdx.y * TILE; i0 < ca; i0 += (int64_t)gridDim.y * TILE) {
      T y[RPT];
      y_tile(a, b, n, i0, j0, ca, cb, l, as, bs, y);
      T sq = T(0);
      for (int q = 0; q < RPT; ++q) {
        const int64_t i = i0 + ty + 8 * q, j = j0 + tx;
        T g, s = y[q] * scale;
        if (signed_sqrt_on) s = signed_sqrt(s, eps, &g);
        if (i < ca && j < cb) z[n * ca * cb + i * cb + j] = s;
        sq += s * s;  // 0 outside the matrix
      }
      const T total = block_sum(sq, red);
      if (threadIdx.x == 0) atomicAdd(nrm2 + n, total);
    }
  }
}

template <typename T>
__global__ void pool_finish_kernel(T* __restrict__ z, const T* __restrict__ nrm2, T* __restrict__ norms,
                                   int64_t n, int64_t d, bool l2_normalize) {
  const int64_t total = n * d;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t s = e / d;
    const T norm = sqrt(nrm2[s]);
    if (e % d == 0) norms[s] = norm;
    if (l2_normalize) z[e] /= fmax(norm, T(1e-12));
  }
}

// proj[n] = <z_n, dz_n> (0 if l2 is off or the norm is clamped), invd[n] = 1/d (or 1), sfac[n] = d (or 1).
template <typename T>
__global__ void pool_scalars_kernel(const T* __restrict__ grad_z, const T* __restrict__ z,
                                    const T* __restrict__ norms, T* __restrict__ ws, int64_t n, int64_t d,
                                    bool l2_normalize) {
  __shared__ T red[THREADS / 32];
  const int64_t s = blockIdx.x;
  T acc = T(0);
  if (l2_normalize)
    for (int64_t e = threadIdx.x; e < d; e += THREADS) acc += z[s * d + e] * grad_z[s * d + e];
  const T total = block_sum(acc, red);
  if (threadIdx.x == 0) {
    const T norm = norms[s], den = fmax(norm, T(1e-12));
    ws[s] = (l2_normalize && norm >= T(1e-12)) ? total : T(0);
    ws[n + s] = l2_normalize ? T(1) / den : T(1);
    ws[2 * n + s] = l2_normalize ? den : T(1);
  }
}

// Classifier forward: tile ||s||^2 and the K partial dots, one atomic each per block.
template <typename T>
__global__ void classifier_forward_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                          const T* __restrict__ w, T* __restrict__ acc_out, int64_t n_total,
                                          int64_t ca, int64_t cb, int64_t l, int64_t k, T eps) {
  __shared__ T as[TILE][TILE + 1], bs[TILE][TILE + 1], red[THREADS / 32];
  const int64_t j0 = (int64_t)blockIdx.x * TILE;
  const int tx = threadIdx.x % TILE, ty = threadIdx.x / TILE;
  const int64_t D = ca * cb, j = j0 + tx;
  // Block-uniform loops: gridDim.y/z are capped at 65535, batch and row tiles may be larger.
  for (int64_t n = blockIdx.z; n < n_total; n += gridDim.z) {
    for (int64_t i0 = (int64_t)blockIdx.y * TILE; i0 < ca; i0 += (int64_t)gridDim.y * TILE) {
      T y[RPT], s[RPT];
      y_tile(a, b, n, i0, j0, ca, cb, l, as, bs, y);
      T sq = T(0);
      for (int q = 0; q < RPT; ++q) {
        T g;
        s[q] = signed_sqrt(y[q], eps, &g);
        sq += s[q] * s[q];
      }
      T* out = acc_out + n * (k + 1);
      T total = block_sum(sq, red);
      if (threadIdx.x == 0) atomicAdd(out + k, total);
      for (int64_t c = 0; c < k; ++c) {
        T dot = T(0);
        for (int q = 0; q < RPT; ++q) {
          const int64_t i = i0 + ty + 8 * q;
          if (i < ca && j < cb) dot += w[c * D + i * cb + j] * s[q];
        }
        total = block_sum(dot, red);
        if (threadIdx.x == 0) atomicAdd(out + c, total);
      }
    }
  }
}

template <typename T>
__global__ void classifier_finish_kernel(const T* __restrict__ acc, const T* __restrict__ bias, T* __restrict__ logits,
                                         T* __restrict__ norms, int64_t n, int64_t k) {
  const int64_t s = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (s >= n) return;
  const T norm = sqrt(acc[s * (k + 1) + k]), inv = T(1) / fmax(norm, T(1e-12));
  norms[s] = norm;
  for (int64_t c = 0; c < k; ++c) logits[s * k + c] = acc[s * (k + 1) + c] * inv + (bias ? bias[c] : T(0));
}

// invd[n] = 1/d, gfac[n] = G/d (0 if the norm is clamped) with G = sum_k dl_k (logits_k - bias_k).
template <typename T>
__global__ void classifier_scalars_kernel(const T* __restrict__ gl, const T* __restrict__ logits,
                                          const T* __restrict__ bias, const T* __restrict__ norms,
                                          T* __restrict__ ws, int64_t n, int64_t k) {
  const int64_t s = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (s >= n) return;
  T g = T(0);
  for (int64_t c = 0; c < k; ++c) g += gl[s * k + c] * (logits[s * k + c] - (bias ? bias[c] : T(0)));
  const T norm = norms[s], den = fmax(norm, T(1e-12));
  ws[s] = T(1) / den;
  ws[n + s] = norm >= T(1e-12) ? g / den : T(0);
}

template <typename T>
__global__ void bias_grad_kernel(const T* __restrict__ gl, T* __restrict__ grad_bias, int64_t n, int64_t k) {
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= k) return;
  T acc = T(0);
  for (int64_t s = 0; s < n; ++s) acc += gl[s * k + c];
  grad_bias[c] = acc;
}

struct PoolMode {};
struct ClassifierMode {};

// Shared backward: block (slab, n). FOR_B = false: the slab is rows [i0, i0+32) of dA[n], walking j tiles;
// true: rows [j0, j0+32) of dB[n], walking i tiles. dys holds the current dY tile (dys[i][j]).
template <typename T, typename Mode, bool FOR_B>
__global__ void backward_kernel(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ z,
                                const T* __restrict__ gz, const T* __restrict__ w, const T* __restrict__ gl,
                                const T* __restrict__ ws, T* __restrict__ grad_x, T* __restrict__ grad_w, int64_t n_total,
                                int64_t ca, int64_t cb, int64_t l, int64_t k, T eps, T scale, bool signed_sqrt_on) {
  __shared__ T as[TILE][TILE + 1], bs[TILE][TILE + 1], dys[TILE][TILE + 1];
  const int64_t slab0 = (int64_t)blockIdx.x * TILE;
  const int tx = threadIdx.x % TILE, ty = threadIdx.x / TILE;
  const int64_t D = ca * cb, other = FOR_B ? ca : cb;
  // Block-uniform loop: gridDim.y is capped at 65535, the batch may be larger.
  for (int64_t n = blockIdx.y; n < n_total; n += gridDim.y) {
    for (int64_t t0 = 0; t0 < other; t0 += TILE) {
      const int64_t i0 = FOR_B ? t0 : slab0, j0 = FOR_B ? slab0 : t0;
      const int64_t j = j0 + tx;
      T dy[RPT];
      if constexpr (std::is_same<Mode, PoolMode>::value) {
        const T proj = ws[n], invd = ws[n_total + n], sfac = ws[2 * n_total + n];
        for (int q = 0; q < RPT; ++q) {
          const int64_t i = i0 + ty + 8 * q;
          T v = T(0);
          if (i < ca && j < cb) {
            const T zz = z[n * D + i * cb + j];
            v = (gz[n * D + i * cb + j] - zz * proj) * invd;
            if (signed_sqrt_on) {
              const T s = fabs(zz * sfac);
              v = s != T(0) ? v * T(0.5) / s : T(0);
            }
          }
          dy[q] = v * scale;
        }
      } else {
        const T invd = ws[n], gfac = ws[n_total + n];
        T y[RPT];
        y_tile(a, b, n, i0, j0, ca, cb, l, as, bs, y);
        for (int q = 0; q < RPT; ++q) {
          const int64_t i = i0 + ty + 8 * q;
          T g;
          const T zq = signed_sqrt(y[q], eps, &g) * invd;
          T dz = T(0);
          if (i < ca && j < cb) {
            for (int64_t c = 0; c < k; ++c) {
              const T glc = gl[n * k + c];
              dz += glc * w[c * D + i * cb + j];
              if (!FOR_B) atomicAdd(grad_w + c * D + i * cb + j, glc * zq);
            }
          }
          dy[q] = (dz * invd - zq * gfac) * g;
        }
      }
      for (int q = 0; q < RPT; ++q) dys[ty + 8 * q][tx] = dy[q];
      __syncthreads();
      // slab[r, l] += sum_t dY(r, t) * X[t, l]: X = B[n] rows j0.. for dA, A[n] rows i0.. for dB.
      const T* x = FOR_B ? a + n * ca * l : b + n * cb * l;
      const int64_t x0 = FOR_B ? i0 : j0, xrows = FOR_B ? ca : cb, rows = FOR_B ? cb : ca;
      for (int64_t l0 = 0; l0 < l; l0 += TILE) {
        for (int q = 0; q < RPT; ++q) {
          const int r = ty + 8 * q;
          as[r][tx] = (x0 + r < xrows && l0 + tx < l) ? x[(x0 + r) * l + l0 + tx] : T(0);
        }
        __syncthreads();
        for (int q = 0; q < RPT; ++q) {
          const int r = ty + 8 * q;
          T acc = T(0);
#pragma unroll 8
          for (int t = 0; t < TILE; ++t) acc += (FOR_B ? dys[t][r] : dys[r][t]) * as[t][tx];
          const int64_t row = slab0 + r, col = l0 + tx;
          if (row < rows && col < l) grad_x[(n * rows + row) * l + col] += acc;
        }
        __syncthreads();
      }
    }
  }
}

inline unsigned grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return (unsigned)(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

inline unsigned tiles(int64_t x) { return (unsigned)((x + TILE - 1) / TILE); }

// gridDim.y and gridDim.z are limited to 65535; the kernels loop over what a capped dimension leaves out.
inline unsigned cap_yz(int64_t x) { return (unsigned)(x < 65535 ? x : 65535); }

}  // namespace

template <typename T>
cudaError_t bilinear_pool_forward(const T* a, const T* b, T* z, T* norms, T* workspace, int64_t n, int64_t ca,
                                  int64_t cb, int64_t l, double eps, bool signed_sqrt, bool l2_normalize, bool mean,
                                  cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  cudaError_t err = cudaMemsetAsync(workspace, 0, n * sizeof(T), stream);
  if (err != cudaSuccess) return err;
  if (ca * cb == 0) return cudaMemsetAsync(norms, 0, n * sizeof(T), stream);  // z is empty, ||s|| = 0
  const dim3 grid(tiles(cb), cap_yz(tiles(ca)), cap_yz(n));
  pool_forward_kernel<T><<<grid, THREADS, 0, stream>>>(a, b, z, workspace, n, ca, cb, l,
                                                       mean ? T(1) / T(l) : T(1), (T)eps, signed_sqrt);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  pool_finish_kernel<T><<<grid_for(n * ca * cb, 256), 256, 0, stream>>>(z, workspace, norms, n, ca * cb,
                                                                          l2_normalize);
  return cudaGetLastError();
}

template <typename T>
cudaError_t bilinear_pool_backward(const T* grad_z, const T* a, const T* b, const T* z, const T* norms, T* grad_a,
                                   T* grad_b, T* workspace, int64_t n, int64_t ca, int64_t cb, int64_t l,
                                   bool signed_sqrt, bool l2_normalize, bool mean, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  cudaError_t err;
  if ((err = cudaMemsetAsync(grad_a, 0, n * ca * l * sizeof(T), stream)) != cudaSuccess) return err;
  if ((err = cudaMemsetAsync(grad_b, 0, n * cb * l * sizeof(T), stream)) != cudaSuccess) return err;
  pool_scalars_kernel<T><<<(unsigned)n, THREADS, 0, stream>>>(grad_z, z, norms, workspace, n, ca * cb, l2_normalize);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (ca * cb == 0) return cudaSuccess;  // grad_a, grad_b stay 0 (and a 0-block grid would not launch)
  const T scale = mean ? T(1) / T(l) : T(1);
  backward_kernel<T, PoolMode, false><<<dim3(tiles(ca), cap_yz(n)), THREADS, 0, stream>>>(
      a, b, z, grad_z, nullptr, nullptr, workspace, grad_a, nullptr, n, ca, cb, l, 0, T(0), scale, signed_sqrt);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  backward_kernel<T, PoolMode, true><<<dim3(tiles(cb), cap_yz(n)), THREADS, 0, stream>>>(
      a, b, z, grad_z, nullptr, nullptr, workspace, grad_b, nullptr, n, ca, cb, l, 0, T(0), scale, signed_sqrt);
  return cudaGetLastError();
}

template <typename T>
cudaError_t bilinear_classifier_forward(const T* a, const T* b, const T* weight, const T* bias, T* logits, T* norms,
                                        T* workspace, int64_t n, int64_t ca, int64_t cb, int64_t l, int64_t k,
                                        double eps, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  cudaError_t err = cudaMemsetAsync(workspace, 0, n * (k + 1) * sizeof(T), stream);
  if (err != cudaSuccess) return err;
  if (ca * cb > 0) {  // else s is empty: ||s|| = 0 and logits = bias
    const dim3 grid(tiles(cb), cap_yz(tiles(ca)), cap_yz(n));
    classifier_forward_kernel<T><<<grid, THREADS, 0, stream>>>(a, b, weight, workspace, n, ca, cb, l, k, (T)eps);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  classifier_finish_kernel<T><<<grid_for(n, 128), 128, 0, stream>>>(workspace, bias, logits, norms, n, k);
  return cudaGetLastError();
}

template <typename T>
cudaError_t bilinear_classifier_backward(const T* grad_logits, const T* a, const T* b, const T* weight,
                                         const T* bias, const T* norms, const T* logits, T* grad_a, T* grad_b,
                                         T* grad_weight, T* grad_bias, T* workspace, int64_t n, int64_t ca,
                                         int64_t cb, int64_t l, int64_t k, double eps, cudaStream_t stream) {
  cudaError_t err;
  if (k > 0) {
    if ((err = cudaMemsetAsync(grad_weight, 0, k * ca * cb * sizeof(T), stream)) != cudaSuccess) return err;
    bias_grad_kernel<T><<<grid_for(k, 128), 128, 0, stream>>>(grad_logits, grad_bias, n, k);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (n == 0) return cudaSuccess;
  if ((err = cudaMemsetAsync(grad_a, 0, n * ca * l * sizeof(T), stream)) != cudaSuccess) return err;
  if ((err = cudaMemsetAsync(grad_b, 0, n * cb * l * sizeof(T), stream)) != cudaSuccess) return err;
  classifier_scalars_kernel<T><<<grid_for(n, 128), 128, 0, stream>>>(grad_logits, logits, bias, norms, workspace, n, k);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (ca * cb == 0) return cudaSuccess;  // grad_a, grad_b, grad_weight stay 0
  backward_kernel<T, ClassifierMode, false><<<dim3(tiles(ca), cap_yz(n)), THREADS, 0, stream>>>(
      a, b, nullptr, nullptr, weight, grad_logits, workspace, grad_a, grad_weight, n, ca, cb, l, k, (T)eps, T(1),
      true);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  backward_kernel<T, ClassifierMode, true><<<dim3(tiles(cb), cap_yz(n)), THREADS, 0, stream>>>(
      a, b, nullptr, nullptr, weight, grad_logits, workspace, grad_b, nullptr, n, ca, cb, l, k, (T)eps, T(1), true);
  return cudaGetLastError();
}

#define FER_BILINEAR_INSTANTIATE(T)                                                                                 \
  template cudaError_t bilinear_pool_forward<T>(const T*, const T*, T*, T*, T*, int64_t, int64_t, int64_t, int64_t, \
                                                double, bool, bool, bool, cudaStream_t);                           \
  template cudaError_t bilinear_pool_backward<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*,      \
                                                 int64_t, int64_t, int64_t, int64_t, bool, bool, bool,              \
                                                 cudaStream_t);                                                     \
  template cudaError_t bilinear_classifier_forward<T>(const T*, const T*, const T*, const T*, T*, T*, T*, int64_t,  \
                                                      int64_t, int64_t, int64_t, int64_t, double, cudaStream_t);    \
  template cudaError_t bilinear_classifier_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*,  \
                                                       const T*, T*, T*, T*, T*, T*, int64_t, int64_t, int64_t,     \
                                                       int64_t, int64_t, double, cudaStream_t);
FER_BILINEAR_INSTANTIATE(float)
FER_BILINEAR_INSTANTIATE(double)
#undef FER_BILINEAR_INSTANTIATE

}  // namespace cuda
}  // namespace fer_kernels
