// One vector layer for every CPU kernel: GCC/Clang vector extensions whose width is the ISA's (isa.h: 16 bytes
// scalar, 32 AVX2, 64 AVX-512), the few operations the kernels need on them, the register tile of their
// matrix products, and the dynamic parallel loop. Included by an op file after its system and torch headers, in
// a per-ISA build; everything here lives in namespace fer_kernels::<isa>.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <vector>

#if FER_X86
#include <immintrin.h>
#endif

#include "cpu/isa.h"

#if !defined(FER_ISA) || !defined(FER_ISA_LEVEL)
#error "csrc/cpu op files are compiled through their per-ISA wrappers (setup.py: build/fer_isa/<op>.<isa>.cpp)"
#endif

#define FER_INLINE __attribute__((always_inline)) inline
#define FER_INLINE_LAMBDA __attribute__((always_inline))  // [&](...) FER_INLINE_LAMBDA { ... }

FER_ISA_BEGIN

using idx = int64_t;

// Aligned to one element only: the baseline code around the kernels (std::vector, the stack of at::parallel_for)
// knows the alignment of the baseline target (16 bytes), and a vector it places must never meet an aligned move;
// may_alias: a vec<T> may be read and written through T* memory.
template <typename T>
struct Simd {
  typedef T v __attribute__((vector_size(FER_VEC_BYTES), aligned(sizeof(T)), may_alias));
  // the integer vector of the same lanes (bit operations: vabs, vwith_sign)
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> iv
      __attribute__((vector_size(FER_VEC_BYTES), aligned(sizeof(T)), may_alias));
  static constexpr int n = FER_VEC_BYTES / (int)sizeof(T);  // lanes
};
template <typename T>
using vec = typename Simd<T>::v;
// The sign bit in every lane, as the integer vector of vec<T>'s width (Simd<T>::iv).
template <typename T>
FER_INLINE typename Simd<T>::iv sign_bits() {
  using I = typename Simd<T>::iv;
  using E = std::remove_reference_t<decltype(I{}[0])>;
  return I{} + std::numeric_limits<E>::min();
}

inline idx round_up(idx x, idx m) { return (x + m - 1) / m * m; }

// count elements of T on the heap, zeroed, starting on a cache line (64 bytes). malloc's 16-byte alignment makes
// every other 32-byte vector access, and every 64-byte one, split across two cache lines. Not copyable.
template <typename T>
struct AlignedBuffer {
  static constexpr size_t kAlign = 64;
  T* p = nullptr;
  size_t count = 0, capacity = 0;
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t count_) { resize(count_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { release(); }
  // count_ zeroed elements (the old contents are dropped; the allocation is kept if it is large enough).
  void resize(size_t count_) {
    if (count_ > capacity) {
      release();
      p = static_cast<T*>(::operator new(count_ * sizeof(T), std::align_val_t(kAlign)));
      capacity = count_;
    }
    count = count_;
    zero();
  }
  void zero() { std::fill(p, p + count, T(0)); }
  T* data() { return p; }
  T& operator[](size_t i) { return p[i]; }

 private:
  void release() {
    if (p) ::operator delete(p, std::align_val_t(kAlign));
    p = nullptr;
    capacity = 0;
  }
};

// count vectors on the heap, zeroed, cache-line aligned (a std::vector<vec<T>> would drop vec's alignment attribute).
template <typename T>
struct VecBuffer {
  AlignedBuffer<T> mem;
  explicit VecBuffer(size_t count) : mem(count * Simd<T>::n) {}
  vec<T>* data() { return reinterpret_cast<vec<T>*>(mem.data()); }
  vec<T>& operator[](size_t i) { return data()[i]; }
  void zero() { mem.zero(); }
};

// Unaligned loads and stores (vec is element-aligned and may alias T; a memcpy here went through the stack).
template <typename T>
FER_INLINE vec<T> vload(const T* p) {
  return *reinterpret_cast<const vec<T>*>(p);
}
template <typename T>
FER_INLINE void vstore(T* p, vec<T> x) {
  *reinterpret_cast<vec<T>*>(p) = x;
}
// A non-temporal store to p, which must be aligned to the vector's size (valigned): the line is written without being
// read in first (output written once and not read back soon). Plain store off x86. stream_fence() before another
// thread reads p.
template <typename T>
FER_INLINE void vstream(T* p, vec<T> x) {
#if FER_X86 && FER_VEC_BYTES == 64
  if constexpr (std::is_same_v<T, float>) _mm512_stream_ps(p, x);
  else _mm512_stream_pd(p, x);
#elif FER_X86 && FER_VEC_BYTES == 32
  if constexpr (std::is_same_v<T, float>) _mm256_stream_ps(p, x);
  else _mm256_stream_pd(p, x);
#elif FER_X86
  if constexpr (std::is_same_v<T, float>) _mm_stream_ps(p, x);
  else _mm_stream_pd(p, x);
#else
  vstore(p, x);
#endif
}
// Whether p meets vstream's alignment (the vector's size).
template <typename T>
FER_INLINE bool valigned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % FER_VEC_BYTES == 0;
}
// Non-temporal stores are weakly ordered: the thread that made them runs this before other threads may read them
// (the end of a parallel worker that used vstream).
FER_INLINE void stream_fence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <typename T>
FER_INLINE vec<T> vbroadcast(T x) {
  return vec<T>{} + x;
}
// *p in every lane, straight from memory (one vbroadcastss/sd).
template <typename T>
FER_INLINE vec<T> vbroadcast_load(const T* p) {
#if FER_VEC_BYTES == 64
  if constexpr (std::is_same_v<T, float>) return _mm512_set1_ps(*p);
  else return _mm512_set1_pd(*p);
#elif FER_VEC_BYTES == 32
  if constexpr (std::is_same_v<T, float>) return _mm256_broadcast_ss(p);
  else return _mm256_broadcast_sd(p);
#else
  return vbroadcast(*p);
#endif
}
// Elementwise square root: vsqrt<T>(x).
template <typename T>
FER_INLINE vec<T> vsqrt(vec<T> x) {
#if FER_VEC_BYTES == 64  // maskz: the unmasked forms trip -Wmaybe-uninitialized (GCC 12)
  if constexpr (std::is_same_v<T, float>) return _mm512_maskz_sqrt_ps((__mmask16)-1, x);
  else return _mm512_maskz_sqrt_pd((__mmask8)-1, x);
#elif FER_VEC_BYTES == 32
  if constexpr (std::is_same_v<T, float>) return _mm256_sqrt_ps(x);
  else return _mm256_sqrt_pd(x);
#else
  for (int q = 0; q < Simd<T>::n; ++q) x[q] = std::sqrt(x[q]);
  return x;
#endif
}
// The sum of the lanes: hsum<T>(x).
template <typename T>
FER_INLINE T hsum(vec<T> x) {
  T r = 0;
  for (int q = 0; q < Simd<T>::n; ++q) r += x[q];
  return r;
}

