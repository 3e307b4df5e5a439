// bilinear CPU kernels: bilinear pooling (signed sqrt, L2 norm) and the fused bilinear classifier.
//
// Math (DESIGN section 4), per sample n, A = a[n] (Ca, L), B = b[n] (Cb, L):
//   Y = A B^T (/ L if mean),  s = sign(Y) sqrt(|Y| + eps),  z = s / max(||s||, 1e-12),  logits = W z + bias.
// Tiling: Y is produced by a register-blocked micro-kernel (6 rows x 2 SIMD vectors of columns, k-loop over L)
// reading A and a zero-padded transpose Bt of B in contiguous (L, nr) column panels; the epilogue (scale, signed
// sqrt, ||s||^2, and for the classifier the class products) runs on the accumulators in registers. Past 8x8
// locations the GEMMs dominate: pool forward and classifier run as batched BLAS GEMMs with fused elementwise passes
// (the *_gemm functions).
// The classifier, up to 8x8 locations and kRegisterClasses classes, works on tiles of RB rows x CBc columns of Y; a
// thread owns a set of row blocks and loops over all samples inside, so each tile's K-class weight slab is read from
// memory once per pass, and the class products run per sample in registers. It never materialises z or Y for the
// batch: forward saves a, b, the per-sample norms and the logits; backward recomputes the Y tiles and uses
// <z, dz> = sum_k dlogits_k (logits_k - bias_k), so ds is tile-local. On larger maps or with more classes the
// GEMMs dominate and the classifier runs as batched BLAS GEMMs with fused elementwise passes (classifier_*_gemm).
// At Y = 0 the gradient through the signed sqrt is 0 (sign(0) = 0, as autograd on the reference).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if __has_include(<unistd.h>)
#include <unistd.h>  // sysconf
#endif

#include "bilinear_checks.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

FER_ISA_BEGIN
namespace {

// 2 sign(y) sqrt(|y| + eps), with sign(0) = 0: twice the signed square root (root_pair's factor 2, for the caller
// to fold into its own scale factors).
template <typename T>
FER_INLINE vec<T> signed_sqrt2_v(vec<T> y, T eps) {
  vec<T> root2, unused;
  root_pair(vabs<T>(y) + eps, root2, unused);  // at y = 0 with eps = 0, root2 is NaN but not selected
  return y != vec<T>{} ? vwith_sign<T>(root2, y) : vec<T>{};
}
// sign(y) * sqrt(|y| + eps), with sign(0) = 0.
template <typename T>
FER_INLINE vec<T> signed_sqrt_v(vec<T> y, T eps) {
  return signed_sqrt2_v(y, eps) * T(0.5);
}
// Micro-tile rows: 6 x 2 vectors = 12 accumulators, enough to hide the FMA latency; with AVX-512's 32 registers
// 12 x 2, half the loads per FMA (EIFN's classifier fwd+bwd on an Intel Xeon: 20.4-21.0 -> 19.7-20.0 ms).
constexpr int MR = FER_ISA_LEVEL == 2 ? 12 : 6;
template <typename T>
constexpr int NR() { return 2 * Simd<T>::n; }  // micro-tile columns (2 vectors)

// acc[r][v] = sum_k P(r, k) * Q[k * qs + v * n .. +n], r < R: a register-blocked GEMM micro-kernel. P(r, k) is
// P[r * ps + k] (rows of P contiguous), or P[k * ps + r] with ColP (columns contiguous): the layout is a template
// parameter, so every caller gets code with the unit stride known. Always inlined: as a call, the accumulators
// would go through memory.
template <typename T, int R, bool ColP>
FER_INLINE void micro(const T* P, int64_t ps, const T* Q, int64_t qs, int64_t kdim, vec<T> acc[MR][2]) {
  Tile<T, R> t;
  for (int64_t k = 0; k < kdim; ++k) t.step(Q + k * qs, ColP ? P + k * ps : P + k, ColP ? 1 : ps);
  // Through spill's vector stores: element-wise copies (acc[r][v] = t.acc[r][v]) made GCC 12 keep a copy of the tile
  // on the stack, one store per FMA inside the k-loop (AVX2 build; half the Y kernel's speed).
  t.spill(reinterpret_cast<T*>(acc));
}

// f(std::integral_constant<int, v>{}) for a runtime 1 <= v <= Max (v < 1 runs 1): a register-blocked kernel
// instantiated for every block height it meets.
template <int Max, typename F>
inline void with_count(int v, const F& f) {
  if constexpr (Max > 1) {
    if (v >= Max) return f(std::integral_constant<int, Max>{});
    return with_count<Max - 1>(v, f);
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// The micro-kernel for 1 <= rows <= MR. Full height, the common case, is forced inline into the caller, so that its
// accumulators stay in registers rather than going through memory across a call.
template <typename T, bool ColP>
__attribute__((always_inline)) inline void micro_rows(int rows, const T* P, int64_t ps, const T* Q, int64_t qs,
                                                      int64_t kdim, vec<T> acc[MR][2]) {
  if (rows == MR) return micro<T, MR, ColP>(P, ps, Q, qs, kdim, acc);
  with_count<MR - 1>(rows, [&](auto R) { micro<T, R.value, ColP>(P, ps, Q, qs, kdim, acc); });
}

// Rows of the one-vector register tile (gemm_acc_narrow): twice MR, as many accumulators as the MR x 2 tile.
constexpr int MR1 = 2 * MR;

// Columns [j0, j0 + count) of Q's kdim rows (row stride qs), zero-padded to width columns, in a thread-local buffer:
// the partial column block of gemm_acc / gemm_acc_narrow, so that it runs through the vector kernels too.
template <typename T>
const T* padded_columns(const T* Q, int64_t qs, int64_t kdim, int64_t j0, int64_t count, int64_t width) {
  thread_local AlignedBuffer<T> buf;
  buf.resize((size_t)(kdim * width));
  for (int64_t k = 0; k < kdim; ++k)
    for (int64_t j = 0; j < count; ++j) buf[k * width + j] = Q[k * qs + j0 + j];
  return buf.data();
}

// gemm_acc for ncols <= n, one vector of columns (4x4 = 16 locations in the AVX-512 build): an MR x 2 tile would
// spend half its FMAs on zero padding, so this one is MR1 rows x 1 vector. Columns past ncols come from a
// zero-padded copy of Q, and only the first ncols of each row of C are written.
template <typename T, bool ColP>
void gemm_acc_narrow(int64_t M, int64_t ncols, int64_t kdim, const T* P, int64_t ps, const T* Q, int64_t qs, T* C,
                     int64_t cs) {
  constexpr int n = Simd<T>::n;
  if (ncols < n) {
    Q = padded_columns(Q, qs, kdim, 0, ncols, n);
    qs = n;
  }
  for (int64_t m0 = 0; m0 < M; m0 += MR1) {
    const T* Pm = ColP ? P + m0 : P + m0 * ps;
    auto block = [&](auto R) FER_INLINE_LAMBDA {
      Tile<T, R.value, 1> t;
      for (int64_t k = 0; k < kdim; ++k) t.step(Q + k * qs, ColP ? Pm + k * ps : Pm + k, ColP ? 1 : ps);
#pragma GCC unroll 32
      for (int r = 0; r < R.value; ++r) {
        T* c = C + (m0 + r) * cs;
        if (ncols == n) {
          vstore(c, vload(c) + t.acc[r][0]);
        } else {
          T buf[n];
          vstore(buf, t.acc[r][0]);
          for (int64_t j = 0; j < ncols; ++j) c[j] += buf[j];
        }
      }
    };
    const int rows = (int)std::min<int64_t>(MR1, M - m0);
    if (rows == MR1) block(std::integral_constant<int, MR1>{});
    else with_count<MR1 - 1>(rows, block);
  }
}

// C[m * cs + j] += sum_k P(m, k) * Q[k * qs + j] for m < M, j < ncols (any sizes; P(m, k) as in micro). The vector
// micro-kernel runs on full column blocks; the last, partial block goes through the same micro-kernel on a
// zero-padded copy of its Q columns, so that it stays vectorised too.
template <typename T, bool ColP>
__attribute__((always_inline)) inline void gemm_acc(int64_t M, int64_t ncols, int64_t kdim, const T* P, int64_t ps,
                                                    const T* Q, int64_t qs, T* C, int64_t cs) {
  constexpr int n = Simd<T>::n, nr = NR<T>();
  if (ncols <= n) return gemm_acc_narrow<T, ColP>(M, ncols, kdim, P, ps, Q, qs, C, cs);
  const int64_t full = ncols / nr * nr, tail = ncols - full;
  const T* qtail = tail ? padded_columns(Q, qs, kdim, full, tail, nr) : nullptr;
  vec<T> acc[MR][2];
  T buf[nr];
  for (int64_t m0 = 0; m0 < M; m0 += MR) {
    const int rows = (int)std::min<int64_t>(MR, M - m0);
    const T* Pm = ColP ? P + m0 : P + m0 * ps;
    for (int64_t j0 = 0; j0 < full; j0 += nr) {
      micro_rows<T, ColP>(rows, Pm, ps, Q + j0, qs, kdim, acc);
      for (int r = 0; r < rows; ++r) {
        T* c = C + (m0 + r) * cs + j0;
        vstore(c, vload(c) + acc[r][0]);
        vstore(c + n, vload(c + n) + acc[r][1]);
      }
    }
    if (tail) {
      micro_rows<T, ColP>(rows, Pm, ps, qtail, nr, kdim, acc);
      for (int r = 0; r < rows; ++r) {
        vstore(buf, acc[r][0]);
        vstore(buf + n, acc[r][1]);
        T* c = C + (m0 + r) * cs + full;
        for (int64_t j = 0; j < tail; ++j) c[j] += buf[j];
      }
    }
  }
}

// Bt[n, p, l, q] = B[n, p * nr + q, l]: B transposed into panels of nr columns, each a contiguous (L, nr) block,
// zero-padded to cbp columns. A micro-kernel streams one panel; with a row-major (L, cbp) transpose its L rows
// would lie cbp elements apart, a power of two that maps them all to a few cache sets (L1 and L2 thrash once L is
// more than a few dozen). The panel of column j0 starts at n * L * cbp + j0 * L.
template <typename T>
at::Tensor transpose_panels(const at::Tensor& b3, int64_t cbp) {
  constexpr int64_t nr = NR<T>();
  const int64_t N = b3.size(0), Cb = b3.size(1), L = b3.size(2);
  at::Tensor bt = at::empty({N, cbp / nr, L, nr}, b3.options());
  const T* src = b3.data_ptr<T>();
  T* dst = bt.data_ptr<T>();
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      if (cbp > Cb) {  // the last panel's padding columns (only they need zeros)
        T* last = dst + n * L * cbp + (cbp / nr - 1) * L * nr;
        for (int64_t l = 0; l < L; ++l) std::fill(last + l * nr + (Cb - (cbp - nr)), last + (l + 1) * nr, T(0));
      }
      for (int64_t j = 0; j < Cb; ++j) {
        T* panel = dst + n * L * cbp + (j / nr) * L * nr + j % nr;
        const T* row = src + (n * Cb + j) * L;
        for (int64_t l = 0; l < L; ++l) panel[l * nr] = row[l];
      }
    }
  });
  return bt;
}


