// dense_block_cpu: a DenseNet-BC dense block, BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 + concatenation, fused.
//
// Math (DESIGN section 4). Layer l reads the first C_l = C0 + l*k channels of one preallocated block buffer
// out (N, C0 + L*k, H*W) and writes its k new channels straight into the next slice:
//   a = relu(s1 * x + t1)   (s1 = g1 * invstd, t1 = b1 - mean * s1, per input channel)
//   h = W1 a                (1x1, B = bn_size*k out)
//   c = relu(s2 * h + t2)
//   y = W2 * c              (3x3, pad 1)
// Training: mean/var of every buffer channel are computed once, in the epilogue of the kernel that writes
// the channel (sums of 256-value chunks, added up in double), and reused by every later layer; h's statistics
// likewise.
// Eval: running statistics give s, t; the 1x1 and 3x3 run back to back per image, h never leaves a
// per-thread (B, H*W) scratch.
//
// Tiling. 1x1: per (image, pixel tile of <= 512 px) the BN-ReLU prologue packs a (C, P) tile in cache,
// then h_tile = W1 (B, C) @ a_tile: float32 by conv1x1_direct (6 output channels x 2 vectors of pixels in
// registers, h's statistics summed in its epilogue), float64 by one GEMM (MKL sgemm/dgemm); the backward's
// data gradient W1^T dh runs the same kernel with the ReLU mask and the buffer-gradient update in its
// epilogue, the weight gradient dh a^T is a GEMM. 3x3: per (image,
// tile of R rows, R*W ~ 384 px) the prologue normalises the tile's rows of h plus one halo row each side into
// a zero-bordered (B, R+2, W+2) scratch; in it the tap (dy, dx) of every output pixel is a fixed shift, so the
// convolution needs no im2col. float32 runs it as a register-blocked direct convolution
// (conv3x3_direct: 6 output channels x 2 vectors of pixels per step); float64 as 9 tap GEMMs
// on shifted views. The backward's data gradient is the same kernel with flipped taps, its weight gradient
// conv3x3_wgrad (4 output channels x 3 taps per step). (image, tile) items are handed out dynamically to the
// intra-op threads.
//
// Saved for backward: the block buffer (the output itself), h (L, N, B, H*W) in training (in eval h is
// recomputed in backward), and per-channel mean/var. Backward walks the layers in reverse, recomputing c
// and a tile by tile from h / the buffer and the cached statistics:
//   dW2 += gy (x) c (correlation over the tile);  dc = conv(gy, flipped W2);  dz2 = dc * [c > 0]
//   dh = s2 * (dz2 - sum(dz2)/M - hhat * sum(dz2*hhat)/M)   (train; eval: s2 * dz2)
//   dW1 += dh @ a^T;  da = W1^T @ dh;  dz1 = da * [a > 0];
//   dx = A1 * dz1 - A1*B1 - A1*C1 * (x - mean)   (A1 = g1*invstd, B1 = mean(dz1), C1 = invstd*mean(dz1*xhat)).
// dx is added into the gradient of the shared buffer, so the gradients of a channel accumulate over every later
// layer. A1 * dz1 is added tile by tile in the conv1 backward; B1 and C1 are known only after it, and they
// multiply per-channel constants (1 and x - mean, the channel's mean being shared by every layer), so they are
// summed per channel, alpha[c] -= A1*B1 and beta[c] -= A1*C1, and applied once when the channel's gradient
// is complete: before the conv2 backward of the layer that wrote the channel, and for x at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

extern "C" {
// MKL / reference BLAS (exported by libtorch_cpu where torch is built with MKL). Weak: if absent we fall
// back to at::mm on the same tiles.
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
            const int*, const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

FER_ISA_BEGIN
namespace {

constexpr idx kTile1x1 = 512;  // pixels per 1x1 tile
constexpr idx kTile3x3 = 384;  // target pixels per 3x3 row tile

// Row-major C[M, N] (ldc) = op(A)[M, K] @ op(B)[K, N] + beta * C.
template <typename T>
void gemm_rm(bool ta, bool tb, idx M, idx N, idx K, const T* A, idx lda, const T* B, idx ldb, T beta, T* C,
             idx ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (idx i = 0; i < M; ++i)
      for (idx j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  // Column-major view: C^T (N, M) = op(B)^T (N, K) @ op(A)^T (K, M).
  const char opa = tb ? 'T' : 'N', opb = ta ? 'T' : 'N';
  const int m = (int)N, n = (int)M, k = (int)K, la = (int)ldb, lb = (int)lda, lc = (int)ldc;
  const T one = 1;
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_) {
      sgemm_(&opa, &opb, &m, &n, &k, &one, B, &la, A, &lb, &beta, C, &lc);
      return;
    }
  } else {
    if (dgemm_) {
      dgemm_(&opa, &opb, &m, &n, &k, &one, B, &la, A, &lb, &beta, C, &lc);
      return;
    }
  }
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor a = ta ? at::from_blob(const_cast<T*>(A), {K, M}, {lda, 1}, opts).t()
                    : at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
  at::Tensor b = tb ? at::from_blob(const_cast<T*>(B), {N, K}, {ldb, 1}, opts).t()
                    : at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, opts);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == T(0)) c.copy_(at::mm(a, b)); else c.mul_(beta).add_(at::mm(a, b));
}

// The register tile of the direct 1x1 and 3x3 kernels: kRows output channels x kStrip pixels (two vectors).
constexpr int kRows = FER_ISA_LEVEL == 2 ? 12 : 6;  // AVX-512 has 32 vector registers
using Block = Tile<float, kRows>;
constexpr idx kStrip = Block::cols;
constexpr int kLanes = Simd<float>::n;
inline idx round_strip(idx q) { return round_up(q, kStrip); }

// The direct kernels (3x3 and 1x1) serve float32; float64 uses BLAS GEMMs.
template <typename T>
constexpr bool use_direct() {
  return std::is_same_v<T, float>;
}

// dst (C, ld) = relu(scale * src[:, p0:p0+P] + shift), columns [P, ld) zero; src channel stride cs.
template <typename T>
inline void pack_bnrelu(const T* src, idx cs, idx C, idx p0, idx P, const T* scale, const T* shift, T* dst,
                        idx ld) {
  for (idx c = 0; c < C; ++c) {
    const T s = scale[c], t = shift[c];
    const T* in = src + c * cs + p0;
    T* out = dst + c * ld;
#pragma omp simd
    for (idx p = 0; p < P; ++p) out[p] = std::max(s * in[p] + t, T(0));
    for (idx p = P; p < ld; ++p) out[p] = T(0);
  }
}

// Accumulates sum and sum of squares of rows (C, P) (stride ld) into acc[2c], acc[2c+1]. Chunks of 256 are
// summed in T (so the loop vectorises: a float -> double conversion per element does not) and each chunk's
// sums are added in double.
template <typename T>
inline void accumulate_stats(const T* src, idx ld, idx C, idx P, double* acc) {
  for (idx c = 0; c < C; ++c) {
    const T* in = src + c * ld;
    double s = 0, ss = 0;
    for (idx p0 = 0; p0 < P; p0 += 256) {
      const idx pe = std::min(P, p0 + 256);
      T cs = 0, css = 0;
#pragma omp simd reduction(+ : cs, css)
      for (idx p = p0; p < pe; ++p) {
        const T v = in[p];
        cs += v;
        css += v * v;
      }
      s += (double)cs;
      ss += (double)css;
    }
    acc[2 * c] += s;
    acc[2 * c + 1] += ss;
  }
}

// Leading dimension of a packed 1x1 tile: whole pixel strips, and an odd number of 64-byte lines, so that a
// strip's rows spread over the L1 sets (a power-of-two stride maps them all to two).
inline idx tile1x1_ld(idx HW) {
  const idx ld = round_up(round_strip(std::min(kTile1x1, HW)), 16);
  return (ld / 16) % 2 ? ld : ld + 16;
}

// ---- the 1x1 convolution on a packed tile ----
// out[o][q] = sum_c w[o][c] * in[c][q] for q in [0, P); in (Cin, ld) has zero columns in [P, round_strip(P)).
// float32: conv1x1_direct, kRows output channels x kStrip pixels in registers (a Block, one broadcast weight
// feeding two FMAs, as conv3x3_direct), weights packed [group of kRows][c][kRows] by pack1x1; each finished block
// is spilled to r (kRows x kStrip, row j at r + j * kStrip) and goes to an epilogue epi(o0, nj, q, r) (nj <= kRows
// valid channels from o0; columns past P are 0).
// Pixels outermost (RowsOuter false): the pixel strip (Cin x kStrip) stays in L1 while every group of output
// channels reads it. Groups outermost (true): an epilogue that streams rows of its own, one per channel, meets kRows
// rows at a time, which the hardware prefetchers follow, instead of Cout.
// pack1x1: w (rows, cols) row-major; Cout = rows, Cin = cols, or with transpose Cout = cols, Cin = rows.
template <typename T>
std::vector<T> pack1x1(const T* w, idx rows, idx cols, bool transpose) {
  const idx Cout = transpose ? cols : rows, Cin = transpose ? rows : cols, G = (Cout + kRows - 1) / kRows;
  std::vector<T> out((size_t)(G * Cin * kRows), T(0));
  for (idx o = 0; o < Cout; ++o)
    for (idx c = 0; c < Cin; ++c)
      out[((o / kRows) * Cin + c) * kRows + o % kRows] = transpose ? w[c * cols + o] : w[o * cols + c];
  return out;
}