// |x|: the sign bit cleared (one AND).
template <typename T>
FER_INLINE vec<T> vabs(vec<T> x) {
  using I = typename Simd<T>::iv;
  return (vec<T>)((I)x & ~sign_bits<T>());
}
// mag (>= 0, sign bit clear) with the sign of s: copysign in one OR of bits.
template <typename T>
FER_INLINE vec<T> vwith_sign(vec<T> mag, vec<T> s) {
  using I = typename Simd<T>::iv;
  return (vec<T>)((I)mag | ((I)s & sign_bits<T>()));
}

// root2 = 2 sqrt(x) and rinv2 = 2 / sqrt(x) for x > 0; the factor 2 is for the caller to fold into its own scale
// factors. float on AVX2 / AVX-512: a reciprocal square root estimate r refined by one Newton step,
// 1/sqrt(x) ~ r (3 - x r^2) / 2 (relative error a few 1e-7; no sqrt or divide, both slow), in four operations:
// t = x r, e = 3 - t r, root2 = t e, rinv2 = r e. Else exact.
FER_INLINE void root_pair(vec<float> x, vec<float>& root2, vec<float>& rinv2) {
#if FER_ISA_LEVEL >= 1
#if FER_VEC_BYTES == 64
  const vec<float> r = _mm512_maskz_rsqrt14_ps((__mmask16)-1, x);
#else
  const vec<float> r = _mm256_rsqrt_ps(x);
#endif
  const vec<float> t = x * r, e = vbroadcast(3.0f) - t * r;
  root2 = t * e;
  rinv2 = r * e;
#else
  const vec<float> root = vsqrt<float>(x);
  root2 = root + root;
  rinv2 = vbroadcast(2.0f) / root;
#endif
}
FER_INLINE void root_pair(vec<double> x, vec<double>& root2, vec<double>& rinv2) {
  const vec<double> root = vsqrt<double>(x);
  root2 = root + root;
  rinv2 = vbroadcast(2.0) / root;
}

// Keeps v in a register: an empty asm that "modifies" it, so the compiler cannot fold its load into every use as
// a memory operand (a load per FMA instead of one per vector).
template <typename V>
FER_INLINE void pin(V& v) {
#if FER_X86 && FER_ISA_LEVEL == 2
  __asm__("" : "+v"(v));
#elif FER_X86
  __asm__("" : "+x"(v));
#elif defined(__aarch64__)
  __asm__("" : "+w"(v));
#endif
}