// The Y = A B^T micro-tiles of one sample's tile (rows [i_begin, i_end) x columns [j_begin, j_end)), handed to an
// epilogue by get(i0, rows, j0, acc): the micro-kernel with the whole L as its k-loop, so Y never leaves registers.
// The tile kernels run up to kGemmLocations (64) locations, where the loop's operands (6 rows of A and an (L, nr)
// panel) stay in L1; larger maps take the GEMM paths.
template <typename T>
struct YTile {
  const T* A;   // a3 (N, Ca, L)
  const T* Bt;  // panels of b (see transpose_panels)
  int64_t Ca, L, cbp;
  int64_t s_n = 0;
  YTile(const T* A_, const T* Bt_, int64_t Ca_, int64_t L_, int64_t cbp_) : A(A_), Bt(Bt_), Ca(Ca_), L(L_), cbp(cbp_) {}
  void prepare(int64_t n, int64_t, int64_t, int64_t, int64_t) { s_n = n; }
  void get(int64_t i0, int rows, int64_t j0, vec<T> acc[MR][2]) const {
    micro_rows<T, false>(rows, A + (s_n * Ca + i0) * L, L, Bt + s_n * L * cbp + j0 * L, NR<T>(), L, acc);
  }
};

// Up to this many classes the class contractions run on the Y tile in registers (a K-vector dot per vector of
// s in forward, dz = sum_k dl_k W_k with the dl_k in registers in backward); with more, their loads dominate and
// the classifier takes the GEMM path (use_gemm_path).
constexpr int64_t kRegisterClasses = 8;
// Samples per chunk of the dW accumulation (the chunk's z buffer stays in L2 beside the two weight slabs: at EIFN's
// shape 8 x 24 rows x 256 or 512 floats, classifier_backward_bytes).
constexpr int64_t kChunkRegister = 8;

// One core's L1 data (level 1) or L2 (level 2) cache in bytes, as the C library reports it (sysconf); fallback
// where it does not.
inline int64_t cache_bytes(int level, int64_t fallback) {
  long v = -1;
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
  v = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_SIZE : _SC_LEVEL2_CACHE_SIZE);
#endif
  return v > 0 ? (int64_t)v : fallback;
}
inline int64_t l1_cache_bytes() {
  static const int64_t bytes = cache_bytes(1, (int64_t)32 << 10);
  return bytes;
}
inline int64_t l2_cache_bytes() {
  static const int64_t bytes = cache_bytes(2, (int64_t)1 << 20);
  return bytes;
}

// Backward weight-slab budget: the weight slab, its gradient slab and the chunk's z buffer (about 2 + 8/K slabs)
// take about half of L2. At EIFN's shape (K = 7) that is 24 x 512 tiles with a 2 MiB L2, 24 x 256 with 1 MiB; the
// fixed 128 KiB before (12 x 256 tiles once the AVX-512 micro-tile grew to 12 rows) was 3% slower fwd+bwd on an
// Intel Xeon with 2 MiB L2 (session 14, 2 threads, interleaved A/B: 19.05 against 18.43 ms).
inline int64_t classifier_backward_bytes() { return std::max<int64_t>(128 * 1024, l2_cache_bytes() / 6); }
// The backward's tiles keep at least this many rows (their columns halve until the slab fits): dB += dY^T A runs a
// k-loop over the tile's rows. In the AVX2 build (6-row micro-tiles) 32 gave 18 -> 42-row tiles at EIFN's shape and
// backward 9.6-9.8 -> 9.3 ms (Intel Xeon, 2 threads, interleaved A/B; 48 the same, 64 and 96 slower); the AVX-512
// build (a one-vector dA / dB tile) measured 16 and 32 within 1%, 48 2% slower, and keeps 16.
constexpr int64_t kBackwardMinRows = FER_ISA_LEVEL == 1 ? 32 : 16;