template <bool RowsOuter, typename Epi>
inline void conv1x1_direct(const float* in, idx ld, idx Cin, idx Cout, const float* wp, idx P, const Epi& epi) {
  const idx G = (Cout + kRows - 1) / kRows, NQ = (P + kStrip - 1) / kStrip;
  alignas(64) float r[kRows * kStrip];
  for (idx i = 0; i < G * NQ; ++i) {
    const idx g = RowsOuter ? i / NQ : i % G, q = (RowsOuter ? i % NQ : i / G) * kStrip;
    const float* wc = wp + g * Cin * kRows;
    const float* sc = in + q;
    Block blk;
#pragma GCC unroll 4
    for (idx c = 0; c < Cin; ++c, sc += ld, wc += kRows) blk.step(sc, wc);
    blk.spill(r);
    epi(g * kRows, std::min<idx>(kRows, Cout - g * kRows), q, (const float*)r);
  }
}

// h (B, ldo) = W1 @ a for one packed tile a (C, lda) of P pixels (w1 (B, C), w1p = pack1x1(w1)); with acc, adds
// each h channel's sum and sum of squares to acc[2b], acc[2b+1] (float within the tile, double across tiles). With
// stream, h goes out through non-temporal stores where aligned (h of the whole batch, read back only after the
// phase; the worker runs stream_fence() at its end).
template <typename T, typename Tick = NoTick>
void conv1x1_forward_tile(const T* a, idx lda, idx C, idx P, idx B, const T* w1, const T* w1p, T* out, idx ldo,
                          double* acc, bool stream = false, Tick&& tick = Tick()) {
  if constexpr (use_direct<T>()) {
    // The tile's sums in float, a vector per channel for sum and one for the sum of squares.
    VecBuffer<float> st(acc ? (size_t)(2 * B) : 0);
    const idx G = (B + kRows - 1) / kRows, NQ = (P + kStrip - 1) / kStrip;
    conv1x1_direct<false>(a, lda, C, B, w1p, P, [&](idx o0, idx nj, idx q, const float* r) {
      tick(q / kStrip * G + o0 / kRows + 1, G * NQ);  // blocks run pixels outermost
      const idx nq = std::min<idx>(kStrip, P - q);
      if (nq == kStrip) {  // vector copies: a memcpy call per row cost up to a fifth of the 1x1 time (AVX2)
        for (idx j = 0; j < nj; ++j) {
          float* o = out + (o0 + j) * ldo + q;
          const vec<float> x0 = vload(r + j * kStrip), x1 = vload(r + j * kStrip + kLanes);
          if (stream && valigned(o)) {
            vstream(o, x0);
            vstream(o + kLanes, x1);
          } else {
            vstore(o, x0);
            vstore(o + kLanes, x1);
          }
        }
      } else {
        for (idx j = 0; j < nj; ++j) std::memcpy(out + (o0 + j) * ldo + q, r + j * kStrip, sizeof(float) * nq);
      }
      if (acc)
        for (idx j = 0; j < nj; ++j) {  // columns past P are 0 and add nothing
          const vec<float> x0 = vload(r + j * kStrip), x1 = vload(r + j * kStrip + kLanes);
          st[2 * (o0 + j)] += x0 + x1;
          st[2 * (o0 + j) + 1] += x0 * x0 + x1 * x1;
        }
    });
    if (acc)
      for (idx i = 0; i < 2 * B; ++i) acc[i] += (double)hsum<float>(st[i]);
    return;
  }
  (void)w1p;
  gemm_rm<T>(false, false, B, P, C, w1, C, a, lda, T(0), out, ldo);
  if (acc) accumulate_stats(out, ldo, B, P, acc);
}

// Rows r0-1 .. r0+R of src (Ch, H, W) (channel stride cs) into pad (Ch, R+2, W+2) with a zero border and
// zero rows outside the image; with bnrelu, relu(scale * v + shift) is applied on the way (the BN-ReLU
// prologue of the 3x3 convolution). In pad, the 3x3 tap (dy, dx) of output pixel (r, x) is at linear offset
// r*(W+2) + x + dy*(W+2) + dx: every tap is one GEMM operand with leading dimension (R+2)*(W+2), no im2col.
template <typename T>
inline void pad_rows(const T* src, idx cs, idx Ch, idx H, idx W, idx r0, idx R, const T* scale, const T* shift,
                     bool bnrelu, T* pad) {
  const idx Wp = W + 2;
  for (idx c = 0; c < Ch; ++c) {
    T* pc = pad + c * (R + 2) * Wp;
    const T s = bnrelu ? scale[c] : T(1), t = bnrelu ? shift[c] : T(0);
    for (idx i = 0; i < R + 2; ++i) {
      const idx y = r0 - 1 + i;
      T* row = pc + i * Wp;
      if (y < 0 || y >= H) {
        std::memset(row, 0, sizeof(T) * Wp);
        continue;
      }
      row[0] = T(0);
      row[W + 1] = T(0);
      const T* in = src + c * cs + y * W;
      if (bnrelu) {
#pragma omp simd
        for (idx x = 0; x < W; ++x) row[1 + x] = std::max(s * in[x] + t, T(0));
      } else {
        std::memcpy(row + 1, in, sizeof(T) * W);
      }
    }
  }
}

// FER_KERNELS_PROFILE=1 prints the wall time of each backward phase (for tuning; off by default).
struct PhaseTimer {
  bool on = std::getenv("FER_KERNELS_PROFILE") != nullptr;
  double acc[4] = {0, 0, 0, 0};
  std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
  void mark(int i) {
    auto now = std::chrono::steady_clock::now();
    acc[i] += std::chrono::duration<double>(now - t).count();
    t = now;
  }
  ~PhaseTimer() {
    if (on) std::fprintf(stderr, "dense_block backward: prep %.3f conv2 %.3f conv1 %.3f dx %.3f s\n", acc[0], acc[1], acc[2], acc[3]);
  }
};

// Per-thread double accumulators, reduced after a parallel phase.
struct ThreadAcc {
  idx size;
  std::vector<double> data;
  ThreadAcc(idx sz) : size(sz), data((size_t)(sz * at::get_num_threads()), 0.0) {}
  double* mine() { return data.data() + (idx)at::get_thread_num() * size; }
  std::vector<double> sum() const {
    std::vector<double> out((size_t)size, 0.0);
    const idx nt = (idx)data.size() / std::max<idx>(size, 1);
    for (idx t = 0; t < nt; ++t)
      for (idx i = 0; i < size; ++i) out[i] += data[t * size + i];
    return out;
  }
};

struct Shape {
  idx N, C0, H, W, HW, L, k, B, Ctot;
};

// One layer's parameters, contiguous (the kernels read them through raw pointers); m1, v1, m2, v2 (the running
// statistics) undefined when not given.
struct Layer {
  at::Tensor g1, b1, m1, v1, w1, g2, b2, m2, v2, w2;
};

// Per-channel scale/shift of a BatchNorm from mean/var (train: batch, eval: running).
template <typename T>
void bn_affine(const at::Tensor& gamma, const at::Tensor& beta, const double* mean, const double* var, idx C,
               double eps, std::vector<T>& scale, std::vector<T>& shift, std::vector<double>* invstd = nullptr) {
  scale.resize(C);
  shift.resize(C);
  if (invstd) invstd->resize(C);
  const T* g = gamma.data_ptr<T>();
  const T* b = beta.data_ptr<T>();
  for (idx c = 0; c < C; ++c) {
    const double is = 1.0 / std::sqrt(var[c] + eps);
    const double s = (double)g[c] * is;
    scale[c] = (T)s;
    shift[c] = (T)((double)b[c] - mean[c] * s);
    if (invstd) (*invstd)[c] = is;
  }
}