// ---- prefetching the next work item ----
// Cache lines of up to kGroups groups of rows (a group: first row, byte stride, row count; every row row_bytes
// long), pulled into L2 (prefetcht1) a few at a time while the current work item computes: issue_until(k) issues
// up to the k-th line overall, progress(i, m) (or the object called as a tick, below) the share i/m of them. For the
// inputs a work item reads in a burst at its start (a tile's rows of a large buffer), which the hardware
// prefetchers do not fetch ahead of the burst.
struct RowPrefetch {
  static constexpr int kGroups = 3;
  const char* base[kGroups] = {};
  idx stride[kGroups] = {}, rows[kGroups] = {};
  idx lines = 0, total = 0, done = 0;
  int groups = 0;
  int cur_group = 0;  // the next line to issue: line cur_line of row cur_row of group cur_group
  idx cur_row = 0, cur_line = 0;
  RowPrefetch() = default;
  // A row may start anywhere in a line, so it spans up to one line more than row_bytes / 64.
  explicit RowPrefetch(idx row_bytes) : lines(row_bytes > 0 ? (row_bytes + 63) / 64 + 1 : 0) {}
  void add(const void* first, idx stride_bytes, idx count) {
    TORCH_INTERNAL_ASSERT(groups < kGroups, "RowPrefetch holds at most ", kGroups, " groups of rows");
    base[groups] = static_cast<const char*>(first);
    stride[groups] = stride_bytes;
    rows[groups++] = count;
    total += count * lines;
  }
  // (A cursor, not a division per line: at a few dozen lines per call, two divisions each cost as much as the
  // 3x3 forward's block of FMAs between the calls.)
  FER_INLINE void issue_until(idx target) {
    for (target = std::min(target, total); done < target; ++done) {
      __builtin_prefetch(base[cur_group] + cur_row * stride[cur_group] + cur_line * 64, 0, 2);
      if (++cur_line == lines) {
        cur_line = 0;
        if (++cur_row == rows[cur_group]) {
          cur_row = 0;
          ++cur_group;
        }
      }
    }
  }
  FER_INLINE void progress(idx i, idx m) { issue_until(m > 0 ? i * total / m : total); }
  FER_INLINE void operator()(idx i, idx m) { progress(i, m); }
};
// A kernel with a tick parameter calls tick(i, m) after step i = 1 .. m of its m steps (for a RowPrefetch to keep
// pace); NoTick, the default, does nothing.
struct NoTick {
  FER_INLINE void operator()(idx, idx) const {}
};

// ---- the register tile of every matrix product ----
// acc[r][v] += p[r * ps] * q[v*n .. v*n + n) for r < R, v < NV: R broadcast scalars times NV vectors, R*NV
// accumulators. One step per reduction index; the NV vectors are loaded once and pinned in registers.
template <typename T, int R, int NV = 2>
struct Tile {
  static constexpr int n = Simd<T>::n;
  static constexpr int cols = NV * n;
  vec<T> acc[R][NV];
  // (The loops are unrolled by pragma: left to GCC's heuristics, a tile of 24 rows stayed a loop over r, with the
  // accumulators in memory.)
  FER_INLINE Tile() {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = vec<T>{};
  }
  FER_INLINE void step(const T* q, const T* p, idx ps = 1) {
    vec<T> x[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      vec<T> t = vload(q + v * n);  // pinned as a scalar: pin(x[v]) on the array element put the whole tile
      pin(t);                       // (accumulators too) on the stack in bilinear's Y kernel (AVX-512 build)
      x[v] = t;
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const vec<T> b = vbroadcast_load(p + r * ps);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += b * x[v];
    }
  }
  // Every accumulator to out, row r at out + r * cols. An epilogue that picks rows at run-time indices reads this
  // copy: indexing acc itself at run time puts the accumulators in memory, a load and a store around every FMA.
  FER_INLINE void spill(T* out) const {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) vstore(out + r * cols + v * n, acc[r][v]);
  }
  // Row r (r < rows) to out + r * ld, its first m <= cols columns. The loop runs over all R rows, unrolled, with a
  // run-time guard: a loop to `rows` indexed the tile at run time, which put it in memory for the whole k-loop
  // (the 3x3 kernel's accumulators went through the stack once per input channel in the AVX2 build).
  FER_INLINE void store(int rows, idx m, T* out, idx ld) const {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      if (r >= rows) break;
      T* o = out + r * ld;
      if (m == cols) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) vstore(o + v * n, acc[r][v]);
      } else {
        T tmp[cols];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) vstore(tmp + v * n, acc[r][v]);
        std::memcpy(o, tmp, sizeof(T) * (size_t)m);
      }
    }
  }
};

// ---- threads ----
// Runs worker(next) on every intra-op thread; workers take work items one at a time from a shared counter
// (next() returns the next item, >= total when done), so on a shared machine a descheduled thread does not leave
// its static share for the end.
template <typename Worker>
void dynamic_for(idx total, const Worker& worker) {
  std::atomic<idx> counter{0};
  auto next = [&counter]() { return counter.fetch_add(1, std::memory_order_relaxed); };
  const idx nt = std::max<idx>(1, std::min<idx>(at::get_num_threads(), total));
  at::parallel_for(0, nt, 1, [&](idx, idx) { worker(next); });
}

FER_ISA_END