// Tile of the classifier: up to RB rows x CBc columns of Y; the K <= kRegisterClasses weight rows of a tile
// (K * RB * CBc elements) take at most `bytes` of L2 (a slab is re-read for every sample), and CBc is at most
// max_cols where that is given (the forward's L1 bound, forward_max_cols).
// The row blocks split the ceil(Ca / MR) micro-tile rows as evenly as whole micro-tiles allow, and their count is a
// multiple of the thread count where there are enough: with equal blocks of RB rows the last one was short and one
// thread idled for up to a block at the end (EIFN's backward in the AVX2 build: 11 blocks of 48 rows, the second
// thread's finish 8.0-10.6 ms against the first's 9.0-9.1).
struct Tiling {
  int64_t rb, cbc, n_rb, n_cb, units, Ca;
  // First row of row block `blk` (blk <= n_rb; n_rb gives Ca).
  int64_t row(int64_t blk) const { return std::min(Ca, blk * units / n_rb * MR); }
};
Tiling classifier_tiling(int64_t Ca, int64_t Cb, int64_t K, int64_t elem, int64_t nr, int64_t bytes,
                         int64_t min_rows, int64_t max_cols = INT64_MAX) {
  const int64_t budget = bytes / std::max<int64_t>(elem * std::max<int64_t>(K, 1), 1);  // elements per tile
  int64_t cbc = round_up(Cb, nr);
  while (cbc > nr && (min_rows * cbc > budget || cbc > max_cols)) cbc = round_up(cbc / 2, nr);
  const int64_t units = (Ca + MR - 1) / MR, per_block = std::max<int64_t>(1, budget / cbc / MR);
  int64_t n_rb = (units + per_block - 1) / per_block;
  // Enough row blocks for every thread to have work, and a multiple of the thread count where there are enough.
  const int64_t threads = at::get_num_threads();
  n_rb = std::max(n_rb, std::min(units, 2 * threads));
  if (n_rb >= threads) n_rb = std::min(units, round_up(n_rb, threads));
  const int64_t rb = (units + n_rb - 1) / n_rb * MR;  // the largest block
  return {rb, cbc, n_rb, (round_up(Cb, nr) + cbc - 1) / cbc, units, Ca};
}

// The forward's tile columns: the weights of one micro-tile row (MR rows, K classes) in half of L1, so they stay
// there while the samples go by; unbounded (the L2 budget alone) where that leaves fewer than 4 column panels, too
// few micro-tiles per sample to pay for saving and restoring its K + 1 vector sums. In the AVX2 build at EIFN's shape
// (K = 7, 48 KiB L1) that is 128 columns: forward 3.60-3.73 -> 3.41-3.49 ms against 512-column tiles with the samples
// outer (Intel Xeon, 2 threads, interleaved A/B, 5 rounds); the AVX-512 build (12-row micro-tiles) would get 2
// panels, and measured no gain from 64 or 128 columns.
inline int64_t forward_max_cols(int64_t K, int64_t elem, int64_t nr) {
  const int64_t cols = l1_cache_bytes() / 2 / (MR * std::max<int64_t>(K, 1) * elem) / nr * nr;
  return cols >= 4 * nr ? cols : INT64_MAX;
}

// ------------------------------------------------------------------------------------------------------------------
// Pool forward: z[n, i*Cb + j] = s / max(||s_n||, 1e-12) (or s). Returns (z, norms) with norms = ||s_n||.
// Parallel over samples (or, with fewer than 2 per thread, over (sample, row block)); the Y micro-tile goes
// through the epilogue in registers and is stored once, then scaled by 1/||s||. Saves for backward (in Python):
// a, b, z, norms.
template <typename T>
std::tuple<at::Tensor, at::Tensor> pool_forward_impl(const at::Tensor& a, const at::Tensor& b, double eps_d,
                                                     bool signed_sqrt, bool l2_normalize, bool mean) {
  constexpr int n = Simd<T>::n, nr = NR<T>();
  const int64_t N = a.size(0), Ca = a.size(1), Cb = b.size(1), L = a.size(2) * a.size(3);
  const at::Tensor a3 = a.reshape({N, Ca, L}).contiguous(), b3 = b.reshape({N, Cb, L}).contiguous();
  const int64_t cbp = round_up(Cb, nr);
  const at::Tensor bt = transpose_panels<T>(b3, cbp);
  at::Tensor z = at::empty({N, Ca * Cb}, a.options());
  const int64_t rb = 32, n_rb = (Ca + rb - 1) / rb;
  std::vector<double> part(N * n_rb, 0.0);
  const T eps = (T)eps_d, scale = mean ? T(1) / T(L) : T(1);
  const T* A = a3.data_ptr<T>();
  const T* Bt = bt.data_ptr<T>();
  T* Z = z.data_ptr<T>();
  at::Tensor norms = at::empty({N}, a.options());
  T* nrm = norms.data_ptr<T>();
  const int64_t D = Ca * Cb;
  // ||s_n|| from its row blocks' partial sums, in block order (the same result for either schedule below).
  auto finish_sample = [&](int64_t s_n) {
    double acc = 0;
    for (int64_t r = 0; r < n_rb; ++r) acc += part[s_n * n_rb + r];
    nrm[s_n] = (T)std::sqrt(acc);
    return T(1) / std::max<T>(nrm[s_n], T(1e-12));
  };
  auto scale_sample = [&](int64_t s_n, T f, int64_t e0, int64_t e1) {
    T* zn = Z + s_n * D;
    for (int64_t e = e0; e < e1; ++e) zn[e] *= f;
  };
  // Row block t = (sample, block of rb rows): Y through the epilogue, stored once; part[t] = its sum of s^2.
  auto row_block = [&](int64_t t, YTile<T>& yt) {
    vec<T> acc[MR][2];
    T tmp[nr];
    const int64_t s_n = t / n_rb, i_begin = (t % n_rb) * rb, i_end = std::min(Ca, i_begin + rb);
    yt.prepare(s_n, i_begin, i_end, 0, cbp);
    vec<T> sq{};
    // Column panel outer, rows inner: one (L, nr) panel of Bt and the block's rows of A stay in cache
    // (with the rows outer, every row group would stream all of Bt[n], 1.6 MB at 28x28 and 512 channels).
    for (int64_t j0 = 0; j0 < cbp; j0 += nr) {
      for (int64_t i0 = i_begin; i0 < i_end; i0 += MR) {
        const int rows = (int)std::min<int64_t>(MR, i_end - i0);
        yt.get(i0, rows, j0, acc);
        const bool full = j0 + nr <= Cb;
        for (int r = 0; r < rows; ++r) {
          T* out = Z + s_n * D + (i0 + r) * Cb + j0;
          for (int v = 0; v < 2; ++v) {
            vec<T> s = acc[r][v] * scale;
            if (signed_sqrt) s = signed_sqrt_v(s, eps);
            if (full) {
              vstore(out + v * n, s);
            } else {  // padded columns hold Y = 0 -> s = 0 (or s = 0 with signed_sqrt off): store the valid ones
              vstore(tmp + v * n, s);
            }
            sq += s * s;
          }
          if (!full)
            for (int64_t j = 0; j < Cb - j0; ++j) out[j] = tmp[j];
        }
      }
    }
    part[t] = (double)hsum<T>(sq);
  };
  if (N >= 2 * at::get_num_threads()) {
    // Whole samples per task: z[n] is scaled by 1/||s_n|| right after it is written, while it is in cache
    // (a separate pass would re-read all of z from memory).
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      YTile<T> yt(A, Bt, Ca, L, cbp);
      for (int64_t s_n = n0; s_n < n1; ++s_n) {
        for (int64_t r = 0; r < n_rb; ++r) row_block(s_n * n_rb + r, yt);
        const T f = finish_sample(s_n);
        if (l2_normalize) scale_sample(s_n, f, 0, D);
      }
    });
  } else {  // few samples: parallel over row blocks too, then a scaling pass
    at::parallel_for(0, N * n_rb, 1, [&](int64_t t0, int64_t t1) {
      YTile<T> yt(A, Bt, Ca, L, cbp);
      for (int64_t t = t0; t < t1; ++t) row_block(t, yt);
    });
    std::vector<T> inv(N);
    for (int64_t s_n = 0; s_n < N; ++s_n) inv[s_n] = finish_sample(s_n);
    if (l2_normalize)
      at::parallel_for(0, N * D, 16384, [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1;) {
          const int64_t s_n = e / D, stop = std::min(e1, (s_n + 1) * D);
          scale_sample(s_n, inv[s_n], e - s_n * D, stop - s_n * D);
          e = stop;
        }
      });
  }
  return {z, norms};
}