std::vector<double> to_double(const at::Tensor& t) {
  auto d = t.to(at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// ---- what a tile will read, for RowPrefetch ----
// Channels of a (N, ..., H, W) tensor: from base (image 0's first channel), image stride, count.
template <typename T>
struct ImageChannels {
  const T* base;
  idx image_stride, channels;
};
// The span [first, first + count) of every channel of the sources, in image n: one RowPrefetch group per source.
template <typename T>
RowPrefetch prefetch_span(const Shape& S, idx n, idx first, idx count,
                          std::initializer_list<ImageChannels<T>> sources) {
  RowPrefetch pf(count * (idx)sizeof(T));
  for (const ImageChannels<T>& src : sources)
    pf.add(src.base + n * src.image_stride + first, S.HW * (idx)sizeof(T), src.channels);
  return pf;
}
// 1x1 pixel tile `item` (ntile tiles of kTile1x1 pixels per image): its pixels.
template <typename T>
RowPrefetch prefetch_pixel_tile(const Shape& S, idx item, idx ntile, std::initializer_list<ImageChannels<T>> sources) {
  const idx p0 = (item % ntile) * kTile1x1;
  return prefetch_span<T>(S, item / ntile, p0, std::min(kTile1x1, S.HW - p0), sources);
}
// 3x3 row tile `item` (ntile tiles of R rows per image): the rows pad_rows reads, halo included.
template <typename T>
RowPrefetch prefetch_tile_rows(const Shape& S, idx item, idx ntile, idx R,
                               std::initializer_list<ImageChannels<T>> sources) {
  const idx r0 = (item % ntile) * R;
  const idx y0 = std::max<idx>(0, r0 - 1), y1 = std::min(S.H, r0 + std::min(R, S.H - r0) + 1);
  return prefetch_span<T>(S, item / ntile, y0 * S.W, (y1 - y0) * S.W, sources);
}

// 1x1 phase over all images: hdst (N, B, HW) = W1 @ relu(s1 * buf[:, :C] + t1); optional h statistics. hdst is read
// back only after the phase, so it is written with non-temporal stores (AVX2 on an Intel Xeon: the block's training
// forward 115 -> 110 ms).
template <typename T>
void conv1x1_phase(const Shape& S, const T* buf, idx C, const T* w1, const T* s1, const T* t1, T* hdst,
                   ThreadAcc* hstats) {
  const idx ntile = (S.HW + kTile1x1 - 1) / kTile1x1;
  const idx total_items = S.N * ntile;
  const auto w1p = pack1x1(w1, S.B, C, false);
  dynamic_for(total_items, [&](auto next) {
    const idx lda = tile1x1_ld(S.HW);
    std::vector<T> a((size_t)(C * lda));
    double* acc = hstats ? hstats->mine() : nullptr;
    for (idx it = next(), nxt; it < total_items; it = nxt) {
      nxt = next();  // one item ahead: its rows of the buffer are prefetched during this item's convolution
      const idx n = it / ntile, p0 = (it % ntile) * kTile1x1, P = std::min(kTile1x1, S.HW - p0);
      RowPrefetch pf;
      if (nxt < total_items) pf = prefetch_pixel_tile<T>(S, nxt, ntile, {{buf, S.Ctot * S.HW, C}});
      pack_bnrelu(buf + n * S.Ctot * S.HW, S.HW, C, p0, P, s1, t1, a.data(), lda);
      conv1x1_forward_tile(a.data(), lda, C, P, S.B, w1, w1p.data(), hdst + n * S.B * S.HW + p0, S.HW, acc,
                           /*stream=*/true, pf);
    }
    stream_fence();
  });
}

// ---- the 3x3 convolution on a zero-bordered tile ----
// in: (Cin, ps) padded rows (row length Wp = W+2); out[o][q] = sum_c sum_tap w[o][c][tap] * in[c][q + dy*Wp + dx]
// for the "padded pixels" q in [0, Pp), Pp = R*Wp - 2 (2 junk columns per row, dropped by the caller). The
// forward is this with Cin = B, Cout = k; the data gradient of the backward is the same with Cin = k,
// Cout = B and the taps flipped.
//
// float32: a direct convolution, no packing: kRows output channels x kStrip pixels in registers (a Block), one
// broadcast weight feeding two FMAs; weights packed [group of kRows][c][tap][kRows]. It reads up to Qr = Pp
// rounded up to whole strips (junk) and so up to a strip past the last channel: callers give in kSlack floats of
// zeroed slack and out a leading dimension of at least Qr. float64: 9 tap GEMMs on shifted views, weights
// (9, Cout, Cin).
constexpr idx kSlack = 2 * kStrip;

// Packs w2 (k, B, 3, 3) for conv3x3_apply: forward (Cout = k, Cin = B) or, with grad, the data gradient
// (Cout = B, Cin = k, taps flipped).
template <typename T>
std::vector<T> pack3x3(const at::Tensor& w2, bool grad) {
  const idx k = w2.size(0), B = w2.size(1);
  const idx Cout = grad ? B : k, Cin = grad ? k : B;
  const T* w = w2.data_ptr<T>();
  auto src = [&](idx o, idx c, idx tap) {
    return grad ? w[(c * B + o) * 9 + (8 - tap)] : w[(o * B + c) * 9 + tap];
  };
  if (use_direct<T>()) {
    const idx G = (Cout + kRows - 1) / kRows;
    std::vector<T> out((size_t)(G * Cin * 9 * kRows), T(0));
    for (idx o = 0; o < Cout; ++o)
      for (idx c = 0; c < Cin; ++c)
        for (idx tap = 0; tap < 9; ++tap)
          out[(((o / kRows) * Cin + c) * 9 + tap) * kRows + o % kRows] = src(o, c, tap);
    return out;
  }
  std::vector<T> out((size_t)(9 * Cout * Cin));
  for (idx o = 0; o < Cout; ++o)
    for (idx c = 0; c < Cin; ++c)
      for (idx tap = 0; tap < 9; ++tap) out[(tap * Cout + o) * Cin + c] = src(o, c, tap);
  return out;
}

// tick: a step per block (group of kRows output channels x strip). Not inlined: inlined into conv3x3_phase with a
// RowPrefetch as its tick, GCC 12 kept part of the AVX2 tile on the stack (65 stack accesses per 108 FMAs, the
// forward 10% slower; tests/test_cpu_isa.py now catches it).
template <typename Tick = NoTick>
__attribute__((noinline)) void conv3x3_direct(const float* in, idx ps, idx Wp, idx Cin, idx Cout, const float* wp,
                                              idx Pp, float* out, idx ldo, Tick&& tick = Tick()) {
  const idx G = (Cout + kRows - 1) / kRows, Qr = round_strip(Pp);
  idx offs[9];
  for (int tap = 0; tap < 9; ++tap) offs[tap] = (tap / 3) * Wp + tap % 3;
  for (idx g = 0; g < G; ++g) {
    const float* wg = wp + g * Cin * 9 * kRows;
    const int nj = (int)std::min<idx>(kRows, Cout - g * kRows);
    for (idx q = 0; q < Qr; q += kStrip) {
      Block blk;
      for (idx c = 0; c < Cin; ++c) {
        const float* sc = in + c * ps + q;
        const float* wc = wg + c * 9 * kRows;
#pragma GCC unroll 9
        for (int tap = 0; tap < 9; ++tap) blk.step(sc + offs[tap], wc + tap * kRows);
      }
      blk.store(nj, kStrip, out + g * kRows * ldo + q, ldo);  // out's rows hold Qr columns
      tick(g * (Qr / kStrip) + q / kStrip + 1, G * (Qr / kStrip));
    }
  }
}

template <typename T, typename Tick = NoTick>
void conv3x3_apply(const T* in, idx ps, idx Wp, idx Cin, idx Cout, const T* wpk, idx Pp, T* out, idx ldo,
                   Tick&& tick = Tick()) {
  if constexpr (use_direct<T>()) {
    conv3x3_direct(in, ps, Wp, Cin, Cout, wpk, Pp, out, ldo, tick);
    return;
  }
  for (idx tap = 0; tap < 9; ++tap)
    gemm_rm<T>(false, false, Cout, Pp, Cin, wpk + tap * Cout * Cin, Cin, in + (tap / 3) * Wp + tap % 3, ps,
               tap == 0 ? T(0) : T(1), out, ldo);
}

// Weight gradient of the 3x3 convolution on a tile: dw[o][c][tap] += sum_q g[o][q] * in[c][q + dy*Wp + dx],
// q in [0, Qr), g (Cout rows, ld ldg) zero at every q that is not an output pixel of the tile (junk columns
// and q >= Pp). dw is (Cout, Cin, 9), the layout of the weight, times wgrad_lanes<T>(). float32: kWgRows output
// channels x 3 taps of one kernel row in vector accumulators (4 + 3 loads per 12 FMAs on AVX2), g's rows padded to a
// multiple of kWgRows with zero rows, each accumulator added to its weight's vector of lane partials (a horizontal
// sum per weight and tile cost about as much as the FMAs); float64: one GEMM per tap. in needs kSlack floats of
// finite slack past its last channel.
// kWgRows output channels x 3 taps in registers: 12 accumulators, which with the 3 shifted input rows and a gradient
// vector fill AVX2's 16 vector registers; the AVX-512 build keeps the same tile.
constexpr int kWgRows = 4;
// tick: a step per (input channel, kernel row), Cin * 3 in all.
template <typename Tick = NoTick>
inline void conv3x3_wgrad_direct(const float* in, idx ps, idx Wp, idx Cin, const float* g, idx ldg, idx Cout,
                                 idx Qr, float* dwv, Tick&& tick = Tick()) {
  const idx G = (Cout + kWgRows - 1) / kWgRows;
  for (idx c = 0; c < Cin; ++c) {
    for (idx dy = 0; dy < 3; ++dy) {
      const float* s = in + c * ps + dy * Wp;
      for (idx og = 0; og < G; ++og) {
        const float* g0 = g + og * kWgRows * ldg;
        vec<float> acc[kWgRows][3];
        for (int j = 0; j < kWgRows; ++j)
          for (int x = 0; x < 3; ++x) acc[j][x] = vec<float>{};
        for (idx q = 0; q < Qr; q += kLanes) {
          vec<float> p0 = vload(s + q), p1 = vload(s + q + 1), p2 = vload(s + q + 2);
          // Keep the three shifted rows in registers (else the compiler folds them into all 12 FMAs as memory
          // operands: 16 loads per 12 FMAs, load-bound).
          pin(p0);
          pin(p1);
          pin(p2);
#pragma GCC unroll 8
          for (int j = 0; j < kWgRows; ++j) {
            vec<float> gv = vload(g0 + j * ldg + q);
            pin(gv);  // one load for its three FMAs
            acc[j][0] += gv * p0;
            acc[j][1] += gv * p1;
            acc[j][2] += gv * p2;
          }
        }
        for (idx j = 0; j < kWgRows && og * kWgRows + j < Cout; ++j)
          for (int x = 0; x < 3; ++x) {
            float* d = dwv + (((og * kWgRows + j) * Cin + c) * 9 + dy * 3 + x) * kLanes;
            vstore(d, vload(d) + acc[j][x]);
          }
      }
      tick(c * 3 + dy + 1, Cin * 3);
    }
  }
}

// Values per weight in conv3x3_wgrad's dw: a vector of lane partials for float32 (conv3x3_wgrad_direct adds its
// accumulators to them, no horizontal sum per tile), one value for float64.
template <typename T>
constexpr idx wgrad_lanes() {
  return use_direct<T>() ? kLanes : 1;
}

template <typename T, typename Tick = NoTick>
void conv3x3_wgrad(const T* in, idx ps, idx Wp, idx Cin, const T* g, idx ldg, idx Cout, idx Pp, T* dw, T* tmp,
                   Tick&& tick = Tick()) {
  if constexpr (use_direct<T>()) {
    conv3x3_wgrad_direct(in, ps, Wp, Cin, g, ldg, Cout, round_strip(Pp), dw, tick);
    return;
  }
  for (idx tap = 0; tap < 9; ++tap) {
    gemm_rm<T>(false, true, Cout, Cin, Pp, g, ldg, in + (tap / 3) * Wp + tap % 3, ps, T(0), tmp, Cin);
    for (idx o = 0; o < Cout; ++o)
      for (idx c = 0; c < Cin; ++c) dw[(o * Cin + c) * 9 + tap] += tmp[o * Cin + c];
  }
}

// Scratch of one 3x3 row tile of at most R rows: the padded input (Cin channels) and the padded-pixel output.
template <typename T>
struct Tile3x3 {
  idx ld;  // of out: at least Qr for every tile of <= R rows
  std::vector<T> pad, out;
  Tile3x3(idx Cin, idx Cout, idx R, idx W)
      : ld(round_strip(R * (W + 2))), pad((size_t)(Cin * (R + 2) * (W + 2) + kSlack), T(0)), out((size_t)(Cout * ld)) {}
};

// 3x3 tile: rows r0 .. r0+R-1 of y = W2 * relu(s2 * h + t2) into yout (channel stride HW); tick as conv3x3_direct's.
template <typename T, typename Tick = NoTick>
void conv3x3_tile(const Shape& S, const T* hn, const T* w2p, const T* s2, const T* t2, idx r0, idx R,
                  Tile3x3<T>& tile, T* yout, Tick&& tick = Tick()) {
  const idx Wp = S.W + 2, ps = (R + 2) * Wp, Pp = R * Wp - 2;
  pad_rows(hn, S.HW, S.B, S.H, S.W, r0, R, s2, t2, true, tile.pad.data());
  conv3x3_apply<T>(tile.pad.data(), ps, Wp, S.B, S.k, w2p, Pp, tile.out.data(), tile.ld, tick);
  for (idx o = 0; o < S.k; ++o)
    for (idx r = 0; r < R; ++r)
      std::memcpy(yout + o * S.HW + r * S.W, tile.out.data() + o * tile.ld + r * Wp, sizeof(T) * S.W);
}

template <typename T>
void conv3x3_phase(const Shape& S, const T* hsrc, T* buf, idx C, const T* w2, const T* s2, const T* t2,
                   ThreadAcc* ystats) {
  const idx R = std::max<idx>(1, std::min<idx>(S.H, kTile3x3 / S.W));
  const idx ntile = (S.H + R - 1) / R;
  const idx total_items = S.N * ntile;
  dynamic_for(total_items, [&](auto next) {
    Tile3x3<T> tile(S.B, S.k, R, S.W);
    double* acc = ystats ? ystats->mine() : nullptr;
    for (idx it = next(), nxt; it < total_items; it = nxt) {
      nxt = next();  // one item ahead: its rows of h are prefetched during this item's convolution
      const idx n = it / ntile, r0 = (it % ntile) * R, Rt = std::min(R, S.H - r0);
      RowPrefetch pf;
      if (nxt < total_items) pf = prefetch_tile_rows<T>(S, nxt, ntile, R, {{hsrc, S.B * S.HW, S.B}});
      T* yout = buf + (n * S.Ctot + C) * S.HW + r0 * S.W;
      conv3x3_tile(S, hsrc + n * S.B * S.HW, w2, s2, t2, r0, Rt, tile, yout, pf);
      if (acc) accumulate_stats(yout, S.HW, S.k, Rt * S.W, acc);
    }
  });
}

template <typename T>
void finish_stats(const std::vector<double>& acc, idx C, double M, double* mean, double* var) {
  for (idx c = 0; c < C; ++c) {
    const double m = acc[2 * c] / M;
    mean[c] = m;
    var[c] = std::max(acc[2 * c + 1] / M - m * m, 0.0);
  }
}

// One Layer per entry of the per-layer lists, which all have a tensor per layer (the running statistics: one per
// layer, or none).
std::vector<Layer> make_layers(const at::TensorList& g1, const at::TensorList& b1, const at::TensorList& m1,
                               const at::TensorList& v1, const at::TensorList& w1, const at::TensorList& g2,
                               const at::TensorList& b2, const at::TensorList& m2, const at::TensorList& v2,
                               const at::TensorList& w2) {
  const size_t L = w1.size();
  TORCH_CHECK(L > 0, "dense_block: expected at least one layer");
  TORCH_CHECK(g1.size() == L && b1.size() == L && g2.size() == L && b2.size() == L && w2.size() == L,
              "dense_block: every per-layer list must have one tensor per layer");
  const bool run = m1.size() == L;
  TORCH_CHECK(m1.size() == 0 || (run && v1.size() == L && m2.size() == L && v2.size() == L),
              "dense_block: running statistics must be given for every layer or for none");
  std::vector<Layer> out(L);
  for (size_t l = 0; l < L; ++l) {
    auto running = [&](const at::TensorList& t) { return run ? t[l].contiguous() : at::Tensor(); };
    out[l] = {g1[l].contiguous(), b1[l].contiguous(), running(m1), running(v1), w1[l].contiguous(),
              g2[l].contiguous(),  b2[l].contiguous(), running(m2), running(v2), w2[l].contiguous()};
  }
  return out;
}

// The shapes, device and dtypes the kernels index with: x (N, C0, H, W) on the CPU, float32 or float64, H and W
// >= 1 (the tiles divide by W); per layer l, with C = C0 + l k: conv1 (B, C, 1, 1), conv2 (k, B, 3, 3), norm1 (C)
// and norm2 (B) of x's dtype; in eval, the running statistics (C) and (B) on the CPU (read as float64).
void check_inputs(const at::Tensor& x, const std::vector<Layer>& layers, bool training) {
  check_dim(x, 4, "x", "(N, C0, H, W)");
  check_kernel_tensor(x, "x", at::kCPU);
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "x: expected H, W >= 1, got shape ", x.sizes());
  check_dim(layers[0].w1, 4, "layers[0].conv1_weight", "(B, C0, 1, 1)");
  check_dim(layers[0].w2, 4, "layers[0].conv2_weight", "(k, B, 3, 3)");
  const idx k = layers[0].w2.size(0), B = layers[0].w1.size(0);
  idx C = x.size(1);
  for (size_t l = 0; l < layers.size(); ++l) {
    const Layer& p = layers[l];
    TORCH_CHECK(p.w1.sizes() == at::IntArrayRef({B, C, 1, 1}), "dense_block: layers[", l,
                "].conv1_weight: expected shape (", B, ", ", C, ", 1, 1), got ", p.w1.sizes());
    TORCH_CHECK(p.w2.sizes() == at::IntArrayRef({k, B, 3, 3}), "dense_block: layers[", l,
                "].conv2_weight: expected shape (", k, ", ", B, ", 3, 3), got ", p.w2.sizes());
    TORCH_CHECK(p.g1.numel() == C && p.b1.numel() == C && p.g2.numel() == B && p.b2.numel() == B,
                "dense_block: layers[", l, "]: expected norm1 of ", C, " channels and norm2 of ", B);
    for (const at::Tensor* t : {&p.g1, &p.b1, &p.w1, &p.g2, &p.b2, &p.w2})
      check_same(*t, x, "dense_block: every parameter", "x");
    if (!training) {
      TORCH_CHECK(p.m1.defined(), "dense_block: eval mode needs running statistics");
      TORCH_CHECK(p.m1.numel() == C && p.v1.numel() == C && p.m2.numel() == B && p.v2.numel() == B,
                  "dense_block: layers[", l, "]: running statistics have the wrong size");
      for (const at::Tensor* t : {&p.m1, &p.v1, &p.m2, &p.v2})
        check_same_device(*t, x, "dense_block: every running statistic", "x");
    }
    C += k;
  }
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const at::Tensor& x_in, const std::vector<Layer>& layers, bool training, double eps) {
  Shape S;
  S.N = x_in.size(0); S.C0 = x_in.size(1); S.H = x_in.size(2); S.W = x_in.size(3); S.HW = S.H * S.W;
  S.L = (idx)layers.size(); S.k = layers[0].w2.size(0); S.B = layers[0].w1.size(0);
  S.Ctot = S.C0 + S.L * S.k;
  const double M = (double)(S.N * S.HW);
  auto opts = x_in.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty({S.N, S.Ctot, S.H, S.W}, opts);
  T* buf = out.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, S.N, 1, [&](idx b, idx e) {
    for (idx n = b; n < e; ++n) std::memcpy(buf + n * S.Ctot * S.HW, xp + n * S.C0 * S.HW, sizeof(T) * S.C0 * S.HW);
  });
  std::vector<T> s1, t1, s2, t2;
  if (!training) {
    // Eval: per image, the 1x1 output stays in a per-thread scratch and feeds the 3x3 right away.
    std::vector<std::vector<T>> S1(S.L), T1(S.L), S2(S.L), T2(S.L), W1P(S.L), W2T(S.L);
    for (idx l = 0; l < S.L; ++l) {
      const idx C = S.C0 + l * S.k;
      auto m1 = to_double(layers[l].m1), v1 = to_double(layers[l].v1);
      auto m2 = to_double(layers[l].m2), v2 = to_double(layers[l].v2);
      bn_affine<T>(layers[l].g1, layers[l].b1, m1.data(), v1.data(), C, eps, S1[l], T1[l]);
      bn_affine<T>(layers[l].g2, layers[l].b2, m2.data(), v2.data(), S.B, eps, S2[l], T2[l]);
      W1P[l] = pack1x1(layers[l].w1.data_ptr<T>(), S.B, C, false);
      W2T[l] = pack3x3<T>(layers[l].w2, false);
    }
    const idx R = std::max<idx>(1, std::min<idx>(S.H, kTile3x3 / S.W));
    if (S.N < at::get_num_threads()) {
      // Fewer images than threads (batch-1 inference): one layer at a time, its 1x1 pixel tiles and then its 3x3
      // row tiles spread over the threads (per image, one thread would do all the work).
      std::vector<T> hn((size_t)(S.N * S.B * S.HW));
      const idx n_p = (S.HW + kTile1x1 - 1) / kTile1x1, n_r = (S.H + R - 1) / R;
      for (idx l = 0; l < S.L; ++l) {
        const idx C = S.C0 + l * S.k;
        dynamic_for(S.N * n_p, [&](auto next) {
          const idx lda = tile1x1_ld(S.HW);
          std::vector<T> a((size_t)(C * lda));
          for (idx t; (t = next()) < S.N * n_p;) {
            const idx n = t / n_p, p0 = (t % n_p) * kTile1x1, P = std::min(kTile1x1, S.HW - p0);
            pack_bnrelu(buf + n * S.Ctot * S.HW, S.HW, C, p0, P, S1[l].data(), T1[l].data(), a.data(), lda);
            conv1x1_forward_tile(a.data(), lda, C, P, S.B, layers[l].w1.data_ptr<T>(), W1P[l].data(),
                                 hn.data() + n * S.B * S.HW + p0, S.HW, (double*)nullptr);
          }
        });
        dynamic_for(S.N * n_r, [&](auto next) {
          Tile3x3<T> tile(S.B, S.k, R, S.W);
          for (idx t; (t = next()) < S.N * n_r;) {
            const idx n = t / n_r, r0 = (t % n_r) * R, Rt = std::min(R, S.H - r0);
            conv3x3_tile(S, hn.data() + n * S.B * S.HW, W2T[l].data(), S2[l].data(), T2[l].data(), r0, Rt, tile,
                         buf + n * S.Ctot * S.HW + C * S.HW + r0 * S.W);
          }
        });
      }
      auto e = at::empty({0}, x_in.options().dtype(at::kDouble));
      return {out, at::empty({0}, opts), e, e.clone(), e.clone(), e.clone()};
    }
    dynamic_for(S.N, [&](auto next) {
      const idx lda = tile1x1_ld(S.HW);
      std::vector<T> a((size_t)((S.Ctot - S.k) * lda)), hn((size_t)(S.B * S.HW));
      Tile3x3<T> tile(S.B, S.k, R, S.W);
      for (idx n; (n = next()) < S.N;) {
        T* bn = buf + n * S.Ctot * S.HW;
        for (idx l = 0; l < S.L; ++l) {
          const idx C = S.C0 + l * S.k;
          for (idx p0 = 0; p0 < S.HW; p0 += kTile1x1) {
            const idx P = std::min(kTile1x1, S.HW - p0);
            pack_bnrelu(bn, S.HW, C, p0, P, S1[l].data(), T1[l].data(), a.data(), lda);
            conv1x1_forward_tile(a.data(), lda, C, P, S.B, layers[l].w1.data_ptr<T>(), W1P[l].data(), hn.data() + p0,
                                 S.HW, (double*)nullptr);
          }
          for (idx r0 = 0; r0 < S.H; r0 += R) {
            const idx Rt = std::min(R, S.H - r0);
            conv3x3_tile(S, hn.data(), W2T[l].data(), S2[l].data(), T2[l].data(), r0, Rt, tile,
                         bn + C * S.HW + r0 * S.W);
          }
        }
      }
    });
    auto e = at::empty({0}, x_in.options().dtype(at::kDouble));
    return {out, at::empty({0}, opts), e, e.clone(), e.clone(), e.clone()};
  }
  at::Tensor hbuf = at::empty({S.L, S.N, S.B, S.H, S.W}, opts);
  auto dopts = x_in.options().dtype(at::kDouble);
  at::Tensor xmean = at::zeros({S.Ctot}, dopts), xvar = at::zeros({S.Ctot}, dopts);
  at::Tensor hmean = at::zeros({S.L, S.B}, dopts), hvar = at::zeros({S.L, S.B}, dopts);
  double *xm = xmean.data_ptr<double>(), *xv = xvar.data_ptr<double>();
  {
    // Statistics of the block input channels (once; reused by every layer).
    std::vector<double> acc((size_t)(2 * S.C0), 0.0);
    at::parallel_for(0, S.C0, 1, [&](idx b, idx e) {
      for (idx c = b; c < e; ++c) {
        double a2[2] = {0, 0};
        for (idx n = 0; n < S.N; ++n) accumulate_stats(xp + (n * S.C0 + c) * S.HW, S.HW, 1, S.HW, a2);
        acc[2 * c] = a2[0];
        acc[2 * c + 1] = a2[1];
      }
    });
    finish_stats<T>(acc, S.C0, M, xm, xv);
  }
  for (idx l = 0; l < S.L; ++l) {
    const idx C = S.C0 + l * S.k;
    bn_affine<T>(layers[l].g1, layers[l].b1, xm, xv, C, eps, s1, t1);
    T* hl = hbuf.data_ptr<T>() + l * S.N * S.B * S.HW;
    ThreadAcc hacc(2 * S.B);
    conv1x1_phase<T>(S, buf, C, layers[l].w1.data_ptr<T>(), s1.data(), t1.data(), hl, &hacc);
    double* hm = hmean.data_ptr<double>() + l * S.B;
    double* hv = hvar.data_ptr<double>() + l * S.B;
    finish_stats<T>(hacc.sum(), S.B, M, hm, hv);
    bn_affine<T>(layers[l].g2, layers[l].b2, hm, hv, S.B, eps, s2, t2);
    ThreadAcc yacc(2 * S.k);
    const auto w2t = pack3x3<T>(layers[l].w2, false);
    conv3x3_phase<T>(S, hl, buf, C, w2t.data(), s2.data(), t2.data(), &yacc);
    finish_stats<T>(yacc.sum(), S.k, M, xm + C, xv + C);
  }
  return {out, hbuf, xmean, xvar, hmean, hvar};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dense_block_cpu(
    const at::Tensor& x, at::TensorList norm1_weight, at::TensorList norm1_bias, at::TensorList norm1_mean,
    at::TensorList norm1_var, at::TensorList conv1_weight, at::TensorList norm2_weight, at::TensorList norm2_bias,
    at::TensorList norm2_mean, at::TensorList norm2_var, at::TensorList conv2_weight, bool training, double eps) {
  auto layers = make_layers(norm1_weight, norm1_bias, norm1_mean, norm1_var, conv1_weight, norm2_weight,
                            norm2_bias, norm2_mean, norm2_var, conv2_weight);
  check_inputs(x, layers, training);
  if (x.scalar_type() == at::kFloat) return forward_impl<float>(x, layers, training, eps);
  return forward_impl<double>(x, layers, training, eps);
}

namespace {

// ---- backward: the layers in reverse, each in the phases below ----

// What every phase of the backward reads: the shape, the block buffer and its gradient, the tiling, and the
// deferred BN1 input-gradient terms.
template <typename T>
struct Backward {
  Shape S;
  bool training;
  double eps, M;  // M = N * H * W values per channel
  at::TensorOptions opts;
  const T* buf;         // the block buffer (N, Ctot, HW), the forward's output
  T* gbuf;              // its gradient, accumulated over the layers
  T* dz2;               // (N, B, HW): the current layer's gradient at BN2's output
  const double* xmean;  // the saved batch means of the buffer channels (training)
  // Per channel read by some layer, the deferred batch terms of the BN1 input gradient: dx += alpha + beta * (x - mean).
  std::vector<double> alpha, beta;
  int nt;                 // intra-op threads: the number of per-thread partial sums
  idx R, ntile3, ntile1;  // rows of a 3x3 tile; 3x3 row tiles and 1x1 pixel tiles per image
};

// Layer l's two BatchNorms as its backward uses them: scale and shift to recompute a = relu(s1 x + t1) and
// c = relu(s2 h + t2), and the means and inverse deviations for xhat and hhat (in double, and in T for the hot loops).
template <typename T>
struct LayerNorms {
  std::vector<T> s1, t1, s2, t2;
  std::vector<double> is1, is2;
  std::vector<T> hmeanT, hisT, xmeanT, xisT;
};

// Recompute: layer l's BatchNorm coefficients, from the saved batch statistics (training) or the running ones (eval).
template <typename T>
LayerNorms<T> layer_norms(const Backward<T>& bw, const Layer& p, idx l, const at::Tensor& xmean,
                          const at::Tensor& xvar, const at::Tensor& hmean, const at::Tensor& hvar) {
  const Shape& S = bw.S;
  const idx C = S.C0 + l * S.k;
  std::vector<double> m1, v1, m2, v2;
  if (bw.training) {
    m1.assign(xmean.data_ptr<double>(), xmean.data_ptr<double>() + C);
    v1.assign(xvar.data_ptr<double>(), xvar.data_ptr<double>() + C);
    m2.assign(hmean.data_ptr<double>() + l * S.B, hmean.data_ptr<double>() + (l + 1) * S.B);
    v2.assign(hvar.data_ptr<double>() + l * S.B, hvar.data_ptr<double>() + (l + 1) * S.B);
  } else {
    m1 = to_double(p.m1); v1 = to_double(p.v1); m2 = to_double(p.m2); v2 = to_double(p.v2);
  }
  LayerNorms<T> nm;
  bn_affine<T>(p.g1, p.b1, m1.data(), v1.data(), C, bw.eps, nm.s1, nm.t1, &nm.is1);
  bn_affine<T>(p.g2, p.b2, m2.data(), v2.data(), S.B, bw.eps, nm.s2, nm.t2, &nm.is2);
  nm.hmeanT.resize(S.B); nm.hisT.resize(S.B); nm.xmeanT.resize(C); nm.xisT.resize(C);
  for (idx b = 0; b < S.B; ++b) { nm.hmeanT[b] = (T)m2[b]; nm.hisT[b] = (T)nm.is2[b]; }
  for (idx c = 0; c < C; ++c) { nm.xmeanT[c] = (T)m1[c]; nm.xisT[c] = (T)nm.is1[c]; }
  return nm;
}

// Recompute: layer l's h (N, B, HW), saved by the forward (training) or recomputed by its 1x1 phase into htmp (eval).
template <typename T>
const T* layer_h(const Backward<T>& bw, const LayerNorms<T>& nm, const Layer& p, idx l, const at::Tensor& hsaved,
                 at::Tensor& htmp) {
  const Shape& S = bw.S;
  if (hsaved.numel() != 0) return hsaved.data_ptr<T>() + l * S.N * S.B * S.HW;
  conv1x1_phase<T>(S, bw.buf, S.C0 + l * S.k, p.w1.data_ptr<T>(), nm.s1.data(), nm.t1.data(), htmp.data_ptr<T>(),
                   nullptr);
  return htmp.data_ptr<T>();
}

// BN1 backward, deferred terms (training only: in eval the BN1 input gradient has no batch terms): once the gradient
// of channels c0 .. c0+nc is complete, dst[:, :nc] (channel stride dst_cs) = gbuf[:, c0:c0+nc] + alpha + beta * (x - mean).
template <typename T>
void apply_deferred(const Backward<T>& bw, idx c0, idx nc, T* dst, idx dst_cs) {
  const Shape& S = bw.S;
  const T* gbuf = bw.gbuf;
  const T* buf = bw.buf;
  const idx total = S.N * nc;
  at::parallel_for(0, total, 1, [&](idx b, idx e) {
    for (idx it = b; it < e; ++it) {
      const idx n = it / nc, c = c0 + it % nc;
      const T* g = gbuf + (n * S.Ctot + c) * S.HW;
      const T* xx = buf + (n * S.Ctot + c) * S.HW;
      T* o = dst + (n * dst_cs + c - c0) * S.HW;
      const T al = (T)bw.alpha[c], be = (T)bw.beta[c], mu = (T)bw.xmean[c];
#pragma omp simd
      for (idx q = 0; q < S.HW; ++q) o[q] = g[q] + (al + be * (xx[q] - mu));
    }
  });
}

// Weight gradient: the per-thread partial sums acc (nt blocks of count values, each in the weight's layout) added up.
template <typename T>
at::Tensor sum_thread_partials(const std::vector<T>& acc, int nt, idx count, at::IntArrayRef sizes,
                               const at::TensorOptions& opts) {
  at::Tensor g = at::zeros(sizes, opts);
  T* gp = g.data_ptr<T>();
  for (int t = 0; t < nt; ++t)
    for (idx i = 0; i < count; ++i) gp[i] += acc[t * count + i];
  return g;
}

// Conv2 backward on padded row tiles with the BN2-ReLU recomputed (as conv3x3_tile): dW2 (into gw2) += correlation
// of gy with c (conv3x3_wgrad), dc = conv3x3_apply(gy, flipped W2), dz2 = dc * [c > 0] (into bw.dz2). Returns the
// per-channel sums of dz2 and dz2 * hhat, interleaved (2B).
template <typename T>
std::vector<double> conv2_backward(const Backward<T>& bw, const LayerNorms<T>& nm, const Layer& p, const T* hl, idx C,
                                   at::Tensor& gw2) {
  const Shape& S = bw.S;
  const int nt = bw.nt;
  const idx R = bw.R, ntile3 = bw.ntile3;
  const T* gbuf = bw.gbuf;
  T* dz2 = bw.dz2;
  const at::Tensor& w2 = p.w2;
  const std::vector<T> &s2 = nm.s2, &t2 = nm.t2, &hmeanT = nm.hmeanT, &hisT = nm.hisT;
  const at::TensorOptions& opts = bw.opts;
  const auto w2g = pack3x3<T>(w2, true);  // the data gradient: Cout = B, Cin = k, taps flipped
  const idx KB = 9 * S.k * S.B, lanes = wgrad_lanes<T>();
  std::vector<T> dw2_acc((size_t)(nt * KB * lanes), T(0));  // per thread, (k, B, 9) x lanes
  ThreadAcc acc2(2 * S.B);
  const idx total3 = S.N * ntile3;
  dynamic_for(total3, [&](auto next) {
    const idx Wp = S.W + 2;
    Tile3x3<T> gtile(S.k, S.B, R, S.W);  // the data gradient's tile: in = gy padded, out = dc
    const idx ldd = gtile.ld, k4 = round_up(S.k, kWgRows);  // gz rows: whole groups of the weight gradient
    T* gpad = gtile.pad.data();
    T* dcp = gtile.out.data();
    std::vector<T> pad((size_t)(S.B * (R + 2) * Wp + kSlack), T(0));  // c, read by the weight gradient
    std::vector<T> gz((size_t)(k4 * ldd), T(0)), tmp((size_t)(S.k * S.B));
    T* dw2 = dw2_acc.data() + (idx)at::get_thread_num() * KB * lanes;
    double* acc = acc2.mine();
    for (idx it = next(), nxt; it < total3; it = nxt) {
      // One item ahead: its rows of h and gy are prefetched during this item's weight gradient (Intel Xeon, interleaved
      // A/B: conv2 backward 123-125 -> 116-118 ms in the AVX2 build, 102-106 -> 98-103 in the AVX-512 one).
      nxt = next();
      const idx n = it / ntile3, r0 = (it % ntile3) * R, Rt = std::min(R, S.H - r0);
      const idx ps = (Rt + 2) * Wp, Pp = Rt * Wp - 2;
      RowPrefetch pf;
      if (nxt < total3)
        pf = prefetch_tile_rows<T>(S, nxt, ntile3, R, {{hl, S.B * S.HW, S.B}, {gbuf + C * S.HW, S.Ctot * S.HW, S.k}});
      const T* hn = hl + n * S.B * S.HW;
      pad_rows(hn, S.HW, S.B, S.H, S.W, r0, Rt, s2.data(), t2.data(), true, pad.data());
      pad_rows(gbuf + (n * S.Ctot + C) * S.HW, S.HW, S.k, S.H, S.W, r0, Rt, (const T*)nullptr, (const T*)nullptr,
               false, gpad);
      // dc = the 3x3 convolution of gpad (halo rows included: dc of a row needs the gradient of its
      // neighbours) with the flipped taps. dW2 reads gz = the tile's own output gradient at the padded
      // pixels q (zero at the junk columns, which are gpad's border, and past Pp), so each pixel counts once.
      for (idx o = 0; o < S.k; ++o) {
        std::memcpy(gz.data() + o * ldd, gpad + o * ps + Wp + 1, sizeof(T) * Pp);
        std::memset(gz.data() + o * ldd + Pp, 0, sizeof(T) * (ldd - Pp));
      }
      conv3x3_wgrad<T>(pad.data(), ps, Wp, S.B, gz.data(), ldd, S.k, Pp, dw2, tmp.data(), pf);
      conv3x3_apply<T>(gpad, ps, Wp, S.k, S.B, w2g.data(), Pp, dcp, ldd);
      // dz2 = dc * [c > 0] and its sums (<= R*W terms per tile, in T, in vectors across the tile's rows, so that
      // a tile pays one horizontal reduction, not one per row of W pixels). dz2 is read back only by the conv1
      // backward, after the whole phase: non-temporal stores (vstream) on aligned rows spare reading its lines in
      // first (AVX2 on an Intel Xeon: conv2 backward 133 -> 124 ms of the 256 ms block backward).
      constexpr int nl = Simd<T>::n;
      const vec<T> zero{};
      for (idx b = 0; b < S.B; ++b) {
        const vec<T> mu = vbroadcast(hmeanT[b]), is = vbroadcast(hisT[b]);
        vec<T> sv{}, sxv{};
        T s = 0, sx = 0;
        for (idx r = 0; r < Rt; ++r) {
          T* d = dz2 + (n * S.B + b) * S.HW + (r0 + r) * S.W;
          const T* dc = dcp + b * ldd + r * Wp;
          const T* cc = pad.data() + b * ps + (r + 1) * Wp + 1;
          const T* hh = hn + b * S.HW + (r0 + r) * S.W;
          idx x = 0;
          const bool stream = valigned(d);
          for (; x + nl <= S.W; x += nl) {
            const vec<T> v = vload(cc + x) > zero ? vload(dc + x) : zero;
            if (stream) vstream(d + x, v);
            else vstore(d + x, v);
            sv += v;
            sxv += v * ((vload(hh + x) - mu) * is);
          }
          for (; x < S.W; ++x) {
            const T v = cc[x] > T(0) ? dc[x] : T(0);
            d[x] = v;
            s += v;
            sx += v * ((hh[x] - hmeanT[b]) * hisT[b]);
          }
        }
        acc[2 * b] += s + hsum<T>(sv);
        acc[2 * b + 1] += sx + hsum<T>(sxv);
      }
    }
    stream_fence();  // dz2's stores, before the conv1 backward reads them
  });
  if (lanes > 1)  // each weight's lanes added up, in place (value i moves down from i * lanes)
    for (idx i = 0; i < nt * KB; ++i) {
      T v = 0;
      for (idx l = 0; l < lanes; ++l) v += dw2_acc[i * lanes + l];
      dw2_acc[i] = v;
    }
  gw2 = sum_thread_partials<T>(dw2_acc, nt, KB, {S.k, S.B, 3, 3}, opts);  // already in the weight's layout
  return acc2.sum();
}

// The coefficients of BN2's input gradient dh = A2 * ((dz2 - B2) - C2 * (h - mean)).
template <typename T>
struct DhCoefficients {
  std::vector<T> A2, B2, C2;
};

// BN2 backward: dgamma2 and dbeta2 (into gg2, gb2) from the sums a2 of dz2 and dz2 * hhat, and dh's coefficients
// (train: B2 = mean(dz2), C2 = invstd * mean(dz2 * hhat); eval: 0). The subtractions come before the scaling, as in
// the formula, so a nearly constant dz2 cancels exactly.
template <typename T>
DhCoefficients<T> bn2_backward(const Backward<T>& bw, const LayerNorms<T>& nm, const Layer& p,
                               const std::vector<double>& a2, at::Tensor& gg2, at::Tensor& gb2) {
  const Shape& S = bw.S;
  const bool training = bw.training;
  const double M = bw.M;
  const std::vector<double>& is2 = nm.is2;
  const at::TensorOptions& opts = bw.opts;
  gb2 = at::empty({S.B}, opts);
  gg2 = at::empty({S.B}, opts);
  DhCoefficients<T> dh{std::vector<T>(S.B), std::vector<T>(S.B), std::vector<T>(S.B)};
  std::vector<T> &A2 = dh.A2, &B2 = dh.B2, &C2 = dh.C2;
  for (idx b = 0; b < S.B; ++b) {
    gb2.data_ptr<T>()[b] = (T)a2[2 * b];
    gg2.data_ptr<T>()[b] = (T)a2[2 * b + 1];
    const double g = (double)p.g2.data_ptr<T>()[b] * is2[b];
    if (training) {
      A2[b] = (T)g;
      B2[b] = (T)(a2[2 * b] / M);
      C2[b] = (T)(is2[b] * a2[2 * b + 1] / M);
    } else {
      A2[b] = (T)g; B2[b] = T(0); C2[b] = T(0);
    }
  }
  return dh;
}

// The conv1 backward prefetches the next tile's rows of dz2, h and x in the AVX2 build only. Measured on an Intel
// Xeon (dense block 1, interleaved A/B): AVX2 conv1 backward 98-103 -> 95-97 ms; AVX-512, whose faster FMAs leave
// the phase bound by the core's memory bandwidth, 78-83 -> 90-92 ms (the prefetches compete with the epilogue's
// read-modify-write of the buffer gradient).
constexpr bool kPrefetchConv1 = FER_ISA_LEVEL == 1;

// Conv1 backward with the BN1-ReLU recomputed: dh from dz2 and BN2's coefficients, dW1 (into gw1) += dh a^T,
// da = W1^T dh, dz1 = da * [a > 0], gbuf += A1 * dz1. Returns the per-channel sums of dz1 and dz1 * xhat,
// interleaved (2C).
template <typename T>
std::vector<double> conv1_backward(const Backward<T>& bw, const LayerNorms<T>& nm, const DhCoefficients<T>& dhc,
                                   const Layer& p, const T* hl, idx C, at::Tensor& gw1) {
  const Shape& S = bw.S;
  const int nt = bw.nt;
  const idx ntile1 = bw.ntile1;
  const T* buf = bw.buf;
  T* gbuf = bw.gbuf;
  const T* dz2 = bw.dz2;
  const at::Tensor& w1 = p.w1;
  const std::vector<T> &s1 = nm.s1, &t1 = nm.t1, &hmeanT = nm.hmeanT, &xmeanT = nm.xmeanT, &xisT = nm.xisT;
  const std::vector<double>& is1 = nm.is1;
  const std::vector<T> &A2 = dhc.A2, &B2 = dhc.B2, &C2 = dhc.C2;
  const at::TensorOptions& opts = bw.opts;
  std::vector<T> A1(C);
  for (idx c = 0; c < C; ++c) A1[c] = (T)((double)p.g1.data_ptr<T>()[c] * is1[c]);
  std::vector<T> dw1_acc((size_t)(nt * S.B * C), T(0));
  ThreadAcc acc1(2 * C);
  const idx total1 = S.N * ntile1;
  const auto w1tp = pack1x1(w1.data_ptr<T>(), S.B, C, true);  // W1^T: Cout = C, Cin = B
  dynamic_for(total1, [&](auto next) {
    const idx ld = tile1x1_ld(S.HW);
    std::vector<T> a((size_t)(C * ld)), dh((size_t)(S.B * ld)), da(use_direct<T>() ? 0 : (size_t)(C * ld));
    T* dw1 = dw1_acc.data() + (idx)at::get_thread_num() * S.B * C;
    double* acc = acc1.mine();
    // Per-tile float sums of v and v * xhat, a vector per channel each.
    VecBuffer<float> st1(use_direct<T>() ? (size_t)(2 * C) : 0);
    for (idx it = next(), nxt; it < total1; it = nxt) {
      nxt = next();  // one item ahead: its rows of dz2, h and x are prefetched during this item's da
      const idx n = it / ntile1, p0 = (it % ntile1) * kTile1x1, P = std::min(kTile1x1, S.HW - p0);
      RowPrefetch pf;
      if (nxt < total1 && use_direct<T>() && kPrefetchConv1)
        pf = prefetch_pixel_tile<T>(S, nxt, ntile1,
                                    {{dz2, S.B * S.HW, S.B}, {hl, S.B * S.HW, S.B}, {buf, S.Ctot * S.HW, C}});
      for (idx b = 0; b < S.B; ++b) {
        const T* d = dz2 + (n * S.B + b) * S.HW + p0;
        const T* hh = hl + (n * S.B + b) * S.HW + p0;
        T* o = dh.data() + b * ld;
        const T A = A2[b], Bc = B2[b], Cc = C2[b], mu = hmeanT[b];
#pragma omp simd
        for (idx q = 0; q < P; ++q) o[q] = A * ((d[q] - Bc) - Cc * (hh[q] - mu));
        for (idx q = P; q < ld; ++q) o[q] = T(0);
      }
      const T* xn = buf + n * S.Ctot * S.HW;
      pack_bnrelu(xn, S.HW, C, p0, P, s1.data(), t1.data(), a.data(), ld);
      gemm_rm<T>(false, true, S.B, C, P, dh.data(), ld, a.data(), ld, T(1), dw1, C);
      T* gn = gbuf + n * S.Ctot * S.HW + p0;
      if constexpr (use_direct<T>()) {
        // da = W1^T dh, a Block of channels x pixels at a time, finished in registers: v = da * [a > 0],
        // gbuf += A1 * v, and v's sums (columns past P: da = 0, so v = 0 there).
        st1.zero();
        const idx nq_tile = (P + kStrip - 1) / kStrip, nblocks = (C + kRows - 1) / kRows * nq_tile;
        conv1x1_direct<true>(dh.data(), ld, S.B, C, w1tp.data(), P, [&](idx c0, idx nj, idx q, const float* r) {
          pf.progress(c0 / kRows * nq_tile + q / kStrip + 1, nblocks);
          const idx nq = std::min<idx>(kStrip, P - q);
          for (idx j = 0; j < nj; ++j) {
            const idx c = c0 + j;
            const float* aa = a.data() + c * ld + q;  // zero past P, so v = 0 there
            const float* xx = xn + c * S.HW + p0 + q;
            float* g = gn + c * S.HW + q;
            float xt[kStrip] = {0}, gt[kStrip];  // a strip cut by the tile's end: through a full copy
            if (nq < kStrip) {
              std::memcpy(xt, xx, sizeof(float) * nq);
              std::memcpy(gt, g, sizeof(float) * nq);
              xx = xt;
              g = gt;
            }
            const vec<float> A = vbroadcast(A1[c]), mu = vbroadcast(xmeanT[c]), is = vbroadcast(xisT[c]);
            vec<float> sv = st1[2 * c], sx = st1[2 * c + 1];
            for (int h = 0; h < 2; ++h) {
              const vec<float> rv = vload(r + j * kStrip + kLanes * h);
              const vec<float> v = vload(aa + kLanes * h) > vec<float>{} ? rv : vec<float>{};
              const vec<float> xh = (vload(xx + kLanes * h) - mu) * is;
              sv += v;
              sx += v * xh;
              vstore(g + kLanes * h, A * v + vload(g + kLanes * h));
            }
            if (nq < kStrip) std::memcpy(gn + c * S.HW + q, gt, sizeof(float) * nq);
            st1[2 * c] = sv;
            st1[2 * c + 1] = sx;
          }
        });
        for (idx i = 0; i < 2 * C; ++i) acc[i] += (double)hsum<float>(st1[i]);
        continue;
      }
      gemm_rm<T>(true, false, C, P, S.B, w1.data_ptr<T>(), C, dh.data(), ld, T(0), da.data(), ld);
      for (idx c = 0; c < C; ++c) {
        const T* d = da.data() + c * ld;
        const T* aa = a.data() + c * ld;
        const T* xx = xn + c * S.HW + p0;
        T* g = gn + c * S.HW;
        const T mu = xmeanT[c], is = xisT[c], A = A1[c];
        T s = 0, sx = 0;  // <= kTile1x1 terms, in T so that the loop vectorises
#pragma omp simd reduction(+ : s, sx)
        for (idx q = 0; q < P; ++q) {
          const T v = aa[q] > T(0) ? d[q] : T(0);
          g[q] += A * v;
          s += v;
          sx += v * ((xx[q] - mu) * is);
        }
        acc[2 * c] += s;
        acc[2 * c + 1] += sx;
      }
    }
  });
  gw1 = sum_thread_partials<T>(dw1_acc, nt, S.B * C, {S.B, C, 1, 1}, opts);
  return acc1.sum();
}

// BN1 backward: dgamma1 and dbeta1 (into gg1, gb1) from the sums a1 of dz1 and dz1 * xhat; in training, the batch
// terms of the input gradient, which multiply per-channel constants, go to the deferred alpha and beta.
template <typename T>
void bn1_backward(Backward<T>& bw, const LayerNorms<T>& nm, const Layer& p, idx C, const std::vector<double>& a1,
                  at::Tensor& gg1, at::Tensor& gb1) {
  const bool training = bw.training;
  const double M = bw.M;
  const std::vector<double>& is1 = nm.is1;
  const at::TensorOptions& opts = bw.opts;
  gb1 = at::empty({C}, opts);
  gg1 = at::empty({C}, opts);
  for (idx c = 0; c < C; ++c) {
    gb1.data_ptr<T>()[c] = (T)a1[2 * c];
    gg1.data_ptr<T>()[c] = (T)a1[2 * c + 1];
    if (training) {
      const double g = (double)p.g1.data_ptr<T>()[c] * is1[c];
      bw.alpha[c] -= g * (a1[2 * c] / M);
      bw.beta[c] -= g * (is1[c] * a1[2 * c + 1] / M);
    }
  }
}

template <typename T>
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
backward_impl(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& hsaved, const at::Tensor& xmean,
              const at::Tensor& xvar, const at::Tensor& hmean, const at::Tensor& hvar,
              const std::vector<Layer>& layers, bool training, double eps) {
  Backward<T> bw;
  Shape& S = bw.S;
  S.N = out.size(0); S.Ctot = out.size(1); S.H = out.size(2); S.W = out.size(3); S.HW = S.H * S.W;
  S.L = (idx)layers.size(); S.k = layers[0].w2.size(0); S.B = layers[0].w1.size(0);
  S.C0 = S.Ctot - S.L * S.k;
  bw.training = training;
  bw.eps = eps;
  bw.M = (double)(S.N * S.HW);
  bw.opts = out.options();
  at::Tensor gbuf_t = grad_out.contiguous().clone();
  bw.gbuf = gbuf_t.data_ptr<T>();
  bw.buf = out.data_ptr<T>();
  at::Tensor htmp = hsaved.numel() == 0 ? at::empty({S.N, S.B, S.HW}, bw.opts) : at::Tensor();
  at::Tensor dz2_t = at::empty({S.N, S.B, S.HW}, bw.opts);
  bw.dz2 = dz2_t.data_ptr<T>();
  bw.xmean = training ? xmean.data_ptr<double>() : nullptr;
  bw.alpha.assign((size_t)(S.Ctot - S.k), 0.0);
  bw.beta.assign((size_t)(S.Ctot - S.k), 0.0);
  bw.nt = at::get_num_threads();
  bw.R = std::max<idx>(1, std::min<idx>(S.H, kTile3x3 / S.W));
  bw.ntile3 = (S.H + bw.R - 1) / bw.R;
  bw.ntile1 = (S.HW + kTile1x1 - 1) / kTile1x1;
  std::vector<at::Tensor> gg1(S.L), gb1(S.L), gw1(S.L), gg2(S.L), gb2(S.L), gw2(S.L);
  PhaseTimer timer;
  for (idx l = S.L - 1; l >= 0; --l) {
    const Layer& p = layers[l];
    const idx C = S.C0 + l * S.k;
    const LayerNorms<T> nm = layer_norms(bw, p, l, xmean, xvar, hmean, hvar);
    const T* hl = layer_h(bw, nm, p, l, hsaved, htmp);
    // The gradient of this layer's own k channels is complete: every later layer has added to it.
    if (training && l < S.L - 1) apply_deferred(bw, C, S.k, bw.gbuf + C * S.HW, S.Ctot);
    timer.mark(0);
    const std::vector<double> a2 = conv2_backward(bw, nm, p, hl, C, gw2[l]);
    const DhCoefficients<T> dhc = bn2_backward(bw, nm, p, a2, gg2[l], gb2[l]);
    timer.mark(1);
    const std::vector<double> a1 = conv1_backward(bw, nm, dhc, p, hl, C, gw1[l]);
    bn1_backward(bw, nm, p, C, a1, gg1[l], gb1[l]);
    timer.mark(2);
  }
  at::Tensor gx = at::empty({S.N, S.C0, S.H, S.W}, bw.opts);
  if (training) apply_deferred(bw, 0, S.C0, gx.data_ptr<T>(), S.C0);
  else gx.copy_(gbuf_t.narrow(1, 0, S.C0));
  timer.mark(3);
  return {gx, gg1, gb1, gw1, gg2, gb2, gw2};
}

// The backward's saved tensors, as the forward returned them: out (N, Ctot, H, W), contiguous (read in place), and
// grad_out of its shape; h (L, N, B, H, W) of out's dtype in training, empty or so in eval (empty: recomputed); the
// statistics float64 (training), (Ctot) for the buffer channels and (L, B) = hstats values for h.
void check_saved(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& h, const at::Tensor& xmean,
                 const at::Tensor& xvar, const at::Tensor& hmean, const at::Tensor& hvar, idx hstats, bool training) {
  TORCH_CHECK(out.is_contiguous(), "out: expected a contiguous tensor");
  check_same_device(grad_out, out, "grad_out", "out");
  TORCH_CHECK(grad_out.sizes() == out.sizes(), "grad_out: expected out's shape ", out.sizes(), ", got ",
              grad_out.sizes());
  const idx hsize = hstats * out.size(0) * out.size(2) * out.size(3);
  if (training || h.numel() != 0) {
    check_same(h, out, "h", "out");
    TORCH_CHECK(h.numel() == hsize, "h: expected ", hsize, " values (L, N, B, H, W), got shape ", h.sizes());
  }
  if (!training) return;
  for (const at::Tensor* t : {&xmean, &xvar, &hmean, &hvar}) {
    check_same_device(*t, out, "dense_block statistics", "out");
    TORCH_CHECK(t->scalar_type() == at::kDouble, "dense_block statistics: expected float64, got ", t->scalar_type());
  }
  TORCH_CHECK(xmean.numel() == out.size(1) && xvar.numel() == out.size(1), "xmean, xvar: expected ", out.size(1),
              " values, got ", xmean.numel(), " and ", xvar.numel());
  TORCH_CHECK(hmean.numel() == hstats && hvar.numel() == hstats, "hmean, hvar: expected ", hstats,
              " values (L, B), got ", hmean.numel(), " and ", hvar.numel());
}

}  // namespace

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>>
dense_block_backward_cpu(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& h,
                         const at::Tensor& xmean, const at::Tensor& xvar, const at::Tensor& hmean,
                         const at::Tensor& hvar, at::TensorList norm1_weight, at::TensorList norm1_bias,
                         at::TensorList norm1_mean, at::TensorList norm1_var, at::TensorList conv1_weight,
                         at::TensorList norm2_weight, at::TensorList norm2_bias, at::TensorList norm2_mean,
                         at::TensorList norm2_var, at::TensorList conv2_weight, bool training, double eps) {
  auto layers = make_layers(norm1_weight, norm1_bias, norm1_mean, norm1_var, conv1_weight, norm2_weight,
                            norm2_bias, norm2_mean, norm2_var, conv2_weight);
  check_dim(out, 4, "out", "(N, C0 + L*k, H, W)");
  const idx L = (idx)layers.size(), C0 = out.size(1) - L * layers[0].w2.size(0);
  check_inputs(out.narrow(1, 0, C0), layers, training);
  check_saved(grad_out, out, h, xmean, xvar, hmean, hvar, L * layers[0].w1.size(0), training);
  at::Tensor hc = h.contiguous(), xm = xmean.contiguous(), xv = xvar.contiguous(), hm = hmean.contiguous(),
             hv = hvar.contiguous();
  if (out.scalar_type() == at::kFloat)
    return backward_impl<float>(grad_out.to(out.scalar_type()), out, hc, xm, xv, hm, hv, layers, training, eps);
  return backward_impl<double>(grad_out.to(out.scalar_type()), out, hc, xm, xv, hm, hv, layers, training, eps);
}

FER_ISA_END

// Why here: each kernel file registers its own CPU kernels (CONVENTIONS rule 1).
FER_REGISTER_CPU_OP(dense_block)