// sum_e x[e] y[e] in double: float vectors over blocks of 512 elements (4 accumulators), each block's sum added in
// double (a scalar double loop would make one dependent add per element).
template <typename T>
double dot(const T* x, const T* y, int64_t count) {
  constexpr int64_t n = Simd<T>::n, block = 512;
  double total = 0;
  int64_t e = 0;
  for (; e + block <= count; e += block) {
    vec<T> c0{}, c1{}, c2{}, c3{};
    for (int64_t i = e; i < e + block; i += 4 * n) {
      c0 += vload(x + i) * vload(y + i);
      c1 += vload(x + i + n) * vload(y + i + n);
      c2 += vload(x + i + 2 * n) * vload(y + i + 2 * n);
      c3 += vload(x + i + 3 * n) * vload(y + i + 3 * n);
    }
    total += (double)hsum<T>((c0 + c1) + (c2 + c3));
  }
  for (; e < count; ++e) total += (double)x[e] * y[e];
  return total;
}

// Pool backward from the saved output: s = z * max(norm, 1e-12) and |s| = sqrt(|Y| + eps), so dY needs no Y:
// ds = (dz - z <z, dz>) / ||s||, dY = ds * (s != 0 ? 0.5 / |s| : 0) (/ L), then dA = dY B, dB = dY^T A (bmm).
template <typename T>
std::tuple<at::Tensor, at::Tensor> pool_backward_impl(const at::Tensor& grad_z, const at::Tensor& a,
                                                      const at::Tensor& b, const at::Tensor& z,
                                                      const at::Tensor& norms, bool signed_sqrt, bool l2_normalize,
                                                      bool mean) {
  const int64_t N = a.size(0), Ca = a.size(1), Cb = b.size(1), L = a.size(2) * a.size(3), D = Ca * Cb;
  const at::Tensor gz = grad_z.contiguous(), zc = z.contiguous(), nc = norms.contiguous();
  at::Tensor dy = at::empty({N, Ca, Cb}, a.options());
  const T* G = gz.data_ptr<T>();
  const T* Z = zc.data_ptr<T>();
  const T* NR_ = nc.data_ptr<T>();
  T* DY = dy.data_ptr<T>();
  const T scale = mean ? T(1) / T(L) : T(1);
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t s_n = n0; s_n < n1; ++s_n) {
      const T* g = G + s_n * D;
      const T* zz = Z + s_n * D;
      T* d = DY + s_n * D;
      const T norm = NR_[s_n], den = std::max<T>(norm, T(1e-12));
      const T proj = l2_normalize && norm >= T(1e-12) ? (T)dot(zz, g, D) : T(0);
      const T inv = l2_normalize ? T(1) / den : T(1), sfac = l2_normalize ? den : T(1);
      // ds = (dz - z <z, dz>) / ||s||; dY = ds * 0.5 / |s| where s != 0 (else 0), |s| = |z| ||s||; times 1/L if mean.
      auto dy_of = [&](auto zv, auto gv) {
        auto ds = (gv - zv * proj) * inv;
        if (!signed_sqrt) return ds * scale;
        const decltype(zv) zero{};
        const auto sa = zv * sfac, s = sa < zero ? -sa : sa;
        return s != zero ? ds * (T(0.5) * scale) / s : zero;
      };
      constexpr int64_t n = Simd<T>::n;
      int64_t e = 0;
      for (; e + n <= D; e += n) vstore(d + e, dy_of(vload(zz + e), vload(g + e)));
      for (; e < D; ++e) d[e] = dy_of(zz[e], g[e]);
    }
  });
  const at::Tensor a3 = a.reshape({N, Ca, L}), b3 = b.reshape({N, Cb, L});
  at::Tensor da = at::bmm(dy, b3).view(a.sizes());
  at::Tensor db = at::bmm(dy.transpose(1, 2), a3).view(b.sizes());
  return {da, db};
}

// ------------------------------------------------------------------------------------------------------------------
// The K weight rows of one tile, copied to a thread-local slab with padded strides (the rows of W lie Ca*Cb
// elements apart, a power of two for typical sizes, so reading K of them at once thrashes L1 sets), zero past Cb.
template <typename T>
struct WeightSlab {
  int64_t ld, kst;  // row stride, class stride (elements)
  AlignedBuffer<T> buf;
  WeightSlab(int64_t K, int64_t rb, int64_t cbc) : ld(cbc + 2 * Simd<T>::n), kst(rb * (cbc + 2 * Simd<T>::n) + 3 * Simd<T>::n),
                                                    buf((size_t)(K * kst)) {}
  T* at(int64_t k, int64_t r) { return buf.data() + k * kst + r * ld; }
  void load(const T* W, int64_t K, int64_t Ca, int64_t Cb, int64_t i_begin, int64_t rows, int64_t j_begin,
            int64_t cols) {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t r = 0; r < rows; ++r) {
        T* dst = at(k, r);
        std::memcpy(dst, W + k * Ca * Cb + (i_begin + r) * Cb + j_begin, cols * sizeof(T));
        std::fill(dst + cols, dst + ld, T(0));
      }
  }
};

// dst[0, count) = src[0, count), through non-temporal stores where dst is vector-aligned: for output written once and
// not read back soon, whose cache lines then need not be read in first (half the memory traffic). The calling thread
// runs stream_fence() before another thread reads dst.
template <typename T>
inline void copy_streaming(T* dst, const T* src, int64_t count) {
  constexpr int n = Simd<T>::n;
  int64_t i = 0;
  for (; i < count && !valigned(dst + i); ++i) dst[i] = src[i];
  for (; i + n <= count; i += n) vstream(dst + i, vload(src + i));
  for (; i < count; ++i) dst[i] = src[i];
}

// Per-sample scalars of the classifier's backward: invd = 1/d and gfac = G/d (0 when the norm is clamped), d =
// max(||s||, 1e-12), G = <z, dz> = sum_k dlogits_k (logits_k - bias_k); so ds = dz/d - z G/d.
template <typename T>
void norm_factors(const at::Tensor& gl, const std::optional<at::Tensor>& bias, const at::Tensor& norms,
                  const at::Tensor& logits, std::vector<T>& invd, std::vector<T>& gfac) {
  const int64_t N = gl.size(0), K = gl.size(1);
  invd.resize(N);
  gfac.resize(N);
  const at::Tensor nc = norms.contiguous(), lc = logits.contiguous();
  at::Tensor bias_c;
  const T* BI = nullptr;
  if (bias.has_value() && bias->defined()) {
    bias_c = bias->contiguous();
    BI = bias_c.data_ptr<T>();
  }
  const T* NM = nc.data_ptr<T>();
  const T* LG = lc.data_ptr<T>();
  const T* GL = gl.data_ptr<T>();
  for (int64_t s_n = 0; s_n < N; ++s_n) {
    const double norm = (double)NM[s_n], d = std::max(norm, 1e-12);
    double g = 0;
    for (int64_t k = 0; k < K; ++k) g += (double)GL[s_n * K + k] * ((double)LG[s_n * K + k] - (BI ? (double)BI[k] : 0.0));
    invd[s_n] = (T)(1.0 / d);
    gfac[s_n] = norm >= 1e-12 ? (T)(g / d) : T(0);
  }
}

// ---- the classifier op on larger maps or many classes: Y as one batched GEMM ----
// (fer_kernels.bilinear_classifier itself runs the pool op and a linear layer there, ops/bilinear.py: the pool's
// saved z spares the backward its second Y; this path serves direct calls of the op, which saves no z.)
// Past 8x8 locations (or past kRegisterClasses classes) the GEMMs dominate and the tile-by-tile kernels above, which
// never store Y and so compute it twice with a register-blocked kernel of their own, lose to BLAS. Here Y (N, Ca, Cb)
// comes from one at::bmm (BLAS) into a temporary; one fused pass per sample turns it into z (signed sqrt, ||s||,
// scale) in place; logits = z W^T + bias.
// Nothing of size N x Ca*Cb is saved (the backward recomputes Y with one more bmm: forward activations saved stay at
// a, b, norms and logits). Backward: Y again, Z = z (N, D); dW = dl^T Z; dZ = dl W; one fused pass dY = (dz/d -
// z G/d) * [Y != 0] 0.5 / sqrt(|Y| + eps) into Y's buffer; dA = dY B, dB = dY^T A (bmm).
constexpr int64_t kGemmLocations = 64;
inline bool use_gemm_path(int64_t locations, int64_t classes) {
  return locations > kGemmLocations || classes > kRegisterClasses;
}

// In place over y (count elements): y = s = signed_sqrt(scale * y) (with eps; or scale * y alone); returns ||s||^2
// (chunks of vectors summed in double).
template <typename T>
double to_s_inplace(T* y, int64_t count, T scale, bool signed_sqrt, T eps) {
  constexpr int nl = Simd<T>::n;
  const vec<T> sc = vbroadcast(scale);
  double total = 0;
  int64_t i = 0;
  while (i + nl <= count) {
    vec<T> sq{};
    const int64_t end = std::min(count, i + 256 * nl) / nl * nl;
    for (; i < end; i += nl) {
      vec<T> sv = vload(y + i) * sc;
      if (signed_sqrt) sv = signed_sqrt_v(sv, eps);
      vstore(y + i, sv);
      sq += sv * sv;
    }
    total += (double)hsum<T>(sq);
  }
  for (; i < count; ++i) {
    T v = y[i] * scale;
    if (signed_sqrt) {
      const T r = std::sqrt(std::abs(v) + eps);
      v = v > T(0) ? r : (v < T(0) ? -r : T(0));
    }
    y[i] = v;
    total += (double)v * (double)v;
  }
  return total;
}

// y (N, D) -> s in place, norms[n] = ||s_n||, and with l2_normalize z = s / max(||s_n||, 1e-12); parallel over samples.
template <typename T>
void finish_pool_rows(T* Y, int64_t N, int64_t D, T scale, bool signed_sqrt, bool l2_normalize, T eps, T* NM) {
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t s_n = n0; s_n < n1; ++s_n) {
      T* ys = Y + s_n * D;
      const double norm = std::sqrt(to_s_inplace(ys, D, scale, signed_sqrt, eps));
      NM[s_n] = (T)norm;
      if (!l2_normalize) continue;
      const T inv = (T)(1.0 / std::max(norm, 1e-12));
      const vec<T> iv = vbroadcast(inv);
      int64_t i = 0;
      for (; i + Simd<T>::n <= D; i += Simd<T>::n) vstore(ys + i, vload(ys + i) * iv);
      for (; i < D; ++i) ys[i] *= inv;
    }
  });
}

// Pool forward on maps past kGemmLocations: Y by one batched BLAS GEMM, then one fused pass per sample
// (finish_pool_rows).
template <typename T>
std::tuple<at::Tensor, at::Tensor> pool_forward_gemm(const at::Tensor& a, const at::Tensor& b, double eps,
                                                     bool signed_sqrt, bool l2_normalize, bool mean) {
  const int64_t N = a.size(0), Ca = a.size(1), Cb = b.size(1), L = a.size(2) * a.size(3);
  at::Tensor y = at::bmm(a.reshape({N, Ca, L}), b.reshape({N, Cb, L}).transpose(1, 2)).contiguous();
  at::Tensor norms = at::empty({N}, a.options());
  finish_pool_rows<T>(y.data_ptr<T>(), N, Ca * Cb, mean ? T(1) / T(L) : T(1), signed_sqrt, l2_normalize, (T)eps,
                      norms.data_ptr<T>());
  return {y.view({N, Ca * Cb}), norms};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> classifier_forward_gemm(const at::Tensor& a, const at::Tensor& b,
                                                           const at::Tensor& weight,
                                                           const std::optional<at::Tensor>& bias, double eps_d) {
  const auto [z, norms] = pool_forward_gemm<T>(a, b, eps_d, true, true, false);
  at::Tensor logits = bias.has_value() && bias->defined() ? at::addmm(*bias, z, weight.t()) : at::mm(z, weight.t());
  return {logits, norms};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> classifier_backward_gemm(
    const at::Tensor& grad_logits, const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& norms, const at::Tensor& logits, double eps_d) {
  const int64_t N = a.size(0), Ca = a.size(1), Cb = b.size(1), L = a.size(2) * a.size(3), D = Ca * Cb;
  const at::Tensor a3 = a.reshape({N, Ca, L}), b3 = b.reshape({N, Cb, L});
  const at::Tensor gl = grad_logits.contiguous();
  std::vector<T> invd, gfac;
  norm_factors<T>(gl, bias, norms, logits, invd, gfac);
  at::Tensor y = at::bmm(a3, b3.transpose(1, 2)).contiguous();  // (N, Ca, Cb)
  at::Tensor z = at::empty({N, D}, a.options());
  T* Y = y.data_ptr<T>();
  T* Z = z.data_ptr<T>();
  const T eps = (T)eps_d;
  constexpr int nl = Simd<T>::n;
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t s_n = n0; s_n < n1; ++s_n) {
      const T* ys = Y + s_n * D;
      T* zs = Z + s_n * D;
      const vec<T> iv2 = vbroadcast(T(0.5) * invd[s_n]);
      int64_t i = 0;
      for (; i + nl <= D; i += nl) vstore(zs + i, signed_sqrt2_v(vload(ys + i), eps) * iv2);
      for (; i < D; ++i) {
        const T v = ys[i], r = std::sqrt(std::abs(v) + eps);
        zs[i] = (v > T(0) ? r : (v < T(0) ? -r : T(0))) * invd[s_n];
      }
    }
  });
  at::Tensor dw = at::mm(gl.t(), z);           // (K, D)
  at::Tensor dz = at::mm(gl, weight.contiguous());  // (N, D)
  const T* DZ = dz.data_ptr<T>();
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    const vec<T> zero{};
    for (int64_t s_n = n0; s_n < n1; ++s_n) {
      T* ys = Y + s_n * D;  // becomes dY
      const T* zs = Z + s_n * D;
      const T* dzs = DZ + s_n * D;
      // dY = (dz / d - z G / d) * 0.5 / sqrt(|Y| + eps), with rinv2 = 2 / sqrt(|Y| + eps)
      const vec<T> iv4 = vbroadcast(T(0.25) * invd[s_n]), gf4 = vbroadcast(T(0.25) * gfac[s_n]);
      int64_t i = 0;
      for (; i + nl <= D; i += nl) {
        const vec<T> yv = vload(ys + i);
        vec<T> root2, rinv2;
        root_pair(vabs<T>(yv) + eps, root2, rinv2);
        vstore(ys + i, yv != zero ? (vload(dzs + i) * iv4 - vload(zs + i) * gf4) * rinv2 : zero);
      }
      for (; i < D; ++i) {
        const T v = ys[i];
        ys[i] = v != T(0) ? (dzs[i] * invd[s_n] - zs[i] * gfac[s_n]) * (T(0.5) / std::sqrt(std::abs(v) + eps)) : T(0);
      }
    }
  });
  at::Tensor da = at::bmm(y, b3);                 // (N, Ca, L)
  at::Tensor db = at::bmm(y.transpose(1, 2), a3);  // (N, Cb, L)
  return {da.view(a.sizes()), db.view(b.sizes()), dw, gl.sum(0)};
}

// Classifier forward: logits[n, k] = (W_k . s_n) / max(||s_n||, 1e-12) + bias_k, and norms[n] = ||s_n||.
// Threads take whole row blocks from a shared counter; per tile it copies the K weight slabs once, then for each
// micro-tile row loops over all samples (the row's weights stay in L1, forward_max_cols), accumulating ||s||^2 and
// the K <= kRegisterClasses dot products in vector registers (a kernel per K), each vector of s multiplied into them
// as soon as it is made; between micro-tile rows the sums wait in a per-sample vector buffer, and per tile they are
// folded into per-block double partials. Saves (in Python): a, b, norms, logits.
template <typename T>
std::tuple<at::Tensor, at::Tensor> classifier_forward_impl(const at::Tensor& a, const at::Tensor& b,
                                                           const at::Tensor& weight,
                                                           const std::optional<at::Tensor>& bias, double eps_d) {
  constexpr int n = Simd<T>::n, nr = NR<T>();
  const int64_t N = a.size(0), Ca = a.size(1), Cb = b.size(1), L = a.size(2) * a.size(3), K = weight.size(0);
  const at::Tensor a3 = a.reshape({N, Ca, L}).contiguous(), b3 = b.reshape({N, Cb, L}).contiguous();
  const at::Tensor w = weight.contiguous();
  const int64_t cbp = round_up(Cb, nr);
  const at::Tensor bt = transpose_panels<T>(b3, cbp);
  const Tiling tl = classifier_tiling(Ca, Cb, K, sizeof(T), nr, 224 * 1024, MR, forward_max_cols(K, sizeof(T), nr));
  // Per row block: [N][K dots, ||s||^2], both of 2 s (signed_sqrt2_v), reduced in block order afterwards (deterministic
  // for any schedule).
  std::vector<double> part((size_t)tl.n_rb * N * (K + 1), 0.0);
  const T eps = (T)eps_d;
  const T* A = a3.data_ptr<T>();
  const T* Bt = bt.data_ptr<T>();
  const T* W = w.data_ptr<T>();
  dynamic_for(tl.n_rb, [&](auto next_block) {  // row blocks, dynamically
    WeightSlab<T> slab(K, tl.rb, tl.cbc);
    YTile<T> yt(A, Bt, Ca, L, cbp);
    VecBuffer<T> dkb((size_t)(N * (K + 1)));  // per sample: the K dot products and ||2 s||^2 of the tile so far
    vec<T> acc[MR][2];
    for (int64_t blk; (blk = next_block()) < tl.n_rb;) {
      double* mine = part.data() + (size_t)blk * N * (K + 1);
      const int64_t i_begin = tl.row(blk), i_end = tl.row(blk + 1);
      for (int64_t cb = 0; cb < tl.n_cb; ++cb) {
        const int64_t j_begin = cb * tl.cbc, j_end = std::min(cbp, j_begin + tl.cbc);
        slab.load(W, K, Ca, Cb, i_begin, i_end - i_begin, j_begin, std::min(Cb, j_end) - j_begin);
        dkb.zero();
        const T* ws = slab.buf.data();
        const int64_t ld = slab.ld, kst = slab.kst;
        // One micro-tile row of the tile for every sample, with KB classes: its weight rows stay in L1 across the
        // samples; each vector of s meets its KB weight vectors as soon as it is made (one weight load per FMA).
        auto group = [&](int64_t i0, auto KB) FER_INLINE_LAMBDA {
          constexpr int kb = KB.value;
          const int rows = (int)std::min<int64_t>(MR, i_end - i0);
          const T* wg = ws + (i0 - i_begin) * ld;
          for (int64_t s_n = 0; s_n < N; ++s_n) {
            vec<T>* dkp = dkb.data() + s_n * (K + 1);
            vec<T> dk[kb > 0 ? kb : 1], sq = dkp[K];
#pragma GCC unroll 8
            for (int k = 0; k < kb; ++k) dk[k] = dkp[k];
            yt.prepare(s_n, i_begin, i_end, j_begin, j_end);
            for (int64_t j0 = j_begin; j0 < j_end; j0 += nr) {
              yt.get(i0, rows, j0, acc);
              const T* w0 = wg + (j0 - j_begin);
              for (int r = 0; r < rows; ++r)
                for (int v = 0; v < 2; ++v) {
                  const vec<T> s2 = signed_sqrt2_v(acc[r][v], eps);  // 2 s; padded columns: Y = 0 -> s = 0
                  sq += s2 * s2;
                  const T* wv = w0 + r * ld + v * n;
#pragma GCC unroll 8
                  for (int k = 0; k < kb; ++k) dk[k] += vload(wv + k * kst) * s2;
                }
            }
            dkp[K] = sq;
#pragma GCC unroll 8
            for (int k = 0; k < kb; ++k) dkp[k] = dk[k];
          }
        };
        for (int64_t i0 = i_begin; i0 < i_end; i0 += MR) {
          if (K == 0) group(i0, std::integral_constant<int, 0>{});
          else with_count<kRegisterClasses>((int)K, [&](auto KB) { group(i0, KB); });
        }
        for (int64_t s_n = 0; s_n < N; ++s_n)
          for (int64_t k = 0; k <= K; ++k) mine[s_n * (K + 1) + k] += (double)hsum<T>(dkb[s_n * (K + 1) + k]);
      }
    }
  });
  at::Tensor logits = at::empty({N, K}, a.options());
  at::Tensor norms = at::empty({N}, a.options());
  T* LG = logits.data_ptr<T>();
  T* NM = norms.data_ptr<T>();
  at::Tensor bias_c;
  const T* BI = nullptr;
  if (bias.has_value() && bias->defined()) {
    bias_c = bias->contiguous();
    BI = bias_c.data_ptr<T>();
  }
  for (int64_t s_n = 0; s_n < N; ++s_n) {
    double sq = 0;
    for (int64_t r = 0; r < tl.n_rb; ++r) sq += part[((size_t)r * N + s_n) * (K + 1) + K];
    sq *= 0.25;  // the partials are of 2 s: ||2 s||^2 and W_k . 2 s
    const double norm = std::sqrt(sq), inv = 1.0 / std::max(norm, 1e-12);
    NM[s_n] = (T)norm;
    for (int64_t k = 0; k < K; ++k) {
      double d = 0;
      for (int64_t r = 0; r < tl.n_rb; ++r) d += part[((size_t)r * N + s_n) * (K + 1) + k];
      d *= 0.5;
      LG[s_n * K + k] = (T)(d * inv + (BI ? (double)BI[k] : 0.0));
    }
  }
  return {logits, norms};
}

// gs[k * kst + o .. + 2n] += sum_{s < ns} g[s * gst + k] * z[s * zst + o .. + 2n] for k < KB: the weight gradient
// of KB classes at two vectors of the tile, accumulated over a chunk of samples in registers (2 KB accumulators;
// per sample 2 + KB loads feed 2 KB FMAs).
template <typename T, int KB>
inline void wgrad_classes(const T* z, int64_t zst, int64_t ns, const T* g, int64_t gst, T* gs, int64_t kst) {
  constexpr int n = Simd<T>::n;
  vec<T> acc[KB][2];
  for (int k = 0; k < KB; ++k) acc[k][0] = acc[k][1] = vec<T>{};
  for (int64_t s = 0; s < ns; ++s) {
    vec<T> z0 = vload(z + s * zst), z1 = vload(z + s * zst + n);
    pin(z0);  // else GCC 12 copied them to the stack and read every FMA's operand from there (avx512 build)
    pin(z1);
    for (int k = 0; k < KB; ++k) {
      const vec<T> gk = vbroadcast_load(g + s * gst + k);
      acc[k][0] += gk * z0;
      acc[k][1] += gk * z1;
    }
  }
  for (int k = 0; k < KB; ++k) {
    T* p = gs + k * kst;
    vstore(p, vload(p) + acc[k][0]);
    vstore(p + n, vload(p + n) + acc[k][1]);
  }
}

// out[s * ost + o] = sum_{k < KB} g[s * gst + k] W[k * kst + o] for o < count (a multiple of the vector width) and
// each of S samples: dz = W^T dlogits of KB classes over a tile, with the S * KB broadcasts held in registers. With
// S = 2 each weight vector, read from L2 once, feeds both samples' FMAs as a memory operand; 2 KB broadcasts and 2
// sums fit AVX2's 16 registers up to kPairClasses. At EIFN's shape (S = 2 against 1) the AVX-512 backward went
// 7.20-7.55 -> 6.89-7.10 ms, the AVX2 one 9.22-9.60 -> 9.14-9.49 (Intel Xeon, 2 threads, interleaved A/B, 5 rounds).
constexpr int kPairClasses = 7;
template <typename T, int KB, int S>
inline void combine_classes(const T* W, int64_t kst, const T* g, int64_t gst, T* out, int64_t ost, int64_t count) {
  constexpr int n = Simd<T>::n;
  vec<T> gv[S][KB];
  for (int s = 0; s < S; ++s)
    for (int k = 0; k < KB; ++k) gv[s][k] = vbroadcast(g[s * gst + k]);
  for (int64_t o = 0; o < count; o += n) {
    vec<T> d[S];
    for (int s = 0; s < S; ++s) d[s] = gv[s][0] * vload(W + o);
    for (int k = 1; k < KB; ++k)
      for (int s = 0; s < S; ++s) d[s] += gv[s][k] * vload(W + k * kst + o);
    for (int s = 0; s < S; ++s) vstore(out + s * ost + o, d[s]);
  }
}

// Classifier backward. Per (tile, sample): dz = sum_k dl_k W_k over the tile into the sample's tile buffer (the dl_k
// held in registers; up to kPairClasses classes one pass over the weight slab serves a pair of samples, in two
// buffers); recompute the Y micro-tiles, z = s / d (d = max(norm, 1e-12)); ds = (dz - z G) / d with
// G = <z, dz> = sum_k dl_k (logits_k - bias_k) (dz / d if norm < 1e-12); dY = ds * sign(Y)^2 * 0.5 / sqrt(|Y| + eps)
// over dz in the tile buffer; z into a buffer of a chunk of samples, from which dW_k += sum_n dl_k z_n goes into a
// padded thread-local slab, up to 4 classes x two vectors at a time in registers (the thread owns the tile, written
// out once after all samples). Then dA[rows] += dY_tile B[cols], dB[cols] += dY_tile^T A[rows] (dB per thread, summed at the end; the dynamic
// schedule makes its float summation order, only, vary between runs).
template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> classifier_backward_impl(
    const at::Tensor& grad_logits, const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& norms, const at::Tensor& logits, double eps_d) {
  constexpr int n = Simd<T>::n, nr = NR<T>();
  const int64_t N = a.size(0), Ca = a.size(1), Cb = b.size(1), L = a.size(2) * a.size(3), K = weight.size(0);
  const at::Tensor a3 = a.reshape({N, Ca, L}).contiguous(), b3 = b.reshape({N, Cb, L}).contiguous();
  const at::Tensor w = weight.contiguous(), gl = grad_logits.contiguous();
  const int64_t cbp = round_up(Cb, nr);
  const at::Tensor bt = transpose_panels<T>(b3, cbp);
  const Tiling tl = classifier_tiling(Ca, Cb, K, sizeof(T), nr, classifier_backward_bytes(), kBackwardMinRows);
  const int nthreads = at::get_num_threads();
  const T eps = (T)eps_d;

  std::vector<T> invd, gfac;
  norm_factors<T>(gl, bias, norms, logits, invd, gfac);
  // dA's rows are zeroed by the thread that owns their row block, and each thread's dB accumulator by that thread,
  // at its start: in parallel, and warm in its cache (at::zeros of the three cost about 0.3 ms of 9 at EIFN's shape).
  at::Tensor da = at::empty({N, Ca, L}, a.options());
  at::Tensor db = at::empty({N, Cb, L}, a.options());
  at::Tensor dw = at::empty({K, Ca * Cb}, a.options());
  at::Tensor db_extra = nthreads > 1 ? at::empty({nthreads - 1, N, Cb, L}, a.options()) : at::Tensor();
  std::vector<char> db_used((size_t)nthreads, 0);  // which threads' dB accumulators hold a sum
  const T* A = a3.data_ptr<T>();
  const T* Bm = b3.data_ptr<T>();
  const T* Bt = bt.data_ptr<T>();
  const T* W = w.data_ptr<T>();
  const T* GL = gl.data_ptr<T>();
  T* DA = da.data_ptr<T>();
  T* DW = dw.data_ptr<T>();
  dynamic_for(tl.n_rb, [&](auto next_block) {  // row blocks, dynamically
    const int tid = at::get_thread_num();
    T* DB = tid == 0 ? db.data_ptr<T>() : db_extra.data_ptr<T>() + (int64_t)(tid - 1) * N * Cb * L;
    std::fill(DB, DB + N * Cb * L, T(0));
    db_used[tid] = 1;
    WeightSlab<T> slab(K, tl.rb, tl.cbc), gslab(K, tl.rb, tl.cbc);
    YTile<T> yt(A, Bt, Ca, L, cbp);
    // dz, then dY, of the tile, in the slab's row layout: even samples in the first half, odd in the second
    AlignedBuffer<T> dyt((size_t)(2 * tl.rb * slab.ld));
    constexpr int64_t kChunk = kChunkRegister;
    const int64_t zst = tl.rb * slab.ld;  // z (dz) of one sample of the tile, in the slab's row layout
    AlignedBuffer<T> zbuf((size_t)(kChunk * zst));
    vec<T> acc[MR][2];
    for (int64_t blk; (blk = next_block()) < tl.n_rb;) {
      const int64_t i_begin = tl.row(blk), i_end = tl.row(blk + 1), rows_blk = i_end - i_begin;
      for (int64_t s_n = 0; s_n < N; ++s_n) std::fill(DA + (s_n * Ca + i_begin) * L, DA + (s_n * Ca + i_end) * L, T(0));
      for (int64_t cb = 0; cb < tl.n_cb; ++cb) {
        const int64_t j_begin = cb * tl.cbc, j_end = std::min(cbp, j_begin + tl.cbc);
        const int64_t cols = std::min(Cb, j_end) - j_begin;  // valid columns of this tile
        slab.load(W, K, Ca, Cb, i_begin, rows_blk, j_begin, cols);
        gslab.buf.zero();
        const T* ws = slab.buf.data();
        T* gs = gslab.buf.data();
        const int64_t ld = slab.ld, kst = slab.kst;
        const int64_t dyst = tl.rb * ld;
        for (int64_t s_n = 0; s_n < N; ++s_n) {
          T* dy = dyt.data() + (s_n & 1) * dyst;
          // z = s / d = 2 s * (0.5 / d); dY = (dz / d - z G / d) * 0.5 / sqrt(|Y| + eps) = (dz / 4d - z G / 4d) * rinv2
          const vec<T> iv2 = vbroadcast(T(0.5) * invd[s_n]), iv4 = vbroadcast(T(0.25) * invd[s_n]),
                       gf4 = vbroadcast(T(0.25) * gfac[s_n]), zero{};
          const T* gl_n = GL + s_n * K;
          const T* dzp = dy;  // dz of this sample's tile
          T* const zs = zbuf.data() + (s_n % kChunk) * zst;  // z of this sample's tile
          if (K == 0) std::fill(dy, dy + rows_blk * ld, T(0));
          else if (K <= kPairClasses && (s_n & 1) == 0 && s_n + 1 < N)  // this sample's dz and the next one's
            with_count<kPairClasses>((int)K, [&](auto KB) {
              combine_classes<T, KB.value, 2>(ws, kst, gl_n, K, dy, dyst, rows_blk * ld);
            });
          else if (K > kPairClasses || (s_n & 1) == 0)  // (an odd sample's dz came with the even one before it)
            with_count<kRegisterClasses>((int)K, [&](auto KB) {
              combine_classes<T, KB.value, 1>(ws, kst, gl_n, K, dy, dyst, rows_blk * ld);
            });
          yt.prepare(s_n, i_begin, i_end, j_begin, j_end);
          for (int64_t i0 = i_begin; i0 < i_end; i0 += MR) {
            const int rows = (int)std::min<int64_t>(MR, i_end - i0);
            for (int64_t j0 = j_begin; j0 < j_end; j0 += nr) {
              yt.get(i0, rows, j0, acc);
              for (int r = 0; r < rows; ++r) {
                const int64_t toff = (i0 - i_begin + r) * ld + (j0 - j_begin);
                for (int v = 0; v < 2; ++v) {
                  const vec<T> y = acc[r][v];
                  vec<T> root2, rinv2;  // 2 sqrt(|Y| + eps) and 2 / sqrt(|Y| + eps), shared by s and ds/dY
                  root_pair(vabs<T>(y) + eps, root2, rinv2);
                  const auto nonzero = y != zero;
                  const vec<T> z = nonzero ? vwith_sign<T>(root2, y) * iv2 : zero;
                  const int64_t o = toff + v * n;
                  vstore(zs + o, z);
                  // padded columns: W = 0 and Y = 0 there, so dz = z = dY = 0
                  vstore(dy + o, nonzero ? (vload(dzp + o) * iv4 - z * gf4) * rinv2 : zero);
                }
              }
            }
          }
          if (s_n % kChunk == kChunk - 1 || s_n == N - 1) {  // dW of the chunk's samples
            const int64_t n0 = s_n / kChunk * kChunk, ns = s_n + 1 - n0;
            for (int64_t r = 0; r < rows_blk; ++r)
              for (int64_t o = r * ld; o < r * ld + (j_end - j_begin); o += nr)
                for (int64_t k0 = 0; k0 < K; k0 += 4)
                  with_count<4>((int)std::min<int64_t>(4, K - k0), [&](auto KB) {
                    wgrad_classes<T, KB.value>(zbuf.data() + o, zst, ns, GL + n0 * K + k0, K, gs + k0 * kst + o, kst);
                  });
          }
          // dA[n, rows, :] += dY_tile (rows x cols) @ B[n, cols, :]
          gemm_acc<T, false>(rows_blk, L, cols, dy, ld, Bm + (s_n * Cb + j_begin) * L, L, DA + (s_n * Ca + i_begin) * L,
                             L);
          // dB[n, cols, :] += dY_tile^T (cols x rows) @ A[n, rows, :]
          gemm_acc<T, true>(cols, L, rows_blk, dy, ld, A + (s_n * Ca + i_begin) * L, L, DB + (s_n * Cb + j_begin) * L,
                            L);
        }
        for (int64_t k = 0; k < K; ++k)
          for (int64_t r = 0; r < rows_blk; ++r)
            copy_streaming(DW + k * Ca * Cb + (i_begin + r) * Cb + j_begin, gslab.at(k, r), cols);
      }
    }
    stream_fence();  // copy_streaming's stores, before the caller reads dw
  });
  // dB = the threads' accumulators summed, in parallel over elements (thread 0's is db itself; a thread that took
  // no block zeroed nothing and is skipped).
  if (!db_used[0]) db.zero_();
  T* DB0 = db.data_ptr<T>();
  const T* DBX = nthreads > 1 ? db_extra.data_ptr<T>() : nullptr;
  const int64_t db_count = N * Cb * L;
  if (nthreads > 1)
    at::parallel_for(0, db_count, 4096, [&](int64_t e0, int64_t e1) {
      for (int t = 1; t < nthreads; ++t) {
        if (!db_used[t]) continue;
        const T* x = DBX + (int64_t)(t - 1) * db_count;
        for (int64_t e = e0; e < e1; ++e) DB0[e] += x[e];
      }
    });
  at::Tensor dbias = gl.sum(0);
  return {da.view(a.sizes()), db.view(b.sizes()), dw, dbias};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> bilinear_pool_cpu(const at::Tensor& a, const at::Tensor& b, double eps,
                                                     bool signed_sqrt, bool l2_normalize, bool mean) {
  check_bilinear_ab(a, b, at::kCPU);
  return AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_pool_cpu", [&] {
    if (a.size(2) * a.size(3) > kGemmLocations)
      return pool_forward_gemm<scalar_t>(a, b, eps, signed_sqrt, l2_normalize, mean);
    return pool_forward_impl<scalar_t>(a, b, eps, signed_sqrt, l2_normalize, mean);
  });
}

std::tuple<at::Tensor, at::Tensor> bilinear_pool_backward_cpu(const at::Tensor& grad_z, const at::Tensor& a,
                                                              const at::Tensor& b, const at::Tensor& z,
                                                              const at::Tensor& norms, double eps, bool signed_sqrt,
                                                              bool l2_normalize, bool mean) {
  (void)eps;  // |s| = sqrt(|Y| + eps) is read back from z
  check_bilinear_pool_backward(grad_z, a, b, z, norms, at::kCPU);
  return AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_pool_backward_cpu", [&] {
    return pool_backward_impl<scalar_t>(grad_z, a, b, z, norms, signed_sqrt, l2_normalize, mean);
  });
}

std::tuple<at::Tensor, at::Tensor> bilinear_classifier_cpu(const at::Tensor& a, const at::Tensor& b,
                                                           const at::Tensor& weight,
                                                           const std::optional<at::Tensor>& bias, double eps) {
  check_bilinear_classifier(a, b, weight, bias, at::kCPU);
  return AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_classifier_cpu", [&] {
    if (use_gemm_path(a.size(2) * a.size(3), weight.size(0)))
      return classifier_forward_gemm<scalar_t>(a, b, weight, bias, eps);
    return classifier_forward_impl<scalar_t>(a, b, weight, bias, eps);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilinear_classifier_backward_cpu(
    const at::Tensor& grad_logits, const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& norms, const at::Tensor& logits, double eps) {
  check_bilinear_classifier_backward(grad_logits, a, b, weight, bias, norms, logits, at::kCPU);
  return AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bilinear_classifier_backward_cpu", [&] {
    if (use_gemm_path(a.size(2) * a.size(3), weight.size(0)))
      return classifier_backward_gemm<scalar_t>(grad_logits, a, b, weight, bias, norms, logits, eps);
    return classifier_backward_impl<scalar_t>(grad_logits, a, b, weight, bias, norms, logits, eps);
  });
}

FER_ISA_END

// Why here: each kernel file registers its own CPU kernels (CONVENTIONS rule 1).
FER_REGISTER_CPU_OP(bilinear_pool)
FER_REGISTER_CPU_OP(bilinear_classifier)
